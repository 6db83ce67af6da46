"""One account's Maildir++ tree and its index: every blocking operation, run in the I/O pool.

Invariants (read before changing anything here):

* New files arrive through ``new/`` (deliveries, other programs), which every
  sync lists, or wait in ``tmp/`` (append, copy; nobody scans it) until this
  process holds the write lock.
* UIDs are assigned only inside a write transaction (``BEGIN IMMEDIATE``:
  the account's cross-process lock). Order inside it: append the assigned
  UIDs to the folder's ``mailsrv-uidlist`` and fsync it, *then* rename files
  into ``cur/``, then commit. A uidlist longer than the index recorded thus
  marks a writer that died mid-way, and the next writer reconciles ``cur/``
  with it (``_uidlist_floor``). The next UID is never below the uidlist's
  largest UID + 1, so a UID is never reused, even when the index is deleted
  (the uidlist is the UID map; the index is a cache). So the background
  indexer may commit without fsync (``sync(lazy_commit=True)``): a commit lost
  to a power cut is such a longer uidlist, reconciled with the same UIDs.
* Flag renames and expunge unlinks happen before the commit: a crash leaves a
  file state the next reconcile adopts, never an acknowledged change undone.
* The index file is created, repaired and replaced only under the flock of
  ``mailsrv-index.lock``; a process that finds a new file at the path reopens.
* ``self.lock`` serialises this process's threads on the SQLite connection;
  every public method takes it. Methods starting with ``_`` expect it held.
  Folder and message operations live in :mod:`.folders` and :mod:`.messages`.

Raises :class:`TemporaryFailure` for disk/permission/lock problems, and the
other :mod:`mailsrv.store.types` errors for caller mistakes.
"""

from __future__ import annotations

import fcntl
import operator
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from mailsrv import log, mime
from mailsrv._speedups import quota as quota_impl
from mailsrv.config import MimeConfig
from mailsrv.store import folders, headers, maildir, messages, uidlist
from mailsrv.store.folders import UIDLIST_NAME
from mailsrv.store.rows import (
    _MSG_COLS,
    Added,
    Pending,
    SyncResult,
    _empty,
    _flags_text,
    _info,
    new_id,
    new_info,
)
from mailsrv.store.types import (
    SPECIAL_USE,
    BadMailboxName,
    MailboxExists,
    MailboxInfo,
    MailboxNotFound,
    MessageGone,
    MessageInfo,
    QuotaLimits,
    QuotaUsage,
    TemporaryFailure,
)
from mailsrv.store.usage import UsageBook
from mailsrv.util import fsio

if TYPE_CHECKING:
    from mailsrv.mime import MessageStructure

logger = log.get("store")

INDEX_NAME = "mailsrv-index.sqlite"
LOCK_NAME = "mailsrv-index.lock"
KEYWORDS_NAME = "dovecot-keywords"
#: the UID map is compacted only beyond this size (and when mostly expunged entries)
UIDLIST_COMPACT_MIN = 64 * 1024
NOTIFY_NAME = "mailsrv-notify"
#: default expunge history per mailbox (config: store.expunge_history, store.expunge_history_days)
EXPUNGE_HISTORY = 10000
EXPUNGE_HISTORY_DAYS = 90.0
#: the history is pruned after this many expunge records (or fewer when the limit is smaller)
PRUNE_EVERY = 64
#: messages a background index transaction takes in between two fsio.give_way() calls (~50 us of
#: CPU each: a slice of ~0.8 ms); renames into cur/ twice as many (~15 us each, mostly kernel).
#: One session in process (3 pairs): 16 against 8 the same p99, ~0.02 ms less CPU per message
#: (fewer wake-ups)
GIVE_WAY_EVERY = 16
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT);
CREATE TABLE IF NOT EXISTS mailboxes (
    id INTEGER PRIMARY KEY, guid TEXT UNIQUE NOT NULL, name TEXT UNIQUE NOT NULL,
    dir TEXT NOT NULL, special_use TEXT, uidvalidity INTEGER NOT NULL,
    uidnext INTEGER NOT NULL, highestmodseq INTEGER NOT NULL,
    messages INTEGER NOT NULL DEFAULT 0, storage INTEGER NOT NULL DEFAULT 0,
    uidlist_size INTEGER NOT NULL DEFAULT 0, cur_mtime INTEGER NOT NULL DEFAULT -1);
CREATE TABLE IF NOT EXISTS messages (
    mailbox INTEGER NOT NULL, uid INTEGER NOT NULL, key TEXT NOT NULL, fname TEXT NOT NULL,
    flags TEXT NOT NULL, modseq INTEGER NOT NULL, internal_date REAL NOT NULL,
    saved_date REAL NOT NULL, size INTEGER NOT NULL, email_id TEXT NOT NULL,
    thread_id TEXT NOT NULL, structure BLOB, PRIMARY KEY (mailbox, uid)) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS messages_key ON messages (mailbox, key);
CREATE INDEX IF NOT EXISTS messages_modseq ON messages (mailbox, modseq);
CREATE INDEX IF NOT EXISTS messages_email ON messages (email_id);
CREATE TABLE IF NOT EXISTS expunged (
    mailbox INTEGER NOT NULL, uid INTEGER NOT NULL, modseq INTEGER NOT NULL,
    PRIMARY KEY (mailbox, uid)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS expunged_modseq ON expunged (mailbox, modseq);
CREATE TABLE IF NOT EXISTS msgids (msgid TEXT PRIMARY KEY, thread_id TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS subjects (base TEXT PRIMARY KEY, thread_id TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS quota (id INTEGER PRIMARY KEY CHECK (id = 1),
    storage INTEGER NOT NULL, messages INTEGER NOT NULL);
INSERT OR IGNORE INTO quota (id, storage, messages) VALUES (1, 0, 0);
CREATE TABLE IF NOT EXISTS recent (guid TEXT PRIMARY KEY, first_uid INTEGER NOT NULL) WITHOUT ROWID;
"""

#: Added after schema 1 (``_migrate``): unseen counter per mailbox kept by triggers (so listing is
#: O(mailboxes), never a count over messages), and the ids of expunged messages (JMAP /changes).
#: Inserts are counted by ``Engine._insert`` (``_UNSEEN_ADD``: once per slice in a batch), not by a
#: trigger: any INSERT trigger on ``messages`` makes each inserted row a statement of its own
#: transaction (a statement journal copying every page the row touches: ~10 of ~16 us per row, even
#: when the trigger's WHEN is false). Indexes made before drop theirs at open (``unseen_ins``).
_UNSEEN_TRIGGERS = """
DROP TRIGGER IF EXISTS unseen_ins;
CREATE TRIGGER IF NOT EXISTS unseen_del AFTER DELETE ON messages WHEN instr(OLD.flags, '\\Seen') = 0
BEGIN UPDATE mailboxes SET unseen = unseen - 1 WHERE id = OLD.mailbox; END;
CREATE TRIGGER IF NOT EXISTS unseen_upd AFTER UPDATE OF flags, mailbox ON messages
WHEN instr(OLD.flags, '\\Seen') = 0 OR instr(NEW.flags, '\\Seen') = 0
BEGIN
  UPDATE mailboxes SET unseen = unseen - (instr(OLD.flags, '\\Seen') = 0) WHERE id = OLD.mailbox;
  UPDATE mailboxes SET unseen = unseen + (instr(NEW.flags, '\\Seen') = 0) WHERE id = NEW.mailbox;
END;
"""

#: Added after schema 1 (``_migrate``): what left a mailbox after it was indexed (expunged, deleted
#: with its mailbox, moved to another), by key, for an hour: the replay of a delivery journal
#: (store/journal.py) does not bring such a message back when its file is missing. Filled in the
#: transaction of the removal; rows older than an hour are pruned at each removal (the journal's
#: records are checkpointed within a second; the master replays before any worker serves, a
#: replacement worker and the 60 s adoption while others serve: docs/store-api.md, Durability).
_GONE = """
CREATE TABLE IF NOT EXISTS gone (mailbox INTEGER NOT NULL, key TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (mailbox, key)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS gone_at ON gone (at);
CREATE TRIGGER IF NOT EXISTS gone_del AFTER DELETE ON messages
BEGIN
  DELETE FROM gone WHERE at < julianday('now') - 1.0 / 24;
  INSERT OR REPLACE INTO gone (mailbox, key, at) VALUES (OLD.mailbox, OLD.key, julianday('now'));
END;
CREATE TRIGGER IF NOT EXISTS gone_moved AFTER UPDATE OF mailbox ON messages WHEN NEW.mailbox != OLD.mailbox
BEGIN
  INSERT OR REPLACE INTO gone (mailbox, key, at) VALUES (OLD.mailbox, OLD.key, julianday('now'));
END;
"""


@dataclass
class _Mbox:
    id: int
    guid: str
    name: str
    dir: str
    special_use: str | None
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    messages: int
    storage: int
    uidlist_size: int
    cur_mtime: int


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring an index made by an older mailsrv up to date (caller holds the open flock)."""
    if ("unseen" in _columns(conn, "mailboxes") and "at" in _columns(conn, "expunged")
            and "gen" in _columns(conn, "quota") and _columns(conn, "gone")):
        conn.executescript(_UNSEEN_TRIGGERS)
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        _migrate_steps(conn)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _migrate_steps(conn: sqlite3.Connection) -> None:
    """The schema changes after schema 1, inside the caller's transaction."""
    if "unseen" not in _columns(conn, "mailboxes"):
        conn.execute("ALTER TABLE mailboxes ADD COLUMN unseen INTEGER NOT NULL DEFAULT 0")
        conn.execute("UPDATE mailboxes SET unseen = (SELECT count(*) FROM messages m"
                     " WHERE m.mailbox = mailboxes.id AND instr(m.flags, '\\Seen') = 0)")
    if "email_id" not in _columns(conn, "expunged"):
        conn.execute("ALTER TABLE expunged ADD COLUMN email_id TEXT")
        conn.execute("ALTER TABLE expunged ADD COLUMN thread_id TEXT")
    if "gen" not in _columns(conn, "quota"):  # generation of the usage (store/usage.py ordering)
        conn.execute("ALTER TABLE quota ADD COLUMN gen INTEGER NOT NULL DEFAULT 0")
    if "at" not in _columns(conn, "expunged"):  # expunge history pruning (_prune_expunged)
        conn.execute("ALTER TABLE expunged ADD COLUMN at REAL")
        conn.execute("ALTER TABLE mailboxes ADD COLUMN vanished_floor INTEGER NOT NULL DEFAULT 0")
    for stmt in _statements(_UNSEEN_TRIGGERS) + _statements(_GONE):
        conn.execute(stmt)


def _statements(script: str) -> list[str]:
    """The SQL statements of ``script`` (triggers whole), to run one by one inside a transaction."""
    out: list[str] = []
    stmt = ""
    for part in script.split(";"):
        stmt += part + ";"
        if sqlite3.complete_statement(stmt):
            if stmt.strip(" \n;"):
                out.append(stmt)
            stmt = ""
    return out


def _create_schema(conn: sqlite3.Connection) -> None:
    """A new index's tables, migrations and meta, inside the caller's transaction (one commit, one sync)."""
    for stmt in _statements(_SCHEMA):
        conn.execute(stmt)
    _migrate_steps(conn)
    conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
    conn.execute("INSERT OR IGNORE INTO meta VALUES ('epoch', ?)", (new_id("X"),))


def _create_index(build: Path, seeds: list[folders.FolderSeed]) -> None:
    """The index of a new account's skeleton (folders.make_skeleton), with its folders' rows.

    Written without syncs (synchronous=OFF): the caller makes the whole skeleton durable at once.
    """
    conn = sqlite3.connect(build / INDEX_NAME, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=OFF")  # first: switching to WAL would sync otherwise
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("BEGIN IMMEDIATE")
        _create_schema(conn)
        # as folders.adopt_folder: modseqs start at the clock (ms), no expunge before it
        start = int(time.time() * 1000)
        conn.executemany(
            "INSERT INTO mailboxes (guid, name, dir, special_use, uidvalidity, uidnext, highestmodseq,"
            " uidlist_size, cur_mtime, vanished_floor) VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?, ?)",
            [("M" + f.guid[:24], f.name, f.dirname, SPECIAL_USE.get(f.name), f.uidvalidity, start,
              f.uidlist_size, f.cur_mtime, start) for f in seeds])
        conn.execute("COMMIT")
    finally:
        conn.close()
    (build / NOTIFY_NAME).touch()


_MBOX_BY_NAME = ("SELECT id, guid, name, dir, special_use, uidvalidity, uidnext, highestmodseq, messages,"
                 " storage, uidlist_size, cur_mtime FROM mailboxes WHERE name = ?")
_INSERT_MESSAGE = ("INSERT INTO messages (mailbox, uid, key, fname, flags, modseq, internal_date, saved_date,"
                   " size, email_id, thread_id, structure) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)")
#: what the ``unseen_ins`` trigger did, for ``n`` inserted rows whose flags text lacks ``\Seen`` (its
#: ``instr(flags, '\Seen') = 0``): in the inserting transaction (``Engine._insert``, ``_write_rows``)
_UNSEEN_ADD = "UPDATE mailboxes SET unseen = unseen + ? WHERE id = ?"


class _Rows:
    """Index rows of a batch (``Engine._take_new``, one mailbox) not written yet, the sizes of its
    messages, how many of the rows are unseen (``_UNSEEN_ADD``), and the batch's save date."""

    __slots__ = ("mailbox", "messages", "msgids", "saved", "sizes", "subjects", "unseen")

    def __init__(self, mailbox: int) -> None:
        self.mailbox = mailbox
        #: the SAVEDATE (RFC 8514) of the batch's messages: saved by one transaction, at one time (one
        #: float object, whose UID map text uidlist.format_entry makes once: float repr ~3.5 k Ir)
        self.saved = time.time()
        self.messages: list[tuple[object, ...]] = []
        self.msgids: dict[str, str] = {}  # Message-ID -> thread id (INSERT OR IGNORE: the first wins)
        self.subjects: dict[str, str] = {}  # base subject -> thread id (INSERT OR REPLACE: the last wins)
        self.sizes: list[int] = []
        self.unseen = 0


class _NeedsFullCommit(Exception):
    """A lazy sync (Engine.sync lazy_commit) met changes to reconcile: redone with a synced commit."""


def _temp(exc: BaseException, what: str) -> TemporaryFailure:
    return TemporaryFailure(f"{what}: {exc}")


class Engine:
    """Blocking operations on one account. Thread-safe; call through the I/O pool."""

    def __init__(self, account_id: str, root: Path, *, max_parse_size: int = 64 << 20,
                 hostname: str = "", mime_limits: MimeConfig | None = None,
                 expunge_history: int = EXPUNGE_HISTORY, expunge_history_days: float = EXPUNGE_HISTORY_DAYS,
                 syncfs: bool = True) -> None:
        self.account_id = account_id
        #: the ``[mime]`` parser bounds used wherever this account parses a message
        self.mime_limits = mime_limits
        self.root = root
        #: make a new account's skeleton durable with one syncfs (else an fsync per file and directory)
        self.use_syncfs = syncfs
        self.max_parse_size = max_parse_size
        self.hostname = hostname or os.uname().nodename
        #: reentrant; a background sync holding it gives way to delivery rounds only while no thread
        #: waits for it (a round's quota check, folder lookup or index transaction, a reader's sync)
        self.lock = fsio.WantedLock()
        self.conn: sqlite3.Connection | None = None
        #: the connection commits without fsync (its last write transaction was lazy: _write)
        self._lazy = False
        self._closed = False
        #: key -> Pending for files this process put into some new/
        self.pending: dict[str, Pending] = {}
        #: messages indexed by reading and parsing their file (no Pending: delivered by another
        #: process or program, or a rebuild); for the indexer's statistics
        self.files_parsed = 0
        #: files the last ``sync(foreign_grace=...)`` left in new/ for their deliverer (under ``lock``)
        self.foreign_left = 0
        self._warned: set[str] = set()
        #: dovecot-keywords path -> ((ino, mtime, size), parsed map)
        self._kw_cache: dict[str, tuple[tuple[int, int, int], dict[str, str]]] = {}
        #: mailbox name -> folder directory, for delivery links (a stale entry fails the link
        #: with FileNotFoundError and is looked up again)
        self.folder_cache: dict[str, Path] = {}
        self.notify_path = root / NOTIFY_NAME
        self._db_ino = -1
        #: expunge history kept per mailbox: at most this many entries, none older than this many days
        self.expunge_history = expunge_history
        self.expunge_history_days = expunge_history_days
        #: expunge records written since the last pruning (pruning is amortised: PRUNE_EVERY)
        self._expunged_since_prune = 0
        #: per-domain usage (store/usage.py): the account's domain and the shared book, set by the Store
        self.domain: str | None = None
        self.usage: UsageBook | None = None
        #: random id of this index file (a rebuilt index starts new usage generations)
        self.epoch = ""
        #: (gen, storage, messages) changed by the open write transaction, reported after its commit
        self._usage_report: tuple[int, int, int] | None = None
        #: the rows _insert leaves for _take_new to write at the end of each slice (else None)
        self._rows: _Rows | None = None

    # --- opening and repair ---------------------------------------------------

    def open(self) -> None:
        with self.lock:
            try:
                self._ensure_tree()
                self._open_db()
                folders.discover(self)
            except OSError as exc:
                raise _temp(exc, "cannot open mail store") from exc

    def close(self) -> None:
        with self.lock:
            self._closed = True
            if self.conn is not None:
                self.conn.close()
                self.conn = None

    def hibernate(self) -> None:
        """Close the index connection (and its page cache) of an idle account; the next use reopens it."""
        with self.lock:
            if self.conn is not None:
                self.conn.close()
                self.conn = None
            self._kw_cache.clear()
            self.folder_cache.clear()

    def _ensure_tree(self) -> None:
        """A new account: its whole skeleton at once (folders.make_skeleton). An existing one
        (ours, or a Dovecot or mutt maildir being adopted): add what is missing."""
        if not self.root.exists() and folders.make_skeleton(
                self.root, self.hostname, _create_index, use_syncfs=self.use_syncfs):
            return
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in ("cur", "new", "tmp"):
            (self.root / sub).mkdir(exist_ok=True)
        for name in SPECIAL_USE:
            d = self.root / maildir.folder_dir(name)
            if name != "INBOX" and not d.is_dir():
                try:
                    folders.make_folder_dir(self, maildir.folder_dir(name))
                except MailboxExists:
                    pass  # another process made it meanwhile
        if not self.notify_path.exists():
            self.notify_path.touch()

    @contextmanager
    def _open_lock(self) -> Iterator[None]:
        """Serialise index creation, repair and reopening across processes (flock on a lock file)."""
        fd = os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _open_db(self, broken_ino: int | None = None) -> None:
        """Open (creating if needed) the index. Holds the open lock, so no one sees a half-made file.

        ``broken_ino``: the index file this process found corrupt; it is moved aside only if it is
        still the file at the path (another process may have rebuilt it already).
        """
        path = self.root / INDEX_NAME
        with self._open_lock():
            if broken_ino is not None:
                try:
                    if os.stat(path).st_ino == broken_ino:
                        self._move_index_aside("corrupt")
                except FileNotFoundError:
                    pass
            for attempt in (1, 2):
                conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
                try:
                    if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                        conn.execute("PRAGMA journal_mode=WAL")
                    conn.execute("PRAGMA synchronous=FULL")
                    if not self._fresh_schema(conn):
                        conn.executescript(_SCHEMA)
                    conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
                    _migrate(conn)
                    conn.execute("SELECT count(*) FROM mailboxes").fetchone()
                    conn.execute("INSERT OR IGNORE INTO meta VALUES ('epoch', ?)", (new_id("X"),))
                    self.epoch = str(conn.execute("SELECT v FROM meta WHERE k='epoch'").fetchone()[0])
                except sqlite3.OperationalError as exc:  # locked, I/O error, disk full: not corruption
                    conn.close()
                    raise TemporaryFailure(f"index unavailable: {exc}") from exc
                except sqlite3.DatabaseError as exc:  # not a database, malformed: rebuild from the maildir
                    conn.close()
                    if attempt == 2:
                        raise TemporaryFailure(f"index unusable: {exc}") from exc
                    self._move_index_aside(exc)
                    continue
                self.conn = conn
                self._lazy = False  # the connection commits with fsync (synchronous=FULL)
                self._db_ino = os.stat(path).st_ino
                return

    @staticmethod
    def _fresh_schema(conn: sqlite3.Connection) -> bool:
        """An empty index file (new, or rebuilt): create its schema in one transaction. False if it has one."""
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name='meta'").fetchone():
            return False
        conn.execute("BEGIN IMMEDIATE")
        try:
            if not conn.execute("SELECT 1 FROM sqlite_master WHERE name='meta'").fetchone():
                _create_schema(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return True

    def _check_reopen(self) -> None:
        """Another process rebuilt the index (a new file at the path): reopen it."""
        try:
            ino = os.stat(self.root / INDEX_NAME).st_ino
        except FileNotFoundError:
            ino = -1
        if ino != self._db_ino:
            logger.warning("index.reopen", account=self.account_id)
            if self.conn is not None:
                self.conn.close()
                self.conn = None
            self._open_db()
            folders.discover(self)

    def _move_index_aside(self, exc: BaseException | str) -> None:
        stamp = int(time.time())
        logger.error("index.corrupt", account=self.account_id, error=str(exc), action="rebuild")
        for suffix in ("", "-wal", "-shm"):
            p = self.root / (INDEX_NAME + suffix)
            if p.exists():
                os.replace(p, self.root / f"{INDEX_NAME}{suffix}.corrupt.{stamp}")

    def repair(self, exc: BaseException) -> None:
        """The index raised DatabaseError mid-use: move it aside and rebuild from the maildir."""
        with self.lock:
            if self.conn is not None:
                self.conn.close()
                self.conn = None
            logger.error("index.corrupt", account=self.account_id, error=str(exc))
            self._open_db(broken_ino=self._db_ino)
            folders.discover(self)

    @property
    def db(self) -> sqlite3.Connection:
        if self.conn is None:
            if self._closed:
                raise TemporaryFailure("index closed")
            with self.lock:
                if self.conn is None:  # hibernated (store account cache): reopen on use
                    prev = self._db_ino
                    self._open_db()
                    if self._db_ino != prev:  # rebuilt meanwhile by another process
                        folders.discover(self)
        assert self.conn is not None
        return self.conn

    @contextmanager
    def _write(self, lazy: bool = False) -> Iterator[SyncResult]:
        """A write transaction (the account lock across processes). Yields the change record.

        ``lazy``: its commit is not fsync'd (WAL, ``synchronous=NORMAL``; see :meth:`sync`), else it
        is. The connection keeps the mode of its last transaction (PRAGMA synchronous cannot change
        inside one), so back-to-back transactions of one kind issue no PRAGMA (~17 us each way).
        """
        self._check_reopen()
        db = self.db
        if self._lazy != lazy:
            db.execute("PRAGMA synchronous=NORMAL" if lazy else "PRAGMA synchronous=FULL")
            self._lazy = lazy
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise _temp(exc, "index busy") from exc
        result = _empty()
        self._usage_report = None
        try:
            yield result
            db.execute("COMMIT")
        except BaseException:
            self._usage_report = None
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise
        if self._usage_report is not None:
            self._report_usage(*self._usage_report)
        if result.changed:
            self._touch()

    def _report_usage(self, gen: int, storage: int, messages: int) -> None:
        """Hand the committed usage to the per-domain book (store/usage.py; never raises)."""
        self._usage_report = None
        if self.usage is not None:
            self.usage.report(self.account_id, self.domain, self.epoch, gen, storage, messages)

    def report_usage(self) -> None:
        """Re-report the account's usage (at open, or when its domain became known): heals a lost report."""
        with self.lock:
            r = self.db.execute("SELECT gen, storage, messages FROM quota WHERE id=1").fetchone()
            self._report_usage(r[0], r[1], r[2])

    def _touch(self) -> None:
        try:
            os.utime(self.notify_path)
        except FileNotFoundError:
            self.notify_path.touch()

    # --- mailbox rows ---------------------------------------------------------

    def _row(self, name: str) -> _Mbox:
        try:
            name = maildir.normalize_name(name)
        except maildir.NameError_ as exc:
            raise BadMailboxName(str(exc)) from None
        r = self.db.execute(_MBOX_BY_NAME, (name,)).fetchone()
        if r is None:
            # created by another program or process since we last looked?
            try:
                dirname = maildir.folder_dir(name)
            except maildir.NameError_:  # too long to be stored: no such folder
                raise MailboxNotFound(name) from None
            d = self.root / dirname
            if (d / "cur").is_dir() and (d / "new").is_dir():
                folders.adopt_folder(self, name, dirname)
                return self._row(name)
            raise MailboxNotFound(name)
        return _Mbox(*r)

    def _row_by_id(self, mid: int) -> _Mbox:
        r = self.db.execute(
            "SELECT id, guid, name, dir, special_use, uidvalidity, uidnext, highestmodseq, messages,"
            " storage, uidlist_size, cur_mtime FROM mailboxes WHERE id = ?", (mid,)
        ).fetchone()
        if r is None:
            raise MailboxNotFound(str(mid))
        return _Mbox(*r)

    def _save(self, mb: _Mbox) -> None:
        self.db.execute(
            "UPDATE mailboxes SET uidnext=?, highestmodseq=?, messages=?, storage=?, uidlist_size=?,"
            " cur_mtime=? WHERE id=?",
            (mb.uidnext, mb.highestmodseq, mb.messages, mb.storage, mb.uidlist_size, mb.cur_mtime, mb.id),
        )

    def _folder(self, mb: _Mbox) -> Path:
        return self.root / mb.dir if mb.dir else self.root

    # --- sync: pick up new/ and external changes ------------------------------

    def _uidlist_floor(self, mb: _Mbox, folder: Path) -> uidlist.Uidlist | None:
        """Raise mb.uidnext past any UID in the uidlist beyond what the index saw.

        The uidlist is appended (and fsync'd) before files are renamed into cur/
        and before the commit, so a uidlist longer than the index recorded means
        a writer died mid-transaction: returns the parsed uidlist so the caller
        reconciles cur/ with it. None when the index is in step.
        """
        path = f"{folder}/{UIDLIST_NAME}"  # str paths on the delivery hot path: a Path join costs ~3 us
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        if st.st_size == mb.uidlist_size:
            return None
        with open(path, "rb") as fh:
            data = fh.read()
        try:
            ul = uidlist.parse(data)
        except uidlist.UidlistError as exc:
            logger.error("uidlist.unreadable", account=self.account_id, mailbox=mb.name, error=str(exc))
            return None
        mb.uidnext = max(mb.uidnext, ul.effective_nextuid)
        return ul

    def needs_sync(self, name: str) -> bool:
        """Cheap check (no write lock): anything in new/, or cur/ changed behind our back?"""
        with self.lock:
            mb = self._row(name)
            folder = self._folder(mb)
        try:
            with os.scandir(folder / "new") as it:
                for e in it:
                    if not e.name.startswith("."):
                        return True
            if os.stat(folder / "cur").st_mtime_ns != mb.cur_mtime:
                return True
            return os.stat(folder / UIDLIST_NAME).st_size != mb.uidlist_size
        except FileNotFoundError:
            return True

    def sync(self, name: str, *, lazy_commit: bool = False, foreign_grace: float | None = None) -> SyncResult:
        """Index what waits in the mailbox's ``new/`` (and what changed in ``cur/`` behind our back).

        ``lazy_commit`` (the background indexer): the commit is not fsync'd (WAL, synchronous=NORMAL;
        ~65 us of CPU and ~0.3 ms less per transaction here). The UIDs are durable before it anyway:
        the uidlist is fsync'd first (module invariants), and a commit lost to a power cut leaves a
        uidlist longer than the index, which the next sync reconciles with the same UIDs. A process
        killed after the commit loses nothing (the WAL is in the page cache); the next synchronous
        commit or checkpoint syncs the WAL, these frames with it. A sync that must reconcile ``cur/``
        (changes no uidlist line records) commits with fsync, and a change that takes modseqs first
        syncs what a lost lazy commit left (``_catch_up_torn``): no modseq a client saw is reused.

        ``foreign_grace`` (the background indexer): a file in ``new/`` that this process did not
        deliver (no ``pending`` entry) is left there while its ctime (its link into ``new/``) is
        younger than this many seconds: the process that delivered it indexes it with the parse it
        holds, instead of this one reading and parsing it again (and search reading it back). How
        many were left: ``foreign_left`` (read it under ``lock``). Readers pass None (take all).
        """
        with self.lock:
            self.foreign_left = 0
            if lazy_commit:
                try:
                    return self._sync_named(name, lazy=True, foreign_grace=foreign_grace)
                except _NeedsFullCommit:
                    pass
            return self._sync_named(name, foreign_grace=foreign_grace)

    def _sync_named(self, name: str, *, lazy: bool = False, foreign_grace: float | None = None) -> SyncResult:
        """:meth:`_sync` of the mailbox ``name`` with its row read once, in the write transaction (one
        statement less per sync than :meth:`_row` before it and the fresh read in it: ~20 k instructions).
        A name without a row (a folder another program made: :meth:`_row` adopts it, in a transaction
        of its own) takes that way after an empty transaction."""
        try:
            norm = maildir.normalize_name(name)
        except maildir.NameError_ as exc:
            raise BadMailboxName(str(exc)) from None
        with self._write(lazy) as res:
            r = self.db.execute(_MBOX_BY_NAME, (norm,)).fetchone()
            if r is not None:
                mb = _Mbox(*r)
                self._sync_in(mb, self._folder(mb), res, None, lazy=lazy, foreign_grace=foreign_grace)
        if r is None:
            return self._sync(self._row(name), lazy=lazy, foreign_grace=foreign_grace)
        return res

    def _sync(self, mb: _Mbox, full_uidlist: uidlist.Uidlist | None = None, *, lazy: bool = False,
              foreign_grace: float | None = None) -> SyncResult:
        folder = self._folder(mb)
        with self._write(lazy) as res:
            mb = self._row_by_id(mb.id)  # fresh under the lock
            self._sync_in(mb, folder, res, full_uidlist, lazy=lazy, foreign_grace=foreign_grace)
        return res

    def _catch_up_torn(self, mb: _Mbox, res: SyncResult) -> None:
        """Before a change that takes modseqs (caller holds the write transaction, ``mb`` fresh):
        a uidlist longer than the index saw (a lost lazy commit: its messages, UIDs and modseqs
        were published) is synced first, so that they get their UIDs back and no modseq a client
        saw is handed to another change (RFC 7162: HIGHESTMODSEQ never goes back)."""
        folder = self._folder(mb)
        try:
            if os.stat(folder / UIDLIST_NAME).st_size == mb.uidlist_size:
                return
        except FileNotFoundError:
            return
        self._sync_in(mb, folder, res, None)

    def _sync_in(self, mb: _Mbox, folder: Path, res: SyncResult, full_uidlist: uidlist.Uidlist | None,
                 *, lazy: bool = False, foreign_grace: float | None = None) -> None:
        """_sync's work inside the caller's write transaction."""
        torn = self._uidlist_floor(mb, folder)
        lines: list[bytes] = []
        renames: list[tuple[str, str]] = []
        cur_dir = f"{folder}/cur"
        try:
            new_names = [n for n in os.listdir(f"{folder}/new") if not n.startswith(".")]
        except FileNotFoundError as exc:
            raise MailboxNotFound(mb.name) from exc
        cur_st = os.stat(cur_dir).st_mtime_ns
        if cur_st != mb.cur_mtime or torn is not None:
            if lazy:  # changes no uidlist line records (flags set by mutt, vanished files): a lost commit
                raise _NeedsFullCommit  # would hand their modseqs out again (nothing done yet: rolled back)
            ul = full_uidlist or torn or folders.read_uidlist(self, folder)
            self._reconcile(mb, folder, lines, res, ul)
        if new_names:
            self._take_new(mb, folder, new_names, lines, res, full_uidlist or torn, renames, foreign_grace)
        self._flush_uidlist(mb, folder, lines)
        for i, (src, dst) in enumerate(renames):  # after the UID map is durable: see the module invariants
            if i and not i % (2 * GIVE_WAY_EVERY):
                fsio.give_way(self.lock)
            os.replace(src, dst)
        mb.cur_mtime = os.stat(cur_dir).st_mtime_ns
        self._save(mb)

    def _take_new(self, mb: _Mbox, folder: Path, names: list[str], lines: list[bytes], res: SyncResult,
                  ul: uidlist.Uidlist | None, renames: list[tuple[str, str]],
                  foreign_grace: float | None = None) -> None:
        db = self.db
        fresh: list[tuple[str, str, int, float]] = []  # (name, key, size, mtime)
        keys = [maildir.split_filename(n)[0] for n in names]
        known: dict[str, str] = {}  # key -> fname of those the index has (one query per 500)
        for i in range(0, len(keys), 500):
            part = keys[i:i + 500]
            known.update(db.execute(f"SELECT key, fname FROM messages WHERE mailbox=? AND key IN"
                                    f" ({','.join('?' * len(part))})", (mb.id, *part)).fetchall())
        pending = self.pending
        new_dir, cur_dir = f"{folder}/new/", f"{folder}/cur/"
        young = time.time() - foreign_grace if foreign_grace is not None else None
        for n, key in zip(names, keys, strict=True):
            fname = known.get(key)
            if fname is not None:  # index knows it: finish the move into cur/
                renames.append((new_dir + n, cur_dir + fname))
                continue
            pend = pending.get(key)
            if pend is not None and pend.unsynced:  # its delivery's sync is still to come (or to fail)
                continue
            try:
                st = os.stat(new_dir + n)
            except FileNotFoundError:
                continue
            if young is not None and pend is None and st.st_ctime > young:  # its deliverer indexes it
                self.foreign_left += 1
                continue
            fresh.append((n, key, st.st_size, st.st_mtime))
        fresh.sort(key=_BY_MTIME_KEY)
        rows = self._rows = _Rows(mb.id)
        try:
            self._take_fresh(mb, folder, fresh, lines, res, ul, renames)
            self._write_rows(rows)
        finally:
            self._rows = None
        self._quota_apply(rows.sizes, 1)  # one read and one update of the usage for the whole batch

    def _take_fresh(self, mb: _Mbox, folder: Path, fresh: list[tuple[str, str, int, float]], lines: list[bytes],
                    res: SyncResult, ul: uidlist.Uidlist | None, renames: list[tuple[str, str]]) -> None:
        """Index the files of ``new/`` the index does not know yet (``_take_new``), oldest first."""
        used = None
        new_dir, cur_dir = f"{folder}/new/", f"{folder}/cur/"
        for i, (n, key, size, mtime) in enumerate(fresh):
            if i and not i % GIVE_WAY_EVERY:  # the background indexer gives way to delivery rounds
                self._write_rows(self._rows)  # (a slice's rows written in it)
                fsio.give_way(self.lock)
            pend = self.pending.pop(key, None)
            if n == key:  # no info part (how a delivery without flags names its file): no flags, no keywords
                flags, fname = _NO_FLAGS, key + ":2,"
            else:
                _, info = maildir.split_filename(n)
                flags = maildir.info_to_flags(info, self._letters(mb) if _has_letters(info) else {})
                fname = maildir.filename(key, flags, self._kw_for(mb, flags))
            uid = None
            if ul is not None and key in ul.uids:
                if used is None:
                    used = self._used_uids(mb.id)
                if ul.uids[key] not in used:
                    uid = ul.uids[key]
            try:
                self._insert(mb, new_dir + n, key, flags, size, mtime, pend, lines, res, uid=uid,
                             meta=ul.meta.get(key) if ul is not None else None, fname=fname)
            except OSError as exc:  # unreadable file: skip it, never block the others
                self._warn_once(key, "message.unreadable", mailbox=mb.name, file=key, error=str(exc))
                continue
            renames.append((new_dir + n, cur_dir + fname))

    def _maybe_compact_uidlist(self, mb: _Mbox) -> None:
        """Rewrite the UID map without expunged entries once they dominate it (caller holds the write txn).

        Only when the file is in step with the index (a torn tail is evidence that the next
        reconcile needs). The header keeps N = uidnext, so no UID is ever handed out again.
        """
        folder = self._folder(mb)
        path = folder / UIDLIST_NAME
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            return
        # ~150 bytes a line (size, email/thread ids, saved date): compact once mostly expunged entries
        if size != mb.uidlist_size or size < UIDLIST_COMPACT_MIN or size < 4 * 150 * (mb.messages + 16):
            return
        body = bytearray(uidlist.format_header(mb.uidvalidity, mb.uidnext, mb.guid[1:]))
        for uid, key, msize, eid, tid, saved in self.db.execute(
                "SELECT uid, key, size, email_id, thread_id, saved_date FROM messages WHERE mailbox=? ORDER BY uid",
                (mb.id,)):
            body += uidlist.format_entry(uid, key, msize, (eid, tid, saved))
        fsio.durable_write(path, bytes(body), tmp_dir=folder / "tmp")
        mb.uidlist_size = len(body)
        logger.info("uidlist.compacted", account=self.account_id, mailbox=mb.name, before=size, after=len(body))

    def _kwmap(self, mb: _Mbox, flags: frozenset[str] = frozenset()) -> dict[str, str]:
        """The folder's keyword -> letter map (``dovecot-keywords``), adding letters for new keywords.

        Caller holds the write transaction when ``flags`` may add keywords (the file is
        rewritten durably before any rename uses a new letter). 26 letters at most; other
        keywords live in the index only.
        """
        folder = self._folder(mb)
        kw = self._read_keywords(folder / KEYWORDS_NAME)
        missing = sorted(f for f in flags if not f.startswith("\\") and f not in kw)
        if missing:
            free = [chr(c) for c in range(ord("a"), ord("z") + 1) if chr(c) not in kw.values()]
            for name, letter in zip(missing, free, strict=False):
                if " " not in name:
                    kw[name] = letter
            fsio.durable_write(folder / KEYWORDS_NAME, maildir.format_keywords(kw), tmp_dir=folder / "tmp")
        return kw

    def _read_keywords(self, path: Path) -> dict[str, str]:
        """The parsed ``dovecot-keywords`` (a copy), re-read only when the file was replaced."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return {}
        ident = (st.st_ino, st.st_mtime_ns, st.st_size)
        hit = self._kw_cache.get(str(path))
        if hit is None or hit[0] != ident:
            try:
                kw = maildir.parse_keywords(path.read_bytes())
            except FileNotFoundError:
                return {}
            if len(self._kw_cache) > 256:
                self._kw_cache.clear()
            self._kw_cache[str(path)] = hit = (ident, kw)
        return dict(hit[1])

    def _kw_for(self, mb: _Mbox, flags: frozenset[str]) -> dict[str, str]:
        """The keyword map a file name with ``flags`` needs (no file access when it has no keywords)."""
        if all(f.startswith("\\") for f in flags):
            return {}
        return self._kwmap(mb, flags)

    def _letters(self, mb: _Mbox) -> dict[str, str]:
        return {letter: name for name, letter in self._kwmap(mb).items()}

    def _used_uids(self, mid: int) -> set[int]:
        db = self.db
        used = {r[0] for r in db.execute("SELECT uid FROM messages WHERE mailbox=?", (mid,))}
        used |= {r[0] for r in db.execute("SELECT uid FROM expunged WHERE mailbox=?", (mid,))}
        return used

    def _warn_once(self, key: str, event: str, **fields: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(event, account=self.account_id, **fields)

    def _insert(self, mb: _Mbox, path: Path | str, key: str, flags: frozenset[str], size: int, mtime: float,
                pend: Pending | None, lines: list[bytes], res: SyncResult, *, uid: int | None = None,
                email_id: str | None = None, thread_id: str | None = None,
                meta: uidlist.Meta | None = None, fname: str | None = None) -> MessageInfo:
        """Index one message file (caller holds the write transaction). Reads and parses it if needed.
        ``fname``: its name in cur/ when the caller made it already.

        ``meta``: (email id, thread id, saved date) its UID map line kept (an index rebuilt from the
        maildir gives the message the ids and SAVEDATE it had); explicit ids win.
        """
        pend = pend or Pending()
        saved: float | None = None
        if meta is not None:
            email_id = email_id or meta[0]
            thread_id = thread_id or meta[1]
            saved = meta[2]
        structure = pend.structure
        th = pend.thread
        parsed = pend.parsed
        if structure is None or (th is None and thread_id is None):
            late = pend.late
            if late is not None:  # ours, delivered before its parse: made once for every copy (first here)
                held = pend.raw
                blob, th_read, parsed = late.get(
                    lambda: held if held is not None else _read_head(path, min(size, self.max_parse_size)))
            else:
                self.files_parsed += 1
                blob, th_read, parsed = parse_for_index(_read_head(path, min(size, self.max_parse_size)),
                                                        self.account_id, self.mime_limits)
            structure = structure if structure is not None else blob
            th = th if th is not None else th_read
        if thread_id is None:
            assert th is not None
            thread_id = self._thread_for(th)
        elif th is not None:
            self._remember_thread(th, thread_id)  # a rebuild: later replies still find the thread
        if uid is None or uid < 1:
            uid = mb.uidnext
        mb.uidnext = max(mb.uidnext, uid + 1)
        mb.highestmodseq += 1
        rows = self._rows
        now = saved if saved is not None else rows.saved if rows is not None else time.time()
        info = new_info(uid, key, frozenset(flags), mb.highestmodseq, mtime, now, size,
                        email_id or pend.email_id or new_id("E"), thread_id)
        # the blob as a bytearray: sqlite3 binds bytes (and None) through its adapter look-up, a bytearray
        # directly (the same BLOB; read back as bytes): ~3.4 k Ir a row less
        row = (mb.id, uid, key, fname or maildir.filename(key, flags, self._kw_for(mb, flags)), _flags_text(flags),
               info.modseq, mtime, now, size, info.email_id, thread_id,
               bytearray(structure) if structure is not None else None)
        mb.messages += 1
        mb.storage += size
        unseen = "\\Seen" not in row[4]  # (the flags text, as the trigger's instr read it)
        if rows is not None:  # a batch (_take_new): written per slice, one quota update for all of it
            rows.messages.append(row)
            rows.sizes.append(size)
            rows.unseen += unseen
        else:
            self.db.execute(_INSERT_MESSAGE, row)
            if unseen:
                self.db.execute(_UNSEEN_ADD, (1, mb.id))
            self._quota_apply([size], 1)
        lines.append(uidlist.format_entry(uid, key, size, (info.email_id, thread_id, now)))
        res.added.append(Added(mb.guid, info, structure, pend.raw, parsed))
        res.changed = True
        return info

    def _thread_for(self, th: headers.ThreadHeaders) -> str:
        """RFC 5256 REFERENCES-style: a known parent's thread, else same base subject of a reply."""
        db = self.db
        rows = self._rows  # (rows of this batch not written yet: a msgid's first wins, a subject's last)
        tid = None
        for p in reversed(th.parents):
            r = db.execute("SELECT thread_id FROM msgids WHERE msgid=?", (p,)).fetchone()
            if r is None and rows is not None and p in rows.msgids:
                r = (rows.msgids[p],)
            if r:
                tid = r[0]
                break
        if tid is None and th.subject and th.parents:
            if rows is not None and th.subject in rows.subjects:
                r = (rows.subjects[th.subject],)
            else:
                r = db.execute("SELECT thread_id FROM subjects WHERE base=?", (th.subject,)).fetchone()
            if r:
                tid = r[0]
                self._remember_thread(th, tid, subject_row=False)  # the subject's row names it already
                return tid
        if tid is None:
            tid = new_id("T")
        self._remember_thread(th, tid)
        return tid

    def _remember_thread(self, th: headers.ThreadHeaders, tid: str, *, subject_row: bool = True) -> None:
        """Record a message's Message-ID and base subject as belonging to thread ``tid`` (``subject_row``
        False: the caller read the subject's row, in this transaction, and it holds ``tid``)."""
        rows = self._rows
        if rows is not None:  # a batch (_take_new): written per slice
            if th.message_id:
                rows.msgids.setdefault(th.message_id, tid)
            if th.subject and subject_row:
                rows.subjects[th.subject] = tid
            return
        if th.message_id:
            self.db.execute("INSERT OR IGNORE INTO msgids VALUES (?, ?)", (th.message_id, tid))
        if th.subject and subject_row:
            self.db.execute("INSERT OR REPLACE INTO subjects VALUES (?, ?)", (th.subject, tid))

    def _write_rows(self, rows: _Rows | None) -> None:
        """Write the rows a batch's ``_insert`` calls left (caller holds the write transaction): one
        executemany per table instead of one execute per message and table (the usage is the caller's)."""
        if rows is None:
            return
        db = self.db
        if rows.messages:
            db.executemany(_INSERT_MESSAGE, rows.messages)
        if rows.unseen:
            db.execute(_UNSEEN_ADD, (rows.unseen, rows.mailbox))
        if rows.msgids:
            db.executemany("INSERT OR IGNORE INTO msgids VALUES (?, ?)", rows.msgids.items())
        if rows.subjects:
            db.executemany("INSERT OR REPLACE INTO subjects VALUES (?, ?)", rows.subjects.items())
        rows.messages, rows.msgids, rows.subjects, rows.unseen = [], {}, {}, 0

    def _flush_uidlist(self, mb: _Mbox, folder: Path, lines: list[bytes]) -> None:
        """Append assigned UIDs to the UID map and fsync it (before the commit)."""
        path = f"{folder}/{UIDLIST_NAME}"
        if not lines:
            try:
                mb.uidlist_size = os.stat(path).st_size
            except FileNotFoundError:
                pass
            return
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            data = b"".join(lines)
            if size == 0:
                data = uidlist.format_header(mb.uidvalidity, mb.uidnext, mb.guid[1:]) + data
            elif size != mb.uidlist_size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # a torn line from a crash: terminate it
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
            mb.uidlist_size = size + len(data)  # O_APPEND under the write lock: nobody else appends
        finally:
            os.close(fd)

    def _reconcile(self, mb: _Mbox, folder: Path, lines: list[bytes], res: SyncResult,
                   ul: uidlist.Uidlist | None) -> None:
        """cur/ changed behind our back (mutt, a crash, a rebuild): make the index match it."""
        db = self.db
        on_disk: dict[str, str] = {}
        for entry in os.listdir(folder / "cur"):
            if not entry.startswith("."):
                on_disk[maildir.split_filename(entry)[0]] = entry
        gone: list[int] = []
        changed: list[MessageInfo] = []
        for row in db.execute(f"SELECT {_MSG_COLS}, fname FROM messages WHERE mailbox=?", (mb.id,)).fetchall():
            info, fname = _info(row), row[9]
            n: str | None = on_disk.pop(info.key, None)
            if n is None:
                if (folder / "new" / fname).exists() or any(
                    (folder / "new").glob(glob_escape(info.key) + "*")
                ):
                    continue  # still on its way in
                gone.append(info.uid)
                continue
            if n != fname:
                flags = maildir.merge_flags(info.flags, maildir.split_filename(n)[1], self._letters(mb))
                if flags != info.flags:
                    mb.highestmodseq += 1
                    db.execute("UPDATE messages SET flags=?, fname=?, modseq=? WHERE mailbox=? AND uid=?",
                               (_flags_text(flags), n, mb.highestmodseq, mb.id, info.uid))
                    changed.append(MessageInfo(info.uid, info.key, flags, mb.highestmodseq, info.internal_date,
                                               info.saved_date, info.size, info.email_id, info.thread_id))
                else:
                    db.execute("UPDATE messages SET fname=? WHERE mailbox=? AND uid=?", (n, mb.id, info.uid))
        if gone:
            logger.warning("message.vanished", account=self.account_id, mailbox=mb.name, count=len(gone))
            self._delete_rows(mb, gone, res)
        if changed:
            res.flags.setdefault(mb.guid, []).extend(changed)
            res.changed = True
        if on_disk:
            used = self._used_uids(mb.id)
            items = []
            for key, n in on_disk.items():
                try:
                    st = os.stat(folder / "cur" / n)
                except FileNotFoundError:
                    continue
                uid = ul.uids.get(key) if ul is not None else None
                if uid is not None and uid in used:
                    uid = None
                items.append((uid if uid is not None else 1 << 62, st.st_mtime, key, n, st.st_size))
            items.sort()
            for uid_hint, mtime, key, n, size in items:
                uid = uid_hint if uid_hint < (1 << 62) else None
                if uid is not None:
                    used.add(uid)
                try:
                    self._insert(mb, folder / "cur" / n, key,
                                 maildir.info_to_flags(maildir.split_filename(n)[1], self._letters(mb)),
                                 size, mtime, self.pending.pop(key, Pending()), lines, res, uid=uid,
                                 meta=ul.meta.get(key) if ul is not None else None)
                except OSError as exc:
                    self._warn_once(key, "message.unreadable", mailbox=mb.name, file=key, error=str(exc))
                    continue
                db.execute("UPDATE messages SET fname=? WHERE mailbox=? AND key=?", (n, mb.id, key))

    def _delete_rows(self, mb: _Mbox, uids: list[int], res: SyncResult) -> list[int]:
        db = self.db
        sizes: list[int] = []
        done: list[int] = []
        mb.highestmodseq += 1
        now = time.time()
        for uid in uids:
            r = db.execute("SELECT size, email_id, thread_id FROM messages WHERE mailbox=? AND uid=?",
                           (mb.id, uid)).fetchone()
            if r is None:
                continue
            sizes.append(r[0])
            done.append(uid)
            db.execute("DELETE FROM messages WHERE mailbox=? AND uid=?", (mb.id, uid))
            db.execute("INSERT OR REPLACE INTO expunged (mailbox, uid, modseq, email_id, thread_id, at)"
                       " VALUES (?, ?, ?, ?, ?, ?)", (mb.id, uid, mb.highestmodseq, r[1], r[2], now))
        mb.messages = max(0, mb.messages - len(done))
        mb.storage = max(0, mb.storage - sum(sizes))
        self._quota_apply(sizes, -1)
        if done:
            res.expunged.setdefault(mb.guid, []).extend(done)
            res.changed = True
            self._expunged_since_prune += len(done)
            if self._expunged_since_prune >= min(PRUNE_EVERY, self.expunge_history + 1):
                self._prune_expunged(mb.id, now)
        return done

    def _prune_expunged(self, mid: int, now: float) -> None:
        """Forget expunges beyond the history window (caller holds the write transaction).

        Keeps the newest ``expunge_history`` records of the mailbox and none older than
        ``expunge_history_days``, and raises the mailbox's ``vanished_floor`` to the largest
        modseq forgotten: a changes_since() below it cannot name every expunge (truncated).
        """
        self._expunged_since_prune = 0
        db = self.db
        cut = 0
        r = db.execute("SELECT modseq FROM expunged INDEXED BY expunged_modseq WHERE mailbox=?"
                       " ORDER BY modseq DESC LIMIT 1 OFFSET ?", (mid, self.expunge_history)).fetchone()
        if r is not None:
            cut = r[0]
        r = db.execute("SELECT max(modseq) FROM expunged WHERE mailbox=? AND at < ?",
                       (mid, now - self.expunge_history_days * 86400)).fetchone()
        if r is not None and r[0] is not None:
            cut = max(cut, r[0])
        if cut:
            n = db.execute("DELETE FROM expunged WHERE mailbox=? AND modseq<=?", (mid, cut)).rowcount
            db.execute("UPDATE mailboxes SET vanished_floor=max(vanished_floor, ?) WHERE id=?", (cut, mid))
            logger.info("expunged.pruned", account=self.account_id, records=n, floor=cut)

    def _quota_apply(self, sizes: list[int], sign: int) -> None:
        if not sizes:
            return
        gen, st, msgs = self.db.execute("SELECT gen, storage, messages FROM quota WHERE id=1").fetchone()
        st, msgs = quota_impl.apply(st, msgs, sizes, sign)
        self.db.execute("UPDATE quota SET storage=?, messages=?, gen=? WHERE id=1", (st, msgs, gen + 1))
        self._usage_report = (gen + 1, st, msgs)

    # --- reading ----------------------------------------------------------------

    def snapshot(self, name: str) -> tuple[MailboxInfo, list[MessageInfo]]:
        with self.lock:
            self._check_reopen()
            db = self.db
            db.execute("BEGIN")
            try:
                mb = self._row(name)
                msgs = [_info(r) for r in
                        db.execute(f"SELECT {_MSG_COLS} FROM messages WHERE mailbox=? ORDER BY uid", (mb.id,))]
            finally:
                db.execute("COMMIT")
            return self._mailbox_info(mb, len(msgs), None), msgs

    def changes_since(self, name: str, modseq: int
                      ) -> tuple[MailboxInfo, list[MessageInfo], list[int], dict[int, tuple[str, str]], bool]:
        """(info, changed, expunged uids, uid -> (email id, thread id) of those expunged that have them,
        truncated).

        ``truncated``: ``modseq`` is below what the pruned expunge history can answer; the
        expunged list then holds every UID below UIDNEXT that is not in the mailbox (RFC 7162
        §3.2.5.2: what a server without the expunge's modseq reports as VANISHED (EARLIER)).
        """
        with self.lock:
            self._check_reopen()
            db = self.db
            db.execute("BEGIN")
            try:
                mb = self._row(name)
                # the modseq index, not the primary key SQLite would pick for ORDER BY uid (a scan of the
                # whole mailbox); modseq 0 asks for everything, where the scan is the cheaper plan
                hint = " INDEXED BY messages_modseq" if modseq > 0 else ""
                changed = [_info(r) for r in db.execute(
                    f"SELECT {_MSG_COLS} FROM messages{hint} WHERE mailbox=? AND modseq>? ORDER BY uid",
                    (mb.id, modseq))]
                gone: list[int] = []
                ids: dict[int, tuple[str, str]] = {}
                floor = db.execute("SELECT vanished_floor FROM mailboxes WHERE id=?", (mb.id,)).fetchone()
                truncated = floor is not None and modseq < floor[0]
                if truncated:
                    present = {r[0] for r in db.execute("SELECT uid FROM messages WHERE mailbox=?", (mb.id,))}
                    gone = [u for u in range(1, mb.uidnext) if u not in present]
                for uid, eid, tid in db.execute(
                        "SELECT uid, email_id, thread_id FROM expunged WHERE mailbox=? AND modseq>? ORDER BY uid",
                        (mb.id, modseq)):
                    if not truncated:
                        gone.append(uid)
                    if eid is not None:
                        ids[uid] = (eid, tid or "")
                info = self._mailbox_info(mb, mb.messages, None)
            finally:
                db.execute("COMMIT")
            return info, changed, gone, ids, truncated

    def _mailbox_info(self, mb: _Mbox, messages: int, unseen: int | None, subscribed: bool = False) -> MailboxInfo:
        if unseen is None:  # kept by the unseen_* triggers
            r = self.db.execute("SELECT unseen FROM mailboxes WHERE id=?", (mb.id,)).fetchone()
            unseen = max(0, r[0]) if r is not None else 0
        return MailboxInfo(mb.name, mb.guid, mb.special_use, subscribed, mb.uidvalidity, mb.uidnext,
                           mb.highestmodseq, messages, unseen, mb.storage)

    def status(self, name: str) -> MailboxInfo:
        with self.lock:
            mb = self._row(name)
            return self._mailbox_info(mb, mb.messages, None, name in folders.subscriptions(self))

    def locate(self, name: str, uid: int) -> Path:
        """The current path of a message file, repairing the index if it moved or vanished."""
        with self.lock:
            mb = self._row(name)
            r = self.db.execute("SELECT key, fname FROM messages WHERE mailbox=? AND uid=?", (mb.id, uid)).fetchone()
            if r is None:
                raise MessageGone(f"{name} uid {uid}")
            folder = self._folder(mb)
            path = folder / "cur" / r[1]
            if path.exists():
                return path
            for sub in ("new", "cur"):
                for p in (folder / sub).glob(glob_escape(r[0]) + "*"):
                    if maildir.split_filename(p.name)[0] == r[0]:
                        return p
            # vanished behind our back: force a reconcile
            mb.cur_mtime = -1
            self._save(mb)
            raise MessageGone(f"{name} uid {uid}: file missing")

    def structures(self, name: str, uids: Sequence[int]) -> dict[int, bytes | None]:
        with self.lock:
            mb = self._row(name)
            out: dict[int, bytes | None] = {}
            for uid in uids:
                r = self.db.execute("SELECT structure FROM messages WHERE mailbox=? AND uid=?",
                                    (mb.id, uid)).fetchone()
                if r is not None:
                    out[uid] = r[0]
            return out

    def set_structure(self, name: str, uid: int, blob: bytes | None) -> None:
        """Rewrite a message's cached MIME structure (not a change clients see: no modseq)."""
        with self.lock:
            mb = self._row(name)
            with self._write():
                self.db.execute("UPDATE messages SET structure=? WHERE mailbox=? AND uid=?", (blob, mb.id, uid))

    def mailbox_name(self, guid: str) -> str:
        with self.lock:
            r = self.db.execute("SELECT name FROM mailboxes WHERE guid=?", (guid,)).fetchone()
            if r is None:
                raise MailboxNotFound(guid)
            return str(r[0])

    def find_email(self, email_id: str) -> list[tuple[str, int]]:
        with self.lock:
            return [(r[0], r[1]) for r in self.db.execute(
                "SELECT b.name, m.uid FROM messages m JOIN mailboxes b ON b.id = m.mailbox WHERE m.email_id=?",
                (email_id,))]

    def recent_with_msgid(self, msgid: str, since: float) -> list[tuple[str, int, str, float, int]]:
        """(mailbox, uid, flags text, internal date, modseq) of every message saved at or after ``since`` when this
        account ever indexed a message with Message-ID ``msgid`` (else [] after one primary-key read).
        Each mailbox is read newest UID first and left at its first older row (mailsrv.recall)."""
        with self.lock:
            db = self.db
            if db.execute("SELECT 1 FROM msgids WHERE msgid=?", (msgid,)).fetchone() is None:
                return []
            out: list[tuple[str, int, str, float, int]] = []
            for mid, name in db.execute("SELECT id, name FROM mailboxes").fetchall():
                for uid, flags, saved, internal, modseq in db.execute(
                        "SELECT uid, flags, saved_date, internal_date, modseq FROM messages WHERE mailbox=?"
                        " ORDER BY uid DESC", (mid,)):
                    if saved < since:
                        break
                    out.append((name, uid, flags, internal, modseq))
            return out

    def quota_usage(self) -> QuotaUsage:
        with self.lock:
            st, msgs = self.db.execute("SELECT storage, messages FROM quota WHERE id=1").fetchone()
            return QuotaUsage(st, msgs)

    def recount_quota(self) -> tuple[str, int, int, int]:
        """Recompute the account's usage from its index rows (``mailsrv quota recalc``).

        Fixes a drifted counter (logged). Returns (epoch, generation, storage, messages).
        """
        with self.lock, self._write():
            db = self.db
            st, msgs = db.execute("SELECT coalesce(sum(size), 0), count(*) FROM messages").fetchone()
            gen, old_st, old_msgs = db.execute("SELECT gen, storage, messages FROM quota WHERE id=1").fetchone()
            if (st, msgs) != (old_st, old_msgs):
                logger.warning("quota.drift_fixed", account=self.account_id, storage=old_st, messages=old_msgs,
                               counted_storage=st, counted_messages=msgs)
                gen += 1
                db.execute("UPDATE quota SET storage=?, messages=?, gen=? WHERE id=1", (st, msgs, gen))
                self._usage_report = (gen, st, msgs)
            return self.epoch, gen, st, msgs

    def quota_check(self, size: int, count: int, limits: QuotaLimits,
                    domain_limits: QuotaLimits | None = None) -> int:
        """OK, OVER_STORAGE or OVER_MESSAGES for adding ``count`` messages of ``size`` octets in all.

        RFC 9208 §3: both roots apply, the account's (``limits``) and, when the account has a
        domain and ``domain_limits`` limit something, the domain's (usage from the shared book).
        """
        u = self.quota_usage()
        usages = [(u.storage, u.messages)]
        lims = [_pair(limits)]
        if (domain_limits is not None and self.domain is not None and self.usage is not None
                and (domain_limits.storage is not None or domain_limits.messages is not None)):
            d = self.usage.domain_usage(self.domain)
            usages.append((d.storage, d.messages))
            lims.append(_pair(domain_limits))
        return int(quota_impl.check_roots(usages, lims, size, count)[1])

    # --- \Recent (RFC 3501 §2.3.2; the imap package owns the semantics) -------------

    def _first_recent(self, guid: str) -> int:
        r = self.db.execute("SELECT first_uid FROM recent WHERE guid=?", (guid,)).fetchone()
        return int(r[0]) if r is not None else 1

    def claim_recent(self, name: str, upto: int | None) -> int:
        """The mailbox's first \\Recent UID (messages at or above it are recent for no session yet).

        With ``upto``, atomically (the write lock, across processes) raise it to ``upto`` and
        return the value before: the caller alone holds the UIDs in ``[returned, upto)`` as
        recent. Without, only read it (EXAMINE). The mark is index state, never a modseq change.
        """
        with self.lock:
            mb = self._row(name)
            first = self._first_recent(mb.guid)
            if upto is None or upto <= first:
                return first
            # No fsync for this commit (WAL, synchronous=NORMAL): a mark lost to a power cut only
            # makes messages recent once more, and SELECT / IDLE wake-ups do not wait on the disk.
            with self._write(lazy=True):
                first = self._first_recent(mb.guid)
                if upto > first:
                    self.db.execute("INSERT INTO recent VALUES (?, ?) ON CONFLICT (guid) DO UPDATE"
                                    " SET first_uid=excluded.first_uid", (mb.guid, upto))
            return first

    def recent_count(self, name: str) -> int:
        """Messages no session has seen as \\Recent yet (STATUS RECENT)."""
        with self.lock:
            mb = self._row(name)
            first = self._first_recent(mb.guid)
            return int(self.db.execute("SELECT count(*) FROM messages WHERE mailbox=? AND uid>=?",
                                       (mb.id, first)).fetchone()[0])

    # --- changing messages ----------------------------------------------------

    # --- folders ----------------------------------------------------------------

    # --- messages (mailsrv.store.messages) ----------------------------------------

    def import_new(self, name: str, src: Path, flags: frozenset[str], internal_date: float | None,
                   pend: Pending, link: bool) -> tuple[int, SyncResult]:
        return messages.import_new(self, name, src, flags, internal_date, pend, link)

    def uid_for_key(self, name: str, key: str) -> int | None:
        return messages.uid_for_key(self, name, key)

    def uids_for_keys(self, name: str, keys: Sequence[str]) -> dict[str, int]:
        """key -> UID of those ``keys`` the index holds in the mailbox (one query)."""
        with self.lock:
            mb = self._row(name)
            out: dict[str, int] = {}
            for i in range(0, len(keys), 500):
                part = list(keys[i:i + 500])
                q = ",".join("?" * len(part))
                for uid, key in self.db.execute(
                        f"SELECT uid, key FROM messages WHERE mailbox=? AND key IN ({q})", (mb.id, *part)):
                    out[key] = uid
            return out

    def files_of(self, guid: str, uids: Sequence[int]) -> tuple[str, dict[int, str]]:
        """(mailbox name, uid -> file path in cur/ as the index records it) for the mailbox with id
        ``guid`` (one query per 500 UIDs; a file may have moved since: see :meth:`locate`).
        Raises MailboxNotFound."""
        with self.lock:
            r = self.db.execute("SELECT id, name, dir FROM mailboxes WHERE guid=?", (guid,)).fetchone()
            if r is None:
                raise MailboxNotFound(guid)
            # str, not Path: a pathlib join per message was a third of a POP3 read-ahead batch's time
            cur = os.path.join(self.root / r[2] if r[2] else self.root, "cur", "")
            out: dict[int, str] = {}
            for i in range(0, len(uids), 500):
                part = list(uids[i:i + 500])
                q = ",".join("?" * len(part))
                for uid, fname in self.db.execute(
                        f"SELECT uid, fname FROM messages WHERE mailbox=? AND uid IN ({q})", (r[0], *part)):
                    out[uid] = cur + fname
            return str(r[1]), out

    def store_flags(self, name: str, uids: Sequence[int], flags: frozenset[str], mode: str,
                    unchanged_since: int | None) -> tuple[list[MessageInfo], list[int], SyncResult]:
        return messages.store_flags(self, name, uids, flags, mode, unchanged_since)

    def expunge(self, name: str, uids: Sequence[int] | None, only_deleted: bool,
                unseen_only: bool = False) -> tuple[list[int], SyncResult]:
        return messages.expunge(self, name, uids, only_deleted, unseen_only)

    def copy(self, src: str, uids: Sequence[int], dst: str, *, move: bool,
             limits: QuotaLimits | None = None,
             domain_limits: QuotaLimits | None = None) -> tuple[list[tuple[int, int]], SyncResult]:
        return messages.copy(self, src, uids, dst, move=move, limits=limits, domain_limits=domain_limits)

    # --- folders (mailsrv.store.folders) ------------------------------------------

    def list_mailboxes(self) -> list[MailboxInfo]:
        return folders.list_mailboxes(self)

    def create_mailbox(self, name: str, special_use: str | None) -> MailboxInfo:
        return folders.create_mailbox(self, name, special_use)

    def rename_mailbox(self, old: str, new: str) -> None:
        folders.rename_mailbox(self, old, new)

    def delete_mailbox(self, name: str) -> None:
        folders.delete_mailbox(self, name)

    def subscribe(self, name: str, on: bool) -> None:
        folders.subscribe(self, name, on)

    def folder_path(self, name: str) -> Path:
        return folders.folder_path(self, name)

    def keyword_letters(self, name: str, flags: frozenset[str]) -> dict[str, str]:
        """The folder's keyword -> letter map with letters for the keywords of ``flags`` (added to its
        ``dovecot-keywords`` durably first): a delivery names its file with them (Sieve imap4flags,
        docs/sieve.md). Blocking; {} when the folder is not there."""
        with self.lock, self._write():
            try:
                mb = self._row(name)
            except (MailboxNotFound, BadMailboxName):
                return {}
            return self._kwmap(mb, flags)

    def folder_new_dirs(self) -> list[str]:
        return folders.folder_new_dirs(self)


def _pair(limits: QuotaLimits) -> tuple[int, int]:
    """Limits as the quota module wants them: -1 = unlimited."""
    return (-1 if limits.storage is None else limits.storage, -1 if limits.messages is None else limits.messages)


_NO_FLAGS: frozenset[str] = frozenset()
#: the order _take_new indexes new/'s files in: (mtime, key) of its (name, key, size, mtime) tuples
_BY_MTIME_KEY = operator.itemgetter(3, 1)


def _has_letters(info: str) -> bool:
    """Does a maildir info part carry keyword letters (``a``-``z``)?"""
    return any("a" <= c <= "z" for c in info)


def glob_escape(s: str) -> str:
    import glob

    return glob.escape(s)


def may_hold_msgid(root: Path, msgid: str) -> bool:
    """*Blocking*: could the account at ``root`` hold a message whose Message-ID is ``msgid``? False only
    when its index (opened read-only, outside any account cache: no Engine, no lock) never saw that
    Message-ID and nothing waits in its INBOX ``new/``; True when unsure (no index yet, unreadable).
    A scan over thousands of accounts (mailsrv.recall) opens only those that answer True."""
    try:
        with os.scandir(root / "new") as it:
            if any(not e.name.startswith(".") for e in it):
                return True
        index = root / INDEX_NAME
        # Nobody has it open (no -wal: the last close checkpointed it whole): read the file as it is, for a
        # read-only WAL connection would create -wal and -shm and, unable to checkpoint, leave them (owned by
        # whoever scans: root's CLI made them unwritable for the worker). Open elsewhere: read through its WAL.
        ro = "mode=ro" if os.path.exists(f"{index}-wal") else "mode=ro&immutable=1"
        conn = sqlite3.connect(f"file:{quote(str(index))}?{ro}", uri=True, timeout=5.0)
    except FileNotFoundError:
        return os.path.isdir(root)  # no INBOX yet: an empty account; no index: opening it rebuilds one
    except (OSError, sqlite3.Error):
        return True
    try:
        return conn.execute("SELECT 1 FROM msgids WHERE msgid=?", (msgid,)).fetchone() is not None
    except sqlite3.Error:
        return True
    finally:
        conn.close()


def _read_head(path: Path | str, n: int) -> bytes:
    """Blocking: the first ``n`` bytes of the file at ``path``."""
    with open(path, "rb") as fh:
        return fh.read(n)


def parse_for_index(raw: bytes, account_id: str = "", mime_limits: MimeConfig | None = None
                    ) -> tuple[bytes | None, headers.ThreadHeaders, MessageStructure | None]:
    """(:func:`parse_structure`, the thread headers, the parsed structure or None) of ``raw`` from one
    MIME scan: the threading fields come from the scanner's (``headers.thread_headers_of``), and the
    structure goes to the observers (search indexing after delivery) instead of a parse of their own."""
    try:
        parsed = mime.parse(raw, mime_limits)
        blob = parsed.to_cache()
    except Exception as exc:
        logger.exception("mime.parse_failed", exc, account=account_id)
        return None, headers.thread_headers(raw), None
    return blob, headers.thread_headers_of(parsed.scanned_fields()), parsed


def parse_structure(raw: bytes, account_id: str = "", mime_limits: MimeConfig | None = None) -> bytes | None:
    """``mailsrv.mime.parse(raw, mime_limits).to_cache()``; None (parsed lazily later) if the parser fails."""
    try:
        return mime.parse(raw, mime_limits).to_cache()
    except Exception as exc:
        logger.exception("mime.parse_failed", exc, account=account_id)
        return None
