"""Empty spool files made ahead of need: a delivery writes its message into one instead of creating its file.

An O_CREAT allocates an inode: 20-150 us on a settled ext4, 0.5-0.7 ms of kernel CPU for minutes
after many files were deleted (``find_inode_bit`` checks each recently freed inode). A group-commit
delivery round (``Store._deliver_links``) used to pay it on the path to its 250; with a reserve it
opens an empty file made earlier by the reserve's thread (O_WRONLY, no O_CREAT), writes the message
and links or renames that file into the mailboxes: the allocation happens beside the deliveries (in
batches, giving way to their rounds like the other background jobs), not inside one.

Invariants:

- A reserve belongs to one process and one spool directory; its files are
  ``<spool>/.reserve/<pid>.<n>`` (same file system as the maildirs: the move into ``new/`` is a
  rename; spool listings skip the directory). :meth:`Reserve.take` pops a path under a lock: a file is handed out once.
- A reserved file holds nothing acknowledged: it is empty until taken, and a taken file's message
  is made durable exactly as a created one (the round's journal record, syncfs or fsync).
- A forked child forgets its parent's reserve (its pid differs); a process gone leaves only
  empty files (or a message never acknowledged), which ``delivery.spool.clean`` removes at the
  next start (:func:`clean`); :meth:`Reserve.close` removes a stopping process's files.
- A taken file that vanished (removed by someone's clean) is not an error: the caller creates its
  file as before (``ENOENT`` -> ``O_CREAT``), as it does when the reserve is empty.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import weakref

from mailsrv import log
from mailsrv.util import fsio

logger = log.get("store")

#: Files a reserve holds at most (per process and spool directory): a refill makes at most this
#: many, each an inode and a directory entry of its own, empty.
SIZE = 128
#: A take that leaves fewer than this many wakes the refill (which makes the batch up to
#: :data:`SIZE`). It first gives way to delivery rounds for up to ``[store] index_give_way`` (20 ms):
#: at one SMTP session ~2 000 deliveries a second take ~40 files meanwhile, and after many deletes a
#: create costs up to 0.7 ms (with 16, 7-13 % of the deliveries of an in-process run found it empty).
LOW = 64
#: The subdirectory of a spool directory that holds the reserved files (``<pid>.<n>``).
DIRECTORY = ".reserve"

_pid = os.getpid()
_seq = itertools.count()  # names unique across every reserve of the process
_reserves: weakref.WeakSet[Reserve] = weakref.WeakSet()

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


def _after_fork() -> None:
    """A forked child: its parent's reserved files are not its own (the parent may take them)."""
    global _pid
    _pid = os.getpid()
    for r in list(_reserves):
        r._forget()


os.register_at_fork(after_in_child=_after_fork)


class Reserve:
    """Empty files in ``directory`` for this process's deliveries. Thread-safe.

    Its files are made by a thread of its own (started by the first :meth:`take`), woken when the
    reserve runs low: never by a delivery's job, and no pool thread a delivery round may need
    waits in its :func:`fsio.give_way`.
    """

    def __init__(self, spool_dir: str) -> None:
        #: where the files are: ``spool_dir``/:data:`DIRECTORY`
        self.directory = f"{spool_dir}/{DIRECTORY}"
        self._lock = threading.Lock()
        self._free: list[str] = []
        self._low = threading.Event()  # set: make files (or stop, once closed)
        self._thread: threading.Thread | None = None
        self._closed = False
        #: takes served from the reserve / finding it empty; files made (tests, logs)
        self.taken = 0
        self.missed = 0
        self.made = 0
        _reserves.add(self)

    def take(self) -> str | None:
        """The path of an empty file that is now the caller's (never handed out again), or None
        when the reserve is empty (create the file as before). Wakes the refill when fewer than
        :data:`LOW` are left; never makes a file itself."""
        with self._lock:
            if self._free:
                path: str | None = self._free.pop()
                self.taken += 1
            else:
                path = None
                self.missed += 1
            if len(self._free) < LOW and not self._closed and not self._low.is_set():
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="mailsrv-reserve", daemon=True)
                    self._thread.start()
                self._low.set()
        return path

    def _run(self) -> None:
        while True:
            self._low.wait()
            if self._closed:
                return
            self._fill()
            with self._lock:  # (checked with the lock close() sets it under: its wake-up is not cleared)
                if self._closed:
                    return
                self._low.clear()

    def _fill(self) -> None:
        """Blocking: make files until the reserve holds :data:`SIZE`, giving way to the process's
        delivery rounds between two (``fsio.give_way``). An error (disk full, the directory gone)
        ends the batch: deliveries create their files as before, and a later take tries again."""
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            with fsio.background():
                while True:
                    with self._lock:
                        if self._closed or len(self._free) >= SIZE:
                            return
                    fsio.give_way()
                    path = f"{self.directory}/{_pid}.{next(_seq):x}"
                    try:
                        os.close(os.open(path, _FLAGS, 0o600))
                    except FileExistsError:  # a dead process's of the same pid (clean leaves it to us)
                        continue
                    with self._lock:
                        kept = not self._closed
                        if kept:
                            self._free.append(path)
                            self.made += 1
                    if not kept:
                        _unlink(path)
                        return
        except OSError as exc:
            logger.warning("spool.reserve_failed", directory=self.directory, error=str(exc))

    def close(self) -> None:
        """Blocking: stop the refill and remove the files still reserved (a stopping store)."""
        with self._lock:
            self._closed = True
            free, self._free = self._free, []
            thread = self._thread
        self._low.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        for path in free:
            _unlink(path)

    def _forget(self) -> None:
        """In a forked child: drop the parent's files (theirs to use and remove), take none."""
        self._lock = threading.Lock()  # (a thread of the parent may have held it at the fork)
        self._free = []
        self._thread = None
        self._closed = True


def clean(spool_dir: str | os.PathLike[str]) -> int:
    """Blocking: remove the reserved files of processes gone from ``spool_dir``/:data:`DIRECTORY` (at a
    worker's start, ``delivery.spool.clean``), whatever their age: they hold nothing acknowledged
    (empty, or a message whose delivery never answered). A live process's are left (a worker serving
    beside the cleaner, or this one). Returns the number removed."""
    removed = 0
    alive: dict[str, bool] = {}
    try:
        it = os.scandir(os.path.join(spool_dir, DIRECTORY))
    except FileNotFoundError:
        return 0
    with it:
        for entry in it:
            pid, _, _ = entry.name.partition(".")
            if pid not in alive:
                alive[pid] = _alive(pid)
            if not alive[pid]:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
    return removed


def _alive(pid: str) -> bool:
    """Is ``pid`` (a reserved file's name part) a live process? Not a pid: nobody's (False)."""
    if not pid.isdigit() or len(pid) > 10 or int(pid) <= 0:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:  # (EPERM: alive, another user's)
        return True
    return True


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
