"""GETMETADATA / SETMETADATA (RFC 5464): server and mailbox annotations, durable per account.

A mixin of :class:`mailsrv.imap.session.Session` and the blocking SQLite functions it runs in the
default executor (as ``mailsrv.delivery.sieve_ledger`` does). Where entries live: ``metadata.db`` in
the maildir root of the account that owns the mailbox (the user's own for server entries), one row
per (mailbox id, entry, scope): the scope is "" for ``/shared`` entries and the user's account id
for ``/private`` ones, so a grantee's private entries on a shared folder are theirs alone. Keyed by
the store's mailbox id (MAILBOXID), a RENAME keeps a folder's entries and a new folder of an old
name starts with none; IMAP DELETE removes them.

Invariants:
- Rights (RFC 5464 §3.3, RFC 4314): ``/private`` entries need ``l`` on the mailbox, reading
  ``/shared`` ones ``r``, writing them ``w``; server ``/shared`` entries are read-only (the
  administrator's; none are set yet). A SETMETADATA is all or nothing (one transaction).
- Limits (RFC 5464 §4.3): a value longer than ``[imap] metadata_max_value`` is NO [METADATA MAXSIZE n];
  more than ``[imap] metadata_max_entries`` entries of one scope on one mailbox, or :data:`MAX_ROWS`
  in an account, NO [METADATA TOOMANY]. Entry names are bounded by :data:`MAX_ENTRY_NAME`.
- ``/private/specialuse`` (RFC 6154 §4) is the folder's SPECIAL-USE attribute, read from the store;
  it is set by CREATE (USE (...)), not here: a SETMETADATA of it is NO [USEATTR].
- The row is written with ``synchronous=FULL`` before the tagged OK.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailsrv import log
from mailsrv.imap import response as resp
from mailsrv.imap.errors import ImapError
from mailsrv.imap.grammar import Command
from mailsrv.imap.sharing import require
from mailsrv.store import account_root

if TYPE_CHECKING:
    from mailsrv.imap.sharing import Place

logger = log.get("imap")

#: the file of an account's entries, in its maildir root
METADATA_DB = "metadata.db"
#: RFC 5464 §4.3: the largest value stored by default (``[imap] metadata_max_value``; 64 KB, under
#: ``[imap] max_literal``'s 64 KiB default so that a client sees MAXSIZE rather than the literal refused)
MAX_VALUE = 64_000
#: entries of one scope (shared, or one user's private ones) on one mailbox (``[imap] metadata_max_entries``)
MAX_ENTRIES = 100
#: rows in one account's file, whoever wrote them (folders deleted by JMAP or the CLI leave theirs)
MAX_ROWS = 10_000
#: octets of an entry name
MAX_ENTRY_NAME = 1024
#: RFC 6154 §4: the entry that mirrors a mailbox's special-use attribute
SPECIALUSE = "/private/specialuse"


class TooMany(Exception):
    """More entries than :data:`MAX_ENTRIES` / :data:`MAX_ROWS` would be stored."""


def check_entry(raw: bytes, *, for_get: bool = False) -> str:
    """An entry name from the client, lower-cased (RFC 5464 §3.2: case-insensitive).

    RFC 5464 §3.2.1: "/" separated, starting with ``/private`` or ``/shared``, no ``*`` ``%``,
    no empty component, no trailing "/", printable ASCII. GETMETADATA may name ``/private`` or
    ``/shared`` itself (with DEPTH). Raises ImapError BAD.
    """
    if len(raw) > MAX_ENTRY_NAME or any(c < 0x20 or c > 0x7E or c in b"*%" for c in raw):
        raise ImapError("BAD", "Invalid metadata entry name", "CLIENTBUG")
    name = raw.decode("ascii").lower()
    parts = name.split("/")
    if parts[0] != "" or len(parts) < 2 or parts[1] not in ("private", "shared") or "" in parts[1:]:
        raise ImapError("BAD", "Metadata entries begin with /private/ or /shared/", "CLIENTBUG")
    if len(parts) == 2 and not for_get:
        raise ImapError("BAD", "Metadata entries are below /private or /shared", "CLIENTBUG")
    return name


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
    """Remove every entry of a deleted ``mailbox`` (all scopes). Blocks."""
    if (root / METADATA_DB).exists():
        db = _open(root)
        try:
            db.execute("DELETE FROM entries WHERE mailbox = ?", (mailbox,))
        finally:
            db.close()


class MetadataCommands:
    """GETMETADATA / SETMETADATA; see the module docstring."""

    user: Any
    home: Any
    cfg: Any

    if TYPE_CHECKING:

        def w(self, data: bytes) -> None: ...

        def _name_in(self, raw: bytes) -> str: ...

        def _name_out(self, name: str) -> bytes: ...

        def _store_error(self, exc: BaseException) -> ImapError: ...

        async def _place(self, name: str, need: str = "") -> Place: ...

    def _metadata_root(self, place: Place | None) -> Path:
        """The maildir root of the account whose file holds ``place``'s entries (the user's: None)."""
        owner = self.user if place is None or place.owner is None else place.owner
        return account_root(self.cfg.data_dir, owner.id, getattr(owner, "store", "") or None)

    async def _metadata_target(self, raw: bytes) -> tuple[Place | None, str, str | None]:
        """(place or None for the server, the key of its entries, its special use) of a mailbox argument."""
        if raw == b"":
            return None, "", None
        place = await self._place(self._name_in(raw))
        try:
            info = await place.acct.mailbox_status(place.name)
        except Exception as exc:
            raise self._store_error(exc) from None
        return place, str(info.id), info.special_use

    @staticmethod
    def _metadata_rights(place: Place | None, names: Sequence[str], *, write: bool) -> None:
        """RFC 5464 §3.3: ``l`` for private entries, ``r`` (reading) or ``w`` (writing) for shared ones."""
        for name in names:
            if place is None:
                if write and name.startswith("/shared"):
                    raise ImapError("NO", "Server entries under /shared are the administrator's", "NOPERM")
                continue
            require(place.rights, "l" if name.startswith("/private") else ("w" if write else "r"))

    async def cmd_getmetadata(self, cmd: Command) -> str:
        place, key, special = await self._metadata_target(cmd.args["mailbox"])
        names = [check_entry(e, for_get=True) for e in cmd.args["entries"]]
        self._metadata_rights(place, names, write=False)
        depth = cmd.args["depth"]
        found = dict(await asyncio.get_running_loop().run_in_executor(
            None, read, self._metadata_root(place), key, str(self.user.id), names, depth))
        if special and any(n == SPECIALUSE or (SPECIALUSE.startswith(n + "/") and depth != 0) for n in names):
            found[SPECIALUSE] = special.encode()  # RFC 6154 §4: the attribute, from the store
        maxsize = cmd.args["maxsize"]
        longest = 0
        parts: list[bytes] = []
        for entry in sorted(found):
            value = found[entry]
            if maxsize is not None and len(value) > maxsize:
                longest = max(longest, len(value))  # RFC 5464 §4.2.1: left out, reported
                continue
            out = resp.nstring(value) if b"\x00" not in value else b"~" + resp.literal(value)
            parts += [resp.astring(entry.encode()), out]
        if parts:
            self.w(b"* METADATA " + (self._name_out(place.client) if place else b'""') + b" ("
                   + b" ".join(parts) + b")\r\n")
        if longest:
            return f"[METADATA LONGENTRIES {longest}] GETMETADATA completed"
        return "GETMETADATA completed"

    async def cmd_setmetadata(self, cmd: Command) -> None:
        place, key, _special = await self._metadata_target(cmd.args["mailbox"])
        items = [(check_entry(e), v) for e, v in cmd.args["items"]]
        self._metadata_rights(place, [n for n, _v in items], write=True)
        for name, value in items:
            if name == SPECIALUSE:
                raise ImapError("NO", "The special use is set when the folder is created", "USEATTR")
            limit = self.cfg.metadata_max_value
            if value is not None and len(value) > limit:
                raise ImapError("NO", "Value too long", f"METADATA MAXSIZE {limit}")
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, write, self._metadata_root(place), key, str(self.user.id), items, self.cfg.metadata_max_entries)
        except TooMany:
            raise ImapError("NO", "Too many metadata entries", "METADATA TOOMANY") from None

    async def _metadata_forget(self, place: Place, mailbox_id: str | None) -> None:
        """After an IMAP DELETE: the folder's entries go (a failure is logged, the delete is done)."""
        if mailbox_id is None or self.user is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(None, forget, self._metadata_root(place), mailbox_id)
        except Exception as exc:
            logger.warning("imap.metadata_forget_failed", error=type(exc).__name__)
