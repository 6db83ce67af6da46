"""Search index hot loops, pure Python: the specification of ``search_c``.

Term dictionary scans used to expand a query word to every indexed term that
contains it (IMAP SEARCH is substring matching, RFC 9051 §6.4.4).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["filter_containing", "terms_containing"]


def terms_containing(word: str, vocab: list[str]) -> list[int]:
    """Ids (positions in ``vocab``) of the terms that contain ``word``, ascending."""
    return [i for i, t in enumerate(vocab) if word in t]


def filter_containing(word: str, vocab: list[str], ids: Iterable[int]) -> list[int]:
    """The ids of ``ids`` (ascending) whose term contains ``word``."""
    return [i for i in ids if word in vocab[i]]
