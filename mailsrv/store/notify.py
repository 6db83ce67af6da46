"""Cross-process change notification: inotify (via ctypes) on each account's notify file and new/ dirs.

Every write transaction touches ``<root>/mailsrv-notify`` after its commit
(IN_ATTRIB); other programs' deliveries show up as IN_CREATE / IN_MOVED_TO in
a folder's ``new/``. One inotify descriptor per process and event loop feeds
:class:`Watch` objects; nothing polls.
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
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_Q_OVERFLOW = 0x00004000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

FILE_MASK = IN_ATTRIB | IN_MODIFY | IN_CLOSE_WRITE
DIR_MASK = IN_CREATE | IN_MOVED_TO

_EVENT = struct.Struct("iIII")

_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        lib.inotify_init1.argtypes = [ctypes.c_int]
        lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        lib.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
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

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        lib = _lib()
        fd = lib.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self.fd = fd
        self._wd_keys: dict[int, set[str]] = {}
        self._path_wd: dict[tuple[str, str], int] = {}
        self._watches: dict[str, set[Watch]] = {}
        loop.add_reader(fd, self._on_readable)

    def add_path(self, key: str, path: Path, mask: int) -> None:
        """Watch ``path`` on behalf of account ``key`` (idempotent)."""
        if (key, str(path)) in self._path_wd:
            return
        wd = _lib().inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            err = ctypes.get_errno()
            if err in (errno.ENOENT, errno.ENOTDIR):
                return
            raise OSError(err, f"inotify_add_watch {path}: {os.strerror(err)}")
        self._path_wd[(key, str(path))] = wd
        self._wd_keys.setdefault(wd, set()).add(key)

    def register(self, watch: Watch) -> None:
        self._watches.setdefault(watch.key, set()).add(watch)

    def unregister(self, watch: Watch) -> None:
        ws = self._watches.get(watch.key)
        if ws is not None:
            ws.discard(watch)

    def wake(self, key: str) -> None:
        for w in list(self._watches.get(key, ())):
            w._wake()

    def _on_readable(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError as exc:
            logger.exception("inotify.read_failed", exc)
            return
        keys: set[str] = set()
        for wd, mask, _name in parse_events(data):
            if mask & IN_Q_OVERFLOW:
                keys.update(self._watches)
            keys.update(self._wd_keys.get(wd, ()))
        for key in keys:
            self.wake(key)

    def close(self) -> None:
        try:
            self.loop.remove_reader(self.fd)
        except (RuntimeError, ValueError):
            pass
        os.close(self.fd)
