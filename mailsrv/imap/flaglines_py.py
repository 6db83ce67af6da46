"""``* n FETCH ([UID u ]FLAGS (...))`` lines of an index-only FETCH, the hot loop of a client's sync,
and the flag SEARCH (``SEARCH UNSEEN``) of a big mailbox: positions and the numbers' text.

The pure-Python twin (the specification) of ``mailsrv._speedups.flaglines_c``; use the
selector :mod:`mailsrv.imap.flaglines`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def flags_text(flags: frozenset[str], recent: bool) -> bytes:
    """``(\\Flag ...)`` in a stable order (sorted), ``\\Recent`` last when the session holds it."""
    return b"(" + " ".join(sorted(flags) + (["\\Recent"] if recent else [])).encode("utf-8") + b")"


def fetch_flags_lines(seqs: Sequence[int], messages: Sequence[Any], with_uid: bool,
                      cache: dict[frozenset[str], bytes], recent: set[int] | frozenset[int]) -> bytes:
    """The FETCH FLAGS responses of ``messages`` (parallel to ``seqs``) as one buffer.

    ``cache`` maps a flag set to its text (shared across calls of one command); messages whose
    uid is in ``recent`` get ``\\Recent`` added.
    """
    lines: list[bytes] = []
    add = lines.append
    get = cache.get
    for seq, info in zip(seqs, messages, strict=True):
        flags = info.flags
        text: bytes | None
        if recent and info.uid in recent:
            text = flags_text(flags, True)
        else:
            text = get(flags)
            if text is None:
                text = cache[flags] = flags_text(flags, False)
        if with_uid:
            add(b"* %d FETCH (UID %d FLAGS %s)\r\n" % (seq, info.uid, text))
        else:
            add(b"* %d FETCH (FLAGS %s)\r\n" % (seq, text))
    return b"".join(lines)


def flag_positions(messages: Sequence[Any], flag: str, want: bool) -> list[int]:
    """Positions (sequence number - 1) of the messages whose flags hold ``flag`` (``want``) or
    lack it (not ``want``), ascending: SEARCH SEEN / UNSEEN / DELETED ... over a view."""
    return [i for i, m in enumerate(messages) if (flag in m.flags) is want]


def search_numbers(messages: Sequence[Any], positions: Sequence[int], uid: bool) -> bytes:
    """``b" n n ..."``: for each position its message's uid (``uid``) or its sequence number
    (position + 1), the numbers of a ``* SEARCH`` response."""
    if uid:
        return b"".join(b" %d" % messages[i].uid for i in positions)
    return b"".join(b" %d" % (i + 1) for i in positions)
