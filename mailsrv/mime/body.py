"""Things that need the message bytes: header field selection, body decoding, sizes, preview.

``raw`` is the whole stored message (bytes, or anything slicing to bytes such as
an mmap); offsets come from a :class:`~mailsrv.mime.structure.MessageStructure`.
Large bodies are decoded in chunks so memory stays bounded.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterable, Iterator
from typing import Any

from mailsrv.mime.headers import decode_bytes, lookup_charset
from mailsrv.mime.structure import MessageStructure, Part

__all__ = [
    "binary_size",
    "decoded_body",
    "decoded_size",
    "header_fields",
    "header_values",
    "iter_decoded",
    "iter_binary",
    "iter_header_lines",
    "part_text",
    "preview",
]

_B64_KEEP = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_DROP = bytes(c for c in range(256) if c not in _B64_KEEP)
_QP_TRAILING = re.compile(rb"[ \t]+(?=\r?\n|\Z)")


def iter_header_lines(raw: Any, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(lower-case name, field start, field end incl. its line end) for each field in a header block."""
    pos = start
    cur_name = b""
    cur_start = -1
    while pos < end:
        nl = raw.find(b"\n", pos, end)
        nxt = end if nl < 0 else nl + 1
        line = raw[pos:nxt]
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t") and cur_start >= 0:
            pos = nxt
            continue
        if cur_start >= 0:
            yield cur_name, cur_start, pos
            cur_start = -1
        colon = line.find(b":")
        if colon > 0:
            cur_name = line[:colon].rstrip(b" \t").lower()
            cur_start = pos
        pos = nxt
    if cur_start >= 0:
        yield cur_name, cur_start, pos


def header_fields(
    raw: Any,
    structure: MessageStructure,
    section: str = "",
    names: Iterable[bytes] = (),
    exclude: bool = False,
) -> bytes:
    """BODY[<section>.HEADER.FIELDS (names)] (or .NOT with ``exclude``), RFC 3501 §6.4.5.

    ``section`` is "" for the message or the number of a message/rfc822 part.
    The selected fields in message order, followed by the empty line.
    """
    rng = structure.section_range(f"{section}.HEADER" if section else "HEADER")
    if rng is None:
        return b""
    wanted = {n.lower() for n in names}
    out = []
    for name, s, e in iter_header_lines(raw, rng[0], rng[1]):
        if (name in wanted) != exclude:
            field = bytes(raw[s:e])
            out.append(field if field.endswith(b"\n") else field + b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def header_values(raw: Any, part: Part, name: bytes) -> list[bytes]:
    """Raw values (after the colon, folding kept) of every occurrence of one header field."""
    name = name.lower()
    out = []
    for n, s, e in iter_header_lines(raw, part.header_start, part.body_start):
        if n == name:
            field = bytes(raw[s:e])
            out.append(field[field.find(b":") + 1 :].rstrip(b"\r\n"))
    return out


def iter_decoded(raw: Any, part: Part, chunk: int = 65536) -> Iterator[bytes]:
    """The body of ``part`` with its Content-Transfer-Encoding undone, in chunks.

    base64 ignores characters outside the alphabet and a truncated tail
    (RFC 2045 §6.8); quoted-printable is decoded line-aligned (RFC 2045 §6.7);
    anything else is returned as is.
    """
    enc = part.encoding
    start, end = part.body_start, part.body_end
    chunk = max(chunk, 1024)
    if enc == "base64":
        carry = b""
        for pos in range(start, end, chunk):
            data = carry + bytes(raw[pos : min(pos + chunk, end)]).translate(None, _B64_DROP)
            cut = len(data) - len(data) % 4
            carry = data[cut:]
            if cut:
                yield binascii.a2b_base64(data[:cut])
        if len(carry) >= 2:
            carry += b"=" * (-len(carry) % 4)
            try:
                yield binascii.a2b_base64(carry)
            except binascii.Error:
                pass
    elif enc == "quoted-printable":
        pos = start
        while pos < end:
            stop = min(pos + chunk, end)
            if stop < end:
                nl = raw.rfind(b"\n", pos, stop)
                if nl >= 0:
                    stop = nl + 1
                else:  # a line longer than a chunk: cut before an escape and blanks
                    data = bytes(raw[pos:stop])
                    keep = len(data.rstrip(b" \t"))
                    eq = data.rfind(b"=", max(0, keep - 2), keep)
                    if eq >= 0:
                        keep = len(data[:eq].rstrip(b" \t"))
                    stop = pos + keep if keep else stop
            # RFC 2045 §6.7 (3): white space at the end of a line (and of the body,
            # as Dovecot) is deleted
            yield binascii.a2b_qp(_QP_TRAILING.sub(b"", bytes(raw[pos:stop])))
            pos = stop
    else:
        for pos in range(start, end, chunk):
            yield bytes(raw[pos : min(pos + chunk, end)])


def decoded_body(raw: Any, part: Part) -> bytes:
    return b"".join(iter_decoded(raw, part))


def decoded_size(raw: Any, part: Part) -> int:
    """Octets of the body of ``part`` after undoing its own transfer encoding (JMAP size)."""
    if part.encoding not in _CONVERTED:
        return part.size
    return sum(len(c) for c in iter_decoded(raw, part))


#: Transfer encodings BINARY undoes (RFC 3516 §4.2); anything else is copied.
_CONVERTED = ("base64", "quoted-printable")
_CTE_BINARY = b"Content-Transfer-Encoding: binary"


def _binary_header(raw: Any, part: Part) -> bytes:
    """The header of an encoded part inside a BINARY container, as Dovecot rewrites it:
    every Content-Transfer-Encoding field removed and ``Content-Transfer-Encoding:
    binary`` added as the last field (the empty line, if any, stays last; a header cut
    by a delimiter stays without a final line end)."""
    start, end = part.header_start, part.body_start
    block = bytes(raw[start:end])
    eol = b"\n" if b"\n" in block and b"\r\n" not in block else b"\r\n"
    out = bytearray()
    pos = start
    for name, s, e in iter_header_lines(raw, start, end):
        if name == b"content-transfer-encoding":
            out += raw[pos:s]
            pos = e
    head = bytes(raw[pos:end])
    if head.endswith((b"\n\n", b"\n\r\n")) or head in (b"\n", b"\r\n"):
        cut = len(head) - (2 if head.endswith(b"\r\n") else 1)
        return bytes(out) + head[:cut] + _CTE_BINARY + eol + head[cut:]
    # no empty line: the header ran into a delimiter or the end of the message
    if head and not head.endswith(b"\n"):
        head += eol
    return bytes(out) + head + _CTE_BINARY + (eol if block.endswith(b"\n") else b"")


def _inner(part: Part) -> list[Part]:
    """The parts directly inside ``part``: a multipart's children, or the embedded message."""
    if part.children:
        return part.children
    return [part.message] if part.message is not None else []


def _binary_pieces(raw: Any, part: Part, pos: int, out: list[Any]) -> int:
    """Append to ``out`` the pieces of the BINARY form of what is inside ``part``
    (raw ranges ``(start, end)``, rewritten headers as bytes, encoded leaves as
    Part); returns the raw offset copied up to."""
    for k in _inner(part):
        inner = _inner(k)
        if k.encoding in _CONVERTED:
            out.append((pos, k.header_start))
            out.append(_binary_header(raw, k))
            pos = k.body_start
            if not inner:
                out.append(k)
                pos = k.body_end
                continue
        if inner:
            pos = _binary_pieces(raw, k, pos, out)
    return pos


def _binary_plan(raw: Any, part: Part) -> list[Any]:
    if not _inner(part):
        return [part]
    out: list[Any] = []
    pos = _binary_pieces(raw, part, part.body_start, out)
    out.append((pos, part.body_end))
    return out


def iter_binary(raw: Any, part: Part, chunk: int = 65536) -> Iterator[bytes]:
    """RFC 3516 BINARY[section] of ``part``, in chunks.

    A leaf is its decoded body (:func:`iter_decoded`). For a multipart or a
    message/rfc822 part the RFC leaves the form open; as Dovecot does, its body
    is copied with every base64 / quoted-printable part inside it decoded and
    that part's header saying ``Content-Transfer-Encoding: binary``.
    """
    for piece in _binary_plan(raw, part):
        if isinstance(piece, tuple):
            for pos in range(piece[0], piece[1], chunk):
                yield bytes(raw[pos : min(pos + chunk, piece[1])])
        elif isinstance(piece, bytes):
            yield piece
        else:
            yield from iter_decoded(raw, piece, chunk)


def binary_size(raw: Any, part: Part) -> int:
    """RFC 3516 §4.2 BINARY.SIZE: the length of :func:`iter_binary` (Dovecot's answer)."""
    total = 0
    for piece in _binary_plan(raw, part):
        if isinstance(piece, tuple):
            total += piece[1] - piece[0]
        elif isinstance(piece, bytes):
            total += len(piece)
        else:
            total += decoded_size(raw, piece)
    return total


def part_text(raw: Any, part: Part, limit: int | None = None) -> str:
    """Decoded text of a text part, in its declared charset (best effort)."""
    if part.encoding not in _CONVERTED and (limit is None or limit >= 0):
        # nothing to undo (iter_decoded's chunks would be the body as written): one slice
        end = part.body_end if limit is None else min(part.body_end, part.body_start + limit)
        data = bytes(raw[part.body_start : end])
    elif limit is None:
        data = decoded_body(raw, part)
    else:
        buf = bytearray()
        for c in iter_decoded(raw, part):
            buf += c
            if len(buf) >= limit:
                break
        data = bytes(buf[:limit])
    codec = lookup_charset(part.params.get("charset"))
    if codec:
        return data.decode(codec, "replace")
    return decode_bytes(data)


_TAG = re.compile(r"<(script|style)\b.*?</\1\s*>|<!--.*?-->|<[^>]*>", re.S | re.I)
_WS = re.compile(r"\s+")


def _html_to_text(html: str) -> str:
    import html as _html

    return _html.unescape(_TAG.sub(" ", html))


def preview(raw: Any, structure: MessageStructure, max_chars: int = 200) -> str:
    """RFC 8970 PREVIEW / RFC 8621 preview: the first ``max_chars`` characters of the text."""
    from mailsrv.mime.jmap import text_parts

    for part in text_parts(structure):
        # read a bounded prefix: 4 bytes per character, and more for HTML markup
        limit = max_chars * (64 if part.subtype == "html" else 8)
        text = part_text(raw, part, limit)
        if part.subtype == "html":
            text = _html_to_text(text)
        text = _WS.sub(" ", text).strip()
        if text:
            return text[:max_chars]
    return ""
