"""FETCH BINARY[] / BINARY[part] of big messages is streamed (RFC 3516; STYLE.md §8).

The chunked decoders give exactly what decoding the whole part at once gives (hypothesis,
every split), and a 20 MB message goes out without the server holding it in memory.
"""

from __future__ import annotations

import base64
import hashlib
import os
import quopri
import re
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from imaptest import Raw, ServerHandle
from test_real_store import real  # noqa: F401 - the fixture

from mailsrv.imap import streaming


def _chunked(dec: streaming.Identity | streaming.Base64 | streaming.QuotedPrintable, data: bytes,
             cuts: list[int]) -> bytes:
    out, prev = [], 0
    for c in sorted({min(c, len(data)) for c in cuts}) + [len(data)]:
        out.append(dec.feed(data[prev:c]))
        prev = c
    out.append(dec.end())
    return b"".join(out)


def _whole_b64(data: bytes) -> bytes | None:
    try:
        return base64.b64decode(re.sub(rb"[^A-Za-z0-9+/=]", b"", data), validate=False)
    except ValueError:
        return None


@given(st.binary(max_size=300), st.lists(st.integers(0, 500), max_size=8),
       st.lists(st.tuples(st.integers(0, 500), st.sampled_from([b"\r\n", b" ", b"!", b"=", b"==", b"\x00"])),
                max_size=4),
       st.integers(0, 3))
def test_base64_chunks_equal_the_whole(payload: bytes, cuts: list[int], junk: list[tuple[int, bytes]],
                                       chop: int) -> None:
    data = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    for pos, j in junk:  # line breaks, stray characters, misplaced padding
        data = data[:pos] + j + data[pos:]
    data = data[: len(data) - chop]
    want = _whole_b64(data)
    try:
        got: bytes | None = _chunked(streaming.Base64(), data, cuts)
    except streaming.DecodeError:
        got = None
    assert got == want


@given(st.binary(max_size=300), st.lists(st.integers(0, 700), max_size=8), st.booleans())
def test_quoted_printable_chunks_equal_the_whole(payload: bytes, cuts: list[int], crlf: bool) -> None:
    data = quopri.encodestring(payload)
    if crlf:
        data = data.replace(b"\n", b"\r\n")
    assert _chunked(streaming.QuotedPrintable(), data, cuts) == quopri.decodestring(data)


QP_PIECES = [b"=", b"A", b"4", b"\r\n", b"\n", b" ", b"\t", b"=3D", b"=\r\n", b"=4", b"==", b"=C3=A9", b"\xe9"]


@given(st.lists(st.sampled_from(QP_PIECES), max_size=40), st.lists(st.integers(0, 200), max_size=8),
       st.integers(1, 12))
def test_quoted_printable_endless_lines_are_cut_between_escapes(pieces: list[bytes], cuts: list[int],
                                                                 carry: int) -> None:
    """A line longer than the carry limit is decoded in pieces; an ``=XX`` (or ``=`` CRLF) that
    straddles a cut is carried over, so the pieces decode to what the whole part does."""
    data = b"".join(pieces)
    out, prev = [], 0
    dec = streaming.QuotedPrintable(max_carry=carry)
    for c in sorted({min(c, len(data)) for c in cuts}) + [len(data)]:
        out.append(dec.feed(data[prev:c]))
        prev = c
    out.append(dec.end())
    assert b"".join(out) == quopri.decodestring(data)


def test_quoted_printable_escape_across_the_one_mib_cut() -> None:
    line = b"A" * (streaming.QP_MAX_CARRY - 1) + b"=41=\r\nB=3D\r\n"
    dec = streaming.QuotedPrintable()
    got = dec.feed(line[: streaming.QP_MAX_CARRY])
    assert dec.rest == b"="  # the escape's start waits for the rest of it, nothing more does
    got += dec.feed(line[streaming.QP_MAX_CARRY:]) + dec.end()
    assert got == b"A" * (streaming.QP_MAX_CARRY - 1) + b"AB=\r\n"


@given(st.binary(max_size=200), st.lists(st.integers(0, 300), max_size=5))
def test_identity_chunks(payload: bytes, cuts: list[int]) -> None:
    assert _chunked(streaming.Identity(), payload, cuts) == payload


def test_unknown_encoding_is_refused() -> None:
    with pytest.raises(streaming.DecodeError):
        streaming.decoder("x-uuencode")
    assert isinstance(streaming.decoder(None), streaming.Identity)
    assert isinstance(streaming.decoder("8BIT"), streaming.Identity)


def _read_fetch(raw: Raw, tag: bytes) -> tuple[bytes, str, int]:
    """One ``* n FETCH (... {n}`` literal response: (its first line, sha256 of the literal, size)."""
    head = raw.line()
    m = re.search(rb"~?\{(\d+)\}\r\n$", head)
    assert m, head
    size, left, h = int(m.group(1)), int(m.group(1)), hashlib.sha256()
    while left:
        chunk = raw.read(min(left, 1 << 20))
        assert chunk
        h.update(chunk)
        left -= len(chunk)
    assert raw.line() == b")\r\n"
    assert raw.line().startswith(tag + b" OK")
    return head, h.hexdigest(), size


def test_big_binary_fetch_is_streamed(real: ServerHandle, tmp_path: Path) -> None:  # noqa: F811
    attachment = os.urandom(15 * 1024 * 1024)  # holds NUL: a literal8
    b64 = base64.encodebytes(attachment).replace(b"\n", b"\r\n")
    msg = (b"From: a@example.test\r\nSubject: big\r\nMIME-Version: 1.0\r\n"
           b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n'
           b"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + b64 + b"--b--\r\n")
    assert len(msg) > 20 * 1024 * 1024
    want_part = hashlib.sha256(attachment).hexdigest()
    want_whole = hashlib.sha256(msg).hexdigest()
    want_slice = hashlib.sha256(attachment[1000:6000]).hexdigest()
    src = tmp_path / "big.eml"
    src.write_bytes(msg)
    size = len(msg)
    del msg, b64, attachment

    async def put() -> None:
        acct = await real.store.account("1", None)
        await acct.append("INBOX", src)

    real.call(put(), timeout=60)
    raw = Raw(real.host, real.port)
    raw.sock.settimeout(60)
    try:
        assert raw.cmd(b"a LOGIN alice@example.test wonderland")[-1].startswith(b"a OK")
        raw.cmd(b"s SELECT INBOX")
        tracemalloc.start()
        try:
            raw.send(b"f1 UID FETCH 1 (BINARY.PEEK[2])\r\n")
            head, digest, n = _read_fetch(raw, b"f1")
            assert head == b"* 1 FETCH (UID 1 BINARY[2] ~{%d}\r\n" % (15 * 1024 * 1024) and digest == want_part
            raw.send(b"f2 UID FETCH 1 (BINARY.PEEK[])\r\n")
            head, digest, n = _read_fetch(raw, b"f2")
            assert head == b"* 1 FETCH (UID 1 BINARY[] {%d}\r\n" % size and digest == want_whole
            raw.send(b"f3 UID FETCH 1 (FLAGS BINARY.PEEK[2]<1000.5000>)\r\n")
            head, digest, n = _read_fetch(raw, b"f3")
            assert head.startswith(b"* 1 FETCH (UID 1 FLAGS (\\Recent) BINARY[2]<1000> ~{5000}") and digest == want_slice
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # nothing near the message's size was held at once (chunks are 256 KiB)
        assert peak < 4 * 1024 * 1024, peak
        # BINARY (not .PEEK) sets \Seen like BODY[] (RFC 3516 §4.2)
        raw.send(b"f4 FETCH 1 (BINARY[1])\r\n")
        lines = raw.until(b"f4")
        assert lines[0] == b"* 1 FETCH (FLAGS (\\Seen \\Recent) BINARY[1] {5}\r\n" and lines[1] == b"hello)\r\n"
    finally:
        raw.close()


def test_base64_carry_is_bounded_after_a_stray_pad() -> None:
    """A "=" early in a big part neither ends decoding (b64decode skips it) nor makes the decoder
    keep the rest of the part: the carry between chunks stays under a quad and its padding."""
    dec = streaming.Base64()
    data = b"QQ=" + b"QUJD" * 50_000 + b"==\r\n"
    out = []
    for k in range(0, len(data), 4096):
        out.append(dec.feed(data[k:k + 4096]))
        assert len(dec.rest) <= 5
    out.append(dec.end())
    assert b"".join(out) == base64.b64decode(data, validate=False)
    ended = streaming.Base64()
    assert ended.feed(b"QQ==") == b"A" and ended.feed(b"QUJD" * 1000) == b"" and ended.rest == b""

