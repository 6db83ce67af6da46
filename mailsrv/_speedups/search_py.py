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
    its trailing CR/LF, text). The text of a plain ASCII value (no "=?" once unfolded) is the value
    unfolded (CR and LF removed) and stripped of spaces and tabs; None: the caller decodes the value
    (RFC 2047 encoded words, 8-bit bytes)."""
    out: list[tuple[bytes, bytes, str | None]] = []
    if limit <= 0:
        return out
    pos = max(start, 0)
    end = min(end, len(raw))
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
            out.append(_field(raw, cur_name, cur_start, pos))
            if len(out) >= limit:
                return out
            cur_start = -1
        colon = line.find(b":")
        if colon > 0:
            cur_name = line[:colon].rstrip(b" \t").lower()
            cur_start = pos
        pos = nxt
    if cur_start >= 0:
        out.append(_field(raw, cur_name, cur_start, pos))
    return out


def _field(raw: bytes, name: bytes, a: int, b: int) -> tuple[bytes, bytes, str | None]:
    field = raw[a:b]
    value = field[field.find(b":") + 1 :].rstrip(b"\r\n")
    plain = value.replace(b"\r", b"").replace(b"\n", b"").strip(b" \t")
    text = plain.decode("ascii") if plain.isascii() and b"=?" not in plain else None
    return name, value, text
