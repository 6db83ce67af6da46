"""The store-backed maildrop: sizes that match RETR, UIDLs, the lock, expunge seen by another view."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pop3fakes import FakeAccount

from mailsrv.config import StoreConfig
from mailsrv.pop3.grammar import BodyEncoder, unstuff, wire_size
from mailsrv.pop3.maildrop import InUse, StoreMaildrops, dovecot_uidl
from mailsrv.store import Store

ACCT = FakeAccount(11, "carol@example.test", "mail/example.test/carol")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    st = Store(StoreConfig(), tmp_path)
    yield st
    await st.close()


def corpus_messages(corpus: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(corpus.rglob("*.eml"))[:30]]


async def retr(drop: object, uid: int, crlf: bool = False) -> bytes:
    enc = BodyEncoder(crlf=crlf)
    out = bytearray()
    offset = 0
    while True:
        chunk = await drop.read(uid, offset, 4096)  # type: ignore[attr-defined]
        out += enc.feed(chunk)
        offset += len(chunk)
        if len(chunk) < 4096:
            break
    return unstuff(bytes(out + enc.finish()))


async def test_sizes_match_retr_for_lf_crlf_and_corpus(store: Store, tmp_path: Path, corpus: Path) -> None:
    acct = await store.account(str(ACCT.id), tmp_path / ACCT.store)
    raws = [b"Subject: lf\n\n.dot\nbody\n", b"Subject: crlf\r\n\r\nbody\r\n", b"Subject: no eol\n\nlast"]
    raws += corpus_messages(corpus)
    assert len(raws) == 33
    for raw in raws:
        await acct.append("INBOX", raw)
    drops = StoreMaildrops(store, tmp_path)
    drop = await drops.open(ACCT)
    try:
        view = await acct.open_mailbox("INBOX")
        assert [m.uid for m in drop.messages] == [m.uid for m in view.messages]
        # CRLF throughout and at the end: RETR skips the look for bare LF (and sends the same)
        assert [m.crlf for m in drop.messages[:3]] == [False, True, False]
        for msg, raw in zip(drop.messages, raws, strict=True):
            assert msg.size == wire_size(raw)
            assert msg.crlf == (len(raw) == wire_size(raw))
            assert msg.uidl == dovecot_uidl(msg.uid, view.uidvalidity)
            assert len(await retr(drop, msg.uid, msg.crlf)) == msg.size
            assert await retr(drop, msg.uid, msg.crlf) == await retr(drop, msg.uid)
    finally:
        await drop.close()
    # the sizes are cached per worker: a second login reads nothing to count them
    drop = await drops.open(ACCT)
    assert [m.size for m in drop.messages] == [wire_size(r) for r in raws]
    assert [m.crlf for m in drop.messages[:3]] == [False, True, False]
    await drop.close()


async def test_a_size_from_a_dovecot_name_is_not_taken_for_crlf(store: Store, tmp_path: Path) -> None:
    await store.account(str(ACCT.id), tmp_path / ACCT.store)  # the maildir exists
    raw = b"Subject: adopted\r\n\r\nbody\r\n"
    cur = tmp_path / ACCT.store / "cur"
    (cur / f"1700000000.M1P1.old,S={len(raw)},W={len(raw)}:2,S").write_bytes(raw)  # Dovecot's own word
    drop = await StoreMaildrops(store, tmp_path).open(ACCT)
    try:
        assert [(m.size, m.crlf) for m in drop.messages] == [(len(raw), False)]
    finally:
        await drop.close()


async def test_lock_and_expunge_seen_by_another_view(store: Store, tmp_path: Path) -> None:
    acct = await store.account(str(ACCT.id), tmp_path / ACCT.store)
    uids = [await acct.append("INBOX", b"Subject: %d\r\n\r\nx\r\n" % i) for i in range(3)]
    imap_view = await acct.open_mailbox("INBOX")
    drops = StoreMaildrops(store, tmp_path)
    drop = await drops.open(ACCT)
    with pytest.raises(InUse):
        await drops.open(ACCT)
    other_worker = StoreMaildrops(store, tmp_path)  # same lock directory, separate object
    with pytest.raises(InUse):
        await other_worker.open(ACCT)
    await drop.expunge([uids[0], uids[2]])
    changes = await imap_view.refresh()
    assert changes.expunged == [uids[0], uids[2]]
    await drop.close()
    again = await other_worker.open(ACCT)
    assert [m.uid for m in again.messages] == [uids[1]]
    await again.close()


async def test_last_login_is_kept_in_the_lock_file(store: Store, tmp_path: Path) -> None:
    drops = StoreMaildrops(store, tmp_path)
    drop = await drops.open(ACCT)
    assert drop.last_login is None
    await drop.record_login()
    await drop.close()
    drop = await StoreMaildrops(store, tmp_path).open(ACCT)  # another worker's view of the same file
    assert drop.last_login is not None and abs(drop.last_login - time.time()) < 60
    await drop.close()


async def test_expire_days_removes_old_retrievals_at_login(store: Store, tmp_path: Path) -> None:
    acct = await store.account(str(ACCT.id), tmp_path / ACCT.store)
    uids = [await acct.append("INBOX", b"Subject: %d\r\n\r\nx\r\n" % i) for i in range(3)]
    imap_view = await acct.open_mailbox("INBOX")
    now = [1_000_000.0]
    drops = StoreMaildrops(store, tmp_path, expire_days=2, clock=lambda: now[0])
    drop = await drops.open(ACCT)
    await drop.note_retrieved([uids[0]])
    await drop.close()
    now[0] += 86400  # one day later: kept; a second retrieval does not restart the clock
    drop = await drops.open(ACCT)
    assert [m.uid for m in drop.messages] == uids
    await drop.note_retrieved([uids[0], uids[1]])
    await drop.close()
    now[0] += 86400 + 1  # two days after the first retrieval of uid 1, one after uid 2's
    drop = await drops.open(ACCT)
    assert [m.uid for m in drop.messages] == uids[1:]
    await drop.close()
    assert (await imap_view.refresh()).expunged == [uids[0]]
    now[0] += 86400
    drop = await drops.open(ACCT)
    assert [m.uid for m in drop.messages] == [uids[2]]  # never retrieved: kept
    await drop.close()


async def test_login_counts_sizes_in_batches_and_read_first(store: Store, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from mailsrv.store.account import Account

    acct = await store.account(str(ACCT.id), tmp_path / ACCT.store)
    raws = [b"Subject: %d\n\nline\n.dot %d\n" % (i, i) for i in range(150)]
    for raw in raws:
        await acct.append("INBOX", raw)
    single: list[int] = []
    batched: list[int] = []
    read_message, read_messages = Account.read_message, Account.read_messages

    async def one(self: Account, mailbox: str, uid: int, *a: object, **kw: object) -> bytes:
        single.append(uid)
        return await read_message(self, mailbox, uid, *a, **kw)  # type: ignore[arg-type]

    async def many(self: Account, mailbox_id: str, uids: list[int]) -> dict[int, bytes]:
        batched.append(len(uids))
        return await read_messages(self, mailbox_id, uids)

    monkeypatch.setattr(Account, "read_message", one)
    monkeypatch.setattr(Account, "read_messages", many)
    drop = await StoreMaildrops(store, tmp_path).open(ACCT)
    try:
        assert [m.size for m in drop.messages] == [wire_size(r) for r in raws]
        assert single == [] and sum(batched) == 150 and len(batched) <= 3  # 64 a batch, not 150 reads
        uids = [m.uid for m in drop.messages]
        await acct.expunge("INBOX", [uids[1]], only_deleted=False)  # gone for read_first: left out
        first = await drop.read_first(uids[:3], 8)
        assert first == {uids[0]: raws[0][:8], uids[2]: raws[2][:8]}
    finally:
        await drop.close()


async def test_login_size_count_holds_no_more_than_piecewise_reads(store: Store, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """DESIGN.md "what bad input gets": a batch of the login's size count holds no more message bytes than
    one piecewise read (READ_CHUNK), so a login holds at most SIZE_SCAN_CONCURRENCY of them at once."""
    from mailsrv.pop3.maildrop import READ_CHUNK, SIZE_SCAN_CONCURRENCY
    from mailsrv.store.account import Account

    acct = await store.account(str(ACCT.id), tmp_path / ACCT.store)
    raws = [b"Subject: %d\n\n" % i + b"x" * (90_000 + i) + b"\n" for i in range(24)]
    for raw in raws:
        await acct.append("INBOX", raw)
    held: list[int] = []
    read_messages = Account.read_messages

    async def many(self: Account, mailbox_id: str, uids: list[int]) -> dict[int, bytes]:
        out = await read_messages(self, mailbox_id, uids)
        held.append(sum(len(d) for d in out.values()))
        return out

    monkeypatch.setattr(Account, "read_messages", many)
    drop = await StoreMaildrops(store, tmp_path).open(ACCT)
    try:
        assert [m.size for m in drop.messages] == [wire_size(r) for r in raws]
        assert held and max(held) <= READ_CHUNK, held
        assert max(held) * SIZE_SCAN_CONCURRENCY <= 2 << 20
    finally:
        await drop.close()


@pytest.mark.parametrize("drop_recent", [True, False])
async def test_login_drops_recent_and_mark_seen_sets_the_flag(store: Store, tmp_path: Path, drop_recent: bool) -> None:
    """As Dovecot: without pop3_no_flag_updates the login takes the snapshot's \\Recent (no IMAP session sees
    them recent after it); mark_seen adds \\Seen in the store, skipping a message expunged meanwhile."""
    acct = await store.account(str(ACCT.id), tmp_path / ACCT.store)
    uids = [await acct.append("INBOX", b"Subject: %d\r\n\r\nx\r\n" % i) for i in range(3)]
    drop = await StoreMaildrops(store, tmp_path, drop_recent=drop_recent).open(ACCT)
    later = await acct.append("INBOX", b"Subject: after the login\r\n\r\nx\r\n")
    assert await acct.recent_count("INBOX") == (1 if drop_recent else 4)  # a later message stays recent
    await acct.expunge("INBOX", [uids[2]], only_deleted=False)
    await drop.mark_seen([uids[0], uids[2]])
    await drop.close()
    flags = {m.uid: m.flags for m in (await acct.open_mailbox("INBOX")).messages}
    assert flags == {uids[0]: frozenset({"\\Seen"}), uids[1]: frozenset(), later: frozenset()}
