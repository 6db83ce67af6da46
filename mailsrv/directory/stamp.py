"""Change stamps of SQLite databases in WAL mode: a cheap value that moves when any process commits.

One mechanism for every cache that keeps answers read from such a database (the directory's RCPT
resolutions, the policy learner's totals): a caller reuses what it read while the stamp is unchanged.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

#: The clock of the interval (a module name, so that tests can move it)
clock = time.monotonic

#: The stamp of a database whose write-ahead log does not exist (no connection open anywhere).
NO_LOG: tuple[int, ...] = (-1,)


class WalStamp:
    """``stamp()``: the write-ahead log's (inode, size, mtime ns), one ``stat`` and no query or thread.

    In WAL mode every commit writes the log (the database file changes only when a checkpoint copies
    pages already committed), so a commit by any process moves the stamp. A commit in the same clock
    tick as the previous one that leaves the log's size alone (a log restarted from its start after a
    checkpoint) can go unseen: bound the reuse with a short lifetime too.

    ``interval``: seconds one stat is reused for (0: a stat at every call). A change is seen within it;
    the stat releases the GIL, which a busy pool thread may then hold for a switch interval, so a
    caller on the event loop's hot path asks for an interval rather than a stat per call.
    """

    __slots__ = ("wal", "interval", "_at", "_last")

    def __init__(self, db: Path, interval: float = 0.0) -> None:
        self.wal = os.fsencode(db.with_name(db.name + "-wal"))
        self.interval = interval
        self._at = float("-inf")
        self._last = NO_LOG

    def stamp(self) -> tuple[int, ...]:
        if self.interval:
            now = clock()
            if now - self._at < self.interval:
                return self._last
            self._at = now
        try:
            st = os.stat(self.wal)
        except FileNotFoundError:  # the last connection to close removes the log
            self._last = NO_LOG
        else:
            self._last = (st.st_ino, st.st_size, st.st_mtime_ns)
        return self._last
