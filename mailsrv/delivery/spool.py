"""Spool files: a message being received, streamed to ``data_dir/spool`` (same file system as the maildirs).

Writes go straight to the page cache from the loop thread (bounded chunks);
the fsync runs in a thread. Deliveries hard-link the spool file (store
``deliver``, queue ``enqueue``), so the content is written once.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from pathlib import Path


class FileSpool:
    """One spool file. Owned by one session; ``discard`` is idempotent."""

    __slots__ = ("path", "_fd", "size")

    def __init__(self, directory: Path) -> None:
        name = f"{time.time_ns():x}.{os.getpid()}.{secrets.token_hex(6)}"
        self.path = directory / name
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self.size = 0

    def write(self, data: bytes) -> None:
        fd = self._fd
        if fd is None:
            raise OSError("spool closed")
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        self.size += len(data)

    async def commit(self) -> None:
        """Finish writing and close the descriptor; the file stays until :meth:`discard`.

        No fsync here: every consumer makes its own copy durable (``store.deliver``
        fsyncs the linked file and its ``new/``; the queue fsyncs its link), so a
        local-only message costs one file fsync, not two.
        """
        fd = self._fd
        if fd is None:
            return
        self._fd = None
        os.close(fd)

    async def sync(self) -> None:
        """fsync the spool file (for consumers that copy it elsewhere)."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, _fsync_path, self.path)

    def discard(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def spool_dir(data_dir: Path) -> Path:
    """``data_dir/spool``, created on first use; leftovers of a crash are removed by :func:`clean`."""
    path = data_dir / "spool"
    path.mkdir(parents=True, exist_ok=True)
    return path


def clean(directory: Path, older_than: float = 3600.0) -> int:
    """Remove spool files a crashed worker left behind (never acknowledged, so nothing is lost)."""
    removed = 0
    cutoff = time.time() - older_than
    for entry in os.scandir(directory):
        try:
            if entry.is_file() and entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:
            pass
    return removed
