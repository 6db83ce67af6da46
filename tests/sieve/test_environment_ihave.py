"""RFC 5183 environment and RFC 5463 ihave / error: the items at delivery, the RFCs' examples, and a
block under ihave that names an unsupported extension (compiles, never runs)."""

from __future__ import annotations

import pytest

from mailsrv import __version__, sieve
from mailsrv.sieve import MessageView, SieveError, SieveRuntimeError
from mailsrv.sieve.message import environment

HEAD = b"From: a@remote.test\r\nTo: bob@example.test\r\nSubject: hi\r\n\r\nbody\r\n"


def view() -> MessageView:
    return MessageView(tuple(sieve.header_fields(HEAD)), "a@remote.test", "bob@example.test", len(HEAD),
                       environment=environment("mail.example.test"))


def boxes(script: str) -> list[str]:
    return [t.mailbox for t in sieve.run(sieve.compile(script), view()).targets]


def test_environment_items() -> None:
    env = environment("mail.example.test")
    assert env == {"name": "mailsrv", "version": __version__, "host": "mail.example.test",
                   "domain": "example.test", "location": "MS", "phase": "during"}
    script = ('require ["environment", "fileinto"];\n'
              'if allof (environment "location" "MS", environment :is "phase" "during",\n'
              '          environment :matches "host" "*.example.test", environment "domain" "example.test",\n'
              '          environment :contains "name" "mailsrv") { fileinto "Here"; }\n')
    assert boxes(script) == ["Here"]
    # RFC 5183 §4: an item the implementation does not know makes the test false
    assert boxes('require ["environment", "fileinto"];\nif environment :matches "remote-host" "*" '
                 '{ fileinto "No"; }\n') == ["INBOX"]


def test_environment_needs_require() -> None:
    with pytest.raises(SieveError, match='require "environment"'):
        sieve.compile('if environment "location" "MS" { stop; }')


def test_ihave_known_and_unknown() -> None:
    # RFC 5463 §4: a block under ihave may use what it names without require; a block naming an
    # extension we lack is not compiled (its unknown command is no error) and never runs
    script = ('require ["ihave", "fileinto"];\n'
              'if ihave "variables" { set "f" "Vars"; fileinto "${f}"; }\n'
              'if ihave ["fileinto", "x-no-such-extension"] { x_unknown_command "a"; fileinto "Never"; }\n'
              'elsif ihave "fileinto" { fileinto "Else"; }\n')
    assert sorted(boxes(script)) == ["Else", "Vars"]
    with pytest.raises(SieveError, match='require "ihave"'):
        sieve.compile('if ihave "fileinto" { stop; }')
    with pytest.raises(SieveError, match="unknown"):  # outside the guarded block the usual rules hold
        sieve.compile('require "ihave";\nif ihave "fileinto" { stop; }\nx_unknown_command;')


def test_error_is_a_runtime_error() -> None:
    script = 'require ["ihave"];\nif not ihave "x-no-such-extension" { stop; }\nerror "not reached";\n'
    assert boxes(script) == ["INBOX"]
    with pytest.raises(SieveRuntimeError, match="this server lacks x-feature"):
        sieve.run(sieve.compile('require "ihave";\nif not ihave "x-feature" { error "this server lacks x-feature"; }'),
                  view())


def test_announced() -> None:
    assert {"environment", "ihave"} <= set(sieve.EXTENSIONS)


DUP = ('require ["duplicate", "fileinto"];\n'
       'if duplicate { fileinto "Dups"; }\n'
       'if duplicate :handle "subj" :header "subject" :seconds 60 { fileinto "SameSubject"; }\n')


def run_dup(script: str, seen: set[str], head: bytes = HEAD) -> tuple[list[str], sieve.Outcome]:
    msg = MessageView(tuple(sieve.header_fields(head)), "a@remote.test", "bob@example.test", len(head),
                      duplicate=lambda key: key in seen)
    out = sieve.run(sieve.compile(script), msg)
    return [t.mailbox for t in out.targets], out


def test_duplicate_by_message_id_and_header() -> None:
    head = b"Message-ID: <1@remote.test>\r\n" + HEAD
    seen: set[str] = set()
    got, out = run_dup(DUP, seen, head)
    assert got == ["INBOX"]
    assert [(s, last, was) for _, s, last, was in out.duplicates] == [(86400, False, False), (60, False, False)]
    seen |= {k for k, *_ in out.duplicates}  # what the delivery records once the run completed
    got, _ = run_dup(DUP, seen, head)
    assert got == ["Dups", "SameSubject"]
    # another Message-ID, the same subject
    got, _ = run_dup(DUP, seen, b"Message-ID: <2@remote.test>\r\n" + HEAD)
    assert got == ["SameSubject"]
    # no Message-ID: false, nothing tracked (RFC 7352 §3.1)
    got, out = run_dup('require ["duplicate", "fileinto"];\nif duplicate { fileinto "Dups"; }', seen)
    assert got == ["INBOX"] and out.duplicates == ()


def test_duplicate_uniqueid_with_variables_and_limits() -> None:
    script = ('require ["duplicate", "variables", "fileinto"];\n'
              'if header :matches "subject" "*" { set "s" "${1}"; }\n'
              'if duplicate :uniqueid "${s}" :seconds 99999999 :last { fileinto "Again"; }\n')
    got, out = run_dup(script, set())
    assert got == ["INBOX"]
    ((key, seconds, last, seen),) = out.duplicates
    assert seconds == 7 * 86400 and last and not seen  # :seconds capped (RFC 7352 §3.4)
    got, _ = run_dup(script, {key})
    assert got == ["Again"]
    with pytest.raises(SieveError, match="exclude"):
        sieve.compile('require "duplicate";\nif duplicate :header "x" :uniqueid "y" { stop; }')
    with pytest.raises(SieveError, match='require "duplicate"'):
        sieve.compile("if duplicate { stop; }")
