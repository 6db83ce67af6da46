"""Spool files: a message being received, streamed to ``data_dir/spool`` (same file system as the maildirs).

No file call runs on the event loop: a file create in a busy directory can
take milliseconds (journal), which would stall every session of the worker.
Writes are buffered up to :data:`FLUSH_AT` bytes and then written by a
thread, so a typical message costs one thread job (create, write, close) at
the end, and a 25 MB message never has more than ``FLUSH_AT`` bytes in memory.
Discarded files are removed by one thread job per batch (:class:`_Remover`), not
one job per file: a thread hop costs the loop more than the unlink itself (a serving
worker lets a batch gather for :data:`REMOVE_DELAY` seconds).
There is no fsync here: each consumer makes its own copy durable
(``store.deliver`` fsyncs the linked file and its ``new/``; the queue fsyncs
its link), so a local-only message costs one file fsync, not two.
A *lazy* spool (the SMTP backend's) whose message never left memory can be
sealed (:meth:`~FileSpool.seal`) instead of committed: no job writes it, and the store's
delivery job creates the file from ``content`` before it links it (``Store.deliver``
with ``data=``), so a local message costs one pool job, not two.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import threading
import time
from pathlib import Path

from mailsrv.store import reserve
from mailsrv.util import fsio

_PREFIX = secrets.token_hex(4)  # unique names without a urandom call per message
_counter = itertools.count()
#: the middle of a spool file's name: this process's id (without a getpid(2) per message) and the prefix;
#: reset in a forked child
_mid = f".{os.getpid()}.{_PREFIX}"


def _after_fork() -> None:
    global _mid
    _mid = f".{os.getpid()}.{_PREFIX}"


os.register_at_fork(after_in_child=_after_fork)

#: Bytes buffered in memory before they are written out by a thread.
FLUSH_AT = 256 * 1024

#: ``directory / name`` for a ``name`` known to be one plain part: pathlib's own constructor for the
#: entries of a directory walk (CPython 3.11-3.12), which does not parse ``name`` again (0.19 us against
#: 0.9 us per message, on the event loop); ``/`` where pathlib has no such method
_child = getattr(Path, "_make_child_relpath", Path.joinpath)


class FileSpool:
    """One spool file. Owned by one session; ``discard`` is idempotent."""

    __slots__ = ("path", "_fd", "_buf", "_buffered", "size", "_done", "_job", "content", "_started",
                 "_lazy", "sealed")

    def __init__(self, directory: Path, *, lazy: bool = False) -> None:
        # the clock in hex, pid, prefix, count in hex: one %-format (an f-string's two :x specs cost 1.6x)
        name = "%x%s%x" % (time.time_ns(), _mid, next(_counter))  # noqa: UP031 (measured, see above)
        self.path: Path = _child(directory, name)
        self._fd: int | None = None
        self._buf: list[bytes] = []
        self._buffered = 0
        self.size = 0
        self._done = False
        self._job: asyncio.Future[None] | None = None  # a write running in a thread
        self._started = False  # a write was handed to a thread: the file may exist
        #: after :meth:`commit`, the whole message when it never left memory before (up to FLUSH_AT
        #: bytes): end-of-DATA checks use it instead of reading the file back
        self.content: bytes | None = None
        self._lazy = lazy
        #: after :meth:`seal`: the file may not exist yet, ``content`` is the message
        self.sealed = False

    def buffer(self, data: bytes) -> bool:
        """Append ``data`` when it stays in memory (the buffer under :data:`FLUSH_AT`), without the
        coroutine of :meth:`write`; False: nothing was done, ``await write(data)`` instead."""
        if self._done or self._buffered + len(data) >= FLUSH_AT:
            return False
        self._buf.append(data)
        self._buffered += len(data)
        self.size += len(data)
        return True

    async def write(self, data: bytes) -> None:
        if self._done:
            raise OSError("spool closed")
        self._buf.append(data)
        self._buffered += len(data)
        self.size += len(data)
        if self._buffered >= FLUSH_AT:
            data, self._buf, self._buffered = b"".join(self._buf), [], 0
            await self._run(data, False)

    async def _run(self, data: bytes, close: bool) -> None:
        self._started = True
        self._job = fsio.running_loop().run_in_executor(None, self._write_sync, data, close)
        try:
            await asyncio.shield(self._job)
        finally:
            if self._job.done():
                self._job = None

    def _write_sync(self, data: bytes, close: bool) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        if close:
            os.close(self._fd)
            self._fd = None

    def held(self) -> bytes | None:
        """The whole message while none of it has left memory (None once a part was written)."""
        if self._done or self._started:
            return None
        data = b"".join(self._buf)
        self._buf = [data]
        return data

    def replace(self, data: bytes) -> None:
        """Replace the message held in memory (see :meth:`held`) by ``data`` before :meth:`commit`."""
        if self._done or self._started:
            raise OSError("spool already written")
        self._buf = [data]
        self._buffered = self.size = len(data)

    async def commit(self) -> None:
        """Write what is buffered and close; the file stays until :meth:`discard`. Raises OSError."""
        if self._done:
            return
        self._done = True
        data, self._buf, self._buffered = b"".join(self._buf), [], 0
        await self._run(data, True)
        if len(data) == self.size:
            self.content = data

    def seal(self) -> bool:
        """Close a lazy spool whose whole message is in memory without writing it (no job).

        Returns False (nothing done: :meth:`commit` it) for a spool that is not lazy or has
        had a part written. After True, ``content`` is the message and the file does not exist
        until a consumer creates it: ``Store.deliver(path, ..., data=content)`` or
        :meth:`materialize`; :meth:`discard` removes it whoever made it.
        """
        if not self._lazy or self._done or self._started:
            return False
        self._done = self._started = self.sealed = True  # _started: a consumer may make the file
        self.content, self._buf, self._buffered = b"".join(self._buf), [], 0
        return True

    def forget(self) -> None:
        """A consumer moved or removed the sealed spool's file (``Store.deliver(consume=True)``):
        :meth:`discard` has nothing to remove. A later :meth:`materialize` writes it again."""
        if self.sealed:
            self._started = False

    async def materialize(self) -> None:
        """Write a sealed spool's file unless a consumer made it already (one pool job). Raises OSError."""
        if not self.sealed or self.content is None:
            return
        try:
            await self._run(self.content, True)
        except FileExistsError:
            self._fd = None  # the store's delivery job wrote it (O_EXCL refused ours: nothing opened)
        self.sealed = False

    def discard(self) -> None:
        """Remove the file; the unlink runs in a thread when a loop is running."""
        self._done = True
        self._buf = []
        self.content = None
        if not self._started:
            return  # never written: there is no file
        try:
            loop = fsio.running_loop()
        except RuntimeError:
            self._cleanup()
            return
        job = self._job
        if job is not None and not job.done():
            # a cancelled session's write is still running in its thread: clean up after it,
            # never close a descriptor that thread is using
            job.add_done_callback(lambda _: _remover.add(loop, self))
        else:
            _remover.add(loop, self)

    def _cleanup(self) -> None:
        fd, self._fd = self._fd, None
        _remove(self.path, fd)


class _Remover:
    """Discarded spools, removed by one executor job that takes every spool queued meanwhile.

    Thread-safe. By default a job runs as soon as the first spool is queued (never on a timer: a
    loop that stops waits for its executor's jobs, so nothing is left behind), and spools queued
    while it runs join its batch. A serving worker sets a ``delay`` (:func:`batch_removals`): the
    job then starts that long after the first spool, so that one job removes the spools of many
    messages (at one SMTP session, one job per message was a loop -> pool hop of its own), and
    the worker calls :func:`flush_removals` when its loop stops.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._todo: list[FileSpool] = []
        self._running = False
        self.delay = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def add(self, loop: asyncio.AbstractEventLoop, spool: FileSpool) -> None:
        """Queue ``spool``; called in ``loop``'s thread (a discard, or a done callback of its job)."""
        with self._lock:
            self._todo.append(spool)
            if self._running:
                return
            self._running = True
            if self.delay > 0:
                try:
                    self._timer = loop.call_later(self.delay, self._start, loop)
                    return
                except RuntimeError:  # the loop is closing: start the job (or remove) now
                    pass
        self._start(loop)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        try:
            loop.run_in_executor(None, self._run)
        except RuntimeError:  # the loop or its executor is closing: remove here
            self._run()

    def flush(self) -> None:
        """Remove now, in this thread, the spools that wait for a delayed job."""
        with self._lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            self._run()

    def _run(self) -> None:
        while True:
            with self._lock:
                todo, self._todo = self._todo, []
                if not todo:
                    self._running = False
                    return
            for spool in todo:
                with contextlib.suppress(OSError):  # a file we cannot remove must not stop the others
                    spool._cleanup()


_remover = _Remover()

#: Seconds a serving worker's removal job waits for more discarded spools (:func:`batch_removals`).
REMOVE_DELAY = 0.02


def batch_removals(delay: float = REMOVE_DELAY) -> None:
    """From now on, a discarded spool is removed by a job that starts ``delay`` seconds after the
    first one queued (0: at once). For a serving worker's loop, which must call
    :func:`flush_removals` when it stops (its pending timer would never run)."""
    _remover.delay = delay


def flush_removals() -> None:
    """Remove, in this thread, the discarded spools still waiting for a delayed job (a stopping
    worker, after its sessions ended). A job already running is left to the loop's executor.
    Later discards (a service closing after its sessions) start their job at once: a timer set
    now might never run, and its spool would wait for :func:`clean`."""
    _remover.delay = 0.0
    _remover.flush()


def _remove(path: Path, fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def spool_dir(data_dir: Path) -> Path:
    """``data_dir/spool``, created on first use; leftovers of a crash are removed by :func:`clean`."""
    path = data_dir / "spool"
    path.mkdir(parents=True, exist_ok=True)
    return path


def clean(directory: Path, older_than: float = 3600.0) -> int:
    """Remove spool files a crashed worker left behind (never acknowledged, so nothing is lost), and
    the files its store's spool reserve held (``.reserve/``, store/reserve.py: at once, any age)."""
    removed = reserve.clean(directory)
    cutoff = time.time() - older_than
    for entry in os.scandir(directory):
        try:
            if entry.is_file() and entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:
            pass
    return removed
