"""RFC 5703: foreverypart and break, the :mime tests (header, address, exists; :anychild and the
MIME-OPTS), extracttext; the RFC's examples, compile errors, the bound on parts visited, and a hypothesis
fuzz of the new syntax (the compiler raises SieveError only)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_extensions import compiles_or_fails_cleanly

from mailsrv import sieve
from mailsrv.sieve import MessageView, SieveError, SieveRuntimeError
from mailsrv.sieve.mimeparts import MAX_PARTS_VISITED

PDF = base64.encodebytes(b"%PDF-1.4 " + b"x" * 120_000)
MSG = (b"From: Alice <alice@example.org>\r\n"
       b"To: bob@example.com\r\n"
       b"Subject: the quarterly report\r\n"
       b"MIME-Version: 1.0\r\n"
       b'Content-Type: multipart/mixed; boundary="outer"\r\n'
       b"\r\n"
       b"--outer\r\n"
       b'Content-Type: multipart/alternative; boundary="inner"\r\n'
       b"\r\n"
       b"--inner\r\n"
       b"Content-Type: text/plain; charset=utf-8\r\n"
       b"Content-Transfer-Encoding: quoted-printable\r\n"
       b"\r\n"
       b"Caf=C3=A9 numbers are in the attachment.\r\n"
       b"--inner\r\n"
       b"Content-Type: text/html; charset=us-ascii\r\n"
       b"\r\n"
       b"<p>Cafe <b>numbers</b></p>\r\n"
       b"--inner--\r\n"
       b"--outer\r\n"
       b'Content-Type: application/pdf; name="q3.pdf"\r\n'
       b"Content-Disposition: attachment;\r\n filename*=utf-8''important%20report.pdf\r\n"
       b"Content-Transfer-Encoding: base64\r\n"
       b"Reply-To: Carol <carol@example.net>\r\n"
       b"\r\n" + PDF.replace(b"\n", b"\r\n") + b"--outer--\r\n")


def view(raw: bytes = MSG) -> MessageView:
    return MessageView(tuple(sieve.header_fields(raw)), "alice@example.org", "bob@example.com", len(raw), raw)


def run(script: str, raw: bytes = MSG) -> sieve.Outcome:
    return sieve.run(sieve.compile(script), view(raw))


def boxes(script: str, raw: bytes = MSG) -> list[str]:
    return [t.mailbox for t in run(script, raw).targets]


def test_rfc_example_1_files_a_large_important_pdf() -> None:
    # RFC 5703 §9.1 (the size test as a number)
    script = '''require ["mime", "foreverypart", "fileinto"];
foreverypart {
    if allof (header :mime :param "filename" :contains "Content-Disposition" "important",
              header :mime :subtype "Content-Type" "pdf",
              size :over 100K) {
        fileinto "INBOX.important";
        break;
    }
}'''
    assert boxes(script) == ["INBOX.important"]
    small = MSG.replace(PDF.replace(b"\n", b"\r\n"), b"JVBERi0xLjQK\r\n")
    assert boxes(script, small) == ["INBOX"]


def test_the_loop_visits_every_part_depth_first_and_nested_loops_the_children() -> None:
    script = '''require ["mime", "foreverypart", "variables", "fileinto"];
set "seen" "";
foreverypart {
    if header :mime :contenttype :matches "Content-Type" "*" { set "seen" "${seen} ${1}"; }
}
fileinto "${seen}";'''
    assert boxes(script) == [" multipart/mixed multipart/alternative text/plain text/html application/pdf"]
    nested = '''require ["mime", "foreverypart", "variables", "fileinto"];
set "seen" "";
foreverypart :name "outer" {
    if header :mime :subtype "Content-Type" "alternative" {
        foreverypart { if header :mime :subtype :matches "Content-Type" "*" { set "seen" "${seen} ${1}"; } }
    }
}
fileinto "${seen}";'''
    assert boxes(nested) == [" plain html"]  # only within the part the outer loop is at


def test_break_ends_the_named_loop() -> None:
    script = '''require ["mime", "foreverypart", "variables", "fileinto"];
set "n" "";
foreverypart :name "all" {
    set "n" "${n}o";
    foreverypart {
        set "n" "${n}i";
        if header :mime :type "Content-Type" "text" { break :name "all"; }
    }
}
fileinto "${n}";'''
    # mixed (o), its parts: alternative (i), plain (i: text, ends both loops)
    assert boxes(script) == ["oii"]
    plain = script.replace(' :name "all";', ";")
    # break ends the inner loop only: each outer part (mixed, alternative, plain, html, pdf) walks the
    # parts within it until a text one
    assert boxes(plain) == ["oii" + "oi" + "o" + "o" + "o"]


def test_mime_tests_outside_a_loop_read_the_message_or_any_part() -> None:
    assert boxes('require ["mime", "fileinto"]; if header :mime :type "Content-Type" "multipart" '
                 '{ fileinto "a"; }') == ["a"]
    assert boxes('require ["mime", "fileinto"]; if header :mime :anychild :contenttype "Content-Type" '
                 '"application/pdf" { fileinto "b"; }') == ["b"]
    assert boxes('require ["mime", "fileinto"]; if header :mime :contenttype "Content-Type" '
                 '"application/pdf" { fileinto "c"; }') == ["INBOX"]  # not the message's own type
    assert boxes('require ["mime", "fileinto"]; if header :mime :anychild :param ["name", "charset"] '
                 '"Content-Type" "q3.pdf" { fileinto "d"; }') == ["d"]
    assert boxes('require ["mime", "fileinto"]; if address :mime :anychild :domain "Reply-To" '
                 '"example.net" { fileinto "e"; }') == ["e"]
    assert boxes('require ["mime", "fileinto"]; if address :mime :domain "Reply-To" "example.net" '
                 '{ fileinto "f"; }') == ["INBOX"]
    assert boxes('require ["mime", "fileinto"]; if exists :mime :anychild ["Content-Disposition", '
                 '"Reply-To"] { fileinto "g"; }') == ["g"]
    assert boxes('require ["mime", "fileinto"]; if exists :mime ["Content-Disposition"] '
                 '{ fileinto "h"; }') == ["INBOX"]
    # RFC 2231 parameters are decoded
    assert boxes('require ["mime", "fileinto"]; if header :mime :anychild :param "filename" '
                 '"Content-Disposition" "important report.pdf" { fileinto "i"; }') == ["i"]


def test_extracttext_sets_the_current_parts_text() -> None:
    script = '''require ["mime", "foreverypart", "variables", "extracttext", "fileinto"];
foreverypart {
    if header :mime :contenttype "Content-Type" "text/plain" {
        extracttext :first 4 "start";
        extracttext :upper "all";
    }
    if header :mime :contenttype "Content-Type" "text/html" { extracttext "html"; }
    if header :mime :type "Content-Type" "application" { extracttext "pdf"; }
}
fileinto "${start}|${html}|${pdf}|";
if string :contains "${all}" "CAFÉ NUMBERS" { fileinto "upper"; }'''
    assert boxes(script) == ["Café|Cafe numbers||", "upper"]  # decoded QP and UTF-8; HTML as text; a PDF: ""


@pytest.mark.parametrize(("script", "error"), [
    ('require "foreverypart"; break;', "not inside a foreverypart loop"),
    ('require "foreverypart"; foreverypart :name "a" { break :name "b"; }', 'named "b"'),
    ('require ["foreverypart", "variables", "extracttext"]; extracttext "x";', "only inside a foreverypart"),
    ('require ["foreverypart", "extracttext"]; foreverypart { extracttext "x"; }', 'needs require "variables"'),
    ('foreverypart { stop; }', 'needs require "foreverypart"'),
    ('require "fileinto"; if header :mime "subject" "x" { stop; }', "unknown tagged argument :mime"),
    ('require "mime"; if header :anychild "subject" "x" { stop; }', ":anychild needs :mime"),
    ('require "mime"; if header :type "content-type" "x" { stop; }', ":type needs :mime"),
    ('require "mime"; if header :mime :type :subtype "content-type" "x" { stop; }', "exclude each other"),
    ('require "mime"; if exists :mime :type "content-type" { stop; }', "unknown tagged argument :type"),
    ('require "foreverypart"; foreverypart;', "needs a block"),
])
def test_compile_errors(script: str, error: str) -> None:
    with pytest.raises(SieveError, match=error):
        sieve.compile(script)


def test_parts_visited_are_bounded() -> None:
    parts = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n" for _ in range(40))
    raw = (b"Subject: many\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" + parts + b"--b--\r\n")
    script = 'require "foreverypart"; foreverypart { foreverypart { stop; } }'
    assert boxes(script, raw) == ["INBOX"]  # stop ends the run at the first inner part
    loops = "require \"foreverypart\";\n" + "foreverypart { }\n" * (MAX_PARTS_VISITED // 41 + 1)
    with pytest.raises(SieveRuntimeError, match="MIME parts visited"):
        run(loops, raw)


def test_without_the_message_bytes_the_loop_runs_no_part() -> None:
    msg = MessageView(tuple(sieve.header_fields(MSG)), "a@example.org", "b@example.com", len(MSG))
    out = sieve.run(sieve.compile('require ["foreverypart", "fileinto"]; foreverypart { fileinto "x"; }'), msg)
    assert [t.mailbox for t in out.targets] == ["INBOX"]


_PIECES = ['require ["mime", "foreverypart", "extracttext", "variables", "fileinto"];', "foreverypart", "break",
           "extracttext", ":name", '"a"', '"b"', ":first", "3", ":upper", "header", "address", "exists", ":mime",
           ":anychild", ":type", ":subtype", ":contenttype", ":param", '["filename", "name"]', '"Content-Type"',
           '"text"', "if", "{", "}", ";", "[", "]", ",", "stop;", "(", ")", "anyof", "not", ":domain", '"x"']


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_PIECES), st.sampled_from([" ", "\n"])), max_size=40)
       .map(lambda parts: "".join(piece + sep for piece, sep in parts)))
def test_new_syntax_never_crashes_the_compiler(text: str) -> None:
    compiles_or_fails_cleanly(text, view())


_MIME_SCRIPT = sieve.compile('''require ["mime", "foreverypart", "extracttext", "variables", "fileinto"];
foreverypart :name "p" {
    if anyof (header :mime :param ["filename", "name", "charset"] :matches "Content-Type" "*",
              address :mime :anychild :domain "From" "x", exists :mime :anychild "Content-ID") {
        extracttext :first 10 "t";
    }
    foreverypart { if header :mime :contenttype "Content-Type" "text/plain" { break :name "p"; } }
}''')
_MIME_PIECES = [b"Content-Type: multipart/mixed; boundary=b\r\n", b"Content-Type: text/plain; charset=utf-8\r\n",
                b"Content-Type: message/rfc822\r\n", b"Content-Type: text/html; name*=utf-8''%e2%82\r\n",
                b"Content-Transfer-Encoding: base64\r\n", b"Content-Transfer-Encoding: quoted-printable\r\n",
                b"From: a@x\r\n", b"Content-ID: <i>\r\n", b"\r\n", b"--b\r\n", b"--b--\r\n", b"=C3=A9=\r\n",
                b"4pyTIMOgIGxh\r\n", b"<p>x</p>\r\n", b"Content-Type: ;;;\r\n", b"\xff\xfe\r\n"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_MIME_PIECES), max_size=60).map(b"".join))
def test_hostile_mime_structure_never_crashes_a_run(raw: bytes) -> None:
    """Any message (broken boundaries, bad encodings, nested messages): the run ends, or fails with
    SieveRuntimeError (the message is kept), nothing else."""
    try:
        sieve.run(_MIME_SCRIPT, view(raw))
    except SieveRuntimeError:
        pass
