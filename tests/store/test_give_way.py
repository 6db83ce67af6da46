"""Background indexing gives way to delivery rounds (util/fsio.py ``foreground``, ``give_way``).

The store's index batch and the search round after delivery work in slices; between slices they
wait, without the GIL, while a group-commit round of the process runs or waits to run, at most
``[store] index_give_way`` seconds per job, so that a delivery's round does not share the pool and the GIL
with a long batch (the one-session p99), and sustained load still indexes.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from support.server import wait_until, wait_until_async

from mailsrv.store import DeliveryTarget, QuotaLimits, Store
from mailsrv.util import fsio

from .conftest import msg, spool

Run = Callable[[Awaitable[Any]], Any]


def _slices(n: int, out: list[float]) -> None:
    """A background job of ``n`` slices that records when each ran."""
    with fsio.background():
        for _ in range(n):
            fsio.give_way()
            out.append(time.monotonic())


def test_give_way_outside_a_background_job_never_waits() -> None:
    before = fsio.foreground.waited
    fsio.foreground.enter()
    try:
        for _ in range(100):
            fsio.give_way()
        assert fsio.foreground.waiting == 0
    finally:
        fsio.foreground.leave()
    assert fsio.foreground.waited == before  # not one wait (a wall-clock bound fails on a loaded machine)


def test_background_job_waits_while_a_round_runs_and_resumes_when_it_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fsio.foreground, "budget", 30.0)
    monkeypatch.setattr(fsio, "GIVE_WAY_STEP", 30.0)
    done: list[float] = []
    fsio.foreground.enter()  # a round in flight
    job = threading.Thread(target=_slices, args=(5, done))
    job.start()
    try:
        wait_until(lambda: fsio.foreground.waiting == 1)  # parked at its first slice boundary
        assert done == []
    finally:
        left = time.monotonic()
        fsio.foreground.leave()
    job.join(10)
    assert not job.is_alive() and len(done) == 5
    assert done[0] >= left  # no slice ran before the round was over


def test_background_job_waits_at_most_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under sustained load (a round always running) a job still finishes: its waits are bounded."""
    monkeypatch.setattr(fsio.foreground, "budget", 0.05)
    monkeypatch.setattr(fsio, "GIVE_WAY_STEP", 0.02)
    done: list[float] = []
    fsio.foreground.enter()
    try:
        t0 = time.monotonic()
        _slices(50, done)
        took = time.monotonic() - t0
    finally:
        fsio.foreground.leave()
    assert len(done) == 50
    assert 0.05 <= took < 2.0  # the whole budget waited, then no more


def test_index_batch_gives_way_to_a_delivery_round(tmp_path: Path, run: Run, make_store: Callable[..., Store],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A round that starts while deliveries wait for the indexer completes before the index batch
    does; the batch then indexes every delivery exactly once."""
    monkeypatch.setattr(fsio.foreground, "budget", 30.0)
    monkeypatch.setattr(fsio, "GIVE_WAY_STEP", 30.0)
    store = make_store(index_delay=3600.0, index_give_way=30.0)  # the batch starts at flush()
    assert store.fssync is not None, "Linux: syncfs group commit"

    async def go() -> None:
        acct = await store.account("u")
        for i in range(40):
            [r] = await store.deliver(spool(tmp_path, msg(i), f"s{i}"), [DeliveryTarget(acct)], uids=False)
            assert r.status == "ok" and r.uid is None
        assert store.indexer.waiting == 40
        entered, release = threading.Event(), threading.Event()

        def held() -> None:  # a delivery round's work that takes its time
            entered.set()
            release.wait(10)

        rnd = asyncio.ensure_future(store.fssync.run_synced(tmp_path, held))  # type: ignore[union-attr]
        await asyncio.get_running_loop().run_in_executor(None, entered.wait, 10)
        flush = asyncio.ensure_future(store.indexer.flush())
        await wait_until_async(lambda: fsio.foreground.waiting >= 1)  # the batch gives way
        assert len(acct.engine.pending) == 40 and not flush.done()  # nothing indexed meanwhile
        release.set()
        await rnd
        await flush
        view = await acct.open_mailbox("INBOX")
        assert [m.uid for m in view.messages] == list(range(1, 41))
        assert len({m.modseq for m in view.messages}) == 40
        assert not acct.engine.pending

    run(go())


def test_index_batch_of_many_slices_indexes_every_message_once(tmp_path: Path, run: Run,
                                                               make_store: Callable[..., Store]) -> None:
    """Deliveries racing the batch's slices (each round makes the batch give way): every message
    gets one UID, none twice, none skipped."""
    store = make_store(index_delay=0.0)

    async def go() -> None:
        acct = await store.account("u")

        async def one(i: int) -> None:
            [r] = await store.deliver(spool(tmp_path, msg(i), f"s{i}"), [DeliveryTarget(acct)], uids=False)
            assert r.status == "ok"

        for k in range(0, 120, 8):
            await asyncio.gather(*(one(i) for i in range(k, k + 8)))
        await store.indexer.flush()
        view = await acct.open_mailbox("INBOX")
        assert sorted(m.uid for m in view.messages) == list(range(1, 121))
        raws = [await acct.read_message("INBOX", m.uid) for m in view.messages]
        assert sorted(raws) == sorted(msg(i) for i in range(120))

    run(go())


def test_a_sync_holding_the_engine_lock_stops_giving_way_when_a_thread_wants_it(
        tmp_path: Path, run: Run, make_store: Callable[..., Store], monkeypatch: pytest.MonkeyPatch) -> None:
    """The indexer gives way inside its transaction, holding the engine lock. A delivery round that
    needs that lock (a quota-limited target: its quota check and its index transaction; a
    folder-cache miss) or a reader's sync must not wait for a job that waits for rounds: the
    waiter wakes the job, which then gives way no more while anyone waits for the lock."""
    monkeypatch.setattr(fsio.foreground, "budget", 30.0)
    monkeypatch.setattr(fsio, "GIVE_WAY_STEP", 30.0)
    store = make_store(index_give_way=30.0)  # the Store sets the process's budget
    acct = run(store.account("u"))
    eng = acct.engine

    def drop(n: int) -> None:  # mail another MDA left in new/: a sync of many slices
        for i in range(n):
            (acct.root / "new" / f"{time.time_ns()}.x{i}.host").write_bytes(msg(i))

    def sync() -> None:
        with fsio.background():
            eng.sync("INBOX", lazy_commit=True)

    limited = DeliveryTarget(acct, limits=QuotaLimits(storage=1 << 30))
    fsio.foreground.enter()  # a delivery round in flight: the sync below gives way, holding the lock
    try:
        for k in range(2):
            drop(40)
            job = threading.Thread(target=sync)
            job.start()
            wait_until(lambda: fsio.foreground.waiting == 1)  # parked inside its transaction
            assert eng.lock.wanted == 0
            t0 = time.monotonic()
            if k == 0:  # another thread that needs the lock (as a reader's sync, a RCPT quota check)
                assert eng.quota_usage().messages == 40
            else:  # a delivery round of a quota-limited target: its pool job takes the lock
                [r] = run(store.deliver(spool(tmp_path, msg("q"), "q"), [limited], uids=False))
                assert r.status == "ok" and r.uid == 81  # indexed at once (limited), after the batch
            assert time.monotonic() - t0 < 10.0  # not the job's step (30 s)
            job.join(10)
            assert not job.is_alive() and fsio.foreground.waiting == 0
    finally:
        fsio.foreground.leave()
    view = run(acct.open_mailbox("INBOX"))
    assert [m.uid for m in view.messages] == list(range(1, 82))
    assert len({m.modseq for m in view.messages}) == 81


def test_a_background_job_does_not_give_way_while_a_job_waits_for_its_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """Background jobs that give way hold their pool threads: a round's job queued behind them (a
    pool of busy threads, some giving way) must not wait for jobs that wait for it."""
    monkeypatch.setattr(fsio.foreground, "budget", 30.0)
    monkeypatch.setattr(fsio, "GIVE_WAY_STEP", 30.0)
    io = fsio.FileIO(1, name="give-way-test")

    async def go() -> None:
        done: list[float] = []
        fsio.foreground.enter()  # a round in flight
        try:
            job = asyncio.ensure_future(io.run(_slices, 5, done))
            await wait_until_async(lambda: fsio.foreground.waiting == 1)  # parked in the only thread
            assert done == []
            assert await asyncio.wait_for(io.run(len, "round"), 10) == 5  # not after the job's 30 s step
            assert len(done) == 5  # the job ran its slices first, without waiting again
        finally:
            fsio.foreground.leave()
        await job

    try:
        asyncio.run(go())
    finally:
        io.shutdown()


def test_a_job_that_finds_an_idle_thread_leaves_a_background_job_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    """A round's job submitted to the pool a background job gives way in, with a thread free, takes
    that thread; the background job keeps waiting for the round (it used to resume at every such
    submit and run its slice beside the round: the one-session p99)."""
    monkeypatch.setattr(fsio.foreground, "budget", 30.0)
    monkeypatch.setattr(fsio, "GIVE_WAY_STEP", 30.0)
    io = fsio.FileIO(2, name="give-way-test")

    async def go() -> None:
        done: list[float] = []
        fsio.foreground.enter()  # a round in flight
        try:
            job = asyncio.ensure_future(io.run(_slices, 5, done))
            await wait_until_async(lambda: fsio.foreground.waiting == 1)  # parked in one of two threads
            for _ in range(20):  # rounds' jobs, each on the free thread
                assert await asyncio.wait_for(io.run(len, "round"), 10) == 5
            assert done == [] and fsio.foreground.waiting == 1  # still waiting for the round
            assert fsio._load(io._pool).jobs == 1  # the parked job alone: none of the rounds' is counted still
        finally:
            fsio.foreground.leave()
        await job
        assert len(done) == 5 and fsio._load(io._pool).jobs == 0

    try:
        asyncio.run(go())
    finally:
        io.shutdown()


def test_a_delivery_is_foreground_until_it_answers(tmp_path: Path, run: Run, make_store: Callable[..., Store],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A delivery counts as foreground work from its call to its answer, not only while its round
    runs: background jobs keep giving way while the loop takes the round's result and answers."""
    store = make_store(index_delay=3600.0)
    assert store.fssync is not None, "Linux: syncfs group commit"

    async def go() -> None:
        acct = await store.account("u")
        after, release = asyncio.Event(), asyncio.Event()
        real = store._deliver

        async def held(*args: Any) -> Any:  # the delivery's work on the loop after its round
            out = await real(*args)
            after.set()
            await release.wait()
            return out

        monkeypatch.setattr(store, "_deliver", held)
        base = fsio.foreground.busy
        delivery = asyncio.ensure_future(store.deliver(spool(tmp_path, msg(1)), [DeliveryTarget(acct)], uids=False))
        await asyncio.wait_for(after.wait(), 10)
        await wait_until_async(lambda: not store.fssync.tasks)  # type: ignore[union-attr]  # its round is over
        assert fsio.foreground.busy == base + 1
        release.set()
        [r] = await delivery
        assert r.status == "ok" and fsio.foreground.busy == base

    run(go())


def test_index_give_way_zero_never_waits(tmp_path: Path, run: Run, make_store: Callable[..., Store],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """``[store] index_give_way = 0``: a batch of many slices runs through while a round is in flight."""
    monkeypatch.setattr(fsio.foreground, "budget", fsio.foreground.budget)  # restored after the test
    monkeypatch.setattr(fsio, "GIVE_WAY_STEP", 30.0)
    store = make_store(index_give_way=0.0)
    acct = run(store.account("u"))
    for i in range(40):
        (acct.root / "new" / f"{time.time_ns()}.z{i}.host").write_bytes(msg(i))
    before = fsio.foreground.waited
    fsio.foreground.enter()
    try:
        with fsio.background():
            res = acct.engine.sync("INBOX", lazy_commit=True)
    finally:
        fsio.foreground.leave()
    assert len(res.added) == 40
    assert fsio.foreground.waited == before and fsio.foreground.waiting == 0  # not one wait
