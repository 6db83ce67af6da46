"""Extraction of searchable text: RFC 2047 headers, transfer encodings, HTML, attachments, corpus."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroaring import BitMap
from search.searchbox import Box, open_index

from mailsrv._speedups import search_py
from mailsrv.search import Header, SearchService, Text, extract, matches
from mailsrv.search.extract import _base_subject_steps, base_subject, html_to_text


def msg(headers: str, body: bytes = b"hello\r\n") -> bytes:
    return headers.replace("\n", "\r\n").encode() + b"\r\n\r\n" + body


def test_rfc2047_subject_and_names() -> None:
    raw = msg(
        "From: =?gb2312?B?1cXOsA==?= <zhang@example.com>\n"
        "To: =?utf-8?Q?H=C3=A9l=C3=A8ne?= <h@example.org>\n"
        "Subject: =?UTF-8?B?56ys5LiJ5a2j5bqm5oql5ZGK5bey5Y+R6YCB?= =?utf-8?q?_Caf=C3=A9?="
    )
    d = extract(raw)
    assert d.text["subject"] == "第三季度报告已发送 café"
    assert d.text["from"] == "张伟 <zhang@example.com>"
    assert "hélène" in d.text["to"]
    assert d.from_addr == "zhang" and d.from_display == "张伟"
    assert matches(Text("subject", "季度报告"), d, None)
    assert matches(Text("subject", "CAFÉ"), d, None)
    assert not matches(Text("subject", "季报"), d, None)
    assert matches(Header("subject", "报告已"), d, None)


def test_transfer_encodings_html_and_attachment_names() -> None:
    html = "<html><head><style>p{x:1}</style></head><body><p>Gr&ouml;&szlig;e&nbsp;<b>budget</b></p><script>var hidden=1</script></body></html>"
    att = base64.b64encode("季度预算".encode()).decode()
    body = (
        "--b\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        "caf=E9 cr=E8me=\r\n brulee\r\n"
        "--b\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(html.encode()).decode().replace("\n", "\r\n")
        + "\r\n--b\r\nContent-Type: application/pdf\r\n"
        "Content-Disposition: attachment; filename=\"=?utf-8?B?" + base64.b64encode("预算表.pdf".encode()).decode() + "?=\"\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n" + att + "\r\n--b--\r\n"
    )
    d = extract(msg('Subject: x\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b"', body.encode()))
    b = d.text["body"]
    assert "café crème brulee" in b
    assert "grösse budget" in b  # NFKC + case folding: ß -> ss
    assert "hidden" not in b and "x:1" not in b
    assert "预算表.pdf" in b
    assert "季度预算" not in b  # binary attachment content is not text
    assert d.has_attachment


def test_base_subject_rfc5256() -> None:
    assert base_subject("Re: [list] Fwd: Hello (fwd)") == "hello"
    assert base_subject("[Fwd: Re: Budget]") == "budget"
    assert base_subject("  RE:   re: Plan  ") == "plan"
    assert base_subject("[tag] Subject") == "subject"
    assert base_subject("[only blob]") == "[only blob]"


def test_html_to_text() -> None:
    assert html_to_text("a<br>b&amp;c<!-- no -->").split() == ["a", "b&c"]


def test_corpus_messages_extract_and_search(corpus: Path, tmp_path: Path) -> None:
    """Every real-world corpus message extracts without raising and is searchable by its own words."""
    files = sorted(p for p in corpus.rglob("*") if p.is_file() and p.suffix in (".eml", ".msg", ".txt"))
    assert len(files) > 50
    for p in files:
        d = extract(p.read_bytes())
        for f in ("from", "subject", "body"):
            assert isinstance(d.text[f], str)


def _corpus_box(corpus: Path) -> Box:
    box = Box(0)
    for p in sorted(corpus.rglob("*.eml"))[:64]:
        box.add(p.read_bytes())
    return box


async def test_corpus_index_equals_brute_force(corpus: Path, tmp_path: Path) -> None:
    box = _corpus_box(corpus)
    svc = SearchService()
    idx = open_index(svc, box, tmp_path)
    words = sorted({w for d in box.docs.values() for w in d.text["subject"].split()})[:40]
    for w in words:
        for q in (Text("subject", w), Text("text", w), Header("subject", w[1:])):
            want = BitMap(m.uid for m in box.view.messages if matches(q, box.docs[m.uid], m))
            assert await idx.search(q, box.view) == want, q
            assert want, q
    await svc.close()


@pytest.mark.parametrize(
    ("query", "hit"),
    [("季度报告", True), ("第三季", True), ("报告已发", True), ("季报", False), ("résumé", True), ("RESUME", False),
     ("Straße", True), ("strasse", True), ("ümlaut", False), ("q3报告", True), ("Q3 报告", False)],
)
async def test_cjk_accented_mixed_queries(query: str, hit: bool, tmp_path: Path) -> None:
    box = Box(0)
    uid = box.add(msg("Subject: s", "第三季度报告已发送 Résumé STRASSE Q3报告\r\n".encode()))
    box.add(msg("Subject: t", "季度 报告 第三 resum e q3 报 告\r\n".encode()))
    assert matches(Text("body", query), box.docs[uid], None) is hit
    svc = SearchService()
    got = await open_index(svc, box, tmp_path).search(Text("body", query), box.view)
    assert got == (BitMap([uid]) if hit else BitMap())
    await svc.close()


async def test_sent_date_keys_use_the_day_written_in_the_header(tmp_path: Path) -> None:
    """RFC 9051 §6.4.4 SENTON: the date of the Date: header, disregarding time and timezone."""
    import datetime

    from mailsrv.search import Day

    box = Box(0)
    late = box.add(msg("Subject: a\nDate: Mon, 02 Jan 2023 23:30:00 -0800"))  # 2023-01-03 in UTC
    early = box.add(msg("Subject: b\nDate: Tue, 03 Jan 2023 00:30:00 +0900"))  # 2023-01-02 in UTC
    undated = box.add(msg("Subject: c"), when=datetime.datetime(2023, 1, 2, 12, tzinfo=datetime.UTC).timestamp())
    svc = SearchService()
    idx = open_index(svc, box, tmp_path)
    on2 = Day("sent", "on", datetime.date(2023, 1, 2))
    assert await idx.search(on2, box.view) == BitMap([late, undated])
    assert await idx.search(Day("sent", "since", datetime.date(2023, 1, 3)), box.view) == BitMap([early])
    assert await idx.search(Day("sent", "before", datetime.date(2023, 1, 3)), box.view) == BitMap([late, undated])
    assert all(matches(on2, box.docs[u], m) == (u in (late, undated)) for u, m in zip((late, early, undated), box.view.messages, strict=True))
    await svc.close()


_ATEXT_CHARS = "abcXYZ019!#$%&'*+/=?^_`{|}~-"
_atom = st.text(_ATEXT_CHARS, min_size=1, max_size=4)
_dot_atom = st.lists(_atom, min_size=1, max_size=3).map(".".join)
_ws = st.sampled_from(["", " ", "\t", "  ", " \t"])
#: mostly plain addr-specs (the fast path's shapes), bent by a few characters the parser treats specially
_address_like = st.builds(
    lambda w1, lt, local, at, dom, gt, w2, name: f"{name}{w1}{lt}{local}{at}{dom}{gt}{w2}",
    _ws, st.sampled_from(["", "<", "<<"]), _dot_atom, st.sampled_from(["@", "@@", "", " @"]),
    st.one_of(_dot_atom, st.just("[1.2.3.4]"), st.just("")), st.sampled_from(["", ">", ">>", ">,x@y"]), _ws,
    st.one_of(st.sampled_from(["", "Ann ", '"A B" ', "=?utf-8?q?x?= ", "(c) ", ".", "a.", "\r\n "]),
              st.builds(lambda words, sep, end: sep.join(words) + end,  # display names of atoms
                        st.lists(_atom, min_size=1, max_size=3), st.sampled_from([" ", "  ", "\t", " \t"]),
                        st.sampled_from(["", " ", "\t", "=?"])),
              st.builds(lambda text, end: f'"{text}"{end}',  # quoted display names
                        st.text(' \tAb,;:()<>@.\'"\\=?\x7f', max_size=6), st.sampled_from(["", " ", "\t"]))),
).map(lambda s: s.encode())


@given(st.one_of(_address_like, st.binary(max_size=40)))
@settings(max_examples=1500, deadline=None)
def test_plain_address_shortcut_agrees_with_the_parser(value: bytes) -> None:
    from mailsrv.search.extract import _first_address, _parsed_first_address

    assert _first_address(value) == (_parsed_first_address(value) if value else ("", ""))


def test_plain_addresses_skip_the_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    ex = importlib.import_module("mailsrv.search.extract")  # the package's name "extract" is the function
    calls: list[bytes] = []
    monkeypatch.setattr(ex, "_parsed_first_address", lambda v: calls.append(v) or ("", ""))
    assert ex._first_address(b" Sender.One@Example.TEST") == ("sender.one", "sender.one@example.test")
    assert ex._first_address(b"<a+b@x.y> ") == ("a+b", "a+b@x.y")
    assert ex._first_address(b"Ann  O'Brien\t<Ann@X.y>") == ("ann", "ann o'brien")  # a display name of atoms
    assert ex._first_address(b' "Smith,  Ann " <a@x.y>') == ("a", "smith,  ann")  # a quoted one
    assert ex._first_address(b'"" <a@x.y>') == ("a", "a@x.y")
    assert calls == []
    ex._first_address(b'"A\\"nn" <a@x.y>')
    ex._first_address(b"=?utf-8?q?Ann?= <a@x.y>")
    ex._first_address(b"<a@x.y")
    assert calls == [b'"A\\"nn" <a@x.y>', b"=?utf-8?q?Ann?= <a@x.y>", b"<a@x.y"]


#: header values: folded ASCII text, encoded words (whole or broken), 8-bit bytes
#: header_texts: the twin, and the compiled module where it is built
HEADER_IMPLS: list = [search_py]
try:
    from mailsrv._speedups import search_c  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - a build without Cython
    pass
else:
    HEADER_IMPLS.append(search_c)

_header_value = st.lists(
    st.sampled_from([b"Re:", b" ", b"\t", b"\r\n ", b"\n\t", b"\r\n", b"word", b"=?", b"?=", b"=?utf-8?q?caf=C3=A9?=",
                     b"=?iso-8859-1?b?4Q==?=", b"\xc3\xa9", b"\xe9", b"\x00", b"\x7f", b"a=b"]),
    max_size=12).map(b"".join)


@given(st.one_of(_header_value, st.binary(max_size=40)))
@settings(max_examples=1500, deadline=None)
def test_plain_header_shortcut_agrees_with_decode_header(value: bytes) -> None:
    """header_texts' text of a field (None: extract decodes it) is what mime.decode_header makes of it."""
    from mailsrv import mime

    field_ = b"X-Field:" + value
    name, got, text = search_py._field(field_, b"x-field", 0, len(field_))  # the compiled one: the test below
    assert got == value.rstrip(b"\r\n")
    if text is not None:
        assert text == mime.decode_header(value)


def _header_texts_by_steps(raw: bytes, start: int, end: int, limit: int) -> list[tuple[bytes, bytes, str | None]]:
    """What extract did before header_texts: mime's iter_header_lines, then each field's value and text."""
    from mailsrv.mime.body import iter_header_lines

    out: list[tuple[bytes, bytes, str | None]] = []
    for n, (name, a, b) in enumerate(iter_header_lines(raw, max(start, 0), end)):
        if n >= limit:
            break
        field_ = raw[a:b]
        value = field_[field_.find(b":") + 1 :].rstrip(b"\r\n")
        plain = value.replace(b"\r", b"").replace(b"\n", b"").strip(b" \t")
        out.append((name, value, plain.decode("ascii") if plain.isascii() and b"=?" not in plain else None))
    return out


#: header blocks: fields, continuation lines, lines without a colon, the empty line, any line ends
_header_line = st.tuples(
    st.sampled_from([b"From", b"to", b"Subject ", b"X-A\t", b" Sub", b"", b"DATE", b"\xc3\xa9", b"a:b"]),
    st.sampled_from([b":", b"", b"::"]),
    _header_value,
    st.sampled_from([b"\r\n", b"\n", b"\r", b"", b"\r\n\r\n", b"\r\n \r\n", b"\n\t"]),
).map(b"".join)


@pytest.mark.speedups
@given(st.one_of(st.lists(_header_line, max_size=8).map(b"".join), st.binary(max_size=120)),
       st.integers(-3, 130), st.integers(-3, 140), st.integers(0, 6))
@settings(max_examples=3000, deadline=None)
def test_header_texts_finds_the_fields_as_the_steps_did(raw: bytes, start: int, end: int, limit: int) -> None:
    expected = _header_texts_by_steps(raw, start, end, limit)
    for impl in HEADER_IMPLS:
        assert impl.header_texts(raw, start, end, limit) == expected, impl.__name__


@given(st.lists(st.sampled_from(list("ReFwd ])x)\t\u00a0\x1c\u2028ſK") + ["fwd", "re", "fwd]", "re )"]), max_size=20).map("".join))
@settings(max_examples=600, deadline=None)
def test_base_subject_shortcut_is_the_steps(subject: str) -> None:
    """A subject without "[", ":" or "(" skips the RFC 5256 steps: the steps give the same answer (only such
    subjects are generated: with one of them base_subject runs the steps, and the comparison could not fail)."""
    assert "[" not in subject and ":" not in subject and "(" not in subject
    assert base_subject(subject) == _base_subject_steps(" ".join(subject.split()))
