"""Queue writes wake only the push streams of accounts with submissions still in the queue; a new
submission (a /set in any worker) opens the gate; deliveryStatus changes are still pushed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_submission_status_settle import QueueView, record

from mailsrv.jmap.memory import MemoryBackend
from mailsrv.jmap.objects import Collection, put
from mailsrv.jmap.push import Follower
from mailsrv.jmap.submission import SubmissionTracking
from mailsrv.util.fsio import FileIO, durable_write


class Submitter(QueueView):
    """A TrackingSubmitter over a real queue directory (the test writes into it as the runner would)."""

    def __init__(self, qdir: Path) -> None:
        super().__init__({})
        self.qdir = qdir
        self.during_status: Any = None

    def watch_paths(self) -> list[Path]:
        return [self.qdir]

    async def status(self, queue_id: str) -> dict[str, tuple[str, str]] | None:
        if self.during_status is not None:
            await self.during_status()
        return await super().status(queue_id)


class Counted(Collection):
    """A collection that counts how often it is read (each read is a re-read of the submissions)."""

    reads = 0

    async def read(self) -> dict[str, Any]:
        self.reads += 1
        return await super().read()


async def until(cond: Any, what: str) -> None:
    deadline = time.monotonic() + 10
    while not cond():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


def queue_write(qdir: Path, name: str) -> None:
    durable_write(qdir / name, b"envelope")


@pytest.fixture
def io(tmp_path: Path) -> Iterator[FileIO]:
    (tmp_path / "queue").mkdir()
    pool = FileIO(2)
    yield pool
    pool.shutdown()


def test_queue_writes_wake_only_accounts_with_queued_submissions(tmp_path: Path, io: FileIO) -> None:
    qdir = tmp_path / "queue"

    async def main() -> None:
        sub = Submitter(qdir)
        colls = {a: Counted(tmp_path / "objects", io, a, "EmailSubmission") for a in ("A1", "A2")}
        tracks = {a: SubmissionTracking(MemoryBackend(a, f"{a}@example.test"), colls[a], sub) for a in colls}

        async def source_of(a: str) -> Any:
            async def source() -> list[Any]:
                return [tracks[a]]
            return source

        streams = {a: Follower(await source_of(a), frozenset({"EmailSubmission"})) for a in tracks}
        try:
            for a, f in streams.items():
                assert await f.start() == {a: {"EmailSubmission": "0"}}
                assert tracks[a].following is False
            # A1 queues a submission (as EmailSubmission/set does in some worker): its stream wakes
            sub.entries["q1"] = {"r@remote.test": ("pending", "")}
            await colls["A1"].change(lambda d: put(d, "S1", record("q1", ["r@remote.test"])))
            assert await streams["A1"].changes(10) == {"A1": {"EmailSubmission": "1"}}
            assert tracks["A1"].following is True and sub.asked == ["q1"]
            # a queue write: A1 looks at the queue; A2 saw the write go by and read nothing
            reads = colls["A2"].reads
            sub.entries["q1"] = {"r@remote.test": ("pending", "451 4.3.0 later")}
            queue_write(qdir, "e1")
            assert await streams["A1"].changes(10) == {"A1": {"EmailSubmission": "2"}}
            gate = tracks["A2"]._queue
            assert gate is not None
            await until(lambda: gate.fired >= 1, "A2's queue watch never saw the write")
            assert await streams["A2"].changes(0) is None  # no wake-up
            assert colls["A2"].reads == reads
            # the outcome: "yes", pushed; then A1 follows nothing and ignores the queue too
            sub.entries["q1"] = {"r@remote.test": ("sent", "250 ok")}
            queue_write(qdir, "e2")
            assert await streams["A1"].changes(10) == {"A1": {"EmailSubmission": "3"}}
            recs = await colls["A1"].records()
            assert recs["S1"]["deliveryStatus"]["r@remote.test"]["delivered"] == "yes"
            assert tracks["A1"].following is False
            own = tracks["A1"]._watch
            assert own is not None  # settle()'s own write to the collection wakes the stream once
            await until(own.event.is_set, "the collection watch never saw settle()'s write")
            assert await streams["A1"].changes(0) == {}
            a1_gate = tracks["A1"]._queue
            assert a1_gate is not None
            fired, asked = a1_gate.fired, len(sub.asked)
            queue_write(qdir, "e3")
            await until(lambda: a1_gate.fired > fired, "A1's queue watch never saw the write")
            assert await streams["A1"].changes(0) is None and len(sub.asked) == asked
        finally:
            for f in streams.values():
                f.close()

    asyncio.run(main())


def test_queue_write_while_settling_is_not_lost(tmp_path: Path, io: FileIO) -> None:
    """The gate opens only when settle() returns: a queue write during it makes the stream look again."""
    qdir = tmp_path / "queue"

    async def main() -> None:
        sub = Submitter(qdir)
        coll = Collection(tmp_path / "objects", io, "A1", "EmailSubmission")
        track = SubmissionTracking(MemoryBackend("A1"), coll, sub)
        watch = track.watch()
        try:
            assert await track.extra_states() == {"EmailSubmission": "0"} and track.following is False
            await coll.change(lambda d: put(d, "S1", record("q1", ["r@remote.test"])))
            assert await watch.wait(10)  # the collection changed
            gate = track._queue
            assert gate is not None

            async def write_meanwhile() -> None:
                sub.during_status = None
                fired = gate.fired
                queue_write(qdir, "e1")
                await until(lambda: gate.fired > fired, "the queue watch never saw the write")

            sub.entries["q1"] = {"r@remote.test": ("pending", "")}
            sub.during_status = write_meanwhile
            await track.extra_states()
            assert track.following is True
            assert await watch.wait(0)  # poked: the write seen with the gate shut is not lost
        finally:
            watch.close()

    asyncio.run(main())


def test_without_a_collection_watch_queue_writes_wake_as_before(tmp_path: Path, io: FileIO,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """No inotify watch left for the account's collections: the gate stays open (nothing is missed)."""
    import errno

    from mailsrv.jmap import submission

    def no_watch(path: Path) -> Any:
        raise OSError(errno.ENOSPC, "inotify_add_watch: No space left on device")

    monkeypatch.setattr(submission, "_collection_watch", no_watch)
    qdir = tmp_path / "queue"

    async def main() -> None:
        track = SubmissionTracking(MemoryBackend("A1"), Collection(tmp_path / "objects", io, "A1", "EmailSubmission"),
                                   Submitter(qdir))
        watch = track.watch()
        try:
            assert await track.extra_states() == {"EmailSubmission": "0"} and track.following is False
            queue_write(qdir, "e1")
            assert await watch.wait(10)
        finally:
            watch.close()

    asyncio.run(main())


def test_a_refused_queue_watch_closes_the_watches_made_before_it(tmp_path: Path, io: FileIO,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """No inotify watch left for the queue: the account's collection watch made just before is released
    (it would hold its kernel watch until the worker exits) and the error reaches the caller."""
    import errno

    from mailsrv.jmap import submission

    def no_watch(paths: list[Path]) -> Any:
        raise OSError(errno.ENOSPC, "inotify_add_watch: No space left on device")

    monkeypatch.setattr(submission, "_queue_watch", no_watch)

    async def main() -> None:
        n = submission._notifier()
        start = n.watch_count
        track = SubmissionTracking(MemoryBackend("A1"), Collection(tmp_path / "objects", io, "A1", "EmailSubmission"),
                                   Submitter(tmp_path / "queue"))
        with pytest.raises(OSError):
            track.watch()
        assert n.watch_count == start

    asyncio.run(main())
