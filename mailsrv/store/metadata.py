"""Mailbox annotations (RFC 5464 METADATA) kept per account: ``metadata.db`` in the maildir root.

The IMAP session (:mod:`mailsrv.imap.metadata`) reads and writes the entries; the store owns the
file so that deleting a folder removes its entries on every path (:func:`forget`, called by the
folder delete). One row per (mailbox id, entry, scope): the scope is "" for ``/shared`` entries and
the user's account id for ``/private`` ones; the mailbox id is the store's (MAILBOXID), "" for server
entries. Every function blocks (SQLite): run it in an executor. Written with ``synchronous=FULL``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from mailsrv import log

logger = log.get("store")

#: the file of an account's entries, in its maildir root
METADATA_DB = "metadata.db"
#: entries of one scope (shared, or one user's private ones) on one mailbox (``[imap] metadata_max_entries``)
MAX_ENTRIES = 100
#: rows in one account's file, whoever wrote them
MAX_ROWS = 10_000


class TooMany(Exception):
    """More entries than :data:`MAX_ENTRIES` / :data:`MAX_ROWS` would be stored."""


def _open(root: Path) -> sqlite3.Connection:
    db = sqlite3.connect(root / METADATA_DB, timeout=10, isolation_level=None)
    db.execute("PRAGMA synchronous=FULL")  # a value is durable before SETMETADATA's OK
    db.execute("CREATE TABLE IF NOT EXISTS entries (mailbox TEXT, entry TEXT, scope TEXT, value BLOB, "
               "PRIMARY KEY (mailbox, entry, scope))")
    return db


def read(root: Path, mailbox: str, user: str, names: Sequence[str], depth: int | None) -> list[tuple[str, bytes]]:
    """(entry, value) of ``names`` on ``mailbox`` ("" for the server) as ``user`` sees them (the shared
    ones and their own private ones); ``depth``: 0 the entries, 1 and their children, None every
    descendant (RFC 5464 §4.2.2). Blocks."""
    if not (root / METADATA_DB).exists():
        return []
    db = _open(root)
    try:
        out: dict[str, bytes] = {}
        for name in names:
            scope = "" if name.startswith("/shared") else user
            rows = db.execute("SELECT entry, value FROM entries WHERE mailbox = ? AND scope = ? AND "
                              "(entry = ? OR substr(entry, 1, ?) = ?)",
                              (mailbox, scope, name, len(name) + 1, name + "/")).fetchall()
            for entry, value in rows:
                below = entry.count("/") - name.count("/")
                if entry == name or (depth is None and below > 0) or (depth == 1 and below == 1):
                    out[entry] = bytes(value)
        return sorted(out.items())
    finally:
        db.close()


def write(root: Path, mailbox: str, user: str, items: Sequence[tuple[str, bytes | None]],
          max_entries: int = MAX_ENTRIES) -> None:
    """Set (None: remove) ``items`` on ``mailbox`` in one transaction; raises :class:`TooMany` (and
    stores nothing) past ``max_entries`` of a scope or :data:`MAX_ROWS`. Blocks."""
    db = _open(root)
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            for name, value in items:
                scope = "" if name.startswith("/shared") else user
                if value is None:
                    db.execute("DELETE FROM entries WHERE mailbox = ? AND entry = ? AND scope = ?",
                               (mailbox, name, scope))
                else:
                    db.execute("INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?)", (mailbox, name, scope, value))
            for scope in {"" if n.startswith("/shared") else user for n, v in items if v is not None}:
                (n,) = db.execute("SELECT count(*) FROM entries WHERE mailbox = ? AND scope = ?",
                                  (mailbox, scope)).fetchone()
                if n > max_entries:
                    raise TooMany
            if db.execute("SELECT count(*) FROM entries").fetchone()[0] > MAX_ROWS:
                raise TooMany
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    finally:
        db.close()


def forget(root: Path, mailbox: str) -> None:
    """Remove every entry of a deleted ``mailbox`` (all scopes); called by the store's folder delete.
    A failure is logged, not raised: the folder is gone already (its rows are then left)."""
    if not (root / METADATA_DB).exists():
        return
    try:
        db = _open(root)
        try:
            db.execute("DELETE FROM entries WHERE mailbox = ?", (mailbox,))
        finally:
            db.close()
    except (sqlite3.Error, OSError) as exc:
        logger.warning("store.metadata_forget_failed", root=str(root), error=f"{type(exc).__name__}: {exc}"[:200])
