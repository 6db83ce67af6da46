"""Sieve extensions beyond the base language: regex (draft-ietf-sieve-regex), date and index (RFC 5260),
include (RFC 6609), enotify with mailto (RFC 5435, 5436), editheader (RFC 5293); the RFCs' examples where they give some, and a
hypothesis fuzz of their syntax."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from email.header import decode_header, make_header
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailsrv import sieve
from mailsrv.sieve import MessageView, SieveError, SieveRuntimeError
from mailsrv.sieve.editheader import apply_edits
from mailsrv.sieve.include import MAX_INCLUDES, resolve
from mailsrv.sieve.interp import MAX_INCLUDE_DEPTH
from mailsrv.sieve.match import MAX_REGEX
from mailsrv.sieve.notify import MAX_NOTIFY_RECIPIENTS, compose_notification, parse_mailto

HEAD = (b"Received: from a.example by mx.example; Tue, 1 Apr 2025 09:00:00 +0000\r\n"
        b"Received: from b.example by a.example; Mon, 31 Mar 2025 23:59:58 -0200\r\n"
        b"Date: Mon, 31 Mar 2025 21:30:05 -0200\r\n"
        b"From: Alice <alice@example.org>\r\n"
        b"To: bob@example.com\r\n"
        b"To: carol@example.net\r\n"
        b"Subject: [ACME-users] release 2.0 is out\r\n"
        b"X-Long: " + b"a" * 16000 + b"\r\n"
        b"\r\nbody\r\n")


def view(head: bytes = HEAD, now: float = 0.0) -> MessageView:
    return MessageView(tuple(sieve.header_fields(head)), "alice@example.org", "bob@example.com", len(head), now=now)


def boxes(script: str, msg: MessageView | None = None) -> list[str]:
    return [t.mailbox for t in sieve.run(sieve.compile(script), msg or view()).targets]


# --- regex ---------------------------------------------------------------------------------------


def test_regex_matches_and_captures() -> None:
    script = r'''require ["regex", "variables", "fileinto"];
if header :regex "subject" "^\\[([a-z-]+)\\] (release|beta) ([0-9.]+)" {
    fileinto "lists.${1}.${2}-${3}";
}'''
    assert boxes(script) == ["lists.ACME-users.release-2.0"]  # i;ascii-casemap: any case; captures as written
    octet = script.replace(":regex", ':comparator "i;octet" :regex')
    assert boxes(octet) == ["INBOX"]  # [a-z] does not take "ACME" then
    assert boxes('require ["regex", "fileinto"]; if address :regex :domain "to" "^example\\\\.(com|org)$" '
                 '{ fileinto "x"; }') == ["x"]


def test_regex_is_linear_on_hostile_patterns() -> None:
    t = time.perf_counter()
    for pattern in ("(a+)+b", "(a|aa)*c", "(a*)*$b", "a*a*a*a*a*a*b"):
        assert boxes(f'require ["regex", "fileinto"]; if header :regex "x-long" "{pattern}" {{ fileinto "y"; }}') \
            == ["INBOX"]
    assert time.perf_counter() - t < 5  # a backtracking engine takes ages on 16 000 "a"s; this is far under


def test_regex_from_a_variable_is_checked_at_run_time() -> None:
    script = 'require ["regex", "variables"]; set "p" "(a"; if header :regex "subject" "${p}" { discard; }'
    with pytest.raises(SieveRuntimeError, match="bad regex"):
        sieve.run(sieve.compile(script), view())


# --- date, currentdate, index ------------------------------------------------------------------


@pytest.mark.parametrize(("test", "expected"), [
    ('date :originalzone "date" "date" "2025-03-31"', True),
    ('date :zone "+0000" "date" "date" "2025-03-31"', True),  # 23:30:05 UTC: still the 31st
    ('date :zone "+0000" "date" "time" "23:30:05"', True),
    ('date :zone "+0100" "date" "date" "2025-04-01"', True),
    ('date :zone "+0100" "date" "weekday" "2"', True),  # Tuesday
    ('date :originalzone "date" "zone" "-0200"', True),
    ('date :zone "+0000" "date" "iso8601" "2025-03-31T23:30:05+00:00"', True),
    ('date :zone "+0000" "date" "julian" "60765"', True),
    ('date :zone "+0000" "date" "std11" "Mon, 31 Mar 2025 23:30:05 +0000"', True),
    ('date :zone "+0000" :value "ge" "date" "year" "2025"', True),
    ('date :zone "+0000" "received" "hour" "09"', True),  # every Received field: the first one is 09
    ('date :zone "+0000" :index 2 "received" "date" "2025-04-01"', True),  # 23:59:58 -0200 = 01:59:58 UTC
    ('date :zone "+0000" :index 1 :last "received" "hour" "09"', False),
    ('date :zone "+0000" :index 1 :last "received" "hour" "01"', True),
    ('date "subject" "year" "2025"', False),  # not a date: no match
    ('currentdate :zone "+0000" "date" "2026-01-02"', True),
    ('currentdate :zone "-0500" "date" "2026-01-01"', True),
    ('header :index 2 "to" "carol@example.net"', True),
    ('header :index 1 "to" "carol@example.net"', False),
    ('header :index 1 :last :contains "received" "b.example"', True),
    ('address :index 2 :domain "to" "example.net"', True),
    ('address :index 1 :domain "to" "example.net"', False),
    ('header :index 9 "to" "bob@example.com"', False),
])
def test_date_and_index(test: str, expected: bool) -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
    script = f'require ["date", "index", "relational", "fileinto"]; if {test} {{ fileinto "hit"; }}'
    assert (boxes(script, view(now=now)) == ["hit"]) is expected


# --- the parser on the new syntax never raises anything but SieveError ---------------------------------

_PIECES = ['require ["regex", "date", "index", "include", "enotify", "variables", "relational"];', "if", "header",
           "date", "currentdate", ":regex", ":index", ":last", ":zone", ":originalzone", '"+0100"', '"date"',
           '"(a+)+"', '"[z-a]"', '"${1}"', "1", "{", "}", ";", "[", "]", ",", "stop;", "include", ":global",
           ":personal", ":once", ":optional", "return;", "global", "notify", ":message", '"mailto:x@y.test"',
           "valid_notify_method", "notify_method_capability", ":importance", '"1"', "(", ")", "anyof", "not"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_PIECES), st.sampled_from([" ", "\n"])), max_size=40)
       .map(lambda parts: "".join(piece + sep for piece, sep in parts)))
def test_new_syntax_never_crashes_the_compiler(text: str) -> None:
    compiles_or_fails_cleanly(text, view())


def compiles_or_fails_cleanly(text: str, msg: MessageView) -> None:
    """``text`` compiles and runs on ``msg``, or fails with SieveError (naming one of its lines) or
    SieveRuntimeError; nothing else (the fuzz tests of the new syntax)."""
    try:
        script = sieve.compile(text)
    except SieveError as e:
        # the error names a line of the script (pieces are split over lines at random)
        assert 1 <= e.line <= text.count("\n") + 1, (e.line, text)
        return
    try:
        sieve.run(script, msg)
    except SieveRuntimeError:
        pass


# --- include (RFC 6609) ------------------------------------------------------------------------------



def included(main: str, scripts: dict[tuple[str, str], str], msg: MessageView | None = None) -> sieve.Outcome:
    return sieve.run(resolve(sieve.compile(main), lambda loc, name: scripts.get((loc, name))), msg or view())


def test_include_rfc6609_example() -> None:
    # RFC 6609 §3.2's shape: a personal script that runs a global spam filter, then its own rules
    spam = 'require ["fileinto"]; if header :contains "subject" "release" { fileinto "Spam"; stop; }'
    main = 'require ["include"]; include :global "spam_tests"; include :personal "my_rules";'
    rules = 'require "fileinto"; fileinto "Mine";'
    got = included(main, {("global", "spam_tests"): spam, ("personal", "my_rules"): rules})
    assert [t.mailbox for t in got.targets] == ["Spam"]  # stop in an included script ends everything
    spam2 = spam.replace("release", "nothing-like-this")
    got = included(main, {("global", "spam_tests"): spam2, ("personal", "my_rules"): rules})
    assert [t.mailbox for t in got.targets] == ["Mine"]


def test_include_return_once_optional_and_missing() -> None:
    scripts = {("personal", "a"): 'require ["include", "fileinto"]; fileinto "A1"; return; fileinto "A2";'}
    main = 'require ["include", "fileinto"]; include "a"; include :once "a"; include :optional "none"; fileinto "M";'
    got = included(main, scripts)
    assert [t.mailbox for t in got.targets] == ["A1", "M"]
    assert [t.mailbox for t in included('require "include"; return; discard;', {}).targets] == ["INBOX"]
    with pytest.raises(SieveRuntimeError, match="no personal script 'none'"):
        included('require "include"; include "none";', {})


def test_include_variables_are_local_but_globals() -> None:
    inner = 'require ["include", "variables"]; global "folder"; set "folder" "Shared"; set "local" "x";'
    main = ('require ["include", "variables", "fileinto"]; global "folder"; set "local" "Own"; include "inner";'
            ' fileinto "${folder}-${local}";')
    assert [t.mailbox for t in included(main, {("personal", "inner"): inner}).targets] == ["Shared-Own"]


def test_include_loops_and_depth_are_runtime_errors() -> None:
    loop = {("personal", "a"): 'require "include"; include "b";', ("personal", "b"): 'require "include"; include "a";'}
    with pytest.raises(SieveRuntimeError, match="includes itself"):
        included('require "include"; include "a";', loop)
    once = {("personal", "a"): 'require "include"; include :once "a"; keep;'}  # :once: no loop
    assert [t.mailbox for t in included('require "include"; include "a";', once).targets] == ["INBOX"]
    chain = {("personal", f"s{i}"): f'require "include"; include "s{i + 1}";' for i in range(MAX_INCLUDE_DEPTH + 2)}
    with pytest.raises(SieveRuntimeError, match="nested more than"):
        included('require "include"; include "s0";', chain)


def test_include_bounds_and_errors() -> None:
    many = {("personal", f"s{i}"): f'require "include"; include "s{i + 1}";' for i in range(MAX_INCLUDES + 2)}
    with pytest.raises(SieveError, match="more than"):
        resolve(sieve.compile('require "include"; include "s0";'), lambda loc, n: many.get((loc, n)))
    with pytest.raises(SieveError, match="personal script 'bad': "):
        resolve(sieve.compile('require "include"; include "bad";'), lambda loc, n: "frobnicate;")
    for script, what in (('include "x";', 'needs require "include"'),
                         ('require "include"; include :global :personal "x";', "exclude each other"),
                         ('require "include"; include "a/b";', "not a script name"),
                         ('require ["include", "variables"]; include "${x}";', "cannot hold variables"),
                         ('require "include"; global "x";', 'needs require "variables"')):
        with pytest.raises(SieveError, match=what):
            sieve.compile(script)


async def test_delivery_reads_included_scripts_and_sees_their_changes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from types import SimpleNamespace

    from mailsrv.config import SieveConfig
    from mailsrv.delivery.sieve import SieveFilter
    from mailsrv.sieve.scripts import put_script, set_active
    from mailsrv.store import account_root

    acct: Any = SimpleNamespace(id=7, address="u@example.test", store="")  # what script() reads of an Account
    root = account_root(tmp_path, acct.id, acct.store)
    root.mkdir(parents=True)
    put_script(root, "main", 'require "include"; include :global "g"; include :optional "mine";')
    set_active(root, "main")
    (tmp_path / "sieve-global").mkdir()
    (tmp_path / "sieve-global" / "g.sieve").write_text('require "fileinto"; fileinto "G";')
    filt = SieveFilter(SieveConfig(), tmp_path, check_interval=0)
    script, _ = await filt.script(acct)
    assert script is not None and [t.mailbox for t in sieve.run(script, view()).targets] == ["G"]
    put_script(root, "mine", 'require "fileinto"; fileinto "Mine";')  # an included script changes
    script, _ = await filt.script(acct)
    assert script is not None and [t.mailbox for t in sieve.run(script, view()).targets] == ["G", "Mine"]
    assert filt.compiled == 2


# --- enotify with mailto (RFC 5435, RFC 5436) ------------------------------------------------------------



def test_mailto_uri() -> None:
    u = parse_mailto("mailto:a@x.test,b@x.test?cc=c@x.test&subject=Hi%20there&body=text&from=evil@x.test")
    assert u is not None and u.to == ("a@x.test", "b@x.test") and u.cc == ("c@x.test",)
    assert u.subject == "Hi there" and u.body == "text"  # From (and any other field) is ignored
    for bad in ("http://x.test", "mailto:", "mailto:not-an-address",
                "mailto:" + ",".join(f"a{i}@x.test" for i in range(MAX_NOTIFY_RECIPIENTS + 1))):
        assert parse_mailto(bad) is None, bad
    raw = compose_notification(u, from_="me@x.test", message="line one\r\nBcc: injected", importance="3",
                               about_from="a", about_subject="s")
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert b"Auto-Submitted: auto-notified" in head and b"Importance: low" in head
    assert b"\r\nBcc:" not in head and b"Subject: Hi there" in head


def test_notify_run_semantics() -> None:
    script = ('require ["enotify", "variables"]; set :encodeurl "q" "a b&c/é";'
              ' notify :message "m" "mailto:me@x.test?subject=${q}"; notify :message "m" "mailto:me@x.test?subject=${q}";')
    o = sieve.run(sieve.compile(script), view())
    assert [n.method for n in o.notifications] == ["mailto:me@x.test?subject=a%20b%26c%2F%C3%A9"]  # once (§3.8)
    assert [t.mailbox for t in o.targets] == ["INBOX"]  # notify keeps the implicit keep
    many = 'require "enotify";' + "".join(f'notify "mailto:n{i}@x.test";' for i in range(6))
    with pytest.raises(SieveRuntimeError, match="notifications"):
        sieve.run(sieve.compile(many), view())
    with pytest.raises(SieveRuntimeError, match="not a usable mailto"):
        sieve.run(sieve.compile('require ["enotify", "variables"]; set "m" "xmpp:a@b"; notify "${m}";'), view())


@pytest.mark.parametrize(("test", "expected"), [
    ('valid_notify_method "mailto:a@x.test"', True),
    ('valid_notify_method ["mailto:a@x.test", "xmpp:a@x.test"]', False),
    ('notify_method_capability "mailto:a@x.test" "online" "maybe"', True),
    ('notify_method_capability "mailto:a@x.test" "online" "yes"', False),
    ('notify_method_capability "xmpp:a@x.test" "online" "maybe"', False),
])
def test_notify_tests(test: str, expected: bool) -> None:
    assert (boxes(f'require ["enotify", "fileinto"]; if {test} {{ fileinto "hit"; }}') == ["hit"]) is expected


# --- editheader (RFC 5293) -----------------------------------------------------------------------------

EDIT_HEAD = (b"Return-Path: <a@x.test>\r\nReceived: from x\r\nX-Spam: yes\r\n folded\r\nSubject: hi\r\n"
             b"X-Spam: no\r\nAuto-Submitted: no\r\n")


def edited(script: str) -> tuple[sieve.Outcome, bytes]:
    o = sieve.run(sieve.compile('require ["editheader", "variables", "fileinto"];' + script),
                  view(EDIT_HEAD + b"\r\nbody\r\n"))
    return o, apply_edits(EDIT_HEAD, o.edits)


def test_editheader_add_delete_and_later_tests_see_it() -> None:
    o, head = edited('deleteheader :contains "x-spam" "yes"; addheader "X-Tag" "café"; addheader :last "X-End" "e";'
                     ' if header :is "x-spam" "no" { if exists "x-tag" { fileinto "seen"; } }')
    assert [t.mailbox for t in o.targets] == ["seen"]
    lines = head.split(b"\r\n")
    assert lines[0] == b"Return-Path: <a@x.test>" and lines[1].startswith(b"X-Tag: =?utf-8?")  # first after it
    assert str(make_header(decode_header(lines[1][7:].decode()))) == "café"  # RFC 2047 (RFC 5293 §4)
    assert lines[2:] == [b"Received: from x", b"Subject: hi", b"X-Spam: no", b"Auto-Submitted: no", b"X-End: e", b""]


def test_editheader_index_and_protected_fields() -> None:
    _, head = edited('deleteheader :index 1 :last "x-spam"; deleteheader "received"; deleteheader "auto-submitted";'
                     ' addheader "Received" "forged"; addheader "Auto-Submitted" "auto-replied";')
    assert head == EDIT_HEAD.replace(b"X-Spam: no\r\n", b"")  # only the last X-Spam went
    _, head = edited('addheader "X-Inject" text:\na\nBcc: victim@x.test\n.\n;')
    assert b"\r\nBcc:" not in head and b"X-Inject: a Bcc: victim@x.test\r\n" in head


def test_editheader_counts_as_actions() -> None:
    with pytest.raises(SieveRuntimeError, match="actions"):
        edited("".join(f'addheader "X-{i}" "v";' for i in range(40)))


# --- compile errors of every extension above, with their message ----------------------------------------

@pytest.mark.parametrize(("script", "what"), [
    # regex
    ('if header :regex "subject" "a" { stop; }', 'needs require "regex"'),
    ('require "regex"; if header :regex "subject" "(a" { stop; }', "bad regex"),
    ('require "regex"; if header :regex "subject" "' + "a" * (MAX_REGEX + 1) + '" { stop; }', "longer than"),
    ('require "regex"; if header :regex "subject" "a{1000}{1000}" { stop; }', "bad regex"),
    ('require ["regex", "comparator-i;ascii-numeric"]; if header :regex :comparator "i;ascii-numeric" '
     '"subject" "1" { stop; }', "i;ascii-numeric"),
    ('require "regex"; if header :regex :is "subject" "a" { stop; }', "match type given twice"),
    # date, index
    ('if date "date" "year" "2025" { stop; }', 'needs require "date"'),
    ('require "date"; if date "date" "fortnight" "1" { stop; }', "unknown date part"),
    ('require "date"; if date :zone "0100" "date" "year" "2025" { stop; }', ":zone needs"),
    ('require "date"; if date :zone "+0100" :originalzone "date" "year" "1" { stop; }', "exclude each other"),
    ('require "date"; if currentdate :originalzone "year" "1" { stop; }', "unknown tagged argument"),
    ('require "date"; if header :index 1 "to" "x" { stop; }', "unknown tagged argument"),
    ('require "index"; if header :last "to" "x" { stop; }', ":last needs :index"),
    ('require "index"; if header :index 0 "to" "x" { stop; }', ":index needs a number"),
    # enotify
    ('notify "mailto:a@x.test";', 'needs require "enotify"'),
    ('require "enotify"; notify "xmpp:a@x.test";', "not a mailto URI"),
    ('require "enotify"; notify :importance "4" "mailto:a@x.test";', ":importance"),
    ('require "variables"; set :encodeurl "a" "b";', "unknown tagged argument"),
    # editheader
    ('addheader "X-A" "b";', 'needs require "editheader"'),
    ('require "editheader"; addheader "X A" "b";', "not a header field name"),
    ('require "editheader"; deleteheader :last "x-a";', ":last needs :index"),
    ('require "editheader"; addheader "X-A";', "expects 2 arguments"),
    # spamtest, spamtestplus, virustest (RFC 5235)
    ('if spamtest "1" { stop; }', 'require "spamtest"'),
    ('require "spamtest";\nif spamtest :percent "1" { stop; }', 'require "spamtestplus"'),
    ('if virustest "1" { stop; }', 'require "virustest"'),
    ('require "virustest";\nif virustest :percent "1" { stop; }', "unknown tagged argument :percent"),
    ('require "spamtest";\nif spamtest ["1", "2"] { stop; }', "not a list"),
])
def test_compile_errors(script: str, what: str) -> None:
    with pytest.raises(SieveError, match=what):
        sieve.compile(script)
