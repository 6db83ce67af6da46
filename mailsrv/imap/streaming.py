"""Chunked Content-Transfer-Encoding decoders for FETCH BINARY of big messages (RFC 3516).

A streamed BINARY[section] decodes the part once, in chunks, into a spool file
(:class:`mailsrv.imap.spool.DecodedSpool`) that learns the decoded length (the literal's
size must come first) and whether it holds NUL (literal8); the literal is sent from there.
Each decoder gives, chunk by chunk, exactly the bytes that
:func:`mailsrv.imap.fetch._decode_cte` gives for the whole part at once.
"""

from __future__ import annotations

import base64
import binascii
import quopri
import re

#: characters that are not base64 data (dropped before decoding, as the whole-part decoder does)
_B64_JUNK = re.compile(rb"[^A-Za-z0-9+/=]")
#: a quoted-printable "line" longer than this is decoded without waiting for its end
QP_MAX_CARRY = 1024 * 1024
#: ... and it is cut at most this many bytes before the end of what was read (escapes are 3 bytes)
QP_MAX_BACKOFF = 16


class DecodeError(Exception):
    """The part cannot be decoded (RFC 3516 §4.3: [UNKNOWN-CTE])."""


class Identity:
    def feed(self, data: bytes) -> bytes:
        return data

    def end(self) -> bytes:
        return b""


class Base64:
    """Decodes whole quads as they come, with the padding rules of one non-strict b64decode.

    A ``=`` that completes a quad ends the data (b64decode ignores what follows: it is dropped
    here, not kept); any other ``=`` is skipped by b64decode, and here too. The carry between
    chunks is at most a partial quad and its trailing ``=``: memory stays bounded whatever the
    part holds.
    """

    def __init__(self) -> None:
        self.rest = b""
        self.done = False

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return b""
        data = self.rest + _B64_JUNK.sub(b"", data)
        if b"=" in data:
            k = _pad_end(data)
            if k >= 0:
                self.rest, self.done = b"", True
                return _b64(data[: k + 1])
            body = data.rstrip(b"=")
            trailing = data[len(body):]
            body = body.replace(b"=", b"")
        else:
            body, trailing = data, b""
        head = len(body) - len(body) % 4
        rem = body[head:]
        # a trailing "=" counts only after 2 or 3 data characters of a quad (binascii's rule)
        self.rest = rem + (trailing if len(rem) >= 2 else b"")
        return _b64(body[:head])

    def end(self) -> bytes:
        rest, self.rest = self.rest, b""
        return _b64(rest) if rest else b""


def _pad_end(data: bytes) -> int:
    """The index of the ``=`` that ends base64 ``data`` (starting on a quad boundary, junk
    removed) as binascii's non-strict decoder sees it, or -1."""
    i, eqs, pads, prev = data.find(b"="), 0, 0, -1
    while i >= 0:
        if i != prev + 1:
            pads = 0  # a data character since the last "="
        q = (i - eqs) % 4  # data characters of the current quad
        if q >= 2:
            pads += 1
            if q + pads >= 4:
                return i
        eqs, prev = eqs + 1, i
        i = data.find(b"=", i + 1)
    return -1


def _b64(data: bytes) -> bytes:
    try:
        return base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        raise DecodeError from None


class QuotedPrintable:
    """Decodes complete lines (quoted-printable is line-oriented); the last partial line waits."""

    def __init__(self, max_carry: int = QP_MAX_CARRY) -> None:
        self.rest = b""
        self.max_carry = max_carry

    def feed(self, data: bytes) -> bytes:
        data = self.rest + data
        cut = data.rfind(b"\n") + 1
        if cut == 0 and len(data) < self.max_carry:
            self.rest = data
            return b""
        if cut == 0:  # deviation (RFC 2045 §6.7 caps lines at 76): an endless line is cut here,
            cut = _escape_boundary(data)  # but never inside an "=XX" escape or a "=\r\n" soft break
        self.rest = data[cut:]
        return quopri.decodestring(data[:cut])

    def end(self) -> bytes:
        rest, self.rest = self.rest, b""
        return quopri.decodestring(rest) if rest else b""


def _escape_boundary(data: bytes) -> int:
    """Where to cut a quoted-printable line without a line break: the last position that no
    escape spans (an ``=`` in the two bytes before a cut would lose its meaning), so that the two
    pieces decode to what the whole does. A hostile run of ``=`` longer than QP_MAX_BACKOFF is
    cut at its end (then the pieces may decode differently there: nothing else can be bounded)."""
    cut = len(data)
    for _ in range(QP_MAX_BACKOFF):
        k = data.rfind(b"=", max(cut - 2, 0), cut)
        if k < 0:
            return cut
        cut = k
    return len(data)


def decoder(encoding: str | None) -> Identity | Base64 | QuotedPrintable:
    """The decoder for a part's Content-Transfer-Encoding (None: raw bytes, e.g. a whole message)."""
    enc = (encoding or "7bit").strip().lower()
    if enc in ("7bit", "8bit", "binary"):
        return Identity()
    if enc == "base64":
        return Base64()
    if enc == "quoted-printable":
        return QuotedPrintable()
    raise DecodeError(enc)
