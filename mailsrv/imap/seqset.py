"""IMAP sequence sets (RFC 9051 §9 ``sequence-set``): parsing result and membership.

A set is kept as the client wrote it (ranges with ``*`` unresolved) and is
resolved against a mailbox's largest number when evaluated, because ``*`` means
"the largest number in use" at evaluation time (RFC 9051 §9, ``seq-number``).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

#: ``*`` inside a range: the largest number in use.
STAR = 0


@dataclass(frozen=True)
class SequenceSet:
    """Ranges ``(lo, hi)`` with ``STAR`` (0) for ``*``; ``saved`` is the SEARCHRES ``$``."""

    ranges: tuple[tuple[int, int], ...] = ()
    saved: bool = False

    def resolved(self, largest: int) -> list[tuple[int, int]]:
        """Ranges with ``*`` replaced by ``largest`` and each range ordered low-high.

        RFC 9051 §9: "2:4" and "4:2" are equivalent; "*" with an empty mailbox
        is resolved to 0 by the caller's ``largest`` and matches nothing.
        """
        out = []
        for lo, hi in self.ranges:
            a = largest if lo == STAR else lo
            b = largest if hi == STAR else hi
            if a > b:
                a, b = b, a
            out.append((a, b))
        return out

    def contains(self, n: int, largest: int) -> bool:
        return any(a <= n <= b for a, b in self.resolved(largest))

    def select(self, sorted_values: Sequence[int], largest: int | None = None) -> list[int]:
        """Members of ``sorted_values`` (ascending, unique) that are in the set, ascending.

        Cost: O(ranges * log n + result), so ``1:*`` over a big mailbox stays cheap.
        """
        if largest is None:
            largest = sorted_values[-1] if sorted_values else 0
        result: list[int] = []
        ranges = sorted(self.resolved(largest))
        # Merge overlapping ranges so each value is emitted once.
        merged: list[list[int]] = []
        for a, b in ranges:
            if merged and a <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        for a, b in merged:
            i = bisect_left(sorted_values, a)
            j = bisect_right(sorted_values, b)
            result.extend(sorted_values[i:j])
        return result

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.ranges)


def format_uids(uids: Sequence[int]) -> str:
    """Compact ``1:3,7,9:10`` form, keeping the given order (UIDPLUS lists must correspond)."""
    parts: list[str] = []
    i = 0
    n = len(uids)
    while i < n:
        j = i
        while j + 1 < n and uids[j + 1] == uids[j] + 1:
            j += 1
        parts.append(str(uids[i]) if i == j else f"{uids[i]}:{uids[j]}")
        i = j + 1
    return ",".join(parts)

