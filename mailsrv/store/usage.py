"""Per-domain quota usage: one small SQLite file in the data dir, shared by every worker process.

Each account's own usage lives in its index (``quota`` table, changed in the same
transaction as the messages). This book holds a copy of it per account, tagged with
the account's domain, and SQL triggers keep one total per domain, so a domain's
usage is one primary-key read (RFC 9208 quota root shared by the domain's users).

Invariants:

* An account's row holds its *absolute* usage with the (epoch, generation) of the
  index transaction that produced it; a report only replaces the row when it is
  newer (a later generation of the same index, or another index epoch: a rebuilt
  index). Reports from several processes may therefore arrive in any order, and a
  lost report (crash between the index commit and this write) is healed by the
  account's next change, by its next open, or by ``mailsrv quota recalc``.
* Reports are queued and written by one background thread per process (one
  transaction for every account changed meanwhile: batch updates), so the
  index writer never waits for this file. Reads flush the queue first: a
  process always sees its own reports; another process's arrive within a
  transaction's time, or at the end of a background index job (:meth:`UsageBook.held`).
* ``synchronous=NORMAL`` (WAL): a commit costs no fsync; a power loss may lose the
  last reports, which the rules above repair. The book is a cache, never the truth.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mailsrv import log
from mailsrv.store.types import QuotaUsage

logger = log.get("store")

BOOK_NAME = "quota-usage.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    account TEXT PRIMARY KEY, domain TEXT, epoch TEXT NOT NULL DEFAULT '', gen INTEGER NOT NULL DEFAULT 0,
    storage INTEGER NOT NULL, messages INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS accounts_domain ON accounts (domain);
CREATE TABLE IF NOT EXISTS domains (
    domain TEXT PRIMARY KEY, storage INTEGER NOT NULL DEFAULT 0, messages INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
-- (no INSERT OR IGNORE in the triggers: the upsert's conflict clause would override it)
CREATE TRIGGER IF NOT EXISTS usage_ins AFTER INSERT ON accounts WHEN NEW.domain IS NOT NULL
BEGIN
  INSERT INTO domains (domain) SELECT NEW.domain WHERE NEW.domain IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM domains WHERE domain = NEW.domain);
  UPDATE domains SET storage = storage + NEW.storage, messages = messages + NEW.messages
   WHERE domain = NEW.domain;
END;
CREATE TRIGGER IF NOT EXISTS usage_del AFTER DELETE ON accounts WHEN OLD.domain IS NOT NULL
BEGIN
  UPDATE domains SET storage = storage - OLD.storage, messages = messages - OLD.messages
   WHERE domain = OLD.domain;
END;
CREATE TRIGGER IF NOT EXISTS usage_upd AFTER UPDATE ON accounts
BEGIN
  UPDATE domains SET storage = storage - OLD.storage, messages = messages - OLD.messages
   WHERE OLD.domain IS NOT NULL AND domain = OLD.domain;
  INSERT INTO domains (domain) SELECT NEW.domain WHERE NEW.domain IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM domains WHERE domain = NEW.domain);
  UPDATE domains SET storage = storage + NEW.storage, messages = messages + NEW.messages
   WHERE NEW.domain IS NOT NULL AND domain = NEW.domain;
END;
"""

#: newer (epoch, gen) wins; a NULL domain in a report keeps the one recorded
_UPSERT = """
INSERT INTO accounts (account, domain, epoch, gen, storage, messages) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (account) DO UPDATE SET
  domain = coalesce(excluded.domain, accounts.domain), epoch = excluded.epoch, gen = excluded.gen,
  storage = excluded.storage, messages = excluded.messages
WHERE excluded.epoch != accounts.epoch OR excluded.gen > accounts.gen
   OR (excluded.domain IS NOT NULL AND excluded.domain IS NOT accounts.domain)
"""

#: (domain or None, epoch, generation, storage, messages)
Report = tuple[str | None, str, int, int, int]



#: how long processes opening a new book at once retry the switch to WAL and the schema
SETUP_DEADLINE = 30.0


def _set_up(conn: sqlite3.Connection) -> None:
    """WAL mode and the schema. Two processes opening a new book at once (two workers at first start) can
    get SQLITE_BUSY at once, without the busy handler, from the journal-mode switch or a schema statement
    that upgrades its read to a write: retried with a short back-off until SETUP_DEADLINE."""
    deadline = time.monotonic() + SETUP_DEADLINE
    pause = 0.001
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            try:  # the busy handler waits for a write lock taken up front (no read-to-write upgrade)
                conn.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(pause)  # a retry back-off in a writer thread, not a test's synchronisation
            pause = min(pause * 2, 0.05)

class UsageBook:
    """The shared per-domain usage file. Thread-safe; every method blocks (call it in the I/O pool)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._queue: dict[str, Report] = {}
        self._queue_lock = threading.Lock()
        #: one flush at a time (a later batch never overtakes an earlier one)
        self._flush_lock = threading.Lock()
        self._pending = threading.Event()
        self._writer: threading.Thread | None = None
        self._stopping = False
        #: held() blocks running: their reports wait in the queue for the last one's end
        self._holds = 0
        #: transactions written (for tests and the bench: batching shows as flushes < reports)
        self.flushes = 0
        self.reports = 0

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            try:
                _set_up(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def close(self) -> None:
        """Write what is queued, stop the writer thread, close the connection."""
        self._stopping = True
        self._pending.set()
        writer = self._writer
        if writer is not None and writer is not threading.current_thread():
            writer.join(5)
        self.flush()
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        self._stopping = False
        self._writer = None

    # --- writes -------------------------------------------------------------------

    def report(self, account_id: str, domain: str | None, epoch: str, gen: int, storage: int,
               messages: int) -> None:
        """Record an account's usage after its index committed (coalesced with concurrent reports).

        Never raises: a failure is logged and left for the next report or a recalc to repair.
        """
        with self._queue_lock:
            self.reports += 1
            old = self._queue.get(account_id)
            if old is None or old[1] != epoch or old[2] < gen or (domain is not None and old[0] is None):
                self._queue[account_id] = (domain if domain is not None else (old[0] if old else None),
                                           epoch, gen, storage, messages)
            if self._writer is None or not self._writer.is_alive():  # (also: a forked child has none)
                self._writer = threading.Thread(target=self._write_loop, name="mailsrv-quota-usage", daemon=True)
                self._writer.start()
            if self._holds:
                return
        self._pending.set()

    @contextmanager
    def held(self) -> Iterator[None]:
        """Reports made inside wait for the end of the block (of the last such block running) to wake the
        writer: a background index job's mailbox transactions (one report each) then cost one transaction
        here and one writer wake-up, not one per mailbox. Reads in this process still flush at once."""
        with self._queue_lock:
            self._holds += 1
        try:
            yield
        finally:
            with self._queue_lock:
                self._holds -= 1
                wake = not self._holds and bool(self._queue)
            if wake:
                self._pending.set()

    def _write_loop(self) -> None:
        """The writer thread: flush whenever reports arrive, until close()."""
        while not self._stopping:
            self._pending.wait()
            self._pending.clear()
            self.flush()

    def flush(self) -> None:
        """Write the queued reports now (in one transaction). Never raises (failures are logged)."""
        with self._flush_lock:
            with self._queue_lock:
                batch, self._queue = self._queue, {}
            if batch:
                self._write(batch.items())

    def _write(self, items: Iterable[tuple[str, Report]]) -> None:
        rows = [(acct, *rep) for acct, rep in items]
        try:
            with self._lock:
                db = self._db()
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.executemany(_UPSERT, rows)
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                self.flushes += 1
        except (sqlite3.Error, OSError) as exc:
            logger.error("quota.usage_not_recorded", accounts=len(rows), error=str(exc))

    def forget(self, account_id: str) -> None:
        """The account was deleted: its usage leaves its domain's total."""
        self.flush()
        with self._lock:
            self._db().execute("DELETE FROM accounts WHERE account = ?", (account_id,))

    def replace_domain(self, domain: str, accounts: dict[str, Report]) -> None:
        """Recalc: the domain's accounts are exactly ``accounts`` (others of the domain are removed).

        The values are set whatever their generation (they were just read from the indexes);
        the domain total is recomputed from the rows, in one transaction.
        """
        with self._lock:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("DELETE FROM accounts WHERE domain = ?", (domain,))
                db.execute("DELETE FROM accounts WHERE account IN (SELECT value FROM json_each(?))",
                           (_json_list(accounts),))
                db.executemany("INSERT INTO accounts (account, domain, epoch, gen, storage, messages)"
                               " VALUES (?, ?, ?, ?, ?, ?)",
                               [(a, domain, r[1], r[2], r[3], r[4]) for a, r in accounts.items()])
                db.execute("INSERT OR REPLACE INTO domains (domain, storage, messages) SELECT ?,"
                           " coalesce(sum(storage), 0), coalesce(sum(messages), 0) FROM accounts WHERE domain = ?",
                           (domain, domain))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def retain_domains(self, domains: Iterable[str]) -> list[str]:
        """Drop the totals (and account rows) of domains not in ``domains``; returns those dropped."""
        keep = set(domains)
        with self._lock:
            db = self._db()
            gone = [r[0] for r in db.execute("SELECT domain FROM domains") if r[0] not in keep]
            for d in gone:
                db.execute("DELETE FROM accounts WHERE domain = ?", (d,))
                db.execute("DELETE FROM domains WHERE domain = ?", (d,))
            return gone

    # --- reads --------------------------------------------------------------------

    def domain_usage(self, domain: str) -> QuotaUsage:
        self.flush()
        with self._lock:
            r = self._db().execute("SELECT storage, messages FROM domains WHERE domain = ?", (domain,)).fetchone()
        return QuotaUsage(max(0, r[0]), max(0, r[1])) if r else QuotaUsage(0, 0)

    def account_usage(self, account_id: str) -> tuple[str | None, QuotaUsage] | None:
        """(domain, usage) as last reported for an account, or None."""
        self.flush()
        with self._lock:
            r = self._db().execute("SELECT domain, storage, messages FROM accounts WHERE account = ?",
                                   (account_id,)).fetchone()
        return (r[0], QuotaUsage(r[1], r[2])) if r else None

    def domains(self) -> dict[str, QuotaUsage]:
        self.flush()
        with self._lock:
            return {r[0]: QuotaUsage(max(0, r[1]), max(0, r[2]))
                    for r in self._db().execute("SELECT domain, storage, messages FROM domains ORDER BY domain")}


def _json_list(names: Iterable[str]) -> str:
    import json

    return json.dumps(list(names))
