"""Search index hot loops, pure Python: the specification of ``search_c``.

Term dictionary scans used to expand a query word to every indexed term that
contains it (IMAP SEARCH is substring matching, RFC 9051 §6.4.4), and the
confirmation of candidates against the mapped text cache.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

__all__ = ["add_postings", "confirm", "filter_containing", "terms_containing"]


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
    for t in set(terms):
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
