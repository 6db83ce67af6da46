"""The parts of a lone SMTP session's message that no server can overlap, measured in the bench's own
conditions (bench/smtp.py's floor rows): a loopback TCP round trip between two uvloop processes, a loop ->
thread pool -> loop hop, each after an idle gap as a lone session has, and the delivery journal's sync
(a record written over a preallocated file, then fdatasync).

    python -m bench._floors [--seconds 2] [--dir DIR] [--client-ms 0.055]

prints those rows alone in ~10 s (the journal's file made in a fresh directory below ``--dir``, after a
``sync``), the one-session floor with ``--client-ms`` as the load generator's CPU per message (``python -m
bench smtp`` notes it per cell). Not a scenario (the leading underscore keeps it out of ``python -m bench``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

from mailsrv.store import journal

#: The idle gap before each exchange (seconds): the far side asleep in epoll (the pool's thread on its queue)
#: when it starts, as in a lone session, where each side waits for the other between its steps (the client
#: ~0.1 ms for 354 and ~0.5 ms for 250 at 0.7 ms per message). A ``time.sleep`` on the loop's thread: uvloop's
#: timers count whole milliseconds (``asyncio.sleep(0.0003)`` is a mere yield) and nothing else runs there.
GAP = 0.0003
#: Exchanges left out at the start of each measurement (the connection's and the pool thread's first ones).
WARM = 20


class _Lines(asyncio.Protocol):
    """A connection's complete lines (without their ``\\n``), in order; ``line()`` awaits the next."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._rest = b""
        self._lines: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        *lines, self._rest = (self._rest + data).split(b"\n")
        for line in lines:
            self.on_line(line)

    def connection_lost(self, exc: BaseException | None) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_exception(exc or ConnectionError("floor probe connection closed"))

    def on_line(self, line: bytes) -> None:
        """Each complete line, as it arrives (a subclass may answer it instead of keeping it)."""
        self._lines.append(line)
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def line(self) -> bytes:
        while not self._lines:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._lines.popleft()


class _Pong(_Lines):
    """The far side: answers ``p`` with ``p`` at once; ``pool SECONDS GAP`` runs :func:`pool_hops` in this
    process and answers with their times (JSON seconds)."""

    def on_line(self, line: bytes) -> None:
        assert self.transport is not None
        if line == b"p":
            self.transport.write(b"p\n")
        elif line.startswith(b"pool "):
            seconds, gap = (float(x) for x in line.split()[1:3])
            asyncio.ensure_future(self._pool(seconds, gap))

    async def _pool(self, seconds: float, gap: float) -> None:
        times = await pool_hops(seconds, gap)
        assert self.transport is not None
        self.transport.write(json.dumps(times).encode() + b"\n")


async def pool_hops(seconds: float, gap: float = GAP) -> list[float]:
    """``loop.run_in_executor(pool, int)`` one after another for ``seconds`` (at least :data:`WARM` + 1),
    each after an idle ``gap``: each hop's wall time in seconds, the first :data:`WARM` left out. The pool is
    a plain ThreadPoolExecutor of 4 threads (mailsrv's FileIO is one, with 8); one thread takes every job."""
    loop = asyncio.get_running_loop()
    perf = time.perf_counter
    times: list[float] = []
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="floor") as pool:
        until = perf() + seconds
        while perf() < until or len(times) <= WARM:
            time.sleep(gap)  # noqa: ASYNC251 (idle on purpose: see GAP)
            t0 = perf()
            await loop.run_in_executor(pool, int)
            times.append(perf() - t0)
    return times[WARM:]


async def wakeups(port: int, seconds: float, gap: float = GAP) -> tuple[list[float], list[float]]:
    """Against :func:`pong_child` listening on ``port``: ``seconds`` of ping-pong (one small line each way,
    an idle ``gap`` before each), then ``seconds`` of :func:`pool_hops` in that process. Returns (each round
    trip's seconds, each hop's seconds), the first :data:`WARM` of each left out."""
    loop = asyncio.get_running_loop()
    transport, ping = await loop.create_connection(_Lines, "127.0.0.1", port)
    try:
        perf = time.perf_counter
        times: list[float] = []
        until = perf() + seconds
        while perf() < until or len(times) <= WARM:
            time.sleep(gap)  # noqa: ASYNC251 (idle on purpose: see GAP)
            t0 = perf()
            transport.write(b"p\n")
            if await ping.line() != b"p":
                raise RuntimeError("floor probe: unexpected answer")
            times.append(perf() - t0)
        transport.write(f"pool {seconds} {gap}\n".encode())
        hops = json.loads(await asyncio.wait_for(ping.line(), seconds + 30))
    finally:
        transport.close()
    return times[WARM:], hops


@contextlib.contextmanager
def placed(pid: int, mine: int, theirs: int) -> Iterator[None]:
    """This thread on CPU ``mine`` and every thread of process ``pid`` (and the threads they start) on CPU
    ``theirs`` while the block runs, then back where they were allowed before. The scheduler places a lone
    session's two sides as it likes: on one CPU a wake-up needs no other CPU to leave its idle state."""
    mine_before, theirs_before = os.sched_getaffinity(0), {}
    for tid in (int(t) for t in os.listdir(f"/proc/{pid}/task")):
        with contextlib.suppress(ProcessLookupError):  # a thread that has just ended (a pool's, shut down)
            theirs_before[tid] = os.sched_getaffinity(tid)
    try:
        os.sched_setaffinity(0, {mine})
        for tid in theirs_before:
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(tid, {theirs})
        yield
    finally:
        os.sched_setaffinity(0, mine_before)
        for tid, cpus in theirs_before.items():
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(tid, cpus)


def two_cpus() -> tuple[int, int] | None:
    """Two CPUs this process may run on (the first two), or None with fewer."""
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else None


def pong_child(sock: socket.socket, ready: int, path: Path) -> None:
    """The far side of :func:`wakeups` (bench/smtp.py spawns it as a fresh interpreter, as its servers): a
    uvloop loop serving :class:`_Pong` on ``sock`` until SIGTERM; writes ``1`` on ``ready`` once it serves."""
    import uvloop

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        server = await loop.create_server(_Pong, sock=sock)
        os.write(ready, b"1")
        await stop.wait()
        server.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        r.run(main())


class Overwrite:
    """The delivery journal's sync with nothing around it (mailsrv/store/journal.py): a file zero-filled once
    to the journal's size and made durable, then records written one after another over it (from after its
    header again at its end), each followed by ``fdatasync``: data blocks only, the size never changes."""

    def __init__(self, path: Path, size: int = journal.SIZE) -> None:
        self.size, self.pos = size, journal.HEADER
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        zeros = bytes(1 << 20)
        for off in range(0, size, len(zeros)):
            os.pwrite(self.fd, zeros[:size - off], off)
        os.fsync(self.fd)
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def write(self, record: bytes) -> None:
        if self.pos + len(record) > self.size:
            self.pos = journal.HEADER
        os.pwrite(self.fd, record, self.pos)
        os.fdatasync(self.fd)
        self.pos += len(record)

    def close(self) -> None:
        """Close the file (once; again does nothing)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Overwrite:
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def record(body: bytes) -> bytes:
    """A journal record's size for ``body`` delivered to one target: its header, the payload's head and the
    target's four strings (~150 bytes, their content does not matter to the disk), then the message."""
    return bytes(150) + body


def main(argv: list[str] | None = None) -> int:
    from . import smtp as B
    from .__main__ import print_table

    ap = argparse.ArgumentParser(prog="python -m bench._floors", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="each probe's (a pinned one: a quarter)")
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                    help="the journal's file is made below it: its file system is the one measured")
    ap.add_argument("--client-ms", type=float, default=0.055,
                    help="the load generator's CPU ms per message (0.055 at one session, 2026-11-28 15:26)")
    a = ap.parse_args(argv)
    t0 = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="floors-", dir=a.dir))
    try:
        probe = B._OneSessionFloor(scratch, a.seconds)
        try:
            os.sync()
            _wake, sync = probe.measure(None)
        finally:
            probe.close()
    finally:
        shutil.rmtree(scratch)
    rows = [{"name": f"disk floor, one writer: {B.JOURNAL_FLOOR}", "unit": "ms", "value": B._pct(sync, 50),
             "detail": f"p90 {B._pct(sync, 90):.3f} ms, {len(sync)} writes"},
            *B._one_session_rows(probe.rounds, a.client_ms, [], "python")]
    print_table({"scenario": "floors", "seconds": time.monotonic() - t0, "results": rows,
                 "notes": [f"load average {os.getloadavg()[0]:.1f}; journal file below {a.dir}"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
