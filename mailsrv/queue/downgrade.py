"""8BITMIME downgrade: rewrite 8-bit MIME leaf parts as quoted-printable for a hop without 8BITMIME.

RFC 6152 §3 lets a server that relays 8-bit data to a hop that does not announce
8BITMIME either convert it to 7 bit ("MIME conversion") or bounce it; like
Postfix we convert. Only leaf parts whose body holds bytes
above 0x7F are re-encoded (RFC 2045 §6.7 quoted-printable, lines split at 76);
``multipart/*`` and ``message/rfc822`` are walked into (RFC 2046 §5.2.1: their
own encoding must stay 7bit/8bit, so their inner parts are converted instead).
Headers are left as they are (8-bit header bytes need SMTPUTF8, which the
caller handles: RFC 6531 §3.2 forbids downgrading those).

Everything streams line by line from one file to another: memory is bounded by
:data:`MAX_LINE` and :data:`MAX_HEADER`, never by the message size. Two passes
over the file: :func:`scan` finds which leaves need conversion, :func:`convert`
writes the result. All functions block (run them in a thread).
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

#: Longest piece of a line read at once; longer lines are handled in pieces (soft breaks).
MAX_LINE = 1 << 20
#: Largest header block of one entity we interpret; beyond it the rest is treated as body.
MAX_HEADER = 1 << 20
#: Deepest multipart nesting we follow (RFC 2046 sets none; this bounds recursion).
MAX_DEPTH = 50
READ_BLOCK = 256 * 1024

_HIGH = re.compile(rb"[\x80-\xff]")
#: A header field line or its continuation (the test Python's email.feedparser makes).
_FIELD = re.compile(rb"From |[\x21-\x39\x3b-\x7e]*:|[\t ]")
_CT = re.compile(rb"\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*/\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)")
_BOUNDARY = re.compile(rb';\s*boundary\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]+))', re.IGNORECASE)


def has_8bit(path: Path) -> bool:
    """Does the file hold any byte above 0x7F? (RFC 6152: then it is not 7bit.)"""
    with open(path, "rb") as fh:
        while block := fh.read(READ_BLOCK):
            if _HIGH.search(block):
                return True
    return False


class _Reader:
    """Lines (with their ending) from a binary file, long lines in pieces, with one line of pushback."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.back: list[bytes] = []

    def line(self) -> bytes:
        if self.back:
            piece = self.back.pop()
        else:
            piece = self.fh.readline(MAX_LINE)
            if piece.endswith(b"\r") and (nxt := self.fh.readline(MAX_LINE)):
                # keep a CRLF cut by the piece limit together
                if nxt.startswith(b"\n"):
                    piece += b"\n"
                    nxt = nxt[1:]
                if nxt:
                    self.back.append(nxt)
        return piece

    def unread(self, piece: bytes) -> None:
        self.back.append(piece)


def _unfolded_field(headers: list[bytes], name: bytes) -> bytes | None:
    """The value of the last field ``name`` (lower case) in a header block given as lines."""
    value = None
    current: list[bytes] | None = None
    for line in headers:
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current.append(line)
            continue
        if current is not None:
            value = b"".join(current)
            current = None
        key, sep, rest = line.partition(b":")
        if sep and key.strip().lower() == name:
            current = [rest]
    if current is not None:
        value = b"".join(current)
    return None if value is None else value.replace(b"\r", b"").replace(b"\n", b"")


def _without_field(headers: list[bytes], name: bytes) -> list[bytes]:
    out: list[bytes] = []
    dropping = False
    for line in headers:
        if line[:1] in (b" ", b"\t") and dropping:
            continue
        key, sep, _ = line.partition(b":")
        dropping = bool(sep) and key.strip().lower() == name
        if not dropping:
            out.append(line)
    return out


class _Walker:
    """One pass over a message. ``flags`` is None while scanning (it is filled), else the leaves to convert."""

    def __init__(self, reader: _Reader, write: Callable[[bytes], object] | None, flags: list[bool] | None) -> None:
        self.r = reader
        self.write = write or (lambda b: None)
        self.converting = flags is not None
        self.flags: list[bool] = flags if flags is not None else []
        self.leaf = 0

    def _boundary_hit(self, line: bytes, boundaries: list[bytes]) -> int | None:
        """Index in ``boundaries`` of the delimiter this line is (innermost first), else None."""
        if not line.startswith(b"--"):
            return None
        text = line.rstrip(b" \t\r\n")
        for i in range(len(boundaries) - 1, -1, -1):
            b = boundaries[i]
            if text == b"--" + b or text == b"--" + b + b"--":
                return i
        return None

    def _read_headers(self, boundaries: list[bytes]) -> tuple[list[bytes], bytes | None]:
        """The entity's header field lines and what ended them.

        The end is the blank line, b"" when a line that is no header field starts the
        body without one (as Python's email parser reads it), or None at EOF, a
        delimiter or past :data:`MAX_HEADER` (then the entity is copied as it is).
        """
        lines: list[bytes] = []
        size = 0
        while True:
            line = self.r.line()
            if not line:
                return lines, None
            if line in (b"\r\n", b"\n"):
                return lines, line
            if self._boundary_hit(line, boundaries) is not None:
                self.r.unread(line)
                return lines, None
            if not _FIELD.match(line):
                self.r.unread(line)
                return lines, b""
            lines.append(line)
            size += len(line)
            if size > MAX_HEADER:
                return lines, None

    def entity(self, boundaries: list[bytes], top: bool = False) -> int | None:
        """Copy/convert one entity. Returns the index of the enclosing delimiter that ended it (unread), or None at EOF."""
        headers, blank = self._read_headers(boundaries)
        complete = blank is not None
        ctype = _unfolded_field(headers, b"content-type") if complete else None
        m = _CT.match(ctype) if ctype is not None else None
        main, sub = (m.group(1).lower(), m.group(2).lower()) if m else (b"text", b"plain")
        if main == b"multipart" and ctype is not None and len(boundaries) < MAX_DEPTH:
            bm = _BOUNDARY.search(ctype)
            if bm is not None:
                boundary = bm.group(1) if bm.group(1) is not None else bm.group(2)
                boundary = re.sub(rb"\\(.)", rb"\1", boundary)
                self.write(b"".join(headers) + (blank or b""))
                return self._multipart(boundaries, boundary)
        if main == b"message" and sub in (b"rfc822", b"global") and complete and len(boundaries) < MAX_DEPTH:
            self.write(b"".join(headers) + (blank or b""))
            return self.entity(boundaries)
        cte = (_unfolded_field(headers, b"content-transfer-encoding") or b"7bit").strip().lower()
        encodable = complete and cte in (b"7bit", b"8bit", b"binary")
        index = self.leaf
        self.leaf += 1
        convert = encodable and self.converting and index < len(self.flags) and self.flags[index]
        if convert:
            new = _without_field(headers, b"content-transfer-encoding")
            if top and _unfolded_field(new, b"mime-version") is None:
                new.append(b"MIME-Version: 1.0\r\n")  # RFC 2045 §4: the encoding is MIME only with it
            new.append(b"Content-Transfer-Encoding: quoted-printable\r\n\r\n")
            self.write(b"".join(new))
        else:
            self.write(b"".join(headers) + (blank or b""))
        seen_8bit = False
        at_start = True
        while True:
            line = self.r.line()
            if not line:
                end: int | None = None
                break
            if at_start and (hit := self._boundary_hit(line, boundaries)) is not None:
                self.r.unread(line)
                end = hit
                break
            ends = line.endswith(b"\n")
            if convert:
                self.write(_qp_line(line))
            else:
                self.write(line)
                if not seen_8bit and _HIGH.search(line):
                    seen_8bit = True
            at_start = ends
        if not self.converting:
            self.flags.append(encodable and seen_8bit)
        return end

    def _multipart(self, boundaries: list[bytes], boundary: bytes) -> int | None:
        inner = [*boundaries, boundary]
        mine = len(boundaries)
        closed = False
        at_start = True
        while True:  # preamble, parts, epilogue
            line = self.r.line()
            if not line:
                return None
            hit = self._boundary_hit(line, inner) if at_start else None
            if hit is None:
                self.write(line)
                at_start = line.endswith(b"\n")
                continue
            if hit < mine:
                self.r.unread(line)
                return hit
            self.write(line)
            if closed:
                continue  # a delimiter of ours after the close: epilogue text, copied
            if line.rstrip(b" \t\r\n").endswith(b"--" + boundary + b"--"):
                closed = True
                continue
            ended = self.entity(inner)
            if ended is None:
                return None
            if ended < mine:
                return ended  # a part ran into an outer delimiter (ours never closed)


def _qp_line(line: bytes) -> bytes:
    """RFC 2045 §6.7 quoted-printable of one line (or piece of a long line), CRLF-terminated."""
    if line.endswith(b"\r\n"):
        body, eol = line[:-2], b"\r\n"
    elif line.endswith(b"\n"):
        body, eol = line[:-1], b"\r\n"
    else:
        body, eol = line, b"=\r\n"  # a piece of a longer line: soft break
    enc = binascii.b2a_qp(body, quotetabs=False, istext=False, header=False)
    return enc.replace(b"=\n", b"=\r\n") + eol


def scan(path: Path) -> list[bool]:
    """Per leaf part in document order: does it need conversion (8-bit bytes, encoding 7bit/8bit/binary)?"""
    with open(path, "rb") as fh:
        w = _Walker(_Reader(fh), None, None)
        w.entity([], top=True)
        return w.flags


def convert(path: Path, out: BinaryIO, flags: list[bool]) -> None:
    """Write the message with the leaves ``flags`` marks re-encoded as quoted-printable."""
    with open(path, "rb") as fh:
        _Walker(_Reader(fh), out.write, flags).entity([], top=True)


def downgrade(path: Path, dst: Path) -> bool:
    """Write the 7-bit form of ``path`` to ``dst`` if any leaf needs it; False (nothing written) otherwise.

    A message whose 8-bit bytes are outside convertible leaves (in headers, or in a
    part already declared base64/quoted-printable) is left as it is, as Postfix does.
    """
    if not has_8bit(path):
        return False
    flags = scan(path)
    if not any(flags):
        return False
    with open(dst, "wb") as out:
        convert(path, out, flags)
    return True
