"""mailsrv.util.fsio group commit: how a round is handed to the pool and back (no task per round).

A lane's rounds are submitted from loop callbacks and answered by one ``call_soon_threadsafe``
callback each; these tests hold what that path must keep: callers joining while a round runs are
served by the next, the lane is a future ``tasks`` (Store.close()) waits for, a failed submission or
a closed loop leaves nobody waiting, and background jobs give way exactly while a lane runs.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any, cast

import pytest
from support.server import wait_until, wait_until_async

from mailsrv.util import fsio


def test_a_lone_round_runs_without_a_task_and_serves_callers_joining_meanwhile(tmp_path: Path) -> None:
    """A caller's round runs with no asyncio task of its own; callers joining while it runs share the
    next round (one job for their work); the lane ends, and is awaitable, once nobody waits."""
    began, release = threading.Event(), threading.Event()
    jobs: list[list[str]] = []

    def work(name: str) -> str:
        if name == "first":
            began.set()
            release.wait(10)
        return name

    class Recording(fsio.FsSyncer):
        def _round_job(self, batch: dict[str, list[fsio._Call]]) -> Any:
            jobs.append([threading.current_thread().name])
            return super()._round_job(batch)

    async def main() -> None:
        io = fsio.FileIO(2)
        syncer = Recording(io, lanes=1)
        loop = asyncio.get_running_loop()
        busy = fsio.foreground.busy
        try:
            first = asyncio.ensure_future(syncer.run_synced(tmp_path, work, "first"))
            assert await loop.run_in_executor(None, began.wait, 10)
            # the round runs in the pool: no task but this test's and its caller's
            assert asyncio.all_tasks() == {asyncio.current_task(), first}
            [lane] = syncer.tasks
            assert not lane.done() and fsio.foreground.busy == busy + 1  # background jobs give way
            later = [asyncio.ensure_future(syncer.run_synced(tmp_path, work, f"l{i}")) for i in range(3)]
            await wait_until_async(lambda: sum(map(len, syncer._pending.values())) == 3)
            release.set()
            assert await first == ("first", None)
            assert [await f for f in later] == [(f"l{i}", None) for i in range(3)]
            await asyncio.wait_for(asyncio.shield(lane), 10)  # the lane ends once nobody waits
            assert syncer.rounds == 2 and syncer.callers == 4 and len(jobs) == 2
            assert syncer.tasks == [] and fsio.foreground.busy == busy and not syncer._running
        finally:
            release.set()
            io.shutdown()

    asyncio.run(main())


def test_a_round_that_cannot_be_submitted_fails_its_callers_and_ends_its_lane(tmp_path: Path) -> None:
    """The pool shut down: the round's callers get the submission's error, nothing waits, and the
    foreground count is back where it was (no background job waits for a lane that never ends)."""

    async def main() -> None:
        io = fsio.FileIO(1)
        syncer = fsio.FsSyncer(io)
        busy = fsio.foreground.busy
        io.shutdown()
        out = await asyncio.wait_for(asyncio.gather(syncer.sync(tmp_path), syncer.run_synced(tmp_path, len, "ab"),
                                                    return_exceptions=True), 10)
        assert [type(x) for x in out] == [RuntimeError, RuntimeError]
        assert syncer.tasks == [] and not syncer._running and fsio.foreground.busy == busy

    asyncio.run(main())


def test_a_lane_waiting_the_delay_is_running(tmp_path: Path) -> None:
    """After a busy round the lane waits the delay (a timer, no task): meanwhile it counts as a round
    running (close() waits for it), and its round serves who joined."""

    async def main() -> None:
        io = fsio.FileIO(2)
        syncer = fsio.FsSyncer(io, delay=0.2)
        busy = fsio.foreground.busy
        try:
            await asyncio.wait_for(asyncio.gather(*(syncer.sync(tmp_path) for _ in range(3))), 10)
            assert syncer.rounds == 1 and syncer.tasks == []  # busy: the next round will wait the delay
            late = [asyncio.ensure_future(syncer.sync(tmp_path)) for _ in range(2)]
            await wait_until_async(lambda: bool(syncer.tasks))
            assert syncer.rounds == 1 and not any(f.done() for f in late)  # waiting the delay
            assert fsio.foreground.busy == busy  # (a delivery waiting holds the foreground itself)
            done, _ = await asyncio.wait(syncer.tasks, timeout=10)
            assert done and all(f.done() for f in late) and syncer.rounds == 2
            assert fsio.foreground.busy == busy
        finally:
            io.shutdown()

    asyncio.run(main())


def test_a_round_answering_a_closed_loop_is_dropped_quietly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The loop ends (its callers gone) while a round's job runs: the job's end finds the loop closed
    and drops the answer; no error escapes in the pool thread, and the round leaves the foreground
    (background jobs of the process would give way to it for ever)."""
    began, release = threading.Event(), threading.Event()

    def work() -> None:
        began.set()
        release.wait(10)

    io = fsio.FileIO(1)

    async def main() -> None:
        syncer = fsio.FsSyncer(io)
        caller = asyncio.ensure_future(syncer.run_synced(tmp_path, work))
        assert await asyncio.get_running_loop().run_in_executor(None, began.wait, 10)
        caller.cancel()

    caplog.set_level(logging.ERROR)
    busy = fsio.foreground.busy
    asyncio.run(main())  # the loop closes with the round's job still running
    assert fsio.foreground.busy == busy + 1
    release.set()
    io.shutdown()  # waits for the round's thread: its job and the answer's attempt are over
    assert not [r for r in caplog.records if r.name == "concurrent.futures"]  # "exception calling callback"
    assert fsio.foreground.busy == busy


def test_a_loop_closed_while_a_lane_waits_the_delay_leaves_no_foreground(tmp_path: Path) -> None:
    """A lane waiting the delay holds no foreground count: a loop that ends then (its callers
    cancelled) leaves the process's background jobs free to run."""
    busy = fsio.foreground.busy

    async def main() -> None:
        io = fsio.FileIO(1)
        syncer = fsio.FsSyncer(io, delay=60.0)
        try:
            await asyncio.wait_for(asyncio.gather(*(syncer.sync(tmp_path) for _ in range(3))), 10)
            late = asyncio.ensure_future(syncer.sync(tmp_path))
            await wait_until_async(lambda: bool(syncer.tasks))  # the lane waits the 60 s delay
            late.cancel()
        finally:
            io.shutdown()

    asyncio.run(main())
    assert fsio.foreground.busy == busy


def test_express_jobs_reuse_their_thread_survive_a_broken_callback_and_stop_at_shutdown() -> None:
    """FileIO.express: jobs one after another run in one thread (it takes the next once done), a
    callback that raises does not stop it (its next jobs would never run: their round's callers
    would wait for ever), a job's exception goes to its callback, and after shutdown it refuses."""
    io = fsio.FileIO(1)
    seen: list[tuple[object, object]] = []
    done = threading.Event()

    def broken(out: object, exc: BaseException | None) -> None:
        seen.append((out, exc))
        raise ValueError("broken callback")

    def last(out: object, exc: BaseException | None) -> None:
        seen.append((type(exc), None))
        done.set()

    hook, reported = threading.excepthook, cast(list[Any], [])
    threading.excepthook = reported.append
    try:
        io.express(threading.get_ident, broken)
        wait_until(lambda: len(seen) == 1 and len(io._idle) == 1)
        io.express(threading.get_ident, lambda out, exc: seen.append((out, exc)))
        wait_until(lambda: len(seen) == 2)
        io.express(lambda: 1 // 0, last)
        assert done.wait(10)
    finally:
        threading.excepthook = hook
        io.shutdown()
    assert seen[0][0] == seen[1][0] and seen[0][1] is None  # one thread for both, the ident its result
    assert seen[2] == (ZeroDivisionError, None) and len(io._runners) == 1
    assert [type(r.exc_value) for r in reported] == [ValueError]
    with pytest.raises(RuntimeError):
        io.express(threading.get_ident, last)


def test_durable_hooks_run_in_the_round_thread_after_its_sync_then_the_afters(tmp_path: Path) -> None:
    """``durable`` sees each caller's result (an After's ``result``) once the round's sync is over and
    before the loop is answered, in the round's thread; then each After's ``then(error)`` runs there and
    its value (or exception) is what the caller gets. A work that raised gets no hook."""
    events: list[tuple[str, Any]] = []
    loop_thread = threading.get_ident()

    class Recording(fsio.FsSyncer):
        def _round(self, paths: list[str]) -> list[OSError | None]:
            events.append(("sync", len(paths)))
            return [None if i == 0 else OSError(5, "sync failed") for i, _ in enumerate(paths)]

    def hook(name: str) -> Any:
        def durable(value: Any, err: OSError | None) -> None:
            assert threading.get_ident() != loop_thread
            events.append((f"durable {name}", (value, err)))
            if name == "bad":
                raise ValueError("a hook's error is reported, not raised")
        return durable

    def later(name: str, err: OSError | None) -> str:
        events.append((f"then {name}", err))
        if name == "boom":
            raise KeyError(name)
        return f"{name} done"

    def work(name: str) -> Any:
        if name == "raises":
            raise RuntimeError(name)
        if name in ("after", "boom"):
            return fsio.After(f"{name} early", lambda err: later(name, err))
        return name

    async def main() -> None:
        io = fsio.FileIO(1)
        syncer = Recording(io, lanes=1)
        other = tmp_path / "other"
        other.mkdir()
        reported: list[BaseException | None] = []
        old_hook = threading.excepthook
        threading.excepthook = lambda args: reported.append(args.exc_value)
        try:
            calls = [syncer.run_synced(tmp_path, work, "plain", durable=hook("plain")),
                     syncer.run_synced(tmp_path, work, "after", durable=hook("after")),
                     syncer.run_synced(tmp_path, work, "raises", durable=hook("raises")),
                     syncer.run_synced(tmp_path, work, "bad", durable=hook("bad")),
                     syncer.run_synced(other, work, "boom", durable=hook("boom"))]
            out = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10)
        finally:
            threading.excepthook = old_hook
            io.shutdown()
        failed = OSError(5, "sync failed")
        assert out[:2] == [("plain", None), ("after done", None)]
        assert isinstance(out[2], RuntimeError) and isinstance(out[4], KeyError)
        assert out[3] == ("bad", None)  # the hook's error is reported and changes nothing
        assert [type(e) for e in reported] == [ValueError]
        names = [e[0] for e in events]
        assert names == ["sync", "durable plain", "durable after", "durable bad", "durable boom",
                         "then after", "then boom"]
        assert events[2] == ("durable after", ("after early", None))
        boom = events[4][1]
        assert boom[0] == "boom early" and str(boom[1]) == str(failed) and str(events[6][1]) == str(failed)

    asyncio.run(main())
