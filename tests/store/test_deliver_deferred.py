"""Deliveries acknowledged once durable in new/ and indexed later by the store's background indexer.

``store.deliver(..., uids=False)`` returns when the file and its ``new/`` entry are
fsync'd; the UID comes from :class:`mailsrv.store.store.Indexer` (one index
transaction per mailbox per round). The kill -9 trials prove the promise: what
was acknowledged is found after a restart, indexed exactly once, with a UID
never used before.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from support.forked import read_pipe, spawn
from support.server import wait_until_async
from support.spool import spool_files

from mailsrv.config import StoreConfig
from mailsrv.store import DeliveryTarget, QuotaLimits, Store
from mailsrv.store import store as store_mod
from mailsrv.util import fsio

from .conftest import msg, spool

MSGID = re.compile(rb"Message-ID: <m([^@>]+)@")
Run = Callable[[Awaitable[Any]], Any]


class Recorder:
    """A store observer that records message_added calls."""

    def __init__(self) -> None:
        self.added: list[tuple[str, int]] = []
        self.modseqs: list[int] = []

    def message_added(self, account_id: str, mailbox_id: str, info: Any, structure: Any) -> None:
        self.added.append((account_id, info.uid))
        self.modseqs.append(info.modseq)

    def messages_expunged(self, account_id: str, mailbox_id: str, uids: Any) -> None:
        pass

    def flags_changed(self, account_id: str, mailbox_id: str, infos: Any) -> None:
        pass


async def deliver_many(store: Store, tmp_path: Path, accts: list[Any], n: int) -> list[Any]:
    """``n`` concurrent deferred deliveries, message i to ``accts[i % len(accts)]``; results once indexed."""
    out = await asyncio.gather(*(
        store.deliver(spool(tmp_path, msg(i), f"s{i}"), [DeliveryTarget(accts[i % len(accts)])], uids=False)
        for i in range(n)))
    await store.indexer.flush()
    return [r for rs in out for r in rs]


def _files(root: Path, sub: str) -> list[str]:
    return [n for n in os.listdir(root / sub) if not n.startswith(".")]


def test_acknowledged_in_new_then_indexed_once(tmp_path: Path, run: Run, make_store: Callable[..., Store]) -> None:
    store = make_store(index_delay=0.0)
    rec = Recorder()
    store.add_observer(rec)
    acct = run(store.account("u"))
    root = tmp_path / "mail" / "u"

    async def go() -> tuple[Any, list[str], list[str]]:
        res = await store.deliver(spool(tmp_path, msg(1)), [DeliveryTarget(acct)], uids=False)
        # on return: durable in new/, not yet indexed (the indexer runs on the next loop turns)
        in_new, in_cur = _files(root, "new"), _files(root, "cur")
        await store.indexer.flush()
        return res, in_new, in_cur

    [res], in_new, in_cur = run(go())
    assert res.status == "ok" and res.uid is None
    assert len(in_new) == 1 and in_cur == []
    assert _files(root, "new") == [] and len(_files(root, "cur")) == 1
    assert rec.added == [("u", 1)]  # published once, after the UID was committed
    assert acct.engine.pending == {}
    view = run(acct.open_mailbox("INBOX"))
    assert [m.uid for m in view.messages] == [1]
    assert b"body 1" in run(acct.read_message("INBOX", 1))
    assert store.indexer.queued == 1 and store.indexer.rounds == 1


def test_concurrent_deliveries_share_index_transactions(tmp_path: Path, run: Run,
                                                        make_store: Callable[..., Store]) -> None:
    store = make_store(index_delay=0.01)
    accts = [run(store.account(f"u{i}")) for i in range(3)]

    results = run(deliver_many(store, tmp_path, accts, 60))
    assert [r.status for r in results] == ["ok"] * 60
    assert store.indexer.queued == 60
    assert store.indexer.batches < 30, store.indexer.batches  # mailbox transactions, not one per message
    seen: set[bytes] = set()
    for i, a in enumerate(accts):
        view = run(a.open_mailbox("INBOX"))
        assert [m.uid for m in view.messages] == list(range(1, 21))
        for m in view.messages:
            found = MSGID.search(run(a.read_message("INBOX", m.uid)))
            assert found is not None and int(found.group(1)) % 3 == i
            seen.add(found.group(1))
        assert _files(tmp_path / "mail" / f"u{i}", "new") == []
    assert len(seen) == 60


def test_the_index_delay_grows_only_while_delivery_rounds_run(tmp_path: Path, run: Run,
                                                               make_store: Callable[..., Store],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """``index_delay_busy``: a round waits index_delay, then more steps of it while the worker's
    delivery rounds run (fsio.foreground busy), up to index_delay_busy; its batch gives way in
    proportion. With nothing running it starts after index_delay."""
    budgets: list[float | None] = []
    real = store_mod._index_batch

    def spy(batch: Any, budget: float | None = None) -> Any:
        budgets.append(budget)
        return real(batch, budget)

    monkeypatch.setattr(store_mod, "_index_batch", spy)
    store = make_store(index_delay=0.05, index_delay_busy=0.2, index_give_way=0.01)
    acct = run(store.account("u"))
    root = tmp_path / "mail" / "u"

    async def one(name: str) -> None:
        rounds = store.indexer.rounds
        [res] = await store.deliver(spool(tmp_path, msg(rounds), name), [DeliveryTarget(acct)], uids=False)
        assert res.status == "ok"
        await wait_until_async(lambda: len(budgets) == rounds + 1 and not _files(root, "new"))

    run(one("idle"))
    assert store.indexer.waited == pytest.approx(0.05)  # no round ran meanwhile: index_delay only
    assert budgets == [pytest.approx(0.01)]
    fsio.foreground.enter()  # a delivery round of this worker runs (or waits to) the whole time
    try:
        run(one("busy"))
    finally:
        fsio.foreground.leave()
    assert store.indexer.waited == pytest.approx(0.05 + 0.2)  # grown in steps up to index_delay_busy
    assert budgets[1] == pytest.approx(0.04)  # 4x the wait, 4x the give-way budget
    assert len(_files(root, "cur")) == 2


def test_reader_indexes_before_the_indexer(tmp_path: Path, run: Run, make_store: Callable[..., Store]) -> None:
    """A reader opening the mailbox finds the waiting file; the indexer then has nothing left to do."""
    store = make_store(index_delay=30.0)
    acct = run(store.account("u"))

    async def go() -> tuple[list[int], list[int]]:
        await store.deliver(spool(tmp_path, msg(7)), [DeliveryTarget(acct)], uids=False)
        assert store.indexer.waiting == 1
        view = await acct.open_mailbox("INBOX")  # synced by the reader
        first = [m.uid for m in view.messages]
        rec = Recorder()
        store.add_observer(rec)
        await store.indexer.flush()  # the indexer's round finds the file indexed: nothing to publish
        assert rec.added == [] and store.indexer.rounds == 1
        view2 = await acct.open_mailbox("INBOX")
        return first, [m.uid for m in view2.messages]

    first, second = run(go())
    assert first == second == [1]
    assert acct.engine.pending == {}


def test_quota_limited_target_is_indexed_at_once(tmp_path: Path, run: Run, make_store: Callable[..., Store]) -> None:
    store = make_store(index_delay=30.0)  # b's copy waits (close() indexes it)
    a = run(store.account("a"))
    b = run(store.account("b"))
    res = run(store.deliver(spool(tmp_path, msg(1)), [
        DeliveryTarget(a, limits=QuotaLimits(storage=1 << 20)), DeliveryTarget(b)], uids=False))
    assert [(r.status, r.uid) for r in res] == [("ok", 1), ("ok", None)]
    assert run(a.quota_usage()).messages == 1  # the next RCPT-time check sees it
    assert store.indexer.waiting == 1


def test_uids_true_and_config_off_index_before_returning(tmp_path: Path, run: Run,
                                                         make_store: Callable[..., Store]) -> None:
    store = make_store(deferred_index=False)
    a = run(store.account("a"))
    [r] = run(store.deliver(spool(tmp_path, msg(1)), [DeliveryTarget(a)], uids=False))
    assert r.uid == 1 and store.indexer.queued == 0
    [r] = run(store.deliver(spool(tmp_path, msg(2), "s2"), [DeliveryTarget(a)]))
    assert r.uid == 2


def test_close_indexes_what_waits(tmp_path: Path, run: Run) -> None:
    store = Store(StoreConfig(index_delay=30.0), tmp_path, hostname="t.test")
    acct = run(store.account("u"))
    for i in range(5):
        run(store.deliver(spool(tmp_path, msg(i), f"s{i}"), [DeliveryTarget(acct)], uids=False))
    root = tmp_path / "mail" / "u"
    assert len(_files(root, "new")) == 5 and store.indexer.waiting == 5
    t0 = time.monotonic()
    run(store.close())  # indexes at once, without waiting out the delay
    assert time.monotonic() - t0 < 20
    assert _files(root, "new") == [] and len(_files(root, "cur")) == 5
    uidlist = (root / "mailsrv-uidlist").read_bytes()
    assert len(re.findall(rb"^\d+ S", uidlist, re.M)) == 5  # one entry each (not the header)


# --- kill -9 -------------------------------------------------------------------------------------------


async def _child(data_dir: Path, wfd: int, seed: int, ops: int, delay: float) -> None:
    """Forked child: deliver ``ops`` messages with deferred indexing, reporting each acknowledgement."""
    store = Store(StoreConfig(index_delay=delay), data_dir, hostname="crash.test")
    acct = await store.account("u")
    (data_dir / "spool").mkdir(exist_ok=True)
    os.write(wfd, b"R\n")
    for n in range(ops):
        mid = f"s{seed}n{n}"
        sp = data_dir / "spool" / mid
        sp.write_bytes(msg(mid))
        [res] = await store.deliver(sp, [DeliveryTarget(acct)], uids=False)
        sp.unlink()
        assert res.status == "ok", res
        os.write(wfd, f"D {mid}\n".encode())


def _spawn(data_dir: Path, seed: int, ops: int, delay: float) -> tuple[int, int]:
    return spawn(lambda wfd: _child(data_dir, wfd, seed, ops, delay), data_dir / f"child-{seed}.err")


def _read_lines(fd: int, want: int | None, deadline: float) -> list[str]:
    """Lines from a child's pipe until ``want`` acknowledgements arrived, EOF, or the deadline."""
    def enough(buf: bytes) -> bool:
        return want is not None and buf.count(b"\nD ") + buf.startswith(b"D ") >= want

    return read_pipe(fd, deadline, enough).decode().splitlines()


async def _state(data_dir: Path) -> dict[int, str]:
    """uid -> message id, after a restart; checks every file on disk is exactly one indexed message."""
    store = Store(StoreConfig(), data_dir, hostname="check.test")
    try:
        acct = await store.account("u")
        view = await acct.open_mailbox("INBOX")
        out: dict[int, str] = {}
        for m in view.messages:
            found = MSGID.search(await acct.read_message("INBOX", m.uid))
            assert found is not None
            out[m.uid] = found.group(1).decode()
        root = data_dir / "mail" / "u"
        files = _files(root, "cur") + _files(root, "new")
        assert len(files) == len(view.messages), (files, view.messages)
        return out
    finally:
        await store.close()


def test_sigkill_before_indexing(tmp_path: Path) -> None:
    """Acknowledged with uids=False, killed while the indexer still waits: indexed once after restart."""
    before = asyncio.run(_seed(tmp_path, 3))
    pid, fd = _spawn(tmp_path, 1, 1000, delay=3600.0)  # the indexer never runs before the kill
    lines = _read_lines(fd, 20, time.monotonic() + 60)
    os.kill(pid, signal.SIGKILL)
    lines += _read_lines(fd, None, time.monotonic() + 5)
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status), (tmp_path / "child-1.err").read_text()
    acked = [ln.split()[1] for ln in lines if ln.startswith("D ")]
    assert len(acked) >= 20
    root = tmp_path / "mail" / "u"
    assert len(_files(root, "new")) >= len(acked)  # nothing was indexed before the kill
    after = asyncio.run(_state(tmp_path))
    mids = list(after.values())
    assert len(mids) == len(set(mids)), "a message indexed twice"
    assert set(acked) <= set(mids), f"acknowledged messages lost: {set(acked) - set(mids)}"
    for uid, mid in before.items():
        assert after[uid] == mid  # the old ones keep their UIDs
    fresh = [u for u, m in after.items() if m not in before.values()]
    assert min(fresh) > max(before)  # fresh UIDs above every UID used before
    assert asyncio.run(_state(tmp_path)) == after  # stable across another restart


def test_restart_indexes_what_a_killed_process_left(tmp_path: Path) -> None:
    """A fresh Store opening the account indexes the INBOX's waiting files without any reader."""
    pid, fd = _spawn(tmp_path, 2, 1000, delay=3600.0)
    lines = _read_lines(fd, 5, time.monotonic() + 60)
    os.kill(pid, signal.SIGKILL)
    lines += _read_lines(fd, None, time.monotonic() + 5)
    os.close(fd)
    os.waitpid(pid, 0)
    acked = {ln.split()[1] for ln in lines if ln.startswith("D ")}
    root = tmp_path / "mail" / "u"
    waiting = len(_files(root, "new"))
    assert waiting >= len(acked) >= 5

    async def reopen() -> tuple[int, int]:
        store = Store(StoreConfig(), tmp_path, hostname="again.test")
        try:
            acct = await store.account("u")
            assert store.indexer.queued == 1  # account() found the INBOX's new/ not empty
            await store.indexer.flush()
            usage = await acct.quota_usage()  # counted without opening the mailbox
            return usage.messages, len(_files(root, "new"))
        finally:
            await store.close()

    messages, left = asyncio.run(reopen())
    assert (messages, left) == (waiting, 0)
    assert acked <= set(asyncio.run(_state(tmp_path)).values())


async def _seed(data_dir: Path, n: int) -> dict[int, str]:
    """``n`` messages indexed at delivery (uids=True), one of them expunged: UIDs 1..n used."""
    store = Store(StoreConfig(), data_dir, hostname="seed.test")
    try:
        acct = await store.account("u")
        out = {}
        for i in range(n):
            sp = spool(data_dir, msg(f"seed{i}"), f"seed{i}")
            [r] = await store.deliver(sp, [DeliveryTarget(acct)])
            assert r.uid is not None
            out[r.uid] = f"seed{i}"
        await acct.expunge("INBOX", [n], only_deleted=False)
        del out[n]
        return out
    finally:
        await store.close()


def test_sigkill_at_random_points_of_deferred_indexing(tmp_path: Path) -> None:
    """40 trials: a child delivering with deferred indexing (delay 0) is killed at a random instant."""
    rng = random.Random(20261127)
    uid_owner: dict[int, str] = {}
    acked: set[str] = set()
    killed = 0
    for t in range(40):
        pid, fd = _spawn(tmp_path, 100 + t, 60, delay=0.0)
        first = _read_lines(fd, 1, time.monotonic() + 30)  # ready, and delivering
        assert any(ln.startswith("D ") for ln in first), "child did not deliver"
        time.sleep(rng.uniform(0.0, 0.03))  # the random crash point (not synchronisation)
        os.kill(pid, signal.SIGKILL)
        lines = first + _read_lines(fd, None, time.monotonic() + 5)
        os.close(fd)
        _, status = os.waitpid(pid, 0)
        if os.WIFEXITED(status):
            assert os.WEXITSTATUS(status) == 0, (tmp_path / f"child-{100 + t}.err").read_text()
        else:
            killed += 1
        acked |= {ln.split()[1] for ln in lines if ln.startswith("D ")}
        state = asyncio.run(_state(tmp_path))
        for uid, mid in state.items():
            assert uid_owner.setdefault(uid, mid) == mid, f"uid {uid} reused"
        mids = list(state.values())
        assert len(mids) == len(set(mids)), "a message indexed twice"
        assert acked <= set(mids), f"acknowledged messages lost: {acked - set(mids)}"
    assert killed > 30 and len(acked) >= 40


def test_a_batch_updates_the_quota_once(tmp_path: Path, run: Run, make_store: Callable[..., Store]) -> None:
    """The indexer's transaction for many deliveries into one mailbox reads and writes the usage once."""
    store = make_store(index_delay=30.0)
    acct = run(store.account("u"))
    sizes = [len(msg(i)) for i in range(12)]
    async def go() -> None:
        await asyncio.gather(*(store.deliver(spool(tmp_path, msg(i), f"q{i}"), [DeliveryTarget(acct)], uids=False)
                               for i in range(12)))

    run(go())
    statements: list[str] = []
    acct.engine.db.set_trace_callback(statements.append)
    try:
        run(store.indexer.flush())
    finally:
        acct.engine.db.set_trace_callback(None)
    assert sum(s.startswith("UPDATE quota") for s in statements) == 1
    usage = run(acct.quota_usage())
    assert (usage.storage, usage.messages) == (sum(sizes), 12)
    assert [m.uid for m in run(acct.open_mailbox("INBOX")).messages] == list(range(1, 13))


def test_a_known_file_left_in_new_is_moved_not_indexed_again(tmp_path: Path, run: Run,
                                                             make_store: Callable[..., Store]) -> None:
    """A file in new/ whose key the index already has (a move into cur/ that did not finish) is
    moved into place by the next sync, keeping its UID; the unknown ones beside it are indexed."""
    store = make_store(index_delay=0.0)
    acct = run(store.account("u"))
    run(store.deliver(spool(tmp_path, msg(1), "k1"), [DeliveryTarget(acct)], uids=True))
    root = tmp_path / "mail" / "u"
    [name] = _files(root, "cur")
    # as if the move into cur/ had not happened (a copy: rename(2) between two links of one inode is a no-op)
    (root / "new" / name.split(":2,")[0]).write_bytes((root / "cur" / name).read_bytes())
    run(store.deliver(spool(tmp_path, msg(2), "k2"), [DeliveryTarget(acct)], uids=False))
    run(store.indexer.flush())
    assert _files(root, "new") == []
    view = run(acct.open_mailbox("INBOX"))
    assert [m.uid for m in view.messages] == [1, 2]
    cur = _files(root, "cur")
    assert name in cur and len(cur) == 2


def test_a_caller_cancelled_during_its_round_leaves_whole_deliveries_only(
        tmp_path: Path, run: Run, make_store: Callable[..., Store]) -> None:
    """SMTP clients gone while their group-commit rounds run: a delivery whose links were made is
    synced and indexed once all the same (not left in new/ unknown to the indexer); one whose round
    had not begun is not made at all (no copy, no spool file)."""
    import threading

    store = make_store(index_delay=0.0, io_threads=2)  # two lanes (DELIVERY_JOBS), two pool threads
    assert store.fssync is not None, "a Linux file system with syncfs"
    accts = [run(store.account(f"u{i}")) for i in range(3)]  # each its own: no indexing for another
    release = threading.Event()
    began: list[int] = []
    real_job = store._deliver_job

    def blocking_job(*args: Any) -> Any:
        began.append(1)
        release.wait(10)
        return real_job(*args)

    store._deliver_job = blocking_job  # type: ignore[method-assign]
    sdir = tmp_path / "spool"
    sdir.mkdir()

    async def go() -> list[Any]:
        tasks = []
        for i in range(3):
            tasks.append(asyncio.ensure_future(store.deliver(sdir / f"s{i}", [DeliveryTarget(accts[i])], uids=False,
                                                             data=msg(i))))
            await wait_until_async(lambda n=min(i + 1, 2): len(began) >= n)  # a lane's round is in its job
        assert len(began) == 2  # both lanes busy: the third waits for a round
        for t in tasks[1:]:
            t.cancel()  # one with its links under way, the one still waiting for a lane
        release.set()
        res = await tasks[0]
        await asyncio.wait(tasks[1:])
        assert all(t.cancelled() for t in tasks[1:])
        fssync = store.fssync
        assert fssync is not None
        # rounds over, the follow-up indexed (index_delay 0: the indexer runs by itself)
        await wait_until_async(lambda: not fssync._running and bool(_files(tmp_path / "mail" / "u1", "cur")))
        await store.indexer.flush()
        return res

    [res] = run(go())
    assert res.status == "ok"
    for i, made in enumerate((True, True, False)):
        root = tmp_path / "mail" / f"u{i}"
        assert _files(root, "new") == []  # nothing left behind in new/ for a reader to find
        assert len(_files(root, "cur")) == made and not accts[i].engine.pending
        view = run(accts[i].open_mailbox("INBOX"))
        assert [m.uid for m in view.messages] == ([1] if made else [])
    assert spool_files(sdir) == ["s0", "s1"]  # the third never wrote its spool file


INDEX_PARTS = ("mailsrv-index.sqlite", "mailsrv-index.sqlite-wal")


def save_index(root: Path, saved: Path) -> None:
    """Copy the account's index files aside (closed store): the state a power cut may go back to."""
    saved.mkdir()
    for name in INDEX_PARTS:
        if (root / name).exists():
            (saved / name).write_bytes((root / name).read_bytes())


def lose_index_commits(root: Path, saved: Path) -> None:
    """The power cut (closed store): the index files as :func:`save_index` saw them, the maildir
    and the fsync'd uidlist as they are."""
    for name in [*INDEX_PARTS, "mailsrv-index.sqlite-shm"]:
        (root / name).unlink(missing_ok=True)
        if (saved / name).exists():
            (root / name).write_bytes((saved / name).read_bytes())


def lazily_indexed_then_lost(tmp_path: Path, run: Run, make_store: Callable[..., Store]) -> Recorder:
    """Message 1 indexed and durable; message 2 indexed by the background indexer (published,
    lazy commit), then the commit lost. Returns what observers were told."""
    root = tmp_path / "mail" / "u"
    store = make_store(index_delay=0.0)
    acct = run(store.account("u"))
    run(store.deliver(spool(tmp_path, msg(1), "s1"), [DeliveryTarget(acct)], uids=False))
    run(store.indexer.flush())
    run(store.close())
    save_index(root, tmp_path / "saved-index")
    store = make_store(index_delay=0.0)
    rec = Recorder()
    store.add_observer(rec)
    acct = run(store.account("u"))
    run(store.deliver(spool(tmp_path, msg(2), "s2"), [DeliveryTarget(acct)], uids=False))
    run(store.indexer.flush())
    run(store.close())
    lose_index_commits(root, tmp_path / "saved-index")
    return rec


def test_an_index_commit_lost_to_a_power_cut_keeps_the_uids(tmp_path: Path, run: Run,
                                                            make_store: Callable[..., Store]) -> None:
    """The indexer commits without fsync (Engine.sync lazy_commit): a power cut may lose the commit,
    never the fsync'd uidlist before it. Simulated: the index files put back as they were before the
    indexer's last commit, the maildir and uidlist as they are. The next sync gives the message the
    UID it was published with, and the next delivery a new one."""
    import sqlite3

    root = tmp_path / "mail" / "u"
    rec = lazily_indexed_then_lost(tmp_path, run, make_store)
    assert rec.added == [("u", 2)]  # published (an IDLE client saw UID 2)
    with sqlite3.connect(root / INDEX_PARTS[0]) as db:  # the index forgot UID 2
        assert db.execute("SELECT uid FROM messages").fetchall() == [(1,)]
    db.close()

    store = make_store(index_delay=0.0)
    acct = run(store.account("u"))
    view = run(acct.open_mailbox("INBOX"))
    got = {m.uid: MSGID.search(run(acct.read_message("INBOX", m.uid))) for m in view.messages}
    assert {uid: m.group(1) for uid, m in got.items() if m is not None} == {1: b"1", 2: b"2"}
    run(store.deliver(spool(tmp_path, msg(3), "s3"), [DeliveryTarget(acct)], uids=False))
    run(store.indexer.flush())
    view = run(acct.open_mailbox("INBOX"))
    assert [m.uid for m in view.messages] == [1, 2, 3]
    assert MSGID.search(run(acct.read_message("INBOX", 3))).group(1) == b"3"  # type: ignore[union-attr]


def test_a_lost_commit_whose_rename_into_cur_was_lost_too_keeps_the_uid(
        tmp_path: Path, run: Run, make_store: Callable[..., Store]) -> None:
    """The rename new/ -> cur/ after the uidlist's fsync is not synced either: the message found
    in new/ again gets the UID the uidlist (and the clients) had for it, not a new one."""
    root = tmp_path / "mail" / "u"
    lazily_indexed_then_lost(tmp_path, run, make_store)
    for name in _files(root, "cur"):
        if MSGID.search((root / "cur" / name).read_bytes()).group(1) == b"2":  # type: ignore[union-attr]
            os.rename(root / "cur" / name, root / "new" / name.split(":")[0])
    assert len(_files(root, "new")) == 1
    store = make_store(index_delay=0.0)
    acct = run(store.account("u"))
    view = run(acct.open_mailbox("INBOX"))
    got = {m.uid: MSGID.search(run(acct.read_message("INBOX", m.uid))) for m in view.messages}
    assert {uid: m.group(1) for uid, m in got.items() if m is not None} == {1: b"1", 2: b"2"}


@pytest.mark.parametrize("op", ["store", "expunge"])
def test_a_lost_commit_never_hands_a_published_modseq_to_another_change(
        tmp_path: Path, run: Run, make_store: Callable[..., Store], op: str) -> None:
    """RFC 7162: a client that saw HIGHESTMODSEQ M (message 2's, from the lost lazy commit) and asks
    for changes since M must get every later change. A flag change or an expunge made before any
    sync (JMAP Email/set, a MOVE out) must not take M again."""
    rec = lazily_indexed_then_lost(tmp_path, run, make_store)
    seen = rec.modseqs[-1]
    store = make_store(index_delay=0.0)
    acct = run(store.account("u"))
    if op == "store":
        modified, _ = run(acct.store_flags("INBOX", [1], frozenset({"\\Seen"}), "add"))
        assert [m.uid for m in modified] == [1] and modified[0].modseq > seen
    else:
        assert run(acct.expunge("INBOX", [1], only_deleted=False)) == [1]
    ch = run(acct.changes_since("INBOX", seen))
    assert ch.highestmodseq > seen
    assert ([m.uid for m in ch.changed], ch.expunged) == (([1], []) if op == "store" else ([], [1]))
    view = run(acct.open_mailbox("INBOX"))
    assert 2 in [m.uid for m in view.messages]


def test_only_the_indexers_commits_are_lazy(tmp_path: Path, run: Run, make_store: Callable[..., Store]) -> None:
    store = make_store(index_delay=0.0)
    acct = run(store.account("u"))
    db = acct.engine.db
    seen: list[str] = []
    db.set_trace_callback(seen.append)
    run(store.deliver(spool(tmp_path, msg(1), "s1"), [DeliveryTarget(acct)], uids=False))
    run(store.indexer.flush())
    lazy = seen.index("PRAGMA synchronous=NORMAL")
    assert seen.index("BEGIN IMMEDIATE", lazy) < seen.index("COMMIT", lazy)
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL kept for the next lazy one
    seen.clear()
    run(store.deliver(spool(tmp_path, msg(2), "s2"), [DeliveryTarget(acct)], uids=False))
    run(store.indexer.flush())
    assert "COMMIT" in seen and not any(s.startswith("PRAGMA synchronous") for s in seen)  # no switch
    seen.clear()
    run(store.deliver(spool(tmp_path, msg(3), "s3"), [DeliveryTarget(acct)]))  # uids=True: synchronous
    full = seen.index("PRAGMA synchronous=FULL")
    assert full < seen.index("BEGIN IMMEDIATE") < seen.index("COMMIT")
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    seen.clear()
    run(acct.append("INBOX", msg(4)))  # any other change: synchronous, no switch needed
    assert "COMMIT" in seen and not any(s.startswith("PRAGMA synchronous") for s in seen)
    db.set_trace_callback(None)


def test_a_lazy_sync_that_reconciles_cur_commits_with_fsync(tmp_path: Path, run: Run,
                                                            make_store: Callable[..., Store]) -> None:
    """A flag mutt set by renaming in cur/ takes a modseq that no uidlist line records: the indexer's
    transaction that adopts it is not lazy (a lost commit would hand the modseq out again)."""
    store = make_store(index_delay=0.0)
    acct = run(store.account("u"))
    root = tmp_path / "mail" / "u"
    run(store.deliver(spool(tmp_path, msg(1), "s1"), [DeliveryTarget(acct)]))
    [name] = _files(root, "cur")
    os.rename(root / "cur" / name, root / "cur" / (name.split(":")[0] + ":2,S"))  # mutt marks it seen
    st = os.stat(root / "cur")  # later than the index's look at cur/ (a coarse clock may not tell)
    os.utime(root / "cur", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    db = acct.engine.db
    seen: list[str] = []
    db.set_trace_callback(seen.append)
    run(store.deliver(spool(tmp_path, msg(2), "s2"), [DeliveryTarget(acct)], uids=False))
    run(store.indexer.flush())
    db.set_trace_callback(None)
    last_commit = len(seen) - 1 - seen[::-1].index("COMMIT")
    modes = [s for s in seen[:last_commit] if s.startswith("PRAGMA synchronous")]
    assert modes and modes[-1] == "PRAGMA synchronous=FULL"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    view = run(acct.open_mailbox("INBOX"))
    assert [(m.uid, "\\Seen" in m.flags) for m in view.messages] == [(1, True), (2, False)]
