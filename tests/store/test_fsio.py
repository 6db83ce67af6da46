"""mailsrv.util.fsio: durable writes and the group commit of directory fsyncs."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from support.server import wait_until, wait_until_async

from mailsrv.util import fsio


def test_durable_write_replaces_atomically(tmp_path: Path) -> None:
    target = tmp_path / "f"
    fsio.durable_write(target, b"one")
    fsio.durable_write(target, b"two" * 1000)
    assert target.read_bytes() == b"two" * 1000
    assert os.listdir(tmp_path) == ["f"]  # no temp file left behind


def test_durable_write_failure_keeps_old_content(tmp_path: Path) -> None:
    target = tmp_path / "f"
    fsio.durable_write(target, b"old")
    with pytest.raises(OSError):
        fsio.durable_write(target, b"new", tmp_dir=tmp_path / "missing")
    assert target.read_bytes() == b"old"


def test_unique_names_differ() -> None:
    names = {fsio.unique_name("h/x:y") for _ in range(1000)}
    assert len(names) == 1000
    assert all("/" not in n and ":" not in n for n in names)


def test_group_commit_batches_concurrent_callers(tmp_path: Path) -> None:
    async def main() -> tuple[int, int]:
        io = fsio.FileIO(2)
        syncer = fsio.DirSyncer(io, delay=0.001)
        dirs = [tmp_path / f"d{i % 3}" for i in range(60)]
        for d in dirs:
            d.mkdir(exist_ok=True)
        await asyncio.gather(*(syncer.sync(d) for d in dirs))
        io.shutdown()
        return syncer.rounds, syncer.fsyncs

    rounds, fsyncs = asyncio.run(main())
    assert rounds <= 3  # 60 callers, a handful of rounds
    assert fsyncs <= 3 * rounds


def test_group_commit_reports_errors_to_each_caller(tmp_path: Path) -> None:
    async def main() -> list[object]:
        io = fsio.FileIO(2)
        syncer = fsio.DirSyncer(io)
        out = await asyncio.gather(syncer.sync(tmp_path), syncer.sync(tmp_path / "nope"),
                                   return_exceptions=True)
        io.shutdown()
        return out

    ok, err = asyncio.run(main())
    assert ok is None
    assert isinstance(err, FileNotFoundError)


def test_fileio_runs_off_the_loop_thread() -> None:
    import threading

    async def main() -> bool:
        io = fsio.FileIO(1)
        tid = await io.run(threading.get_ident)
        io.shutdown()
        return tid != threading.get_ident()

    assert asyncio.run(main())


def test_first_round_after_idle_does_not_wait_the_delay(tmp_path: Path) -> None:
    """The delay only follows a round that served several callers: a lone caller is served at once
    (a 60 s delay would run into the 10 s deadline), and concurrent callers still share one round."""

    async def main() -> tuple[int, int]:
        io = fsio.FileIO(2)
        syncer = fsio.FsSyncer(io, delay=60.0)
        try:
            await asyncio.wait_for(syncer.sync(tmp_path), 10)
            after_lone = syncer.rounds
            await asyncio.wait_for(asyncio.gather(*(syncer.sync(tmp_path) for _ in range(20))), 10)
            return after_lone, syncer.rounds
        finally:
            io.shutdown()

    after_lone, rounds = asyncio.run(main())
    assert after_lone == 1
    assert rounds == 2  # the 20 concurrent callers joined one round, without the delay (idle before)


def test_delay_follows_a_busy_round(tmp_path: Path) -> None:
    """After a round that served several callers, the next round waits the delay for more callers."""

    async def main() -> tuple[bool, int]:
        io = fsio.FileIO(2)
        syncer = fsio.FsSyncer(io, delay=60.0)
        try:
            first = asyncio.gather(*(syncer.sync(tmp_path) for _ in range(3)))
            await asyncio.wait_for(first, 10)
            late = asyncio.ensure_future(syncer.sync(tmp_path))
            done, _ = await asyncio.wait([late], timeout=0.2)  # a deadline, not a synchronisation
            late.cancel()
            return bool(done), syncer.rounds
        finally:
            io.shutdown()

    served, rounds = asyncio.run(main())
    assert not served and rounds == 1  # the next round still waits for company


def test_run_synced_does_every_callers_work_in_one_job_then_syncs(tmp_path: Path) -> None:
    threads: list[int] = []
    synced: list[list[str]] = []

    class Recording(fsio.FsSyncer):
        def _round(self, paths: list[str]) -> list[OSError | None]:
            synced.append(sorted(paths))
            return super()._round(paths)

    def work(i: int) -> int:
        import threading

        threads.append(threading.get_ident())
        (tmp_path / f"f{i}").write_bytes(b"x")
        if i == 3:
            raise FileNotFoundError(2, "gone", f"f{i}")
        return i * 10

    async def main() -> list[object]:
        io = fsio.FileIO(4)
        syncer = Recording(io, lanes=4)
        try:
            return await asyncio.gather(*(syncer.run_synced(tmp_path, work, i) for i in range(6)),
                                        syncer.run_synced(tmp_path / "missing", work, 7),
                                        return_exceptions=True)
        finally:
            io.shutdown()

    out = asyncio.run(main())
    assert out[:3] + out[4:6] == [(0, None), (10, None), (20, None), (40, None), (50, None)]
    assert isinstance(out[3], FileNotFoundError)  # the work's own error, to its caller only
    assert out[6][0] == 70 and isinstance(out[6][1], FileNotFoundError)  # type: ignore[index]
    assert len(set(threads)) == 1  # one pool job for the round: every caller's work, then the sync
    assert synced == [sorted([str(tmp_path), str(tmp_path / "missing")])]


def test_group_commit_times_its_callers_work_and_syncs(tmp_path: Path) -> None:
    """The round counters (bench, the store's close log): every caller's wait covers its round's work
    and sync; the work and the syncs are counted as they ran (here: timed inside them)."""
    import time

    worked: list[float] = []
    synced: list[float] = []

    class Timed(fsio.FsSyncer):
        def _round(self, paths: list[str]) -> list[OSError | None]:
            t0 = time.monotonic()
            out = super()._round(paths)
            synced.append(time.monotonic() - t0)
            return out

    def work(i: int) -> int:
        t0 = time.monotonic()
        fsio.durable_write(tmp_path / f"f{i}", b"x" * 4096)  # real work: a write and two fsyncs
        worked.append(time.monotonic() - t0)
        return i

    async def main() -> fsio.FsSyncer:
        io = fsio.FileIO(4)
        syncer = Timed(io, lanes=2)
        try:
            for _ in range(3):
                await asyncio.gather(*(syncer.run_synced(tmp_path, work, i) for i in range(5)))
            return syncer
        finally:
            io.shutdown()

    syncer = asyncio.run(main())
    stats = syncer.stats()
    assert syncer.callers == 15 and stats["rounds"] == syncer.rounds >= 3
    assert syncer.worked >= sum(worked) > 0
    assert syncer.sync_time >= sum(synced) > 0 and syncer.synced >= syncer.sync_time
    # each caller waited at least for its round's work and sync: the callers' waits cover the rounds'
    assert syncer.waited >= syncer.worked + syncer.synced
    assert stats["wait_ms"] == pytest.approx(1000 * syncer.waited / 15)
    assert stats["sync_ms"] == pytest.approx(1000 * syncer.sync_time / syncer.rounds)


def test_sync_gate_runs_one_sync_at_a_time_for_every_waiter(tmp_path: Path) -> None:
    """Rounds of several lanes share syncs: never two at once, and each caller's sync began after it asked."""
    import threading

    active, peak, calls = [0], [0], []
    lock = threading.Lock()
    first_started, release_first = threading.Event(), threading.Event()

    def sync(paths: list[str]) -> list[OSError | None]:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            calls.append(sorted(paths))
        if len(calls) == 1:
            first_started.set()
            release_first.wait(10)
        with lock:
            active[0] -= 1
        return [None] * len(paths)

    gate = fsio._SyncGate(sync)
    out: dict[str, list[OSError | None]] = {}
    first = threading.Thread(target=lambda: out.setdefault("a", gate.sync(["a"])))
    first.start()
    assert first_started.wait(10)
    later = [threading.Thread(target=lambda p=p: out.setdefault(p, gate.sync([p]))) for p in ("b", "c", "d")]
    for t in later:
        t.start()
    wait_until(lambda: len(gate._wanted) >= 3, interval=0.001)  # all three wait behind the first sync
    release_first.set()
    for t in [first, *later]:
        t.join(10)
    assert out == {"a": [None], "b": [None], "c": [None], "d": [None]}
    assert peak[0] == 1
    assert calls == [["a"], ["b", "c", "d"]]  # the three that asked during the first sync share the second


def test_sync_gate_gathers_rounds_still_writing(tmp_path: Path) -> None:
    """A sync about to start waits (at most ``gather``) for a lane's round that is still writing."""
    import threading

    calls: list[list[str]] = []

    def sync(paths: list[str]) -> list[OSError | None]:
        calls.append(sorted(paths))
        return [None] * len(paths)

    gate = fsio._SyncGate(sync, gather=30.0)
    gate.enter()  # another lane's round is writing
    out: dict[str, list[OSError | None]] = {}
    leader = threading.Thread(target=lambda: out.setdefault("a", gate.sync(["a"])))
    leader.start()
    wait_until(lambda: bool(gate._running), interval=0.001)  # the leader waits for the writer
    assert gate._running and calls == []
    out["b"] = gate.sync(["b"], entered=True)
    leader.join(10)
    assert out == {"a": [None], "b": [None]} and calls == [["a", "b"]]  # one sync for both

    lone = fsio._SyncGate(sync, gather=0.01)
    lone.enter()  # a round that never comes: the sync starts anyway after the bound
    assert lone.sync(["c"]) == [None] and calls[-1] == ["c"]


def test_run_synced_caller_cancelled_before_or_after_its_work_began(tmp_path: Path) -> None:
    """A caller cancelled while its round waits leaves no trace (its work never runs); one cancelled
    after its work began gets the outcome in its ``abandoned`` follow-up, once the sync is done."""
    import threading

    began, release = threading.Event(), threading.Event()
    ran: list[str] = []
    followed: list[tuple[object, object]] = []

    def work(name: str) -> str:
        ran.append(name)
        if name == "first":
            began.set()
            release.wait(10)
        return name

    async def main() -> None:
        io = fsio.FileIO(2)
        syncer = fsio.FsSyncer(io, lanes=1)
        loop = asyncio.get_running_loop()
        try:
            first = asyncio.ensure_future(syncer.run_synced(
                tmp_path, work, "first", abandoned=lambda out, err: followed.append((out, err))))
            assert await loop.run_in_executor(None, began.wait, 10)
            # the one lane is busy: "queued" waits for the next round
            queued = asyncio.ensure_future(syncer.run_synced(
                tmp_path, work, "queued", abandoned=lambda out, err: followed.append((out, err))))
            await wait_until_async(lambda: bool(syncer._pending))  # queued behind the running round
            first.cancel()
            queued.cancel()
            release.set()
            await wait_until_async(lambda: syncer.rounds >= 2 and bool(followed) and not syncer._running)  # both over
            assert first.cancelled() and queued.cancelled()
        finally:
            io.shutdown()

    asyncio.run(main())
    assert ran == ["first"]  # the queued caller's work never ran
    assert followed == [("first", None)]  # the started one was followed up after its sync


def test_sync_gate_waiter_that_wakes_late_still_gets_its_result() -> None:
    """A round's thread that wakes only after many later syncs (a starved thread) gets its own sync's
    outcome: no result table of bounded length to fall out of."""
    import threading

    late = threading.Event()
    sleeper: list[int] = []

    class Slow(threading.Condition):
        def _acquire_restore(self, state: object) -> None:  # type: ignore[override]
            if threading.get_ident() in sleeper:  # the starved thread: back only when told
                late.wait(10)
            super()._acquire_restore(state)  # type: ignore[misc]

    first_started, release_first = threading.Event(), threading.Event()

    def sync(paths: list[str]) -> list[OSError | None]:
        if paths == ["a"]:
            first_started.set()
            release_first.wait(10)
        return [OSError(5, p) if p == "b" else None for p in paths]

    gate = fsio._SyncGate(sync)
    gate._cond = Slow(threading.Lock())  # a plain lock: the class hook is used (an RLock brings its own)
    out: dict[str, list[OSError | None]] = {}
    first = threading.Thread(target=lambda: out.setdefault("a", gate.sync(["a"])))
    first.start()
    assert first_started.wait(10)

    def starved() -> None:
        sleeper.append(threading.get_ident())
        out["b"] = gate.sync(["b"])

    waiter = threading.Thread(target=starved)
    waiter.start()
    wait_until(lambda: "b" in gate._wanted, interval=0.001)  # it waits behind the first sync
    release_first.set()
    first.join(10)
    for i in range(100):  # its sync runs (from another thread's round), and many after it
        assert gate.sync([f"p{i}"]) == [None]
    late.set()
    waiter.join(10)
    assert not waiter.is_alive()
    [err] = out["b"]
    assert isinstance(err, OSError) and err.filename is None and str(err) == "[Errno 5] b"


def test_run_synced_caller_cancelled_as_its_answer_arrives_is_followed_up(tmp_path: Path) -> None:
    """Cancelled in the loop turn between its round's answer and its own wake-up, a caller cannot
    take the answer: its ``abandoned`` follow-up gets it (the work was done and synced)."""
    followed: list[tuple[object, object]] = []

    caller: list[asyncio.Future[object]] = []

    class Cancelling(fsio.FsSyncer):
        def _answer(self, loop: asyncio.AbstractEventLoop, *args: object) -> None:
            loop.call_soon(caller[0].cancel)  # runs after the round answers, before the caller wakes
            super()._answer(loop, *args)  # type: ignore[arg-type]

    async def main() -> None:
        io = fsio.FileIO(2)
        syncer = Cancelling(io)
        try:
            caller.append(asyncio.ensure_future(syncer.run_synced(
                tmp_path, lambda: "done", abandoned=lambda out, err: followed.append((out, err)))))
            await asyncio.wait(caller)
            assert caller[0].cancelled()
        finally:
            io.shutdown()

    asyncio.run(main())
    assert followed == [("done", None)]
