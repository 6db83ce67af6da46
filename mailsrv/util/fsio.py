"""Blocking file calls off the event loop, and durable writes.

Every blocking file operation a coroutine needs goes through :class:`FileIO`
(a bounded thread pool) so that no fsync or large read runs on the loop
thread. Durable writes follow one recipe: temp file in the same directory
tree -> write -> fsync -> rename -> fsync the directory. :class:`DirSyncer`
batches directory fsyncs of concurrent callers (group commit): a caller's
await returns only after an fsync of its directory that *started* after it
asked, so the promise "durable on return" holds for every caller.
:class:`FsSyncer` does the same with one ``syncfs(2)`` per round for a whole
file system: every file and directory entry written before the round began,
by any caller, is durable when it ends (one journal commit for many files).
:data:`foreground` lets background jobs (indexing after delivery) give way to
the delivery rounds of the same process between slices of their work.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import ctypes
import ctypes.util
import errno
import functools
import hashlib
import os
import queue
import threading
import time
from collections.abc import AsyncIterable, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

from mailsrv.util import timeline

__all__ = [
    "FileIO",
    "DirSyncer",
    "FsSyncer",
    "Foreground",
    "Wanted",
    "WantedLock",
    "foreground",
    "background",
    "give_way",
    "pool_thread",
    "submit",
    "have_syncfs",
    "syncfs",
    "watch_fs",
    "fsync_dir",
    "read_prefix",
    "fsync_file",
    "durable_write",
    "unique_name",
    "running_loop",
]

T = TypeVar("T")

_counter = 0
_counter_lock = threading.Lock()
#: this process's id (unique_name runs once per delivery: no getpid syscall each time); reset in a
#: forked child by the at-fork hook below
_pid = os.getpid()
#: hostname -> its maildir-safe form
_hosts: dict[str, str] = {}


def _after_fork() -> None:
    global _pid, _fs_lock
    _pid = os.getpid()
    _here.loop = None  # the parent's loop is not this process's
    # the parent's syncfs descriptors share its error cursor (errseq): this process opens its own
    _fs_lock = threading.Lock()
    for fs in _fs.values():
        os.close(fs.fd)
    _fs.clear()


#: per thread: the loop that ran in it last (:func:`running_loop`)
_here = threading.local()
os.register_at_fork(after_in_child=_after_fork)


def running_loop() -> asyncio.AbstractEventLoop:
    """``asyncio.get_running_loop()`` without its getpid(2) syscall (Python 3.11 checks the pid on
    every call: ten calls per delivered message). A thread runs at most one loop at a time, so the
    loop remembered for this thread is the running one while it runs; a forked child forgets it.
    Raises RuntimeError outside a running loop, as ``get_running_loop`` does."""
    loop = getattr(_here, "loop", None)
    if loop is None or not loop.is_running():
        loop = _here.loop = asyncio.get_running_loop()
    return loop


def unique_name(hostname: str = "") -> str:
    """A maildir-style unique base name: ``<sec>.M<usec>P<pid>Q<n>.<host>``."""
    global _counter
    with _counter_lock:
        _counter += 1
        n = _counter
    now = time.time()
    host = _hosts.get(hostname)
    if host is None:
        host = (hostname or os.uname().nodename).replace("/", "\\057").replace(":", "\\072")
        if len(_hosts) < 64:
            _hosts[hostname] = host
    return f"{int(now)}.M{int(now % 1 * 1_000_000)}P{_pid}Q{n}.{host}"


def fsync_file(path: str | os.PathLike[str]) -> None:
    """fsync an existing file by path (blocking)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_prefix(path: str | os.PathLike[str], limit: int) -> bytes:
    """The first ``limit`` bytes of the file at ``path`` (all of it when shorter; blocking: call it in
    a pool). Raises OSError."""
    with open(path, "rb") as fh:
        return fh.read(limit)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so that renames and links in it survive a crash (blocking)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_syncfs: Any = None


def _syncfs_fn() -> Any:
    """libc's syncfs(2), or False where there is none (not Linux)."""
    global _syncfs
    if _syncfs is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            fn = lib.syncfs
            fn.argtypes = [ctypes.c_int]
            fn.restype = ctypes.c_int
            _syncfs = fn
        except (OSError, AttributeError):
            _syncfs = False
    return _syncfs


def have_syncfs() -> bool:
    """Is syncfs(2) available (Linux)?"""
    return bool(_syncfs_fn())


class _Fs:
    """This process's syncfs(2) descriptor of one file system, and the error to report once more."""

    __slots__ = ("fd", "lock", "again")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lock = threading.Lock()
        self.again: OSError | None = None


#: st_dev -> its descriptor (:func:`syncfs`); emptied in a forked child
_fs: dict[int, _Fs] = {}
_fs_lock = threading.Lock()


def watch_fs(path: str | os.PathLike[str]) -> None:
    """Open now the descriptor :func:`syncfs` uses for the file system holding ``path`` (the store
    does at start, before any write it will sync), so that it reports every writeback error from
    now on. Raises OSError."""
    _fs_of(path)


def _fs_of(path: str | os.PathLike[str]) -> _Fs:
    dev = os.stat(path).st_dev
    fs = _fs.get(dev)
    if fs is None:
        with _fs_lock:
            fs = _fs.get(dev)
            if fs is None:
                fs = _fs[dev] = _Fs(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
    return fs


def syncfs(path: str | os.PathLike[str]) -> None:
    """Make every file and directory change on the file system holding ``path`` durable (blocking).

    Linux syncfs(2): writes out all dirty data and metadata of that file system and waits for it,
    and (since Linux 5.8) reports a writeback error once per open file description, and only to
    those opened before anyone saw the error (errseq): a descriptor opened per call, as before,
    returned 0 after another worker's syncfs (or another round's) had seen the error of this
    caller's lost pages (checked on a loop device whose backing store ran out of space: the first
    fresh descriptor got EIO, the next one 0, one opened before the writes ENOSPC). So each process
    keeps one descriptor per file system (:func:`watch_fs`), its syncs run one at a time, and an
    error is raised by the sync that saw it and by the next one too (the failed writeback may have
    covered writes of a caller that joined the next sync). Raises OSError.
    """
    fn = _syncfs_fn()
    if not fn:
        raise OSError(errno.ENOSYS, "syncfs is not available", os.fspath(path))
    fs = _fs_of(path)
    with fs.lock:
        if fn(fs.fd) != 0:
            err = ctypes.get_errno()
            fs.again = OSError(err, os.strerror(err), os.fspath(path))
            raise OSError(err, os.strerror(err), os.fspath(path))
        if fs.again is not None:
            exc, fs.again = fs.again, None
            raise OSError(exc.errno, exc.strerror, os.fspath(path))


def durable_write(path: str | os.PathLike[str], data: bytes, *, tmp_dir: str | os.PathLike[str] | None = None,
                  mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically and durably (blocking).

    temp file (in ``tmp_dir`` or beside ``path``; same file system) -> write
    -> fsync -> rename over ``path`` -> fsync the directory of ``path``.
    Raises OSError; on error the old content of ``path`` is intact.
    """
    target = Path(path)
    tdir = Path(tmp_dir) if tmp_dir is not None else target.parent
    tmp = tdir / f".{target.name}.{unique_name()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(target.parent)


#: seconds one background job (a store index batch, a search round) gives way to delivery rounds at
#: most in all, by default (``Foreground.budget``: ``[store] index_give_way``): under sustained load
#: it waits this long, then runs its slices without waiting, so indexing keeps up (0: never)
GIVE_WAY_MAX = 0.02
#: ... and at most this long at one slice boundary (a round that needs a lock the job holds, e.g. the
#: engine lock on a folder-cache miss, waits no longer than this for it)
GIVE_WAY_STEP = 0.005


class Foreground:
    """Latency-bound work of this process running or waiting now (delivery rounds): background jobs
    that call :func:`give_way` between slices wait, without holding the GIL, while there is any.

    ``enter``/``leave`` are called on the loop thread by each round and delivery (an uncontended
    lock each, taken directly: a Condition's ``with`` is a Python call); ``busy`` is read by any
    thread without the lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self.busy = 0
        #: seconds one background job waits at most in all (the store sets ``[store] index_give_way``)
        self.budget = GIVE_WAY_MAX
        #: background jobs waiting in :meth:`wait` now, and the seconds they waited (tests, bench)
        self.waiting = 0
        self.waited = 0.0

    def enter(self) -> None:
        with self._lock:
            self.busy += 1

    def leave(self) -> None:
        with self._lock:
            self.busy -= 1
            if not self.busy and self.waiting:  # waiters count themselves under this lock
                self._cond.notify_all()

    def wait(self, timeout: float, holding: Wanted | None = None) -> float:
        """Blocking: return once nothing is busy, or after ``timeout`` seconds; the seconds waited.
        Also at once when someone waits for ``holding`` (what the caller holds), or a job waits
        for a thread of the caller's :class:`FileIO` pool (all the threads it could run on are busy,
        some giving way; a delivery round has threads of its own, :meth:`FileIO.express`)."""
        if not self.busy:
            return 0.0
        pool = getattr(_bg, "pool", None)
        t0 = time.monotonic()
        with self._cond:
            self.waiting += 1
            self._cond.wait_for(lambda: (not self.busy or (holding is not None and holding.wanted > 0)
                                         or (pool is not None and _starved(pool))), timeout)
            self.waiting -= 1
            waited = time.monotonic() - t0
            self.waited += waited
        return waited

    def nudge(self) -> None:
        """Wake the jobs waiting in :meth:`wait` to look again (a job was queued for a pool)."""
        with self._cond:
            self._cond.notify_all()

    def want(self, held: Wanted, n: int) -> None:
        """``held.wanted += n`` (+1 before waiting for it, -1 after) under the condition's lock,
        waking the jobs waiting in :meth:`wait`: the one holding it then stops waiting (no lost
        wake-up: its predicate reads ``wanted`` under the same lock)."""
        with self._cond:
            held.wanted += n
            if n > 0:
                self._cond.notify_all()


class Wanted:
    """Something a background job holds while it gives way (a search round's mailbox locks):
    ``wanted`` counts who waits for it now (changed through :meth:`Foreground.want`)."""

    __slots__ = ("wanted",)

    def __init__(self) -> None:
        self.wanted = 0


class WantedLock(Wanted):
    """A reentrant lock that counts the threads waiting for it (``wanted``): a background job that
    holds it does not give way while one does (``give_way(holding=lock)``), and a thread that starts
    waiting wakes a job already giving way. Otherwise a delivery round (a quota check, an index
    transaction) or a reader that needs the lock would wait for a job that waits for rounds.
    Uncontended, a ``with`` costs a Python call more than a bare RLock's (~0.2 us)."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        super().__init__()  # wanted: threads blocked in acquire() now
        self._lock = threading.RLock()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self._lock.acquire(False):
            return True
        if not blocking:
            return False
        foreground.want(self, 1)
        try:
            return self._lock.acquire(True, timeout)
        finally:
            foreground.want(self, -1)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


#: the process's group-commit rounds (every :class:`_GroupCommit`: the store's deliveries)
foreground = Foreground()

_bg = threading.local()


@contextlib.contextmanager
def background(budget: float | None = None) -> Iterator[None]:
    """Mark the current thread's job as background work: :func:`give_way` calls inside it wait for
    :data:`foreground`, at most ``budget`` seconds in all (default ``foreground.budget``). Nested, the
    inner block keeps the outer budget."""
    if getattr(_bg, "left", None) is not None:
        yield
        return
    _bg.left = foreground.budget if budget is None else budget
    try:
        yield
    finally:
        _bg.left = None


def give_way(holding: Wanted | None = None) -> None:
    """A slice boundary of a background job: inside :class:`background`, wait while a delivery round
    runs or waits to run (at most GIVE_WAY_STEP here and the job's budget in all); elsewhere, or with
    nothing in the foreground, return at once (~0.1 us). ``holding``: a lock the caller holds (the
    engine lock, inside an index transaction): no waiting while another thread waits for it, and
    such a thread ends the wait at once (it may be the round's)."""
    if not foreground.busy:
        return
    left = getattr(_bg, "left", None)
    if not left or left <= 0 or (holding is not None and holding.wanted > 0):
        return
    _bg.left = left - foreground.wait(min(left, GIVE_WAY_STEP), holding)


class FileIO:
    """A bounded thread pool for blocking file work, shared by one process's store."""

    def __init__(self, threads: int = 8, name: str = "mailsrv-io") -> None:
        self._pool: ThreadPoolExecutor = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix=name, initializer=lambda: pool_thread(self._pool))
        self._name = name
        #: the express threads (:meth:`express`): all of them, and those waiting for a job now
        self._runners: list[_Runner] = []
        self._idle: list[_Runner] = []
        self._lock = threading.Lock()
        self._closed = False

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` in the pool and await its result (context preserved)."""
        loop = running_loop()
        ctx = contextvars.copy_context()
        call = functools.partial(ctx.run, fn, *args, **kwargs)
        return await asyncio.wrap_future(self.queue(call), loop=loop)

    def queue(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Start ``fn()`` in the pool, counted as :func:`submit` does, without a loop's future (a
        group-commit round answers its loop itself). Raises RuntimeError once shut down."""
        return _queue(self._pool, fn)

    async def write_chunks(self, f: Any, chunks: AsyncIterable[bytes],
                           check: Callable[[int], None]) -> tuple[int, str]:
        """Write ``chunks`` to the open file ``f`` in the pool (the loop only moves them); before each
        write ``check(size so far)`` may raise to stop. Returns (size, SHA-256 hex digest); neither
        flushes, syncs nor closes ``f``."""
        digest = hashlib.sha256()
        size = 0
        async for chunk in chunks:
            size += len(chunk)
            check(size)
            digest.update(chunk)
            await self.run(f.write, chunk)
        return size, digest.hexdigest()

    def express(self, job: Callable[[], T], done: Callable[[T | None, BaseException | None], object]) -> None:
        """Run ``job()`` in a thread of its own, then ``done(result, None)`` or ``done(None, exception)``
        in that thread: a group-commit round (one at a time per lane). A thread that finished a job
        takes the next one (it is awake); one is started when none waits, so there are as many as
        jobs ever ran at once (the syncer's lanes). Cheaper than a pool job both ways: a SimpleQueue
        put and get instead of a concurrent future, a work item and the pool's semaphores (loop ->
        thread -> loop on this VM, 2000 trips 1 ms apart: 15.5 us median against 20-27). Not counted
        in the pool's load: the job never waits for a pool thread. Raises RuntimeError once shut down."""
        if timeline.on:
            job = functools.partial(_stamped_job, timeline.new_job(_job_kind(job)), job)
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new jobs after shutdown")
            try:
                runner = self._idle.pop()
            except IndexError:
                runner = _Runner(self._idle, f"{self._name}-express-{len(self._runners)}")
                self._runners.append(runner)
            runner.jobs.put((job, done))

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            self._closed = True
            for runner in self._runners:
                runner.jobs.put(None)
        if wait:
            for runner in self._runners:
                runner.thread.join()
        self._pool.shutdown(wait=wait)


class _Runner:
    """An express thread of a :class:`FileIO`: runs the jobs put in ``jobs`` (None: stop)."""

    __slots__ = ("jobs", "thread", "_idle")

    def __init__(self, idle: list[_Runner], name: str) -> None:
        self.jobs: queue.SimpleQueue[tuple[Callable[[], Any], Callable[[Any, BaseException | None], object]] | None]
        self.jobs = queue.SimpleQueue()
        self._idle = idle
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        get = self.jobs.get
        while (item := get()) is not None:
            job, done = item
            try:
                out, exc = job(), None
            except BaseException as e:  # handed to done, as a future would hold it
                out, exc = None, e
            self._idle.append(self)  # before done: the loop may hand it the lane's next round at once
            try:
                done(out, exc)
            except Exception as e:  # reported as a thread's error; the thread goes on (it is idle)
                threading.excepthook(threading.ExceptHookArgs((type(e), e, e.__traceback__, None)))


def pool_thread(pool: ThreadPoolExecutor) -> None:
    """The initializer of ``pool``'s threads (``initializer=lambda: pool_thread(pool)``): background
    jobs they run give way only while no job waits for a thread of the pool (a round's job queued
    behind jobs that wait for rounds would wait their budget). Submit with :func:`submit`."""
    _bg.pool = pool


class _Load:
    """A pool's jobs submitted through :func:`submit` and not finished (kept on the pool object)."""

    __slots__ = ("jobs", "lock", "threads")

    def __init__(self, threads: int) -> None:
        self.jobs = 0
        self.lock = threading.Lock()
        self.threads = threads


def _load(pool: ThreadPoolExecutor) -> _Load:
    load: _Load | None = getattr(pool, "_mailsrv_load", None)
    if load is None:
        load = _Load(pool._max_workers)
        pool._mailsrv_load = load  # type: ignore[attr-defined]
    return load


def _starved(pool: ThreadPoolExecutor) -> bool:
    """Does a job wait for a thread of ``pool`` (more jobs in it than it has threads)? Not merely
    queued: a job that an idle thread is about to take does not count. The queue alone said yes to
    every job from its submit until a thread took it, and a delivery round's submit so woke the
    index batch giving way in the same pool, which then ran its slice beside the round (one
    session: p90 1-3.5 ms from a round's submit to its job's start during a batch, 0.4-0.5 since)."""
    load = _load(pool)
    return load.jobs > load.threads


def _counted(load: _Load, fn: Callable[[], T]) -> T:
    try:
        return fn()
    finally:
        with load.lock:
            load.jobs -= 1


def submit(loop: asyncio.AbstractEventLoop, pool: ThreadPoolExecutor, fn: Callable[[], T]) -> asyncio.Future[T]:
    """``loop.run_in_executor(pool, fn)``, counting the pool's jobs; when this one must wait for a
    thread, the background jobs giving way in the pool's threads (:func:`pool_thread`) are woken to
    look again: it may need a thread one of them holds."""
    return asyncio.wrap_future(_queue(pool, fn), loop=loop)


def _queue(pool: ThreadPoolExecutor, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
    """:func:`submit` without the loop: ``pool.submit(fn)``, counted. Raises RuntimeError when the
    pool is shut down."""
    load = _load(pool)
    with load.lock:
        load.jobs += 1
        starved = load.jobs > load.threads
    if timeline.on:
        fn = functools.partial(_stamped_job, timeline.new_job(_job_kind(fn), jobs=load.jobs), fn)
    try:
        fut = pool.submit(_counted, load, fn)
    except BaseException:
        with load.lock:
            load.jobs -= 1
        raise
    if starved and foreground.waiting:
        foreground.nudge()
    return fut


def _job_kind(fn: Any) -> str:
    """The name of the function a pool job runs (under its partials), for the timeline."""
    while isinstance(fn, functools.partial):
        if isinstance(getattr(fn.func, "__self__", None), contextvars.Context) or fn.func is _stamped_round:
            fn = fn.args[0] if fn.func is not _stamped_round else fn.args[1]
        else:
            fn = fn.func
    return getattr(fn, "__qualname__", type(fn).__name__)


def _stamped_job(rec: dict[str, Any], fn: Callable[[], T]) -> T:
    rec["start"] = time.monotonic_ns()
    try:
        return fn()
    finally:
        rec["end"] = time.monotonic_ns()


class _SyncGate:
    """At most one sync at a time for the rounds of one syncer, group-committed between their threads.

    A round's thread that wants ``paths`` synced waits while a sync runs (it began before the
    round's writes, so it does not cover them); the first waiter then runs one sync for every
    waiter's paths, which began after each of them asked. Concurrent syncfs calls each walk the
    file system's inodes (kernel CPU), so several lanes share one instead of each making its own.
    """

    def __init__(self, sync: Callable[[list[str]], list[OSError | None]], gather: float = 0.0) -> None:
        self._sync = sync
        #: seconds a sync about to start waits at most for rounds still writing to join it
        self.gather = gather
        self._cond = threading.Condition()
        self._running = False
        self._writing = 0  # rounds between enter() and sync()/leave()
        self._wanted: dict[str, None] = {}  # paths for the next sync
        self._next = 0  # number of the next sync to start
        self._done = -1  # number of the last sync completed
        #: seconds spent in syncs (summed; the bench and the store's close log)
        self.sync_time = 0.0
        #: path -> error of the next sync, filled when it completes: each waiter holds the one of
        #: its sync, however late it wakes (a table of past syncs would have to forget some)
        self._outcome: dict[str, OSError | None] = {}

    def enter(self) -> None:
        """A round starts writing: a sync starting meanwhile may wait for it (``gather``)."""
        with self._cond:
            self._writing += 1

    def leave(self) -> None:
        """A round that entered wants no sync after all."""
        with self._cond:
            self._writing -= 1
            self._cond.notify_all()

    def sync(self, paths: list[str], entered: bool = False) -> list[OSError | None]:
        """Blocking: return once a sync that began after this call has covered ``paths``.
        ``entered``: the caller called :meth:`enter` before its writes."""
        with self._cond:
            self._wanted.update(dict.fromkeys(paths))
            if entered:
                self._writing -= 1
                self._cond.notify_all()  # a sync gathering rounds may start now
            mine, outcome = self._next, self._outcome
            if timeline.on:
                _bg.sync_no = mine
            while self._done < mine:
                if not self._running:  # nobody started sync number ``mine`` yet: run it
                    self._running = True
                    if self._writing and self.gather:  # rounds still writing join this sync (bounded)
                        deadline = time.monotonic() + self.gather
                        while self._writing and (left := deadline - time.monotonic()) > 0:
                            self._cond.wait(left)
                    todo, self._wanted = list(self._wanted), {}
                    self._outcome = {}  # the one after this
                    self._next += 1
                    break
                self._cond.wait()
            else:
                return [outcome[p] for p in paths]
        t0 = time.monotonic()
        srec = timeline.new_sync(no=mine, paths=len(todo)) if timeline.on else None
        try:
            errors = self._sync(todo)
        except Exception as exc:  # not an OSError of one path: every path of this sync failed
            errors = [OSError(errno.EIO, f"sync failed: {exc}")] * len(todo)
        if srec is not None:
            srec["end"] = time.monotonic_ns()
        with self._cond:
            self.sync_time += time.monotonic() - t0
            outcome.update(zip(todo, errors, strict=True))
            self._done = mine
            self._running = False
            self._cond.notify_all()
        return [outcome[p] for p in paths]


#: a caller of a group-commit round: (its future, blocking work or None, follow-up when it is cancelled
#: after its work began or None, hook called in the round's thread once its work is durable or None)
_Call = tuple["asyncio.Future[Any]", "Callable[[], Any] | None", "Callable[[Any, OSError | None], object] | None",
              "Callable[[Any, OSError | None], object] | None"]


class After:
    """What a round's work (:meth:`_GroupCommit.run_synced`) may return to go on after its round's sync:
    ``result`` is what the caller's ``durable`` hook sees, then ``then(sync error or None)`` runs in the
    round's thread (after every caller's hook of the round) and its return value is the caller's
    result. For work whose durability does not need all of it done before the sync (a journal record
    stands for it): the rest runs after the caller may have been answered. ``then`` must not raise for
    what the sync made durable: an exception reaches the caller as the work's."""

    __slots__ = ("result", "then")

    def __init__(self, result: Any, then: Callable[[OSError | None], Any]) -> None:
        self.result = result
        self.then = then


class _GroupCommit:
    """Concurrent ``await sync(path)`` calls of one loop served in rounds: a caller returns once a
    round that *began after its call* has completed. Calls arriving while a round runs are
    collected and served together by the next one. Subclasses say what a round does.

    :meth:`run_synced` puts blocking work of the caller into the round itself (one job for
    the work of every caller of the round and its sync, instead of a job each and then a sync
    job). ``lanes`` rounds may run at once (each serves the callers it took), so that one round's
    work overlaps another's wait for the disk; their syncs go through one :class:`_SyncGate`.
    A lane is no task: a loop callback (:meth:`_step`) hands its round to an express thread of the
    :class:`FileIO` (:meth:`FileIO.express`, not a pool job), and the job's end answers every caller
    from one ``call_soon_threadsafe`` callback (:meth:`_answer`), which steps the lane again (a task
    per lane cost its creation, a step per round, and the answer went through concurrent.futures'
    chained future and the task's wake-up: ~65 k instructions per message on the loop thread at
    one SMTP session, bench._irprobe). :attr:`tasks`: a future per
    lane running. Background jobs give way (:data:`foreground`) from a round's submission to its
    answer (a delivery holds the foreground itself from its call to its answer): entered and left
    by the round, not the lane, so that a loop closed while a lane waits (a test's) leaks nothing.

    A caller of :meth:`run_synced` cancelled before its round started its work is dropped (the work
    never runs); one cancelled later cannot stop the work, so the round hands its outcome to the
    caller's ``abandoned`` callback instead: the work is then either not done or done and followed up.

    ``delay``: seconds a round waits for more callers, only after a round that served more than
    one caller (the first call after idle is served at once: at low load the wait is pure
    latency, and under load the calls arriving during a round batch by themselves); and at most
    that long, a sync about to start waits for other lanes' rounds still doing their work.
    """

    def __init__(self, io: FileIO, delay: float = 0.0, lanes: int = 1) -> None:
        self._io = io
        self._delay = delay
        self._lanes = max(1, lanes)
        #: path -> callers: (future, blocking work or None, follow-up if the caller is cancelled)
        self._pending: dict[str, list[_Call]] = {}
        self._running = 0
        self._busy = False  # the last round served more than one caller
        #: a future per lane running (its rounds, and its waits of the delay): done when it ends
        self._lane_futs: set[asyncio.Future[None]] = set()
        self._gate = _SyncGate(self._round, delay)
        #: a write-ahead journal (``sync()``: make every record appended so far durable) that a round's
        #: work may make itself durable with instead of the path's sync (:func:`journaled`; FsSyncer)
        self.journal: _Journal | None = None
        #: rounds run, callers served (for tests and the bench)
        self.rounds = 0
        self.callers = 0
        #: seconds summed (the bench, the store's close log; changed on the loop thread): callers'
        #: waits from their call to their round's answer, rounds' work (every caller's), and rounds'
        #: waits at the sync gate with their sync (the syncs alone: ``sync_time``)
        self.waited = 0.0
        self.worked = 0.0
        self.synced = 0.0

    @property
    def sync_time(self) -> float:
        """Seconds spent in this syncer's syncs (summed)."""
        return self._gate.sync_time

    def stats(self) -> dict[str, float]:
        """Means in ms: a caller's wait (call to answer), a round's work, its wait at the sync gate
        with its sync, and the syncs' time per round (a sync may serve several); callers per round
        (the bench, the store's close log)."""
        rounds = max(1, self.rounds)
        return {"rounds": self.rounds, "callers_per_round": self.callers / rounds,
                "wait_ms": 1000 * self.waited / max(1, self.callers), "work_ms": 1000 * self.worked / rounds,
                "sync_wait_ms": 1000 * self.synced / rounds, "sync_ms": 1000 * self.sync_time / rounds}

    @property
    def tasks(self) -> list[asyncio.Future[None]]:
        """The rounds running now, a future per lane (Store.close() waits for them)."""
        return list(self._lane_futs)

    def sync(self, path: str | os.PathLike[str]) -> Coroutine[Any, Any, None]:
        """Return once a round that began after this call has made ``path`` durable (awaited)."""
        return self._join(path, None, None, None)

    def run_synced(self, path: str | os.PathLike[str], fn: Callable[..., T], /, *args: Any,
                   abandoned: Callable[[T, OSError | None], object] | None = None,
                   durable: Callable[[Any, OSError | None], object] | None = None
                   ) -> Coroutine[Any, Any, tuple[T, OSError | None]]:
        """Run blocking ``fn(*args)`` in the next round's job, then that round's sync of ``path``.

        Returns ``(fn's result, None)`` once what ``fn`` wrote is durable, or ``(result, error)`` when
        the sync failed (the caller undoes what it must). An exception of ``fn`` is raised (no sync
        is made for it). ``fn`` runs in a pool thread, in the caller's context.

        Cancelled before its round started ``fn``, the caller leaves nothing behind (``fn`` never
        runs); cancelled later, ``abandoned(result, error)`` is called in the loop once the round is
        over (not when ``fn`` raised), to do what the caller would have done after its return.
        ``durable(result, error)``: called in the round's thread right after its sync, before the loop
        is answered (not when ``fn`` raised or the caller was cancelled before ``fn`` ran); ``result``
        is ``fn``'s (an :class:`After`'s ``result``). It must be quick, thread-safe and not raise (an
        exception is reported by ``threading.excepthook`` and the round goes on).
        (A plain function returning :meth:`_join`'s coroutine: no coroutine level of its own.)
        """
        return self._join(path, functools.partial(contextvars.copy_context().run, fn, *args), abandoned, durable)

    async def _join(self, path: str | os.PathLike[str], work: Callable[[], Any] | None,
                    abandoned: Callable[[Any, OSError | None], object] | None,
                    durable: Callable[[Any, OSError | None], object] | None) -> Any:
        loop = running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if timeline.on:
            timeline.mark("join")
            if work is not None and (rec := timeline.current()) is not None:
                work = functools.partial(_stamped_work, rec, work)
        self._pending.setdefault(os.fspath(path), []).append((fut, work, abandoned, durable))
        self.callers += 1
        t0 = time.monotonic()
        if self._running < self._lanes:  # start a lane
            self._running += 1
            lane: asyncio.Future[None] = loop.create_future()
            self._lane_futs.add(lane)
            loop.call_soon(self._step, loop, lane)  # with the callers joining in this loop turn
        try:
            out = await fut
        except asyncio.CancelledError:
            # cancelled after the round answered but before this task woke (the answer is in fut, not
            # taken): follow it up as the round does for a caller cancelled while it ran
            if abandoned is not None and fut.done() and not fut.cancelled() and fut.exception() is None:
                abandoned(*fut.result())
            raise
        self.waited += time.monotonic() - t0
        if timeline.on:
            timeline.mark("resumed")
        return out

    def _round(self, paths: list[str]) -> list[OSError | None]:
        """Blocking (a round's thread): make ``paths`` durable; the error (or None) for each."""
        raise NotImplementedError

    def _round_job(self, batch: dict[str, list[_Call]]
                   ) -> tuple[list[tuple[list[tuple[bool, Any]], OSError | None]], float, float]:
        """Blocking (a round's thread): every caller's work, then one ``_round`` for the paths still wanted.

        Per path: ([(ok, result or exception) per caller], the path's sync error or None); and the
        seconds of the work and of the wait for the sync (with it).
        """
        t0 = time.monotonic()
        rrec = getattr(_bg, "round", None)
        if rrec is not None:
            rrec["start"], rrec["cpu0"] = time.monotonic_ns(), time.thread_time_ns()
        done: list[list[tuple[bool, Any]]] = []
        wanted: list[str] = []
        keys: dict[str, str] = {}  # path -> what its sync makes durable (the path, or JOURNAL)
        self._gate.enter()
        try:
            for path, callers in batch.items():
                _bg.journaled = 0
                outs: list[tuple[bool, Any]] = []
                for fut, work, _, _ in callers:
                    if work is None:
                        outs.append((True, None))
                        continue
                    if fut.cancelled():  # the caller is gone and nothing is done yet: leave it so
                        outs.append((False, None))  # (read across threads: cancelled is final)
                        continue
                    try:
                        outs.append((True, work()))
                    except Exception as exc:  # handed to its caller
                        outs.append((False, exc))
                done.append(outs)
                if ok_n := sum(ok for ok, _ in outs):
                    # every caller's work made itself durable by a journal record (journaled()): the
                    # journal's fdatasync instead of a sync of the path
                    keys[path] = JOURNAL if self.journal is not None and _bg.journaled == ok_n else path
                    wanted.append(keys[path])
        except BaseException:
            self._gate.leave()
            raise
        t1 = time.monotonic()
        if rrec is not None:
            rrec["worked"], rrec["cpu"] = time.monotonic_ns(), time.thread_time_ns() - rrec.pop("cpu0")
        if wanted:
            wanted = list(dict.fromkeys(wanted))
            errors = dict(zip(wanted, self._gate.sync(wanted, entered=True), strict=True))
        else:
            self._gate.leave()
            errors = {}
        if rrec is not None:
            rrec["synced"] = time.monotonic_ns()
            rrec["sync_no"] = getattr(_bg, "sync_no", None)
        out = [(outs, errors.get(keys.get(path, path))) for path, outs in zip(batch, done, strict=True)]
        _after_sync(batch, out)
        return out, t1 - t0, time.monotonic() - t1

    def _step(self, loop: asyncio.AbstractEventLoop, lane: asyncio.Future[None], waited: bool = False) -> None:
        """On the loop: start a lane's next round for the callers waiting now, or end the lane when
        none waits. No task per round: the round's job is handed to a thread from here, and its answer
        comes back as one ``call_soon_threadsafe`` callback (:meth:`_answer`), which steps the lane
        again. ``waited``: the lane has waited the delay for this round."""
        while self._pending:
            if self._delay and self._busy and not waited:  # let concurrent callers join this round
                loop.call_later(self._delay, self._step, loop, lane, True)
                return
            waited = False
            batch, self._pending = self._pending, {}
            n = sum(len(c) for c in batch.values())
            self._busy = n > 1
            self.rounds += 1
            job: Callable[[], Any] = functools.partial(self._round_job, batch)
            rrec = None
            if timeline.on:
                rrec = timeline.new_round(n=n, inflight=self._running)
                job = functools.partial(_stamped_round, rrec, self._round_job, batch)
            foreground.enter()  # background jobs give way until the round is answered
            try:
                self._io.express(job, functools.partial(self._answer_soon, loop, lane, batch, rrec))
            except Exception as exc:  # the pool is shut down: every caller of the round gets it
                foreground.leave()
                _fail(batch, exc)
                continue
            return
        self._running -= 1
        self._lane_futs.discard(lane)
        lane.set_result(None)

    def _answer_soon(self, loop: asyncio.AbstractEventLoop, lane: asyncio.Future[None], batch: dict[str, list[_Call]],
                     rrec: dict[str, Any] | None, out: Any, exc: BaseException | None) -> None:
        """In the thread that ran a round's job: :meth:`_answer` on the loop."""
        try:
            loop.call_soon_threadsafe(self._answer, loop, lane, batch, rrec, out, exc)
        except RuntimeError:  # the loop is closed: nobody waits for the answer (a test's loop)
            foreground.leave()

    def _answer(self, loop: asyncio.AbstractEventLoop, lane: asyncio.Future[None], batch: dict[str, list[_Call]],
                rrec: dict[str, Any] | None, out: Any, exc: BaseException | None) -> None:
        """On the loop: a round's job is over: answer its callers, then step the lane."""
        foreground.leave()
        try:
            if rrec is not None:
                rrec["answered"] = time.monotonic_ns()
            if exc is not None:  # the job failed as a whole (not a caller's work): every caller gets it
                _fail(batch, exc)
                return
            results, worked, synced = out
            self.worked += worked
            self.synced += synced
            for callers, (outs, err) in zip(batch.values(), results, strict=True):
                for (fut, work, abandoned, _), (ok, value) in zip(callers, outs, strict=True):
                    if fut.done():
                        if ok and work is not None and abandoned is not None and fut.cancelled():
                            # cancelled after its work began: follow it up (an error of the
                            # follow-up goes to the loop's handler, not into this round)
                            loop.call_soon(abandoned, value, err)
                        continue
                    if not ok:
                        fut.set_exception(value)
                    elif work is not None:
                        fut.set_result((value, err))
                    elif err is None:
                        fut.set_result(None)
                    else:
                        fut.set_exception(err)
        finally:
            self._step(loop, lane)


def _after_sync(batch: dict[str, list[_Call]], out: list[tuple[list[tuple[bool, Any]], OSError | None]]) -> None:
    """Blocking, in a round's thread after its sync: every caller's ``durable`` hook, then every
    :class:`After`'s ``then`` (its value, or its exception as a failed work, replaces the caller's)."""
    afters = False
    for callers, (outs, err) in zip(batch.values(), out, strict=True):
        for (_, work, _, durable), (ok, value) in zip(callers, outs, strict=True):
            if not ok or work is None:
                continue
            if type(value) is After:
                afters = True
                value = value.result
            if durable is not None:
                try:
                    durable(value, err)
                except Exception as e:  # reported as a thread's error; the round goes on
                    threading.excepthook(threading.ExceptHookArgs((type(e), e, e.__traceback__, None)))
    if not afters:
        return
    for outs, err in out:
        for i, (ok, value) in enumerate(outs):
            if ok and type(value) is After:
                try:
                    outs[i] = (True, value.then(err))
                except Exception as e:  # handed to its caller, as the work's own
                    outs[i] = (False, e)


def _fail(batch: dict[str, list[_Call]], exc: BaseException | None) -> None:
    """Every caller of a round still waiting gets ``exc`` (None: is cancelled)."""
    for callers in batch.values():
        for fut, _, _, _ in callers:
            if not fut.done():
                if exc is None:
                    fut.cancel()
                else:
                    fut.set_exception(exc)


#: the key of a round's sync that stands for the journal's (FsSyncer: ``journal.sync()``)
JOURNAL = "\0journal"


class _Journal(Protocol):
    def sync(self) -> None: ...


def journaled() -> None:
    """In a round's work (:meth:`_GroupCommit.run_synced`): what this call wrote is durable once the
    syncer's journal is synced (it appended a record of it), so the round's sync of its path may be
    the journal's fdatasync. Every caller of the path must say so, else the path is synced."""
    _bg.journaled = getattr(_bg, "journaled", 0) + 1


def _stamped_work(rec: dict[str, Any], work: Callable[[], T]) -> T:
    """A caller's work in a round's job, stamped on the caller's timeline record (and its round)."""
    rec["work"] = time.monotonic_ns()
    rrec = getattr(_bg, "round", None)
    if rrec is not None:
        rec["round"] = rrec["id"]
    return work()


def _stamped_round(rrec: dict[str, Any], job: Callable[..., T], *args: Any) -> T:
    _bg.round = rrec
    try:
        return job(*args)
    finally:
        _bg.round = None


class DirSyncer(_GroupCommit):
    """Group commit of directory fsyncs across concurrent coroutines of one loop.

    ``await syncer.sync(dir)`` returns once an fsync of ``dir`` that began
    after the call has completed. Requests that arrive while a round is
    running are collected and served together by the next round, so N
    concurrent deliveries into one directory cost about two fsyncs, not N.
    """

    def __init__(self, io: FileIO, delay: float = 0.0, lanes: int = 1) -> None:
        super().__init__(io, delay, lanes)
        #: directories fsync'd (for tests and the bench)
        self.fsyncs = 0

    def _round(self, paths: list[str]) -> list[OSError | None]:
        self.fsyncs += len(paths)
        return _fsync_dirs(paths)


def _fsync_dirs(dirs: list[str]) -> list[OSError | None]:
    out: list[OSError | None] = []
    for d in dirs:
        try:
            fsync_dir(d)
            out.append(None)
        except OSError as exc:
            out.append(exc)
    return out


class FsSyncer(_GroupCommit):
    """Group commit by file system: ``await syncer.sync(path)`` returns once a ``syncfs`` of the
    file system holding ``path`` that *began after the call* has completed.

    Whatever the caller wrote, linked or renamed on that file system before calling is then
    durable (data and directory entries), as if it had fsync'd each file and directory. Calls
    that arrive while a round runs are served together by the next round: N concurrent
    deliveries cost about two syncfs, whatever the number of files and directories. Only for
    Linux (:func:`have_syncfs`); callers fall back to fsync elsewhere.
    """

    def __init__(self, io: FileIO, delay: float = 0.0, lanes: int = 1) -> None:
        super().__init__(io, delay, lanes)
        #: syncfs calls made, and journal syncs (for tests and the bench)
        self.syncs = 0
        self.journal_syncs = 0

    def _round(self, paths: list[str]) -> list[OSError | None]:
        """One syncfs per file system of ``paths``; the journal's fdatasync for JOURNAL."""
        if JOURNAL not in paths:
            results, n = _syncfs_paths(paths)
            self.syncs += n
            return results
        assert self.journal is not None
        err: OSError | None = None
        try:
            self.journal.sync()
        except OSError as exc:
            err = exc
        self.journal_syncs += 1
        rest = [p for p in paths if p != JOURNAL]
        results, n = _syncfs_paths(rest)
        self.syncs += n
        by_path = dict(zip(rest, results, strict=True))
        return [err if p == JOURNAL else by_path[p] for p in paths]


def _syncfs_paths(paths: list[str]) -> tuple[list[OSError | None], int]:
    """One syncfs per distinct file system among ``paths``; the error (or None) of each path's."""
    by_dev: dict[int, OSError | None] = {}
    out: list[OSError | None] = []
    for p in paths:
        try:
            dev = os.stat(p).st_dev
        except OSError as exc:
            out.append(exc)
            continue
        if dev not in by_dev:
            try:
                syncfs(p)
                by_dev[dev] = None
            except OSError as exc:
                by_dev[dev] = exc
        out.append(by_dev[dev])
    return out, len(by_dev)
