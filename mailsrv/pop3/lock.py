"""The POP3 maildrop lock (RFC 1939 §8 "exclusive-access lock"), held across worker processes.

One lock file per account in a directory under ``server.data_dir``; the lock
is an ``flock(LOCK_EX | LOCK_NB)`` on it. ``flock`` locks belong to the open
file description, so two sessions conflict even inside one process, and the
kernel drops the lock when the holder closes the file or dies (kill -9
included): a crashed worker never leaves a maildrop locked.

The file also records the time of the last successful login, for LOGIN-DELAY
(RFC 2449 §6.5); a second file beside it, ``<id>.retrieved``, records when
each message was first retrieved, for EXPIRE with a number of days (RFC 2449
§6.7). Both are written only by the lock holder.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from pathlib import Path


class InUse(Exception):
    """Another session holds the maildrop."""


_SAFE = re.compile(r"[^A-Za-z0-9_.@+-]")


class MaildropLock:
    """An acquired lock. Blocking calls (open, a small write): run from an executor."""

    __slots__ = ("path", "_fd")

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, directory: Path, account_id: str) -> MaildropLock:
        """Take the lock of ``account_id`` or raise :class:`InUse` at once (never waits)."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = _SAFE.sub("_", account_id) or "_"
        path = directory / f"{name}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InUse(account_id) from None
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def last_login(self) -> float | None:
        """When the previous successful login happened (None: never recorded)."""
        assert self._fd is not None
        data = os.pread(self._fd, 64, 0)
        try:
            return float(data.split(b"\n", 1)[0])
        except ValueError:
            return None

    def record_login(self, now: float | None = None) -> None:
        """Write the login time (not fsync'd: losing it on a crash only skips one delay)."""
        assert self._fd is not None
        data = f"{time.time() if now is None else now:.3f}\n".encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    @property
    def retrieved_path(self) -> Path:
        return self.path.with_suffix(".retrieved")

    def retrieved(self) -> dict[tuple[int, int], float]:
        """(uidvalidity, uid) -> when the message was first retrieved; bad lines are skipped."""
        try:
            text = self.retrieved_path.read_text("ascii", errors="replace")
        except FileNotFoundError:
            return {}
        out: dict[tuple[int, int], float] = {}
        for line in text.splitlines():
            parts = line.split()
            try:
                uidvalidity, uid, when = int(parts[0]), int(parts[1]), float(parts[2])
            except (IndexError, ValueError):
                continue
            out[(uidvalidity, uid)] = when
        return out

    def save_retrieved(self, entries: dict[tuple[int, int], float]) -> None:
        """Replace the record atomically (temp file and rename; not fsync'd: losing the
        latest entries on a crash only keeps those messages longer)."""
        assert self._fd is not None, "only the lock holder writes"
        tmp = self.retrieved_path.with_suffix(".retrieved.tmp")
        tmp.write_text("".join(f"{uv} {uid} {when:.0f}\n" for (uv, uid), when in sorted(entries.items())), "ascii")
        os.replace(tmp, self.retrieved_path)

    def release(self) -> None:
        """Drop the lock (idempotent). Closing the descriptor releases the flock."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:  # a session that forgot to release still frees the maildrop
        self.release()
