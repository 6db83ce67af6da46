"""RFC 3501 §2.3.2 \\Recent: a message is recent in exactly one session, the first told of it.

Session tests over the in-memory store; the cross-process rule (the store's durable mark,
claimed by SELECT on two worker processes) is tested over ``mailsrv serve`` in test_serve.py.
"""

from __future__ import annotations

import asyncio

from test_session import Driver

from mailsrv.imap.memory import MemoryStore

MSG = b"From: a@example.test\r\nSubject: s\r\n\r\nbody\r\n"


async def _session(store: MemoryStore) -> Driver:
    d = Driver(store)
    assert (await d(b"a LOGIN u p"))[-1].startswith(b"a OK")
    return d


async def _setup(n: int, sessions: int = 2) -> tuple[MemoryStore, list[Driver]]:
    """A store whose INBOX holds ``n`` messages, and ``sessions`` logged-in sessions."""
    store = MemoryStore()
    await _append(store, n)
    return store, [await _session(store) for _ in range(sessions)]


async def _append(store: MemoryStore, n: int) -> None:
    acct = await store.account("1")
    for _ in range(n):
        await acct.append("INBOX", MSG)


def test_first_select_takes_recent_and_the_second_sees_none() -> None:
    async def go() -> None:
        store, (a, b) = await _setup(3)
        assert b"* 3 RECENT" in await a(b"s SELECT INBOX")
        assert await a(b"f FETCH 1:* (FLAGS)") == [
            b"* 1 FETCH (FLAGS (\\Recent))", b"* 2 FETCH (FLAGS (\\Recent))", b"* 3 FETCH (FLAGS (\\Recent))",
            b"f OK FETCH completed"]
        assert await a(b"r SEARCH RECENT") == [b"* SEARCH 1 2 3", b"r OK SEARCH completed"]
        assert await a(b"o SEARCH OLD") == [b"* SEARCH", b"o OK SEARCH completed"]
        assert b"* 0 RECENT" in await b(b"s SELECT INBOX")
        assert await b(b"f FETCH 1 (FLAGS)") == [b"* 1 FETCH (FLAGS ())", b"f OK FETCH completed"]
        assert await b(b"r SEARCH RECENT") == [b"* SEARCH", b"r OK SEARCH completed"]
        # a new SELECT is a new claim: nothing arrived since, so nothing is recent any more
        assert b"* 0 RECENT" in await a(b"s2 SELECT INBOX")

    asyncio.run(go())


def test_new_mail_is_recent_in_the_first_session_told() -> None:
    async def go() -> None:
        store, (a, b, c) = await _setup(1, 3)
        await a(b"s SELECT INBOX")
        await b(b"s SELECT INBOX")
        await _append(store, 2)
        assert await b(b"n NOOP") == [b"* 3 EXISTS", b"* 2 RECENT", b"n OK NOOP completed"]
        # a still holds message 1 from its SELECT; b took the two new ones
        assert await a(b"n NOOP") == [b"* 3 EXISTS", b"* 1 RECENT", b"n OK NOOP completed"]
        assert await b(b"s SEARCH NEW") == [b"* SEARCH 2 3", b"s OK SEARCH completed"]
        assert await a(b"s SEARCH NEW") == [b"* SEARCH 1", b"s OK SEARCH completed"]
        # STATUS RECENT counts what no session has claimed
        assert await c(b"t STATUS INBOX (RECENT MESSAGES)") == [
            b"* STATUS INBOX (RECENT 0 MESSAGES 3)", b"t OK STATUS completed"]
        await _append(store, 1)
        assert await c(b"t STATUS INBOX (RECENT)") == [b"* STATUS INBOX (RECENT 1)", b"t OK STATUS completed"]

    asyncio.run(go())


def test_examine_does_not_take_recent_from_the_next_select() -> None:
    async def go() -> None:
        store, (a, b) = await _setup(2)
        assert b"* 2 RECENT" in await a(b"e EXAMINE INBOX")
        assert await a(b"f FETCH 2 (FLAGS)") == [b"* 2 FETCH (FLAGS (\\Recent))", b"f OK FETCH completed"]
        await _append(store, 1)
        # a read-only session sees a new message as recent too, without claiming it
        assert await a(b"n NOOP") == [b"* 3 EXISTS", b"* 3 RECENT", b"n OK NOOP completed"]
        assert b"* 3 RECENT" in await b(b"s SELECT INBOX")
        assert b"* 0 RECENT" in await a(b"e EXAMINE INBOX")

    asyncio.run(go())


def test_imap4rev2_sessions_have_no_recent_and_take_none() -> None:
    async def go() -> None:
        store, (a, b) = await _setup(2)
        await a(b"e ENABLE IMAP4rev2")
        out = await a(b"s SELECT INBOX")
        assert not any(b"RECENT" in line for line in out)
        assert await a(b"f FETCH 1 (FLAGS)") == [b"* 1 FETCH (FLAGS ())", b"f OK FETCH completed"]
        await _append(store, 1)
        assert await a(b"n NOOP") == [b"* 3 EXISTS", b"n OK NOOP completed"]
        # nothing was claimed by the rev2 session: the rev1 session gets all three
        assert b"* 3 RECENT" in await b(b"s SELECT INBOX")
        # a session that turns IMAP4rev2 on while selected stops showing \Recent
        await b(b"e ENABLE IMAP4rev2")
        assert await b(b"f FETCH 1 (FLAGS)") == [b"* 1 FETCH (FLAGS ())", b"f OK FETCH completed"]

    asyncio.run(go())


def test_recent_in_streamed_and_index_fetches() -> None:
    async def go() -> None:
        store = MemoryStore()
        acct = await store.account("1")
        big = MSG + b"x" * (2 * 1024 * 1024) + b"\r\n"
        await acct.append("INBOX", big, frozenset({"\\Seen"}))
        a = await _session(store)
        await a(b"s SELECT INBOX")
        out = await a(b"f FETCH 1 (FLAGS UID BODY.PEEK[])")
        assert out[0].startswith(b"* 1 FETCH (FLAGS (\\Seen \\Recent) UID 1 BODY[] {")
        out = await a(b"g FETCH 1 (FLAGS RFC822.SIZE MODSEQ)")
        assert out[0] == b"* 1 FETCH (FLAGS (\\Seen \\Recent) RFC822.SIZE %d MODSEQ (%d))" % (
            len(big), (await acct.mailbox_status("INBOX")).highestmodseq)

    asyncio.run(go())
