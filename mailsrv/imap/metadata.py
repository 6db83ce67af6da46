"""GETMETADATA / SETMETADATA (RFC 5464): server and mailbox annotations, durable per account.

A mixin of :class:`mailsrv.imap.session.Session`; it runs the store's blocking SQLite functions
(:mod:`mailsrv.store.metadata`) in the default executor (as ``mailsrv.delivery.sieve_ledger`` does). Where entries live: ``metadata.db`` in
the maildir root of the account that owns the mailbox (the user's own for server entries), one row
per (mailbox id, entry, scope): the scope is "" for ``/shared`` entries and the user's account id
for ``/private`` ones, so a grantee's private entries on a shared folder are theirs alone. Keyed by
the store's mailbox id (MAILBOXID), a RENAME keeps a folder's entries and a new folder of an old
name starts with none; the store's delete of the folder removes them, whoever asks for it (IMAP
DELETE, JMAP Mailbox/set destroy): :mod:`mailsrv.store.metadata` keeps the file.

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
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailsrv import log
from mailsrv.imap import response as resp
from mailsrv.imap.errors import ImapError
from mailsrv.imap.grammar import Command
from mailsrv.imap.sharing import require
from mailsrv.store import account_root
from mailsrv.store.metadata import TooMany, read, write

if TYPE_CHECKING:
    from mailsrv.imap.sharing import Place

logger = log.get("imap")

#: RFC 5464 §4.3: the largest value stored by default (``[imap] metadata_max_value``; 64 KB, under
#: ``[imap] max_literal``'s 64 KiB default so that a client sees MAXSIZE rather than the literal refused)
MAX_VALUE = 64_000
#: octets of an entry name
MAX_ENTRY_NAME = 1024
#: RFC 6154 §4: the entry that mirrors a mailbox's special-use attribute
SPECIALUSE = "/private/specialuse"


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
