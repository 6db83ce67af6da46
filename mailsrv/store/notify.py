"""Cross-process change notification: inotify (via ctypes) on each account's notify file and new/ dirs.

Every write transaction touches ``<root>/mailsrv-notify`` after its commit
(IN_ATTRIB); other programs' deliveries show up as IN_CREATE / IN_MOVED_TO in
a folder's ``new/``. One inotify descriptor per process and event loop feeds
:class:`Watch` objects; nothing polls. A path is watched while a :class:`Watch`
of its account is open: when an account's last watch closes, its paths are
unwatched (a kernel watch shared by several accounts' paths stays until the last
of them goes), so a worker holds inotify watches (``fs.inotify.max_user_watches``)
only for the accounts someone waits on now. A watched file replaced by a rename
(a compacted uidlist, a restored notify file) loses its kernel watch with its old
inode (IN_IGNORED): the path is watched again at once, on the new inode, while
anyone waits on its account (so IDLE and JMAP push keep hearing of changes).

Where inotify is missing (not Linux) or refused (``fs.inotify.max_user_instances``
reached), the notifier falls back to polling: while at least one watch waits, one
task per process compares the watched paths' ``stat`` (mtime, size, inode) every
:data:`POLL_INTERVAL` seconds. That keeps the 100 ms wake-up promise at the cost of
a few ``stat`` calls per watched account and interval, and costs nothing while no
one waits. The fallback is logged once (``notify.polling``).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import os
import struct
from pathlib import Path

from mailsrv import log

logger = log.get("store")

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

FILE_MASK = IN_ATTRIB | IN_MODIFY | IN_CLOSE_WRITE
DIR_MASK = IN_CREATE | IN_MOVED_TO
#: what other programs do to a selected mailbox's cur/ that its refresh must see (renames, removals);
#: not the folder directory itself: its search index and SQLite files change without any message changing
CUR_MASK = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO

_EVENT = struct.Struct("iIII")

#: seconds between two stat rounds of the polling fallback (well under the 100 ms wake-up promise)
POLL_INTERVAL = 0.05
_READ_SIZE = 65536

_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        lib.inotify_init1.argtypes = [ctypes.c_int]
        lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        lib.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.inotify_rm_watch.restype = ctypes.c_int
        _libc = lib
    return _libc


def parse_events(data: bytes) -> list[tuple[int, int, bytes]]:
    """Raw inotify read buffer -> [(wd, mask, name)]; a torn tail is ignored."""
    out = []
    off = 0
    while off + _EVENT.size <= len(data):
        wd, mask, _cookie, length = _EVENT.unpack_from(data, off)
        off += _EVENT.size
        name = data[off : off + length].rstrip(b"\0")
        off += length
        out.append((wd, mask, name))
    return out


class Watch:
    """One waiter's view of "this account changed". Create before refreshing, then wait."""

    def __init__(self, notifier: Notifier, key: str) -> None:
        self._notifier = notifier
        self.key = key
        self._event = asyncio.Event()
        self.closed = False

    def _wake(self) -> None:
        self._event.set()

    async def wait(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109 - API of docs/store-api.md
        """True when the account changed since the last wait (or since the watch began)."""
        try:
            async with asyncio.timeout(timeout):
                await self._event.wait()
        except TimeoutError:
            return False
        self._event.clear()
        return True

    def changed(self) -> bool:
        """Without waiting: True when the account may have changed since the last call (clears it).

        Reads the events the kernel has queued first, so a change whose writer finished before
        this call (e.g. another process's tagged OK the client saw) is seen. Always True when
        polling: a stat poll lags by up to :data:`POLL_INTERVAL`.
        """
        notifier = self._notifier
        if notifier.polling:
            return True
        while notifier._on_readable():  # a full buffer: more may wait
            pass
        if self._event.is_set():
            self._event.clear()
            return True
        return False

    def add_path(self, path: Path | str, mask: int) -> None:
        """Also wake for ``path`` (watched until the account's last watch closes); see Notifier.add_path."""
        self._notifier.add_path(self.key, path, mask)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._notifier.unregister(self)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Notifier:
    """The process's inotify descriptor on one event loop, and the watches waiting on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, poll: bool = False) -> None:
        """``poll``: use the stat-polling fallback even where inotify works (tests, odd file systems)."""
        self.loop = loop
        #: kernel watch -> the (key, path) pairs it serves (several when paths or accounts share it)
        self._wd_users: dict[int, set[tuple[str, str]]] = {}
        self._path_wd: dict[tuple[str, str], int] = {}
        #: (key, path) -> the inotify mask it was watched with (to watch it again when its inode goes)
        self._path_mask: dict[tuple[str, str], int] = {}
        #: key -> the paths watched for it (inotify or polled)
        self._key_paths: dict[str, set[str]] = {}
        #: key -> its open watches; a key is here only while it has some
        self._watches: dict[str, set[Watch]] = {}
        #: polling fallback: (key, path) -> last stat signature, and the task comparing them
        self._polled: dict[tuple[str, str], tuple[int, int, int] | None] = {}
        self._poll_task: asyncio.Task[None] | None = None
        self.fd = -1
        if not poll:
            try:
                self.fd = _inotify_init()
            except (OSError, AttributeError) as exc:  # no inotify here (AttributeError: not in this libc)
                logger.warning("notify.polling", error=str(exc), interval=POLL_INTERVAL)
        if self.fd >= 0:
            loop.add_reader(self.fd, self._on_readable)

    @property
    def polling(self) -> bool:
        """True when this notifier polls (no inotify)."""
        return self.fd < 0

    @property
    def watch_count(self) -> int:
        """Kernel inotify watches held now (polled paths when polling)."""
        return len(self._polled) if self.polling else len(self._wd_users)

    def add_path(self, key: str, path: Path | str, mask: int) -> bool:
        """Watch ``path`` on behalf of account ``key`` (idempotent); False when it is not there
        (inotify: not watched; polling: watched, for when it is made).

        The caller registers a :class:`Watch` of ``key`` next, without awaiting in between: the
        path is unwatched when the last watch of ``key`` closes (or by :meth:`remove_path`).
        Raises OSError when the kernel refuses the watch (ENOSPC: ``max_user_watches``).
        """
        kp = (key, str(path))
        if self.polling:
            if kp not in self._polled:
                self._polled[kp] = _signature(kp[1])
                self._key_paths.setdefault(key, set()).add(kp[1])
            return self._polled[kp] is not None
        if kp in self._path_wd:
            return True
        return self._arm(kp, mask)

    def _arm(self, kp: tuple[str, str], mask: int) -> bool:
        """Ask the kernel to watch ``kp``'s path; False when the path is missing (not watched)."""
        wd = _lib().inotify_add_watch(self.fd, os.fsencode(kp[1]), mask)
        if wd < 0:
            err = ctypes.get_errno()
            if err in (errno.ENOENT, errno.ENOTDIR):
                return False
            raise OSError(err, f"inotify_add_watch {kp[1]}: {os.strerror(err)}")
        self._path_wd[kp] = wd
        self._path_mask[kp] = mask
        self._wd_users.setdefault(wd, set()).add(kp)
        self._key_paths.setdefault(kp[0], set()).add(kp[1])
        return True

    def remove_path(self, key: str, path: Path | str) -> None:
        """Stop watching ``path`` for ``key`` (a no-op when it is not watched for it).

        The kernel watch goes when no other (key, path) uses it: the kernel gives one watch
        per inode and descriptor, so two accounts' (or two names') watches may be one.
        """
        kp = (key, str(path))
        self._forget_key_path(kp)
        self._path_mask.pop(kp, None)
        if self.polling:
            self._polled.pop(kp, None)
            return
        wd = self._path_wd.pop(kp, None)
        if wd is None:
            return
        users = self._wd_users.get(wd)
        if users is not None:
            users.discard(kp)
            if users:
                return
            del self._wd_users[wd]
        if self.fd >= 0 and _lib().inotify_rm_watch(self.fd, wd) < 0:
            # EINVAL: the kernel dropped it already (its directory was deleted) and IN_IGNORED is on its way
            logger.debug("notify.rm_watch_failed", path=kp[1], error=os.strerror(ctypes.get_errno()))

    def _forget_key_path(self, kp: tuple[str, str]) -> None:
        paths = self._key_paths.get(kp[0])
        if paths is not None:
            paths.discard(kp[1])
            if not paths:
                del self._key_paths[kp[0]]

    def release(self, key: str) -> None:
        """Unwatch every path of ``key`` (done when its last watch closes)."""
        for path in list(self._key_paths.get(key, ())):
            self.remove_path(key, path)

    def release_unwatched(self, key: str) -> None:
        """Unwatch ``key``'s paths unless a watch of it is open (a watcher whose set-up failed)."""
        if not self._watches.get(key):
            self.release(key)

    def register(self, watch: Watch) -> None:
        if self.polling and not self._watches.get(watch.key):
            for kp in self._polled:  # nobody waited on this account: changes before now are not news
                if kp[0] == watch.key:
                    self._polled[kp] = _signature(kp[1])
        self._watches.setdefault(watch.key, set()).add(watch)
        if self.polling and self._poll_task is None:
            self._poll_task = self.loop.create_task(self._poll())

    async def _poll(self) -> None:
        """The fallback: compare every watched path's stat each POLL_INTERVAL while anyone waits."""
        try:
            while any(self._watches.values()):
                await asyncio.sleep(POLL_INTERVAL)
                changed: set[str] = set()
                for (key, path), old in list(self._polled.items()):
                    if key not in changed and self._watches.get(key):
                        new = _signature(path)
                        if new != old:
                            self._polled[(key, path)] = new
                            changed.add(key)
                for key in changed:
                    self.wake(key)
        finally:
            self._poll_task = None

    def unregister(self, watch: Watch) -> None:
        ws = self._watches.get(watch.key)
        if ws is not None:
            ws.discard(watch)
            if not ws:  # the account's last watch: nobody waits on its paths any more
                del self._watches[watch.key]
                self.release(watch.key)

    def wake(self, key: str) -> None:
        for w in list(self._watches.get(key, ())):
            w._wake()

    def _on_readable(self) -> bool:
        """Read and dispatch queued events; True when the read filled its buffer (more may wait)."""
        try:
            data = os.read(self.fd, _READ_SIZE)
        except BlockingIOError:
            return False
        except OSError as exc:
            logger.exception("inotify.read_failed", exc)
            return False
        keys: set[str] = set()
        dropped: list[tuple[tuple[str, str], int]] = []
        for wd, mask, _name in parse_events(data):
            if mask & IN_Q_OVERFLOW:
                keys.update(self._watches)
            users = self._wd_users.get(wd, ())
            keys.update(key for key, _path in users)
            if mask & IN_IGNORED and users:
                # the kernel dropped the watch (its file or directory was deleted, or a rename replaced
                # the file): forget it, so a path made again under the same name is watched anew
                del self._wd_users[wd]
                for kp in users:
                    self._path_wd.pop(kp, None)
                    self._forget_key_path(kp)
                    dropped.append((kp, self._path_mask.pop(kp, 0)))
        for kp, kmask in dropped:
            self._rearm(kp, kmask)
        for key in keys:
            self.wake(key)
        return len(data) == _READ_SIZE

    def _rearm(self, kp: tuple[str, str], mask: int) -> None:
        """Watch a path whose kernel watch went again, while its account is waited on.

        A file replaced by a rename is there under its name on a new inode (the waiters were
        woken by the IN_IGNORED, so their refresh sees any change made before this call); a
        deleted path is not (the next add_path watches it when it is made again).
        """
        if not mask or not self._watches.get(kp[0]) or kp in self._path_wd:
            return
        try:
            self._arm(kp, mask)
        except OSError as exc:  # ENOSPC (max_user_watches): the account's other paths still wake
            logger.warning("notify.rearm_failed", path=kp[1], error=str(exc))

    def close(self) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
            self._poll_task = None
        if self.fd < 0:
            return
        try:
            self.loop.remove_reader(self.fd)
        except (RuntimeError, ValueError):
            pass
        os.close(self.fd)
        self.fd = -1


def _inotify_init() -> int:
    """A non-blocking inotify descriptor. OSError when refused, AttributeError where libc has none."""
    fd = int(_lib().inotify_init1(IN_NONBLOCK | IN_CLOEXEC))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"inotify_init1: {os.strerror(err)}")
    return fd


def _signature(path: str) -> tuple[int, int, int] | None:
    """What changes when the polling fallback must wake: mtime (ns), size, inode; None if missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
