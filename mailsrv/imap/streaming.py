"""Chunked Content-Transfer-Encoding decoders for FETCH BINARY of big messages (RFC 3516).

A streamed BINARY[section] reads the part twice in chunks: once to learn the decoded
length (the literal's size must come first) and whether it holds NUL (literal8), once
to send it. Each decoder gives, chunk by chunk, exactly the bytes that
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


class DecodeError(Exception):
    """The part cannot be decoded (RFC 3516 §4.3: [UNKNOWN-CTE])."""


class Identity:
    def feed(self, data: bytes) -> bytes:
        return data

    def end(self) -> bytes:
        return b""


class Base64:
    """Decodes whole quads as they come; from the first ``=`` on (the end, in valid data) the
    rest is kept and decoded by :meth:`end`, so padding rules are those of one b64decode."""

    def __init__(self) -> None:
        self.rest = b""
        self.tail_mode = False

    def feed(self, data: bytes) -> bytes:
        data = _B64_JUNK.sub(b"", data)
        if self.tail_mode:
            self.rest += data
            return b""
        data = self.rest + data
        pad = data.find(b"=")
        if pad >= 0:
            head = pad - pad % 4
            self.rest, self.tail_mode = data[head:], True
            data = data[:head]
        else:
            head = len(data) - len(data) % 4
            self.rest, data = data[head:], data[:head]
        try:
            return base64.b64decode(data, validate=False)
        except (binascii.Error, ValueError):
            raise DecodeError from None

    def end(self) -> bytes:
        try:
            return base64.b64decode(self.rest, validate=False) if self.rest else b""
        except (binascii.Error, ValueError):
            raise DecodeError from None


class QuotedPrintable:
    """Decodes complete lines (quoted-printable is line-oriented); the last partial line waits."""

    def __init__(self) -> None:
        self.rest = b""

    def feed(self, data: bytes) -> bytes:
        data = self.rest + data
        cut = data.rfind(b"\n") + 1
        if cut == 0 and len(data) < QP_MAX_CARRY:
            self.rest = data
            return b""
        if cut == 0:  # deviation (RFC 2045 §6.7 caps lines at 76): an endless line is cut here
            cut = len(data)
        self.rest = data[cut:]
        return quopri.decodestring(data[:cut])

    def end(self) -> bytes:
        rest, self.rest = self.rest, b""
        return quopri.decodestring(rest) if rest else b""


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
