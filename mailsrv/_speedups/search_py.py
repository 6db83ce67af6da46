"""Search index hot loops, pure Python: the specification of ``search_c``.

Term dictionary scans used to expand a query word to every indexed term that
contains it (IMAP SEARCH is substring matching, RFC 9051 §6.4.4), and the
confirmation of candidates against the mapped text cache.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

__all__ = ["add_postings", "confirm", "filter_containing", "header_texts", "terms_containing"]


def terms_containing(word: str, vocab: list[str]) -> list[int]:
    """Ids (positions in ``vocab``) of the terms that contain ``word``, ascending."""
    return [i for i, t in enumerate(vocab) if word in t]


def filter_containing(word: str, vocab: list[str], ids: Iterable[int]) -> list[int]:
    """The ids of ``ids`` (ascending) whose term contains ``word``."""
    return [i for i in ids if word in vocab[i]]


def confirm(buf: Any, cand: Iterable[int], locs: dict[int, tuple[int, int]], fields: tuple[int, ...],
            nfields: int, needle: bytes) -> list[int]:
    """UIDs of ``cand`` (ascending) whose text record has ``needle`` in one of ``fields``.

    ``buf`` is the text cache (bytes-like, e.g. an mmap); ``locs[uid]`` the
    (offset, length) of the uid's record: ``nfields`` little-endian u32 field
    lengths, then the fields' UTF-8 bytes. A record that does not fit in
    ``buf`` or whose lengths do not add up does not match.
    """
    out: list[int] = []
    size = len(buf)
    head = 4 * nfields
    for uid in cand:
        loc = locs.get(uid)
        if loc is None:
            continue
        off, n = loc
        if off < 0 or n < head or off + n > size:
            continue
        lens = struct.unpack_from(f"<{nfields}I", buf, off)
        if sum(lens) + head != n:
            continue
        for f in fields:
            start = off + head + sum(lens[:f])
            end = start + lens[f]
            if buf.find(needle, start, end) >= 0:
                out.append(uid)
                break
    return out


def add_postings(post: dict[str, Any], uid: int, terms: Iterable[str], factory: Any) -> list[str]:
    """Add ``uid`` to the posting of every term in ``terms`` (each once); returns the new terms.

    A term seen in one message holds that UID as an ``int``; ``factory(uids)``
    makes the posting (a pyroaring BitMap) when a second message has it.
    """
    new: list[str] = []
    for t in terms if type(terms) is set else set(terms):  # a set (IndexCore.add's) is not copied
        v = post.get(t)
        if v is None:
            post[t] = uid  # a term of one message holds its UID (memory)
            new.append(t)
        elif type(v) is int:
            if v != uid:
                post[t] = factory([v, uid])
        else:
            v.add(uid)
    return new


def header_texts(raw: bytes, start: int, end: int, limit: int) -> list[tuple[bytes, bytes, str | None]]:
    """The header fields of ``raw[start:end]`` (at most ``limit``) for search extraction, found as
    ``mime.body.iter_header_lines`` finds them: (lower-case name, value after the first colon without
    its trailing CR/LF, text). A field starts at a line with a colon after its first byte and takes
    the lines that begin with a space or a tab after it; the empty line ends the block. The text of
    a plain ASCII value (no "=?" once unfolded) is the value unfolded (CR and LF removed) and
    stripped of spaces and tabs; None: the caller decodes the value (RFC 2047, 8-bit bytes)."""
    out: list[tuple[bytes, bytes, str | None]] = []
    first, stop = max(start, 0), min(end, len(raw))
    if stop <= first:
        return out
    lines = raw[first:stop].split(b"\n")
    ends = len(lines) - 1  # lines but the last end with the LF split off
    field: tuple[bytes, int] | None = None  # the field being read: (name, its offset in raw)
    at = first
    for i, line in enumerate(lines):
        if i == ends and not line:
            break  # the block ended with its last line's LF
        if i < ends and line in (b"", b"\r"):
            break  # the empty line
        if field is not None and line[:1] not in (b" ", b"\t"):
            out.append(_field(raw, field[0], field[1], at))
            field = None
        name, colon, _ = line.partition(b":")
        if field is None and colon and name and len(out) < limit:
            field = (name.rstrip(b" \t").lower(), at)
        at += len(line) + (i < ends)
    if field is not None:
        out.append(_field(raw, field[0], field[1], at))
    return out[: max(limit, 0)]


def _field(raw: bytes, name: bytes, a: int, b: int) -> tuple[bytes, bytes, str | None]:
    field = raw[a:b]
    value = field[field.find(b":") + 1 :].rstrip(b"\r\n")
    plain = value.replace(b"\r", b"").replace(b"\n", b"").strip(b" \t")
    text = plain.decode("ascii") if plain.isascii() and b"=?" not in plain else None
    return name, value, text
