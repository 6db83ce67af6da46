"""The extraction's shortcuts give what the general steps give: the body of a message that is one
text/plain part (Part.bare_text), a body with no transfer encoding to undo (part_text's slice) and a
Date: value in the RFC 5322 form (_sent_date's pattern)."""

from __future__ import annotations

import contextlib
import importlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mailsrv import mime
from mailsrv.mime import body as mime_body
from mailsrv.mime.structure import Part
from mailsrv.search import extract

ex = importlib.import_module("mailsrv.search.extract")  # the package's name "extract" is the function

#: max_text values: none left, a cut inside a line, the default
_LIMITS = (0, 1, 7, 100, 1 << 20)


def _walked(raw: bytes, max_text: int, monkeypatch: pytest.MonkeyPatch) -> ex.Document:
    """extract() by the walk over the parts, the shortcut off."""
    with monkeypatch.context() as m:
        m.setattr(Part, "bare_text", lambda self: False)
        return extract(raw, max_text)


def test_bare_text_shortcut_equals_the_walk_on_the_corpus(corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = sorted(p for p in corpus.rglob("*") if p.is_file() and p.suffix in (".eml", ".msg", ".txt"))
    assert len(files) > 50
    bare = 0
    for p in files:
        raw = p.read_bytes()
        bare += mime.parse(raw).root.bare_text()
        for limit in _LIMITS:
            assert extract(raw, limit) == _walked(raw, limit, monkeypatch), (p, limit)
    assert bare > 20  # the corpus holds plain messages: the shortcut was taken


_field = st.sampled_from([
    b"", b"Content-Type: text/plain\r\n", b"Content-Type: TEXT/Plain; charset=utf-8\r\n",
    b"Content-Type: text/plain; charset=us-ascii\r\n", b"Content-Type: text/plain; charset=\"iso-8859-1\"\r\n",
    b"Content-Type: text/plain; charset=x-unknown\r\n", b"Content-Type: text/plain; name=a.txt\r\n",
    b"Content-Type: text/plain; name=\"\"\r\n", b"Content-Type: text/plain;\r\n charset=utf-8\r\n",
    b"Content-Type: text/html; charset=utf-8\r\n", b"Content-Type: text/\r\n", b"Content-Type: application/pdf\r\n",
    b"Content-Type: message/rfc822\r\n", b"Content-Type: multipart/mixed; boundary=b\r\n", b"Content-Type: ;\r\n",
    b"Content-Disposition: attachment\r\n", b"Content-Disposition: inline; filename=x.txt\r\n",
    b"Content-Disposition: \r\n", b"Content-Transfer-Encoding: 7bit\r\n", b"Content-Transfer-Encoding: 8BIT\r\n",
    b"Content-Transfer-Encoding: binary\r\n", b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Transfer-Encoding: Quoted-Printable\r\n", b"Content-Transfer-Encoding: x-uuencode\r\n",
    b"MIME-Version: 1.0\r\n", b"Subject: =?utf-8?q?caf=C3=A9?=\r\n",
])
_body = st.one_of(
    st.binary(max_size=200),
    st.lists(st.sampled_from([b"hello ", b"caf\xc3\xa9 ", b"caf\xe9 ", b"=E9", b"=\r\n", b"\r\n", b"--b\r\n", b"<p>",
                              b"aGVsbG8=", b"\xe5\xad\xa3\xe5\xba\xa6", b"\x00", b"\r\n--b--\r\n"]),
             max_size=30).map(b"".join),
)


@given(st.lists(_field, max_size=4), _body, st.sampled_from(_LIMITS))
@settings(max_examples=600, deadline=None)
def test_bare_text_shortcut_equals_the_walk(fields: list[bytes], body: bytes, limit: int) -> None:
    raw = b"From: a@b.c\r\n" + b"".join(fields) + b"\r\n" + body
    with pytest.MonkeyPatch.context() as m:
        assert extract(raw, limit) == _walked(raw, limit, m)


def test_bare_text_takes_plain_messages_only() -> None:
    def bare(head: bytes) -> bool:
        return mime.parse(b"From: a@b.c\r\n" + head + b"\r\nhello\r\n").root.bare_text()

    assert bare(b"") and bare(b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n")
    assert bare(b"Content-Transfer-Encoding: base64\r\n")  # (part_text decodes it)
    assert not bare(b"Content-Type: text/html\r\n")
    assert not bare(b"Content-Type: text/plain; name=a.txt\r\n")  # a filename: body text and an attachment
    assert not bare(b"Content-Disposition: inline\r\n")
    assert not bare(b"Content-Type: multipart/mixed; boundary=b\r\n")


@given(st.sampled_from([b"", b"Content-Transfer-Encoding: 7bit\r\n", b"Content-Transfer-Encoding: binary\r\n",
                        b"Content-Transfer-Encoding: x-other\r\n", b"Content-Transfer-Encoding: base64\r\n",
                        b"Content-Transfer-Encoding: quoted-printable\r\n"]),
       st.sampled_from([b"", b"Content-Type: text/plain; charset=utf-8\r\n", b"Content-Type: text/plain; charset=koi8-r\r\n"]),
       _body, st.one_of(st.none(), st.integers(0, 300)))
@settings(max_examples=600, deadline=None)
def test_part_text_slice_equals_the_chunks(cte: bytes, ctype: bytes, body: bytes, limit: int | None) -> None:
    """part_text of a body without an encoding to undo is the chunk loop's text (iter_decoded, then the cut)."""
    raw = b"From: a@b.c\r\n" + cte + ctype + b"\r\n" + body
    part = mime.parse(raw).root
    text = mime.part_text(raw, part, limit)
    with pytest.MonkeyPatch.context() as m:  # every encoding taken as one to undo: the chunk loop
        m.setattr(mime_body, "_CONVERTED", ("base64", "quoted-printable", part.encoding))
        assert text == mime.part_text(raw, mime.parse(raw).root, limit)


#: Date: values: the RFC 5322 form, bent where email.utils reads something else or nothing
_date_like = st.builds(
    lambda ws, day, d, mon, y, t, zone, tail: f"{ws}{day}{d} {mon} {y} {t} {zone}{tail}".encode("latin-1"),
    st.sampled_from(["", " ", "\t", "  "]),
    st.sampled_from(["", "Sat, ", "Mon,", "Foo, ", "sat, ", "Sat "]),
    st.sampled_from(["1", "01", "28", "31", "0", "32", "00", "123", "x"]),
    st.sampled_from(["Nov", "Feb", "nov", "NOV", "November", "Xyz"]),
    st.sampled_from(["2026", "1970", "1900", "9999", "0050", "1000", "26", "69", "10000", "0999"]),
    st.sampled_from(["13:00:00", "00:00:00", "23:59:59", "24:00:00", "23:60:00", "23:59:60", "13:00", "1:02:03",
                     "13.00.00"]),
    st.sampled_from(["+0000", "-0000", "+0100", "-0530", "+2359", "+2400", "-9999", "+0099", "UTC", "GMT", "EST",
                     "+000", "0100", ""]),
    st.sampled_from(["", " ", " (UTC)", " (CET)  ", "(x)", " (a (b) c)", " extra", "\r\n", " \xa0", " (\x85)"]),
)


@given(st.one_of(_date_like, st.binary(max_size=40)))
@example(b"Sat, 28 Nov 2026 13:00:00 -0000")
@example(b"Sat, 28 Nov 0050 13:00:00 +0000")
@example(b"Sat, 28 Nov 2026 13:00:00 +2400")
@example(b"Sat, 28 Nov 2026 13:00:00 -0099 (x)")
@settings(max_examples=2000, deadline=None)
def test_sent_date_shortcut_agrees_with_email_utils(value: bytes) -> None:
    assert ex._sent_date(value) == ex._parsed_sent_date(value)
    with _local_zone("America/New_York"):  # email.utils' naive times (zone -0000) are local ones
        assert ex._sent_date(value) == ex._parsed_sent_date(value)


@contextlib.contextmanager
def _local_zone(name: str) -> Iterator[None]:
    old = os.environ.get("TZ")
    os.environ["TZ"] = name
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


def test_rfc5322_dates_skip_email_utils(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    monkeypatch.setattr(ex, "_parsed_sent_date", lambda v: calls.append(v))
    assert ex._sent_date(b" Sat, 28 Nov 2026 13:00:00 +0000") == (1795870800.0, 739948)
    assert ex._sent_date(b"1 Jan 2027 00:30:00 +0100 (CET)") == (1798759800.0, 739982)
    assert ex._sent_date(b"Tue, 31 Feb 2026 10:00:00 -0500") is None  # no such day
    assert calls == []
    ex._sent_date(b"Sat, 28 Nov 2026 13:00:00 -0000")  # a naive time for email.utils
    ex._sent_date(b"Sat, 28 Nov 26 13:00:00 +0000")  # a two-digit year
    ex._sent_date(b"Sat, 28 Nov 2026 13:00 GMT")
    assert len(calls) == 3
