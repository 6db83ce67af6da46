"""RFC 5703 §5 replace and §6 enclose: the message later actions deliver (made by the delivery's own
writer, mailsrv.delivery.sieve._write_edited, into a real file), what later tests see, compile and runtime
errors, and a hypothesis check that what they make parses as MIME with the text where it belongs."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_mimeloop import _MIME_PIECES, MSG, run, view

from mailsrv import mime, sieve
from mailsrv.delivery.sieve import _write_edited
from mailsrv.mime.body import part_text
from mailsrv.sieve import SieveError, SieveRuntimeError
from mailsrv.sieve.editheader import apply_edits, body_of, head_end
from mailsrv.sieve.mimeedit import MAX_TEXT

EXE = (b"From: Mallory <m@evil.example>\r\nTo: bob@example.com\r\nSubject: invoice\r\nMIME-Version: 1.0\r\n"
       b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
       b"--XX\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=a.exe\r\n"
       b"\r\nMZ-one\r\n--XX\r\nContent-Type: application/octet-stream\r\n"
       b"Content-Disposition: attachment; filename=b.scr\r\n\r\nMZ-two\r\n--XX--\r\n")
# RFC 5703 §5's example, with fileinto after it
REPLACE_EXE = '''require ["foreverypart", "mime", "replace", "fileinto"];
foreverypart {
    if header :mime :param "filename" :matches "Content-Disposition" ["*.com", "*.exe", "*.vbs", "*.scr",
                                                                        "*.pif", "*.hta", "*.bat", "*.zip"] {
        replace "Executable attachment removed by user filter";
    }
}
fileinto "Cleaned";
'''


def delivered(tmp_path: Path, raw: bytes, o: sieve.Outcome, box: str) -> bytes:
    """The copy ``box`` gets, as delivery writes it (its edits only)."""
    t = next(t for t in o.targets if t.mailbox == box)
    path = tmp_path / f"copy-{box}"
    assert _write_edited(path, tmp_path / "unused", raw, o.edits[:t.edits] if t.edits is not None else o.edits)
    return path.read_bytes()


def texts(raw: bytes) -> list[str]:
    s = mime.parse(raw)
    return [part_text(raw, p, 1 << 20).strip() for p in s.parts() if p.type == "text" and not p.is_multipart]


def test_rfc_example_replaces_every_executable_attachment(tmp_path: Path) -> None:
    o = run(REPLACE_EXE, EXE)
    out = delivered(tmp_path, EXE, o, "Cleaned")
    assert b"MZ-" not in out
    assert texts(out) == ["see attached", "Executable attachment removed by user filter",
                          "Executable attachment removed by user filter"]
    assert out.startswith(EXE[:EXE.index(b"\r\n\r\n")])  # the header as it came
    assert [t.mailbox for t in o.targets] == ["Cleaned"]


def test_a_copy_filed_before_the_replace_is_the_original(tmp_path: Path) -> None:
    o = run('''require ["replace", "fileinto", "copy"];
fileinto :copy "Before"; replace :subject "cleaned" "gone"; fileinto "After";''', EXE)
    assert delivered(tmp_path, EXE, o, "Before") == EXE
    after = delivered(tmp_path, EXE, o, "After")
    assert texts(after) == ["gone"]
    assert mime.parse(after).root.type == "text"
    fields = dict(sieve.header_fields(after))
    assert fields["subject"] == b" cleaned"
    assert b"multipart" not in after  # the message's Content-Type went with its body


def test_replace_mime_and_from_outside_a_loop(tmp_path: Path) -> None:
    o = run('''require ["replace", "fileinto", "editheader"];
addheader "X-Before" "1";
replace :mime :from "Filter <filter@example.com>" "Content-Type: text/html; charset=us-ascii\r\n\r\n<p>hi</p>";
if address :is "from" "filter@example.com" { fileinto "New"; }''', EXE)
    out = delivered(tmp_path, EXE, o, "New")  # the test after the replace saw the new From
    s = mime.parse(out)
    assert (s.root.type, s.root.subtype) == ("text", "html")
    assert out.endswith(b"\r\n\r\n<p>hi</p>")
    f = [n for n, _ in sieve.header_fields(out)]
    assert f.count("from") == 1 and "x-before" in f and "subject" in f


def test_enclose_wraps_the_message_and_later_tests_see_the_new_one(tmp_path: Path) -> None:
    o = run('''require ["enclose", "fileinto"];
enclose :subject "Suspected spam" :headers ["X-Filtered: yes", "Reply-To: <admin@example.com>"]
    "This message looked like spam: it is attached.";
if header :is "subject" "Suspected spam" { fileinto "Spam"; }''', EXE)
    out = delivered(tmp_path, EXE, o, "Spam")
    s = mime.parse(out)
    assert (s.root.type, s.root.subtype) == ("multipart", "mixed")
    parts = [p for p in s.parts() if p.section in ("1", "2")]
    assert [(p.type, p.subtype) for p in parts][:2] == [("text", "plain"), ("message", "rfc822")]
    assert part_text(out, parts[0], 1000).strip() == "This message looked like spam: it is attached."
    inner = next(p for p in s.parts() if p.is_message and p.section == "2")
    assert out[inner.header_start:].startswith(EXE)  # the original, whole, as the attached message
    fields = dict(sieve.header_fields(out))
    assert fields["x-filtered"] == b" yes" and fields["subject"] == b" Suspected spam"
    assert fields["from"] == b" Mallory <m@evil.example>"  # copied from the enclosed message
    assert fields["to"] == b" bob@example.com"


def test_a_second_enclose_replaces_the_first(tmp_path: Path) -> None:
    o = run('''require ["enclose", "fileinto"];
enclose :subject "one" "first"; enclose :subject "two" "second"; fileinto "E";''', EXE)
    out = delivered(tmp_path, EXE, o, "E")
    assert b"first" not in out and out.count(b"Content-Type: message/rfc822") == 1
    assert texts(out)[0] == "second"
    assert dict(sieve.header_fields(out))["subject"] == b" two"


def test_loops_after_a_replace_walk_the_new_parts() -> None:
    o = run(REPLACE_EXE + '''foreverypart { if header :mime :param "filename" :matches
        "Content-Disposition" "*.exe" { fileinto "StillExe"; } }''', EXE)
    assert [t.mailbox for t in o.targets] == ["Cleaned"]  # the new parts: no .exe left
    o = run(REPLACE_EXE.replace('fileinto "Cleaned";', 'foreverypart { if header :mime :param "filename"'
                                ' :matches "Content-Disposition" "*.exe" { fileinto "Seen"; } }'), EXE)
    assert "Seen" not in [t.mailbox for t in o.targets]


@pytest.mark.parametrize(("script", "error"), [
    ('require "replace"; replace;', "expects 1 argument"),
    ('require "replace"; replace :subject ["a", "b"] "x";', "not a list"),
    ('require "replace"; replace :from "not an address" "x";', "not a mail address"),
    ('require "replace"; replace :mime :mime "x";', "given twice"),
    ('require "replace"; replace :headers ["a: b"] "x";', "unknown tagged argument"),
    ('replace "x";', "require"),
    ('require "enclose"; enclose :headers ["Received: x"] "t";', "not a field we may add"),
    ('require "enclose"; enclose :headers ["no colon"] "t";', "not a field we may add"),
    ('require "enclose"; enclose :from "a@b.c" "t";', "unknown tagged argument"),
    ('require ["enclose", "foreverypart"]; foreverypart { enclose "t"; }', "not inside a foreverypart"),
    ('enclose "t";', "require"),
])
def test_compile_errors(script: str, error: str) -> None:
    with pytest.raises(SieveError, match=error):
        sieve.compile(script)


def test_runtime_bounds_keep_the_message(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SieveRuntimeError, match="boundary line"):  # the part would end the multipart
        run('require ["replace", "foreverypart"]; foreverypart { replace "x\r\n--XX--\r\nafter"; }', EXE)
    monkeypatch.setattr("mailsrv.sieve.interp.MAX_TEXT", 10)  # a script cannot hold a text past MAX_TEXT
    with pytest.raises(SieveRuntimeError, match="longer than 10"):
        run('require ["replace", "variables"]; set "a" "12345678"; replace "${a}${a}";', EXE)
    assert MAX_TEXT >= 64 * 1024
    with pytest.raises(SieveRuntimeError, match="not a mail address"):
        run('require ["replace", "variables"]; set "f" "nobody"; replace :from "${f}" "x";', EXE)
    with pytest.raises(SieveRuntimeError, match="not a field"):
        run('require ["enclose", "variables"]; set "h" "Return-Path"; enclose :headers "${h}: <x@y>" "t";', EXE)
    big = view(EXE)
    big = sieve.MessageView(big.fields, big.envelope_from, big.envelope_to, 5 << 20, EXE)  # only its start given
    with pytest.raises(SieveRuntimeError, match="too large"):
        sieve.run(sieve.compile('require "enclose"; enclose "t";'), big)


def test_the_rfc_5703_corpus_message_replaced_part_by_part(tmp_path: Path) -> None:
    o = run('''require ["foreverypart", "mime", "replace"];
foreverypart { if header :mime :type "Content-Type" "application" { replace "no pdf"; } }''')
    out = delivered(tmp_path, MSG, o, "INBOX")
    assert texts(out)[-1] == "no pdf" and b"JVBERi0" not in out


_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\x00"), max_size=200)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(_MIME_PIECES), max_size=40).map(b"".join), _TEXT, st.booleans())
def test_what_replace_and_enclose_make_parses_as_mime(body: bytes, text: str, enclose: bool) -> None:
    """Any message: the copy parses; an enclosure is multipart/mixed with the text first and the
    message as message/rfc822; a replaced message is the text."""
    raw = b"From: a@x.example\r\nSubject: s\r\n" + body + b"\r\n\r\n"
    script = 'require "enclose"; enclose "${t}";' if enclose else 'require "replace"; replace "${t}";'
    script = script.replace('"${t}"', '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"')
    o = sieve.run(sieve.compile(script), view(raw))
    cut = head_end(raw)
    out = apply_edits(raw[:cut], o.edits) + (body_of(o.edits) or b"")
    s = mime.parse(out)
    expect = "\r\n".join(text.replace("\r\n", "\n").replace("\r", "\n").split("\n")).strip()
    if enclose:
        assert (s.root.type, s.root.subtype) == ("multipart", "mixed")
        first = next(p for p in s.parts() if p.section == "1")
        assert part_text(out, first, 1 << 20).strip() == expect
        assert any(p.is_message and p.section == "2" for p in s.parts())
    else:
        assert s.root.type == "text"
        assert part_text(out, s.root, 1 << 20).strip() == expect
