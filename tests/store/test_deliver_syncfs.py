"""Group commit of deferred deliveries: fsio.FsSyncer (one syncfs per round) and its fallbacks."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from support.server import wait_until_async

from mailsrv.store import DeliveryTarget, Store
from mailsrv.util import fsio

from .conftest import hold_syncfs, msg, spool
from .test_deliver_deferred import deliver_many

Run = Callable[[Awaitable[Any]], Any]


def test_syncfs_call(tmp_path: Path) -> None:
    assert fsio.have_syncfs()  # Linux: the development and CI machines
    fsio.syncfs(tmp_path)
    with pytest.raises(FileNotFoundError):
        fsio.syncfs(tmp_path / "missing")


def test_concurrent_callers_share_rounds(tmp_path: Path, run: Run) -> None:
    io = fsio.FileIO(2)
    syncer = fsio.FsSyncer(io, delay=0.001)
    dirs = [tmp_path / f"d{i}" for i in range(5)]
    for d in dirs:
        d.mkdir()

    async def go() -> None:
        await asyncio.gather(*(syncer.sync(dirs[i % 5]) for i in range(60)))

    try:
        run(go())
    finally:
        io.shutdown()
    assert syncer.callers == 60
    assert 1 <= syncer.rounds <= 3, syncer.rounds
    assert syncer.syncs == syncer.rounds  # one file system: one syncfs per round, not one per directory


def test_error_reaches_only_its_caller(tmp_path: Path, run: Run) -> None:
    io = fsio.FileIO(2)
    syncer = fsio.FsSyncer(io)

    async def go() -> list[Any]:
        return await asyncio.gather(syncer.sync(tmp_path), syncer.sync(tmp_path / "gone"), syncer.sync(tmp_path),
                                    return_exceptions=True)

    try:
        out = run(go())
    finally:
        io.shutdown()
    assert out[0] is None and out[2] is None
    assert isinstance(out[1], FileNotFoundError)


def test_deferred_deliveries_use_one_syncfs_per_round(tmp_path: Path, run: Run,
                                                      make_store: Callable[..., Store],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store()
    assert store.fssync is not None
    accts = [run(store.account(f"u{i}")) for i in range(4)]
    fsyncs: list[str] = []
    real = fsio.fsync_file
    monkeypatch.setattr(fsio, "fsync_file", lambda p: (fsyncs.append(str(p)), real(p))[1])

    results = run(deliver_many(store, tmp_path, accts, 40))
    assert [r.status for r in results] == ["ok"] * 40
    assert store.fssync.callers == 40 and store.fssync.rounds < 40
    assert fsyncs == []  # no per-file fsync on the acknowledgement path
    for a in accts:
        assert len(run(a.open_mailbox("INBOX")).messages) == 10


def test_concurrent_deliveries_share_pool_jobs(tmp_path: Path, run: Run, make_store: Callable[..., Store],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Deferred deliveries join group-commit rounds: one pool job does the work of every delivery of
    a round and its syncfs (no job per delivery, no sync job after it)."""
    store = make_store(index_delay=30.0)
    accts = [run(store.account(f"u{i}")) for i in range(4)]
    jobs: list[str] = []
    real, real_express = store.io.queue, store.io.express

    def counted(fn: Any) -> Any:  # every pool job of the store's (io.run's)
        jobs.append(fsio._job_kind(fn).rpartition(".")[2])
        return real(fn)

    def express(fn: Any, done: Any) -> None:  # and every round's job
        jobs.append(fsio._job_kind(fn).rpartition(".")[2])
        real_express(fn, done)

    monkeypatch.setattr(store.io, "queue", counted)
    monkeypatch.setattr(store.io, "express", express)

    async def go() -> list[Any]:
        return await asyncio.gather(*(store.deliver(spool(tmp_path, msg(i), f"s{i}"), [DeliveryTarget(accts[i % 4])],
                                                    uids=False) for i in range(40)))

    out = run(go())
    assert [r.status for rs in out for r in rs] == ["ok"] * 40
    assert "_deliver_job" not in jobs and 1 <= jobs.count("_round_job") <= 4  # 40 deliveries, <= 4 lanes
    assert store.fssync is not None and store.fssync.callers == 40
    assert store.indexer.waiting == 40  # acknowledged; the UIDs come from the indexer
    run(store.indexer.flush())
    for a in accts:
        assert len(run(a.open_mailbox("INBOX")).messages) == 10


def test_failed_syncfs_is_a_temporary_failure(tmp_path: Path, run: Run, make_store: Callable[..., Store],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store(index_delay=30.0)
    acct = run(store.account("u"))

    def broken(path: Any) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(fsio, "syncfs", broken)
    [r] = run(store.deliver(spool(tmp_path, msg(1)), [DeliveryTarget(acct)], uids=False))
    assert r.status == "tempfail" and "Input/output error" in (r.error or "")
    assert store.indexer.waiting == 0 and acct.engine.pending == {}


def test_without_syncfs_each_delivery_fsyncs(tmp_path: Path, run: Run, make_store: Callable[..., Store],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store(syncfs=False)  # as on a system without syncfs(2)
    assert store.fssync is None
    acct = run(store.account("u"))
    fsyncs: list[str] = []
    dir_fsyncs: list[str] = []
    real_file, real_dir = fsio.fsync_file, fsio.fsync_dir
    monkeypatch.setattr(fsio, "fsync_file", lambda p: (fsyncs.append(str(p)), real_file(p))[1])
    monkeypatch.setattr(fsio, "fsync_dir", lambda p: (dir_fsyncs.append(str(p)), real_dir(p))[1])
    sp = spool(tmp_path, msg(1))
    [r] = run(store.deliver(sp, [DeliveryTarget(acct)], uids=False))
    assert (r.status, r.uid) == ("ok", None)
    assert fsyncs == [str(sp)]  # the shared inode, once
    assert dir_fsyncs == [str(tmp_path / "mail" / "u" / "new")]
    run(store.indexer.flush())
    assert [m.uid for m in run(acct.open_mailbox("INBOX")).messages] == [1]


def test_no_delivery_of_a_round_returns_before_its_syncfs_completed(
        tmp_path: Path, run: Run, make_store: Callable[..., Store], monkeypatch: pytest.MonkeyPatch) -> None:
    """The 250 waits for durability: while the round's syncfs is still running (held here), none of
    the round's deliveries has returned, and each returns ok once it completes."""
    store = make_store(index_delay=30.0)
    accts = [run(store.account(f"u{i}")) for i in range(3)]
    entered, release = hold_syncfs(monkeypatch)

    async def go() -> list[Any]:
        tasks = [asyncio.ensure_future(store.deliver(spool(tmp_path, msg(i), f"s{i}"), [DeliveryTarget(accts[i])],
                                                     uids=False)) for i in range(3)]
        await wait_until_async(entered.is_set)
        for _ in range(20):  # loop turns in which a premature answer would show
            await asyncio.sleep(0)
        assert not any(t.done() for t in tasks)
        release.set()
        return await asyncio.gather(*tasks)

    out = run(go())
    assert [r.status for rs in out for r in rs] == ["ok"] * 3
