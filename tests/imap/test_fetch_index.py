"""Index-only FETCH: the batched fast path agrees with the general renderer, across batch edges."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from test_session import Driver

from mailsrv.imap import fetch as fetchmod
from mailsrv.imap.flaglines import fetch_flags_lines
from mailsrv.imap.grammar import FetchAtt
from mailsrv.imap.memory import MemoryStore, MessageInfo
from mailsrv.imap.messages import FETCH_BATCH, FIRST_FETCH_BATCH, _batches

FLAGS = ["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft", "$Junk", "work", "\u4e2d"]


def _info(uid: int, flags: frozenset[str]) -> MessageInfo:
    return MessageInfo(uid, f"k{uid}", flags, uid, 1.7e9, 1.7e9, 10, f"E{uid}", "")


@given(st.lists(st.tuples(st.integers(1, 50), st.frozensets(st.sampled_from(FLAGS)), st.booleans()), max_size=30),
       st.booleans())
def test_fast_lines_equal_the_general_renderer(rows: list[tuple[int, frozenset[str], bool]], with_uid: bool) -> None:
    infos, recent, seqs, uid = [], set(), [], 0
    for seq, (step, flags, is_recent) in enumerate(rows, 1):
        uid += step
        infos.append(_info(uid, flags))
        seqs.append(seq)
        if is_recent:
            recent.add(uid)
    cache: dict[frozenset[str], bytes] = {}
    got = fetch_flags_lines(seqs, infos, with_uid, cache, recent)
    atts = [FetchAtt("FLAGS")]
    want = b"".join(b"* %d FETCH " % s + fetchmod.render(atts, i, None, None, uid=with_uid, modseq=False,
                                                           recent=i.uid in recent) + b"\r\n"
                    for s, i in zip(seqs, infos, strict=True))
    assert got == want
    # a second call with the warm cache gives the same bytes
    assert fetch_flags_lines(seqs, infos, with_uid, cache, recent) == want


async def _mailbox(n: int, open_with: bytes) -> tuple[Driver, Any]:
    """A logged-in session over n small messages (every second one \\Seen), opened with ``open_with``."""
    store = MemoryStore()
    acct = await store.account("1")
    for i in range(n):
        await acct.append("INBOX", b"Subject: %d\r\n\r\nx\r\n" % i, frozenset({"\\Seen"} if i % 2 else set()))
    d = Driver(store)
    await d(b"a LOGIN u p")
    await d(b"o " + open_with + b" INBOX")
    return d, acct


def test_fetch_across_batches_in_order_with_recent() -> None:
    async def go() -> None:
        n = FETCH_BATCH * 2 + 5
        d, acct = await _mailbox(n, b"EXAMINE")  # all recent, nothing claimed
        out = await d(b"f UID FETCH 1:* (FLAGS)")
        assert len(out) == n + 1 and out[-1] == b"f OK UID FETCH completed"
        for k, line in enumerate(out[:-1]):
            flags = b"(\\Seen \\Recent)" if k % 2 else b"(\\Recent)"
            assert line == b"* %d FETCH (UID %d FLAGS %s)" % (k + 1, k + 1, flags)
        await d(b"s SELECT INBOX")
        await acct.append("INBOX", b"Subject: late\r\n\r\nx\r\n")
        out = await d(b"g FETCH 1:* (FLAGS RFC822.SIZE)")
        # the general path: also batched, and the new message is not reported inside FETCH
        assert len(out) == n + 1 and out[-1] == b"g OK FETCH completed"
        assert out[FETCH_BATCH] == b"* %d FETCH (FLAGS (\\Recent) RFC822.SIZE 20)" % (FETCH_BATCH + 1)
        assert out[-2] == b"* %d FETCH (FLAGS (\\Recent) RFC822.SIZE 20)" % n  # index n-1 is even: unseen
        assert (await d(b"n NOOP"))[:2] == [b"* %d EXISTS" % (n + 1), b"* %d RECENT" % (n + 1)]

    asyncio.run(go())


@given(st.integers(0, 5 * FETCH_BATCH))
def test_batches_cover_every_message_once_small_first(n: int) -> None:
    spans = list(_batches(n))
    assert [k for a, b in spans for k in range(a, b)] == list(range(n))
    sizes = [b - a for a, b in spans]
    if n:
        assert sizes[0] == min(n, FIRST_FETCH_BATCH)
    assert all(size <= FETCH_BATCH for size in sizes)
    assert all(later >= earlier for earlier, later in zip(sizes[:-2], sizes[1:-1], strict=True))


class _WriteLog:
    """Records each write of the session's channel and the waits between them."""

    def __init__(self, ch: object) -> None:
        self.writes: list[bytes] = []
        self.flushes: list[int] = []
        orig_write, orig_flush = ch.write, ch.flush  # type: ignore[attr-defined]

        def write(data: bytes) -> None:
            self.writes.append(bytes(data))
            orig_write(data)

        async def flush() -> None:
            self.flushes.append(len(self.writes))
            await orig_flush()

        ch.write, ch.flush = write, flush  # type: ignore[attr-defined]


def test_a_long_fetch_is_written_as_it_is_made_a_short_one_at_once() -> None:
    async def go() -> None:
        n = FIRST_FETCH_BATCH * 3 + 1
        d, _ = await _mailbox(n, b"SELECT")
        log = _WriteLog(d.s.ch)
        out = await d(b"f UID FETCH 1:* (FLAGS)")
        assert len(out) == n + 1 and out[-1] == b"f OK UID FETCH completed"
        # the first write is the first batch alone, each batch is handed over (and waited for) at once
        assert log.writes[0].count(b"\r\n") == FIRST_FETCH_BATCH
        assert log.writes[1].count(b"\r\n") == 2 * FIRST_FETCH_BATCH
        assert log.flushes[:2] == [1, 2]
        assert b"f OK" not in b"".join(log.writes[:-1])
        log.writes.clear()
        out = await d(b"g FETCH 1:2 (FLAGS)")
        assert out == [b"* 1 FETCH (FLAGS (\\Recent))", b"* 2 FETCH (FLAGS (\\Seen \\Recent))", b"g OK FETCH completed"]
        assert len(log.writes) == 1  # the lines and the tagged reply in one write

    asyncio.run(go())
