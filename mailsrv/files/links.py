"""The file-link index (SQLite) and the files it points at: blocking, for the I/O pool and the CLI.

Layout under ``<data_dir>/files``: ``links.db`` (one row per link), ``data/<xx>/<id>`` (the
octets of link ``id``; ``xx`` its last two characters), ``tmp/`` (uploads in progress).

Invariants:

- Only a hash of a link's token is stored: ``lookup`` (the first 16 octets of its SHA-256, hex,
  indexed) finds the row and the whole digest is then compared in constant time.
- A row in state ``live`` has its data file, fsync'd before the row was committed (the commit
  itself is durable: ``synchronous=FULL``). A crash between the file's rename and the commit
  leaves a data file without a row: :meth:`LinkStore.sweep` removes it (after an hour).
- A link past ``expires`` is gone for downloads at once (410); the sweep then deletes its file and
  marks the row ``expired``. A deleted link's file goes at once, its row is marked ``deleted``.
  Rows of dead links are kept :data:`TOMBSTONE_DAYS` days (their URLs answer 410, not 404).
- One process at a time sweeps (:meth:`LinkStore.sweep_if_due`: an ``flock`` on ``sweep.lock``),
  and only when the last sweep by any process (the mtime of ``swept``) is ``interval`` old.
- Quota is the sum of the sizes of a user's live and pending links; it is checked and the row inserted
  in one ``BEGIN IMMEDIATE`` transaction, so two concurrent uploads (any processes) cannot both pass it.
- A link made for a message being submitted (``[files] convert_over``) is ``pending`` until the message
  is accepted (:meth:`LinkStore.settle` makes it live, or removes it when the message is not accepted);
  a pending link is never downloaded, and one older than :data:`PENDING_AGE` (its process died, or
  the settle failed) is removed by the sweep with its file.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from mailsrv.util.fsio import fsync_dir, unique_name

#: Days a dead link's row is kept after it expired or was deleted (its URL answers 410 meanwhile).
TOMBSTONE_DAYS = 90
#: Seconds a data file without a row, or a temp file not written to, is left before the sweep removes it.
ORPHAN_AGE = 3600.0
#: A token: 128 random bits, URL-safe base64 without padding (22 characters).
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{22}$")
ID_RE = re.compile(r"^F[0-9a-f]{24}$")
#: Seconds a pending link (made for a message not yet accepted) waits for its message: past the RFC 5321
#: §4.5.3.2.6 10-minute DATA termination timeout three times over, the message is no longer coming.
PENDING_AGE = 1800.0
DAY = 86400.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS links (
    id TEXT PRIMARY KEY,
    lookup TEXT NOT NULL UNIQUE,
    token_hash TEXT NOT NULL,
    owner TEXT NOT NULL,
    owner_name TEXT NOT NULL,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    type TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    downloads INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'live'
);
CREATE INDEX IF NOT EXISTS links_owner ON links (owner, state);
CREATE INDEX IF NOT EXISTS links_state ON links (state, expires);
"""


class FileLinkError(Exception):
    """A link cannot be made; ``status`` is the HTTP status that says why."""

    status = 400


class TooLarge(FileLinkError):
    status = 413


class OverQuota(FileLinkError):
    status = 507


@dataclass(frozen=True)
class FileLink:
    """One link (never its token, which only its creator ever sees)."""

    id: str
    owner: str
    owner_name: str
    name: str
    size: int
    sha256: str
    type: str
    created: float
    expires: float
    downloads: int
    state: str

    def live(self, now: float | None = None) -> bool:
        return self.state == "live" and self.expires > (time.time() if now is None else now)

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "name": self.name, "size": self.size, "sha256": self.sha256, "type": self.type,
                "created": iso(self.created), "expires": iso(self.expires), "downloads": self.downloads,
                "state": self.state if self.state != "live" or self.live() else "expired"}


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


_COLS = "id, owner, owner_name, name, size, sha256, type, created, expires, downloads, state"


def new_token() -> str:
    """A fresh link token: 128 random bits."""
    return secrets.token_urlsafe(16)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


class LinkStore:
    """The link index and data files under ``root``. Thread-safe (one connection, one lock);
    every method blocks (call it from the I/O pool on a loop). Raises OSError, sqlite3.Error."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.tmp = root / "tmp"
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.tmp.mkdir(parents=True, exist_ok=True)
            self.data.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.root / "links.db", timeout=30.0, isolation_level=None,
                                 check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a committed link survives a power loss
            db.executescript(SCHEMA)
            self._db = db
        return self._db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def data_path(self, link_id: str) -> Path:
        return self.data / link_id[-2:] / link_id

    def temp_path(self) -> Path:
        """A fresh temp file name under ``tmp/`` (the directory exists once this returns)."""
        with self._lock:
            self._conn()
        return self.tmp / f".up.{unique_name()}"

    # --- making and ending links -----------------------------------------------------------

    def used(self, owner: str, now: float | None = None) -> int:
        """Bytes in ``owner``'s live links."""
        with self._lock:
            return self._used(self._conn(), owner, time.time() if now is None else now)

    @staticmethod
    def _used(db: sqlite3.Connection, owner: str, now: float) -> int:
        row = db.execute("SELECT COALESCE(SUM(size), 0) FROM links WHERE owner = ? AND state IN ('live', 'pending')"
                         " AND expires > ?", (owner, now)).fetchone()
        return int(row[0])

    def commit(self, src: Path, *, owner: str, owner_name: str, name: str, media_type: str, size: int,
               sha256: str, days: float, quota: int, link: bool = False,
               pending: bool = False) -> tuple[FileLink, str]:
        """Make a link of the fsync'd file ``src`` (renamed into ``data/``, or hard-linked with ``link``).
        Returns the link and its token (the only time the token exists). Raises :class:`OverQuota`
        (``src`` is left for the caller) when ``owner``'s live links would pass ``quota`` (0: none).
        ``pending``: the link waits for :meth:`settle` (its message's acceptance) before it is live."""
        state = "pending" if pending else "live"
        now = time.time()
        link_id = "F" + secrets.token_hex(12)
        token = new_token()
        digest = token_digest(token)
        dest = self.data_path(link_id)
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                if quota:
                    used = self._used(db, owner, now)
                    if used + size > quota:
                        raise OverQuota(f"over your file quota: {used} of {quota} bytes in live links,"
                                        f" this file needs {size} more")
                dest.parent.mkdir(exist_ok=True)
                if link:
                    os.link(src, dest)
                else:
                    os.replace(src, dest)
                fsync_dir(dest.parent)
                db.execute(f"INSERT INTO links ({_COLS}, lookup, token_hash) VALUES (?,?,?,?,?,?,?,?,?,0,?,?,?)",
                           (link_id, owner, owner_name, name, size, sha256, media_type, now, now + days * DAY,
                            state, digest[:32], digest))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                if dest.exists():
                    if not link:
                        os.replace(dest, src)  # the caller's to remove
                    else:
                        dest.unlink()
                raise
        return FileLink(link_id, owner, owner_name, name, size, sha256, media_type, now, now + days * DAY, 0,
                        state), token

    def settle(self, link_ids: list[str], keep: bool) -> int:
        """The pending links ``link_ids`` become live (``keep``: their message was accepted) or are removed
        with their files (it was not). Returns how many were still pending (the others were swept:
        :data:`PENDING_AGE`)."""
        if not link_ids:
            return 0
        marks = ",".join("?" * len(link_ids))
        with self._lock:
            db = self._conn()
            if keep:
                return db.execute(f"UPDATE links SET state = 'live' WHERE state = 'pending' AND id IN ({marks})",
                                  link_ids).rowcount
            gone = [r[0] for r in db.execute(f"DELETE FROM links WHERE state = 'pending' AND id IN ({marks})"
                                             " RETURNING id", link_ids).fetchall()]
        for link_id in gone:
            self.data_path(link_id).unlink(missing_ok=True)
        return len(gone)

    def delete(self, link_id: str, owner: str | None = None) -> FileLink | None:
        """End a link now (its file is removed; its URL answers 410). ``owner``: only theirs.
        Returns the link as it was, or None when there is no such live link."""
        with self._lock:
            db = self._conn()
            sql = f"SELECT {_COLS} FROM links WHERE id = ? AND state = 'live'"
            args: tuple[str, ...] = (link_id,)
            if owner is not None:
                sql += " AND owner = ?"
                args += (owner,)
            row = db.execute(sql, args).fetchone()
            if row is None:
                return None
            db.execute("UPDATE links SET state = 'deleted', expires = MIN(expires, ?) WHERE id = ?",
                       (time.time(), link_id))
        self.data_path(link_id).unlink(missing_ok=True)
        return FileLink(*row)

    # --- reading ---------------------------------------------------------------------------

    def find(self, token: str) -> FileLink | None:
        """The link of ``token`` (live or dead), or None. A token of the wrong form is never looked up."""
        if not TOKEN_RE.match(token):
            return None
        digest = token_digest(token)
        with self._lock:
            row = self._conn().execute(f"SELECT {_COLS}, token_hash FROM links WHERE lookup = ?",
                                       (digest[:32],)).fetchone()
        if row is None or not hmac.compare_digest(row[-1], digest):
            return None
        return FileLink(*row[:-1])

    def get(self, link_id: str) -> FileLink | None:
        with self._lock:
            row = self._conn().execute(f"SELECT {_COLS} FROM links WHERE id = ?", (link_id,)).fetchone()
        return None if row is None else FileLink(*row)

    def list(self, owner: str | None = None, *, live_only: bool = True) -> list[FileLink]:
        """Links (of ``owner``, or everyone's), oldest first."""
        sql = f"SELECT {_COLS} FROM links WHERE 1"
        args: list[object] = []
        if owner is not None:
            sql += " AND owner = ?"
            args.append(owner)
        if live_only:
            sql += " AND state = 'live' AND expires > ?"
            args.append(time.time())
        with self._lock:
            rows = self._conn().execute(sql + " ORDER BY created", args).fetchall()
        return [FileLink(*r) for r in rows]

    def count_download(self, link_id: str) -> None:
        with self._lock:
            self._conn().execute("UPDATE links SET downloads = downloads + 1 WHERE id = ?", (link_id,))

    # --- the sweep -------------------------------------------------------------------------

    def sweep(self, now: float | None = None) -> tuple[int, int]:
        """Delete the files of expired links, forget old dead rows, remove pending links older than
        :data:`PENDING_AGE` and orphaned data and temp files. Returns (links expired or removed, bytes freed)."""
        now = time.time() if now is None else now
        with self._lock:
            db = self._conn()
            rows = db.execute("SELECT id, size FROM links WHERE state = 'live' AND expires <= ?", (now,)).fetchall()
            # pending links whose message never came (never seen by anyone): rows first, in one statement,
            # so that a settle racing with it either keeps its link or finds it gone, never a row without file
            stale = db.execute("DELETE FROM links WHERE state = 'pending' AND created < ? RETURNING id, size",
                               (now - PENDING_AGE,)).fetchall()
        freed = 0
        for link_id, size in rows + stale:
            self.data_path(link_id).unlink(missing_ok=True)
            freed += size
        with self._lock:
            db = self._conn()
            db.executemany("UPDATE links SET state = 'expired' WHERE id = ? AND state = 'live'",
                           [(r[0],) for r in rows])
            db.execute("DELETE FROM links WHERE state NOT IN ('live', 'pending') AND expires < ?",
                       (now - TOMBSTONE_DAYS * DAY,))
            live = {r[0] for r in db.execute("SELECT id FROM links WHERE state IN ('live', 'pending')")}
        self._orphans(live, now)
        return len(rows) + len(stale), freed

    def sweep_if_due(self, interval: float) -> tuple[int, int] | None:
        """:meth:`sweep`, unless another process sweeps now or one swept less than ``interval``
        seconds ago (then None). Every worker may call it on a timer: one of them sweeps."""
        with self._lock:
            self._conn()
        fd = os.open(self.root / "sweep.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None
            stamp = self.root / "swept"
            try:
                if time.time() - stamp.stat().st_mtime < interval:
                    return None
            except FileNotFoundError:
                pass
            out = self.sweep()
            stamp.touch()
            os.utime(stamp)
            return out
        finally:
            os.close(fd)  # releases the lock

    def _orphans(self, live: set[str], now: float) -> None:
        for d in (self.tmp, *(p for p in self.data.iterdir() if p.is_dir())):
            for f in d.iterdir():
                if f.name in live:
                    continue
                try:
                    if f.stat().st_mtime < now - ORPHAN_AGE:
                        f.unlink()
                except FileNotFoundError:
                    pass


def files_root(data_dir: Path) -> Path:
    return data_dir / "files"
