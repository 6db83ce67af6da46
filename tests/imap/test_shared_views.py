"""Sessions that have one mailbox selected share its MessageInfo objects: memory per session stays flat
across wake rounds (each new message is one object per process, not one per session)."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

from imaptest import Raw, ServerHandle, serve_real_store

from mailsrv.imap import shared
from mailsrv.store import Store

MSG = b"From: a@example.test\r\nTo: alice@example.test\r\nSubject: round %d\r\n\r\nhello\r\n"
SESSIONS = 40  # under the listener's 50 connections per address
ROUNDS = 10


def _store_bytes() -> int:
    """Bytes held now by what the store allocated (its MessageInfo objects and their strings)."""
    gc.collect()
    snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, "*/mailsrv/store/*")])
    return sum(stat.size for stat in snap.statistics("filename"))


def test_memory_per_session_stays_flat_across_wake_rounds(tmp_path: Path) -> None:
    with serve_real_store(tmp_path) as handle:  # no job recorder: it would keep what every refresh made
        _rounds(handle)


def _rounds(real_store: ServerHandle) -> None:
    writer = Raw(real_store.host, real_store.port)
    assert writer.cmd(b"l LOGIN alice@example.test wonderland")[-1].startswith(b"l OK")
    readers = []
    for _ in range(SESSIONS):
        c = Raw(real_store.host, real_store.port)
        assert c.cmd(b"l LOGIN alice@example.test wonderland")[-1].startswith(b"l OK")
        assert c.cmd(b"s SELECT INBOX")[-1].startswith(b"s OK")
        readers.append(c)
    tracemalloc.start()
    try:
        grown = []
        for r in range(ROUNDS + 1):
            msg = MSG % r
            writer.send(b"a APPEND INBOX {%d+}\r\n" % len(msg) + msg + b"\r\n")
            assert writer.until(b"a")[-1].startswith(b"a OK")
            for c in readers:  # each session's refresh: the wake round of an IDLE client
                out = c.cmd(b"n NOOP")
                assert out[-1].startswith(b"n OK") and out[0] == b"* %d EXISTS\r\n" % (r + 1), out
            grown.append(_store_bytes())
        per_session_round = (grown[-1] - grown[0]) / ROUNDS / SESSIONS
        # an unshared MessageInfo with its key, ids and flags is 300-500 bytes per session and round
        assert per_session_round < 150, f"{per_session_round:.0f} bytes per session and round"
    finally:
        tracemalloc.stop()
        for c in [writer, *readers]:
            c.close()


async def test_only_equal_messages_are_exchanged_and_the_last_session_drops_the_table(tmp_path: Path) -> None:
    store = Store(None, tmp_path)
    try:
        acct = await store.account("1")
        await acct.append("INBOX", b"Subject: one\r\n\r\nx\r\n")
        a, b = await acct.open_mailbox("INBOX"), await acct.open_mailbox("INBOX")
        ta = shared.acquire(a)
        assert ta is not None
        await acct.append("INBOX", b"Subject: alone\r\n\r\nz\r\n")
        shared.after_refresh(ta, a, await a.refresh())
        assert ta.by_uid == {}  # one session: nothing to share, no table entries
        tb = shared.acquire(b)
        assert ta is tb and ta.users == 2
        await b.refresh()
        await acct.append("INBOX", b"Subject: two\r\n\r\ny\r\n")
        await acct.store_flags("INBOX", [1], frozenset({"\\Seen"}), "add")
        for view in (a, b):
            shared.after_refresh(ta, view, await view.refresh())
        assert a.messages[2] is b.messages[2]  # the new message: one object
        assert a.messages[0] is b.messages[0] and a.messages[0].flags == {"\\Seen"}  # the changed one too
        older = a.messages[2]
        await acct.store_flags("INBOX", [3], frozenset({"\\Flagged"}), "add")
        newer = (await acct.open_mailbox("INBOX")).messages[2]
        assert newer.flags == {"\\Flagged"}
        assert ta.share(newer) is newer and ta.share(older) is older  # never another state than one's own
        assert ta.by_uid[3] is newer  # the table keeps the newest
        for _ in range(2):
            shared.release(ta)
        again = shared.acquire(a)
        assert again is not None and again is not ta  # the last release dropped it: a new table
        shared.release(again)
    finally:
        await store.close()
