"""Retries of a partly failed Sieve delivery make only what is missing (docs/sieve.md "Retries").

A script may make several copies (``fileinto "A"; keep;``) and redirects of one message. When some
of them fail (a full disk, a folder that cannot be written), the recipient is retried (our queue
hands it back to our MTA later, or the sender retries after a 451), and the script runs again: without
a record the copies that did succeed would be made twice. As Pigeonhole's duplicate tracking, what was
done is written down, per account, in a small SQLite file (``sieve-delivered.db`` in the account's
maildir root, synchronous=FULL): one row per (message key, item), ``copy:<folder>`` or
``redirect:<address>``, written only when a recipient's delivery partly failed, and removed when a
retry has made the rest. The retry skips the items found. Rows older than LEDGER_TTL go.

The message key (:func:`message_key`) is a SHA-256 over the envelope sender, the originator fields
(Message-ID, Date, From, To, Cc, Subject: the author's, the same in every retry, unlike the trace and
spam-verdict fields each attempt adds) and the first BODY_MAX bytes of the body. Every function here
blocks (run it in the I/O pool).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

#: the ledger's file in the account's maildir root
LEDGER_DB = "sieve-delivered.db"
#: seconds a row is kept: longer than a sender keeps retrying (RFC 5321 §4.5.4.1: 4-5 days)
LEDGER_TTL = 6 * 86400.0
#: rows per account at most (the oldest go first)
LEDGER_ROWS = 10_000
#: fields of the key: set by the message's author, unchanged when the message is sent again
KEY_FIELDS = ("message-id", "date", "from", "to", "cc", "subject")


def message_key(sender: str, fields: Iterable[tuple[str, bytes]], head: bytes) -> str:
    """The ledger key of a message: its envelope ``sender``, header ``fields`` (name, raw value) and
    ``head`` (the message's first bytes; the body is what follows the first empty line)."""
    h = hashlib.sha256(sender.lower().encode("utf-8", "surrogateescape") + b"\0")
    for name, value in fields:
        if name in KEY_FIELDS:
            h.update(name.encode() + b":" + b" ".join(value.split()) + b"\0")
    end = head.find(b"\r\n\r\n")
    cut = end + 4 if end >= 0 else -1
    if cut < 0:
        end = head.find(b"\n\n")
        cut = end + 2 if end >= 0 else len(head)
    h.update(head[cut:])
    return h.hexdigest()


def bound_rows(db: sqlite3.Connection, table: str, order: str, limit: int) -> None:
    """Keep at most ``limit`` rows of ``table`` (constant names), the first by ``order`` going first."""
    (n,) = db.execute(f"SELECT count(*) FROM {table}").fetchone()
    if n > limit:
        db.execute(f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} ORDER BY {order} LIMIT ?)",
                   (n - limit,))


def _open(root: Path) -> sqlite3.Connection:
    db = sqlite3.connect(root / LEDGER_DB, timeout=10, isolation_level=None)
    db.execute("PRAGMA synchronous=FULL")  # a row is durable before the delivery is answered
    db.execute("CREATE TABLE IF NOT EXISTS done (key TEXT, msgid TEXT, item TEXT, at REAL, "
               "PRIMARY KEY (key, item))")
    db.execute("CREATE INDEX IF NOT EXISTS done_msgid ON done (msgid)")
    return db


def exists(root: Path) -> bool:
    """Whether the account has a ledger: one stat(2), cheap enough for the event loop (as the active
    script's stat in mailsrv.delivery.sieve)."""
    return exists_at(root / LEDGER_DB)


def exists_at(path: str | Path) -> bool:
    """Whether the ledger file ``path`` exists (a str path: ~2 us, no Path join on the hot path)."""
    return os.path.exists(path)


def has_rows(root: Path, msgid: str, now: float | None = None) -> bool:
    """True when the account's ledger holds rows of a message with this Message-ID (a cheap first look
    before the key is computed); False without a ledger."""
    path = root / LEDGER_DB
    if not path.exists():
        return False
    now = time.time() if now is None else now
    db = _open(root)
    try:
        return db.execute("SELECT 1 FROM done WHERE msgid = ? AND at >= ? LIMIT 1",
                          (msgid, now - LEDGER_TTL)).fetchone() is not None
    finally:
        db.close()


def done(root: Path, key: str, now: float | None = None) -> set[str]:
    """The items recorded for ``key`` (empty without a ledger)."""
    if not (root / LEDGER_DB).exists():
        return set()
    now = time.time() if now is None else now
    db = _open(root)
    try:
        return {i for (i,) in db.execute("SELECT item FROM done WHERE key = ? AND at >= ?", (key, now - LEDGER_TTL))}
    finally:
        db.close()


def record(root: Path, key: str, msgid: str, items: Iterable[str], now: float | None = None) -> None:
    """Add ``items`` (made, durable) of the message ``key``; drops expired and surplus rows."""
    now = time.time() if now is None else now
    db = _open(root)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT OR REPLACE INTO done VALUES (?, ?, ?, ?)", [(key, msgid, i, now) for i in items])
        db.execute("DELETE FROM done WHERE at < ?", (now - LEDGER_TTL,))
        bound_rows(db, "done", "at", LEDGER_ROWS)
        db.execute("COMMIT")
    finally:
        db.close()


def forget(root: Path, key: str) -> None:
    """The message ``key`` is delivered whole: its rows go (a later identical message is new mail)."""
    db = _open(root)
    try:
        db.execute("DELETE FROM done WHERE key = ?", (key,))
    finally:
        db.close()
