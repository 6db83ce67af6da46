"""Policy state shared by every worker: greylisting triplets, outbound sending counters, training signals.

One SQLite database (WAL) at ``data_dir/policy/policy.db``; each worker uses
it from one dedicated thread, so the loop never blocks and transactions
serialise across processes through SQLite's lock.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, TypeVar

from mailsrv.directory.stamp import WalStamp

T = TypeVar("T")

#: Seconds one look at the policy database's write-ahead log is reused for (change_stamp, called per
#: message on the event loop): a learn by another process is seen within this time.
STAMP_INTERVAL = 0.005

DDL = """
CREATE TABLE IF NOT EXISTS greylist (
    key TEXT PRIMARY KEY,
    first REAL NOT NULL,
    last REAL NOT NULL,
    passed REAL
);
CREATE TABLE IF NOT EXISTS sent (user TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS sent_user ON sent(user, at);
CREATE TABLE IF NOT EXISTS training (
    account TEXT NOT NULL,
    label TEXT NOT NULL CHECK (label IN ('spam', 'ham')),
    digest TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (account, digest)
);
CREATE TABLE IF NOT EXISTS training_queue (  -- Junk moves not yet learned (mailsrv.policy.training)
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    owner INTEGER NOT NULL,  -- pid of the worker that queued it (a dead owner's rows are taken over)
    account TEXT NOT NULL,
    label TEXT NOT NULL CHECK (label IN ('spam', 'ham')),
    mailbox TEXT NOT NULL,
    uid INTEGER NOT NULL,
    message BLOB  -- the message itself when the front end already held it, else read by (mailbox, uid)
);
CREATE TABLE IF NOT EXISTS outside (
    user TEXT NOT NULL,
    rcpt TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (user, rcpt)
);
"""

GreyResult = Literal["new", "early", "pass"]


def client_net(ip: str) -> str:
    """The greylisting client key: the /24 of IPv4 (pools of outbound MTAs), the /64 of IPv6."""
    addr = ipaddress.ip_address(ip)
    plen = 24 if addr.version == 4 else 64
    return str(ipaddress.ip_network(f"{addr}/{plen}", strict=False))


def triplet_key(ip: str, sender: str, rcpt: str) -> str:
    raw = f"{client_net(ip)}\0{sender.lower()}\0{rcpt.lower()}".encode()
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


class PolicyState:
    """Per worker. ``clock`` is injectable so tests can move time without sleeping."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._stamp = WalStamp(path, STAMP_INTERVAL)
        self.clock = clock
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy-db")
        self._db: sqlite3.Connection | None = None
        self.commits = 0  # write transactions committed by this state (tests, `mailsrv policy learn`)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(DDL)
            self._db = db
        return self._db

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: self._tx(fn))

    async def run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool = True) -> T:
        """Run ``fn(db)`` on the state's thread: in one write transaction (``BEGIN IMMEDIATE``, serialised
        across processes), or with ``write=False`` as plain reads that take no write lock."""
        if write:
            return await self._run(fn)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(self._conn()))

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            out = fn(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        self.commits += 1
        return out

    def change_stamp(self) -> tuple[int, ...]:
        """A value that changes when any process commits to the policy database: this state's commit count
        (its own learns are seen at once) and the write-ahead log's :class:`WalStamp` (another process's
        commit is seen within :data:`STAMP_INTERVAL`). No query, no thread, at most one stat per interval:
        cheap on the loop. A caller may reuse what it read while the stamp is unchanged; a commit by another
        process that the log's stat misses (see WalStamp) is not seen, so bound the reuse with a short
        lifetime too."""
        return (self.commits, *self._stamp.stamp())

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- greylisting ---------------------------------------------------------------------

    async def greylist(self, ip: str, sender: str, rcpt: str, *, delay: float, expire: float,
                       pass_ttl: float) -> GreyResult:
        """Record an attempt of the triplet; ``pass`` when it was first seen ``delay`` seconds ago or earlier."""
        key = triplet_key(ip, sender, rcpt)
        now = self.clock()

        def op(db: sqlite3.Connection) -> GreyResult:
            row = db.execute("SELECT first, last, passed FROM greylist WHERE key = ?", (key,)).fetchone()
            if row is not None:
                first, last, passed = row
                if passed is not None and now - last <= pass_ttl:
                    db.execute("UPDATE greylist SET last = ? WHERE key = ?", (now, key))
                    return "pass"
                if passed is None and now - first <= expire:
                    if now - first >= delay:
                        db.execute("UPDATE greylist SET last = ?, passed = ? WHERE key = ?", (now, now, key))
                        return "pass"
                    db.execute("UPDATE greylist SET last = ? WHERE key = ?", (now, key))
                    return "early"
            db.execute("INSERT OR REPLACE INTO greylist (key, first, last, passed) VALUES (?, ?, ?, NULL)",
                       (key, now, now))
            if int(now) % 97 == 0:  # now and then, forget what has expired
                db.execute("DELETE FROM greylist WHERE (passed IS NULL AND last < ?) OR last < ?",
                           (now - expire, now - pass_ttl))
            return "new"

        return await self._run(op)

    # -- outbound rate limits --------------------------------------------------------------

    async def sent_last_hour(self, user: str) -> int:
        now = self.clock()
        return await self._run(lambda db: db.execute(
            "SELECT COUNT(*) FROM sent WHERE user = ? AND at > ?", (user, now - 3600)).fetchone()[0])

    async def record_sent(self, user: str) -> None:
        now = self.clock()

        def op(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO sent (user, at) VALUES (?, ?)", (user, now))
            db.execute("DELETE FROM sent WHERE user = ? AND at < ?", (user, now - 3600))

        await self._run(op)

    async def outside_recipient(self, user: str, rcpt: str, limit: int) -> bool:
        """Count ``rcpt`` among ``user``'s distinct outside recipients of the last 24 hours.

        False (and nothing recorded) when it is new and the user already reached ``limit``.
        """
        now = self.clock()
        rcpt = rcpt.lower()

        def op(db: sqlite3.Connection) -> bool:
            db.execute("DELETE FROM outside WHERE user = ? AND at < ?", (user, now - 86400))
            if db.execute("SELECT 1 FROM outside WHERE user = ? AND rcpt = ?", (user, rcpt)).fetchone():
                return True
            count = db.execute("SELECT COUNT(*) FROM outside WHERE user = ?", (user,)).fetchone()[0]
            if limit and count >= limit:
                return False
            db.execute("INSERT INTO outside (user, rcpt, at) VALUES (?, ?, ?)", (user, rcpt, now))
            return True

        return await self._run(op)

    # -- training signals (a user moving mail into or out of Junk) ----------------------------

    async def record_training(self, account: str, label: str, digest: str) -> None:
        """Remember the user's latest verdict on one message (a later move overrides an earlier one)."""
        now = self.clock()
        await self._run(lambda db: db.execute(
            "INSERT OR REPLACE INTO training (account, label, digest, at) VALUES (?, ?, ?, ?)",
            (account, label, digest, now)))

    async def training_counts(self, account: str | None = None) -> dict[str, int]:
        def op(db: sqlite3.Connection) -> dict[str, int]:
            sql = "SELECT label, COUNT(*) FROM training"
            rows = db.execute(sql + " WHERE account = ? GROUP BY label", (account,)) if account is not None \
                else db.execute(sql + " GROUP BY label")
            return {label: n for label, n in rows.fetchall()}

        return await self._run(op)
