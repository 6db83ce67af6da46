"""Index-only FETCH: the batched fast path agrees with the general renderer, across batch edges."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st
from test_session import Driver

from mailsrv.imap import fetch as fetchmod
from mailsrv.imap.flaglines import fetch_flags_lines
from mailsrv.imap.grammar import FetchAtt
from mailsrv.imap.memory import MemoryStore, MessageInfo
from mailsrv.imap.messages import FETCH_BATCH

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


def test_fetch_across_batches_in_order_with_recent() -> None:
    async def go() -> None:
        store = MemoryStore()
        acct = await store.account("1")
        n = FETCH_BATCH * 2 + 5
        for i in range(n):
            await acct.append("INBOX", b"Subject: %d\r\n\r\nx\r\n" % i, frozenset({"\\Seen"} if i % 2 else set()))
        d = Driver(store)
        await d(b"a LOGIN u p")
        await d(b"e EXAMINE INBOX")  # all recent, nothing claimed
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
