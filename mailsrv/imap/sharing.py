"""Shared mailboxes over IMAP: the "Other Users" namespace (RFC 2342) and RFC 4314 ACL commands.

A mixin of :class:`mailsrv.imap.session.Session`. A grant in the directory (``mailsrv share grant
OWNER GRANTEE --rights read|write``) shows the owner's folders to the grantee as
``Other Users/<owner address>/<folder>``; ``acl.py`` says which RFC 4314 rights a grant gives.

Invariants:
- Every mailbox name from the client goes through :meth:`SharingCommands._place`, which says in which
  store account the mailbox is and with which rights; own names cost no directory query.
- Nothing about grants is cached: each name in the namespace is looked up in the directory, and
  a selected shared mailbox's grant is read again before every command (``_recheck_share``), so a
  revoke or a downgrade takes effect at the grantee's next command (and at IDLE's next wake-up).
- A refused operation is ``NO [NOPERM]`` (RFC 5530); a name in the namespace the user holds no
  grant for is ``NO [NONEXISTENT]``, as if it did not exist (RFC 4314 §6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mailsrv import log
from mailsrv.directory import DirectoryError
from mailsrv.imap import acl
from mailsrv.imap import response as resp
from mailsrv.imap.errors import ImapError, store_error_name
from mailsrv.imap.grammar import Command
from mailsrv.store import account_root

logger = log.get("imap")

#: RFC 4314 §6 / RFC 5530: what a refused command answers
NOPERM = "NOPERM"


@dataclass(frozen=True, slots=True)
class Place:
    """Where a client's mailbox name is: the store account, the name there, and the user's rights."""

    acct: Any
    name: str
    rights: str
    #: the name as the client knows it (``Other Users/...`` for a shared one)
    client: str
    #: the owner's directory account of a shared mailbox; None: the user's own
    owner: Any = None


def require(have: str, need: str) -> None:
    """NO [NOPERM] unless every right of ``need`` is in ``have`` (RFC 4314 letters)."""
    missing = "".join(r for r in need if r not in have)
    if missing:
        # RFC 4314 §4: each operation's rights; RFC 5530 §3: NOPERM
        raise ImapError("NO", f"Permission denied (you lack the {missing} right on this mailbox)", NOPERM)


class Shares:
    """What the IMAP session asks the directory about shares; nothing is cached (a grant or a
    revoke is seen at the next call). ``directory``: ``mailsrv.directory.Directory``."""

    def __init__(self, directory: Any) -> None:
        self.directory = directory

    async def granted(self, user: Any) -> list[Any]:
        """The grants ``user`` holds (``mailsrv.directory.Grant``: owner, rights)."""
        return list(await self.directory.grants_for(int(user.id)))

    async def given(self, user: Any) -> list[Any]:
        """The grants ``user`` gave (their account shared with others)."""
        uid = int(user.id)
        grants = await self.directory.run(lambda d: d.list_grants(user.address))
        return [g for g in grants if g.owner.id == uid]

    async def set(self, owner: str, grantee: str, rights: str | None) -> bool:
        """Grant ``rights`` ("read" / "write") or revoke (None); True when something changed.
        Raises the directory's errors (an unknown grantee)."""
        def change(d: Any) -> bool:
            return bool(d.revoke(owner, grantee) if rights is None else d.grant(owner, grantee, rights))

        return bool(await self.directory.run(change))

    async def account(self, address: str) -> Any:
        return await self.directory.account_by_address(address)


class SharingCommands:
    """The namespace and ACL part of the session; see the module docstring."""

    store: Any
    user: Any
    acct: Any
    cfg: Any
    readonly: bool
    #: the user's own store account (``acct`` is the selected mailbox's account)
    home: Any
    #: where the selected mailbox is; None when none is selected
    place: Place | None
    shares: Shares | None
    _owners: dict[int, Any]

    if TYPE_CHECKING:

        def w(self, data: bytes) -> None: ...

        def _name_in(self, raw: bytes) -> str: ...

        def _name_out(self, name: str) -> bytes: ...

        def _store_error(self, exc: BaseException) -> ImapError: ...

    # -- where a name is -------------------------------------------------------------------------

    async def _account_store(self, account: Any) -> Any:
        """The store account of a directory account (opened with its domain quota root)."""
        store_path = getattr(account, "store", "")  # none: the store's own account_root(data_dir, id)
        maildir = account_root(self.cfg.data_dir, account.id, store_path) if store_path else None
        acct = await self.store.account(str(account.id), maildir)
        domain = getattr(account, "domain", None)
        if domain and getattr(acct, "domain", domain) != domain:
            await acct.set_domain(domain)  # the domain quota root (RFC 9208) counts this user
        return acct

    async def _grants(self) -> list[Any]:
        if self.shares is None or self.user is None:
            return []
        return await self.shares.granted(self.user)

    async def _grant_of(self, owner: str) -> Any:
        """The grant of ``owner``'s account the user holds now, or None."""
        owner = owner.lower()
        for g in await self._grants():
            if g.owner.address.lower() == owner:
                return g
        return None

    async def _owner_store(self, owner: Any) -> Any:
        acct = self._owners.get(owner.id)
        if acct is None:
            try:
                acct = await self._account_store(owner)
            except Exception as exc:
                logger.warning("imap.shared.unavailable", owner=owner.address, error=store_error_name(exc))
                raise ImapError("NO", "The shared mailbox is unavailable, try later", "UNAVAILABLE") from None
            self._owners[owner.id] = acct
        return acct

    async def _place(self, name: str, need: str = "") -> Place:
        """Where the client's mailbox ``name`` is. ``need``: rights the caller needs (NO [NOPERM]
        when one is missing). A name in the namespace without a grant is NO [NONEXISTENT]."""
        shared = acl.split_shared(name)
        if shared is None:
            return Place(self.home, name, acl.OWNER_RIGHTS, name)
        grant = await self._grant_of(shared.owner) if shared.owner else None
        if grant is None or not shared.mailbox:
            raise ImapError("NO", "No such mailbox", "NONEXISTENT")
        place = Place(await self._owner_store(grant.owner), shared.mailbox, acl.grant_letters(grant.rights),
                      name, grant.owner)
        self._need(place, need)
        return place

    @staticmethod
    def _need(place: Place, rights: str) -> None:
        require(place.rights, rights)

    async def _recheck_share(self) -> None:
        """Before a command in a selected shared mailbox: the grant as the directory has it now (a
        revoke leaves no rights, a downgrade fewer)."""
        place = self.place
        if place is None or place.owner is None:
            return
        try:
            grant = await self._grant_of(place.owner.address)
        except Exception as exc:  # the directory is unavailable: no access rather than stale access
            logger.warning("imap.shared.recheck_failed", error=type(exc).__name__)
            grant = None
        rights = acl.grant_letters(grant.rights) if grant is not None else ""
        if rights != place.rights:
            self.place = Place(place.acct, place.name, rights, place.client, place.owner)
            if not self.readonly and not acl.read_write(rights):
                # RFC 4314 §5.1.1: a server that checks rights at each command tells of a changed
                # PERMANENTFLAGS (a downgrade to read, a revoke); what it refused is said by NOPERM
                self.readonly = True
                self.w(b"* OK [PERMANENTFLAGS ()] The share no longer allows changes\r\n")

    def _selected_rights(self) -> str:
        return self.place.rights if self.place is not None else acl.OWNER_RIGHTS

    async def shared_boxes(self) -> list[tuple[Any, Place | None]]:
        """LIST's view of the namespace: (client name, place) of each shared folder, and (name, None)
        of the namespace and owner nodes (\\Noselect). An owner whose store fails is left out (logged)."""
        out: list[tuple[Any, Place | None]] = []
        grants = await self._grants()
        for g in sorted(grants, key=lambda g: g.owner.address.lower()):
            try:
                acct = await self._owner_store(g.owner)
                boxes = await acct.list_mailboxes()
            except Exception as exc:
                logger.warning("imap.shared.list_failed", owner=g.owner.address, error=type(exc).__name__)
                continue
            owner = g.owner.address.lower()
            out.append((acl.shared_name(owner), None))
            rights = acl.grant_letters(g.rights)
            for b in boxes:
                client = acl.shared_name(owner, b.name)
                out.append((client, Place(acct, b.name, rights, client, g.owner)))
        if out:
            out.insert(0, (acl.OTHER_USERS, None))
        return out

    # -- RFC 4314 commands ---------------------------------------------------------------------

    def _me(self) -> str:
        """The user's identifier in ACLs: their address."""
        return str(getattr(self.user, "address", None) or getattr(self.user, "id", ""))

    async def _acl_place(self, cmd: Command) -> Place:
        """The mailbox of an ACL command; it must exist (NONEXISTENT otherwise)."""
        place = await self._place(self._name_in(cmd.args["mailbox"]))
        try:
            await place.acct.mailbox_status(place.name)
        except Exception as exc:
            raise self._store_error(exc) from None
        return place

    async def cmd_myrights(self, cmd: Command) -> None:
        # RFC 4314 §3.5: any of l r i k x a (every place has l)
        place = await self._acl_place(cmd)
        self.w(b"* MYRIGHTS " + self._name_out(place.client) + b" " + acl.with_virtual(place.rights).encode()
               + b"\r\n")

    async def cmd_getacl(self, cmd: Command) -> None:
        place = await self._acl_place(cmd)
        self._need(place, "a")  # RFC 4314 §4: GETACL needs "a"
        parts = [self._name_out(place.client), _identifier(self._me()), acl.with_virtual(acl.OWNER_RIGHTS).encode()]
        if self.shares is not None:
            for g in sorted(await self.shares.given(self.user), key=lambda g: g.grantee.address):
                parts += [_identifier(g.grantee.address), acl.with_virtual(acl.grant_letters(g.rights)).encode()]
        self.w(b"* ACL " + b" ".join(parts) + b"\r\n")

    async def cmd_listrights(self, cmd: Command) -> None:
        place = await self._acl_place(cmd)
        self._need(place, "a")
        ident = cmd.args["identifier"]
        if ident.decode("utf-8", "replace").lower() == self._me().lower():
            rest = [acl.with_virtual(acl.OWNER_RIGHTS).encode()]  # the owner always has every right
        else:
            # RFC 4314 §3.7: nothing is always granted; "lr" (read), then the write rights tied together
            rest = [b'""', acl.READ_RIGHTS.encode(), acl.with_virtual(acl.WRITE_RIGHTS[2:]).encode()]
        self.w(b"* LISTRIGHTS " + self._name_out(place.client) + b" " + _identifier_raw(ident) + b" "
               + b" ".join(rest) + b"\r\n")

    async def cmd_setacl(self, cmd: Command) -> None:
        try:
            mode, rights = acl.parse_modification(cmd.args["rights"].decode("utf-8", "replace"))
        except acl.BadRights as exc:
            raise ImapError("BAD", str(exc), "CLIENTBUG") from None
        await self._change_acl(cmd, mode, rights)

    async def cmd_deleteacl(self, cmd: Command) -> None:
        await self._change_acl(cmd, "=", frozenset())

    async def _change_acl(self, cmd: Command, mode: str, rights: frozenset[str]) -> None:
        """SETACL / DELETEACL: the owner's shares of their whole account (``mailsrv share``).

        The grant model is per account: INBOX's ACL stands for the account's; on another folder a
        change that would differ from it is refused (NO [CANNOT]), one that matches it is a no-op.
        """
        place = await self._acl_place(cmd)
        self._need(place, "a")
        grantee = cmd.args["identifier"].decode("utf-8", "replace").strip().lower()
        own = self._me().lower()
        if grantee in ("anyone", "authenticated") or grantee.startswith("-") or "@" not in grantee:
            raise ImapError("NO", "Rights are given to users by address (no groups, no negative rights)", "CANNOT")
        if grantee == own:
            raise ImapError("NO", "The owner always has every right", "CANNOT")
        if grantee.rpartition("@")[2] != own.rpartition("@")[2]:
            # a tenant's users share among themselves; across domains an administrator decides
            raise ImapError("NO", "Shares with other domains are made by an administrator (mailsrv share grant)",
                            "CANNOT")
        if self.shares is None:
            raise ImapError("NO", "Sharing is not available here", "CANNOT")
        given = {g.grantee.address.lower(): g.rights for g in await self.shares.given(self.user)}
        current = acl.grant_letters(given[grantee]) if grantee in given else ""
        try:
            wanted = acl.account_grant(acl.modified(current, mode, rights))
        except acl.Inexpressible as exc:
            raise ImapError("NO", str(exc), "CANNOT") from None
        if wanted == given.get(grantee):
            return
        if place.name != "INBOX":
            raise ImapError("NO", "Shares cover the whole account: change them on INBOX", "CANNOT")
        try:
            await self.shares.set(own, grantee, wanted)
        except DirectoryError as exc:  # an unknown grantee, the owner under an alias
            raise ImapError("NO", f"Cannot change the share: {str(exc)[:100]}", "CANNOT") from None
        logger.info("imap.acl_changed", grantee=grantee, rights=wanted or "none")



def _identifier(address: str) -> bytes:
    return resp.astring(address.encode("utf-8"))


def _identifier_raw(raw: bytes) -> bytes:
    return resp.astring(raw)
