"""Shared mailboxes over IMAP: the "Other Users" namespace (RFC 2342) and RFC 4314 ACL commands.

A mixin of :class:`mailsrv.imap.session.Session`. The directory holds what owners share: account
grants (``mailsrv share grant OWNER GRANTEE --rights read|write``) and per-folder entries (SETACL,
``mailsrv share grant --folder``); ``acl.py`` says which rights they give. A grantee sees the owner's
folders on which they hold ``l`` as ``Other Users/<owner address>/<folder>``.

Invariants:
- Every mailbox name from the client goes through :meth:`SharingCommands._place`, which says in which
  store account the mailbox is and with which rights; own names cost no directory query.
- Nothing about shares is cached between commands: each name in the namespace is looked up in the
  directory (one query), and a selected shared mailbox's rights are read again before every command
  (``_recheck_share``), so a revoke or a downgrade takes effect at the grantee's next command (and at
  IDLE's next wake-up). LIST reads the user's shares once.
- A refused operation is ``NO [NOPERM]`` (RFC 5530); a name in the namespace on which the user holds
  no right, or none of ``l`` ``r`` when a right is missing, is ``NO [NONEXISTENT]``, as if it did not
  exist (RFC 4314 §6).
- The owner's CREATE, DELETE and RENAME (and a grantee's, with ``k`` / ``x``) carry the folder's ACL
  entries along: a new folder copies its parent's, a deleted one's go, a renamed one's follow.
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
from mailsrv.store import account_root, privateseen

logger = log.get("imap")

#: RFC 4314 §6 / RFC 5530: what a refused command answers
NOPERM = "NOPERM"
#: RFC 4314 §2: the identifiers of every user (here: every user of the owner's domain)
ANYONE = ("anyone", "authenticated")


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

    def __init__(self, directory: Any, *, anyone: bool = False) -> None:
        self.directory = directory
        #: ``[imap] acl_anyone``: "anyone" / "authenticated" entries may be set and count
        self.anyone = anyone

    async def of(self, user: Any) -> dict[str, acl.OwnerShare]:
        """What is shared with ``user``, by owner address (lower case): one directory query."""
        found = await self.directory.run(lambda d: d.shares_for(int(user.id), self.anyone))
        return acl.shares_by_owner(*found)

    async def acl(self, owner: Any, mailbox: str) -> dict[str, tuple[Any, str, str]]:
        """``owner``'s ``mailbox``'s ACL: grantee address (lower case) -> (grantee account, the
        account grant's rights or "", the rights there: "" when an entry takes the account grant's away)."""
        oid = int(owner.id)

        def read(d: Any) -> tuple[list[Any], list[Any], list[Any]]:
            return ([g for g in d.list_grants(owner.address) if g.owner.id == oid],
                    d.folder_rights_of(oid, mailbox),
                    d.anyone_rights(owner=oid, mailbox=mailbox) if self.anyone else [])

        grants, entries, anyone = await self.directory.run(read)
        out: dict[str, tuple[Any, str, str]] = {a.identifier: (None, "", a.rights) for a in anyone}
        for g in grants:
            letters = acl.grant_letters(g.rights)
            out[g.grantee.address.lower()] = (g.grantee, letters, letters)
        for e in entries:
            base = out.get(e.grantee.address.lower(), (e.grantee, "", ""))[1]
            out[e.grantee.address.lower()] = (e.grantee, base, e.rights)
        return out

    async def set_folder(self, owner: str, grantee: str, mailbox: str, rights: str | None) -> bool:
        """Set (or remove, None) ``grantee``'s entry on ``owner``'s ``mailbox`` (``anyone`` /
        ``authenticated``: that entry); True when something changed. Raises the directory's errors
        (an unknown grantee)."""
        if grantee in ANYONE:
            return bool(await self.directory.run(lambda d: d.set_anyone_rights(owner, grantee, mailbox, rights)))
        return bool(await self.directory.run(lambda d: d.set_folder_rights(owner, grantee, mailbox, rights)))

    async def folder_changed(self, owner_id: int, op: str, name: str, new: str = "") -> None:
        """The owner's folder ``name`` was created ("create", ``new``: its parent), deleted
        ("delete") or renamed to ``new`` ("rename"): its ACL entries follow (see the module)."""
        await self.directory.run(lambda d: d.folder_changed(owner_id, op, name, new))

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

    async def _shares_now(self) -> dict[str, acl.OwnerShare]:
        if self.shares is None or self.user is None:
            return {}
        return await self.shares.of(self.user)

    async def _grant_of(self, owner: str) -> acl.OwnerShare | None:
        """What ``owner`` shares with the user now (``.owner``: the owner's account), or None."""
        return (await self._shares_now()).get(owner.lower())

    async def _owner_store(self, owner: Any, share: acl.OwnerShare | None = None) -> Any:
        """The owner's store account as the user sees it; ``share``: what the owner shares with the user now
        (a private-\\Seen view keeps it: \\Seen is the user's own where they hold ``s``)."""
        acct = self._owners.get(owner.id)
        if acct is None:
            try:
                acct = await self._account_store(owner)
            except Exception as exc:
                logger.warning("imap.shared.unavailable", owner=owner.address, error=store_error_name(exc))
                raise ImapError("NO", "The shared mailbox is unavailable, try later", "UNAVAILABLE") from None
            if self.cfg.shared_private_seen:  # the grantee's own \Seen (store/privateseen.py)
                acct = privateseen.wrap(acct, self.home)
            self._owners[owner.id] = acct
        privateseen.follow_rights(acct, share)
        return acct

    async def _place(self, name: str, need: str = "") -> Place:
        """Where the client's mailbox ``name`` is. ``need``: rights the caller needs (NO [NOPERM]
        when one is missing). A name in the namespace without any right is NO [NONEXISTENT]."""
        shared = acl.split_shared(name)
        if shared is None:
            return Place(self.home, name, acl.OWNER_RIGHTS, name)
        share = await self._grant_of(shared.owner) if shared.owner else None
        rights = share.rights(shared.mailbox) if share is not None and shared.mailbox else ""
        if share is None or not rights:
            raise ImapError("NO", "No such mailbox", "NONEXISTENT")
        if any(r not in rights for r in need) and "l" not in rights and "r" not in rights:
            raise ImapError("NO", "No such mailbox", "NONEXISTENT")  # RFC 4314 §6: existence not revealed
        place = Place(await self._owner_store(share.owner, share), shared.mailbox, rights, name, share.owner)
        self._need(place, need)
        return place

    async def _new_place(self, name: str) -> Place:
        """Where CREATE / RENAME put a new folder ``name``: one's own account, or an owner's when the
        user holds ``k`` on the new folder's parent there (RFC 4314 §4; nobody but the owner creates
        top-level folders in an account)."""
        shared = acl.split_shared(name)
        if shared is None:
            return Place(self.home, name, acl.OWNER_RIGHTS, name)
        parent, sep, _leaf = shared.mailbox.rpartition(acl.DELIM)
        if not shared.owner or not sep or not parent:
            if not shared.owner or await self._grant_of(shared.owner) is None:
                raise ImapError("NO", "No such mailbox", "NONEXISTENT")  # the namespace's node, a stranger's
            raise ImapError("NO", "Only the owner creates top-level folders", NOPERM)
        up = await self._place(acl.shared_name(shared.owner, parent), "k")
        return Place(up.acct, shared.mailbox, up.rights, name, up.owner)

    def _owner_id(self, place: Place) -> int:
        return int((place.owner if place.owner is not None else self.user).id)

    async def _acl_follows(self, place: Place, op: str, new: str = "") -> None:
        """After a CREATE / DELETE / RENAME of ``place``: its ACL entries follow (``Shares.folder_changed``).
        A failure is logged, not the client's: the folder change is done already."""
        if self.shares is None or self.user is None:
            return
        try:
            await self.shares.folder_changed(self._owner_id(place), op, place.name, new)
        except Exception as exc:
            logger.warning("imap.acl_follow_failed", op=op, mailbox=place.name, error=type(exc).__name__)

    @staticmethod
    def _need(place: Place, rights: str) -> None:
        require(place.rights, rights)

    async def _recheck_share(self) -> None:
        """Before a command in a selected shared mailbox: the rights as the directory has them now
        (a revoke leaves none, a downgrade fewer)."""
        place = self.place
        if place is None or place.owner is None:
            return
        try:
            share = await self._grant_of(place.owner.address)
        except Exception as exc:  # the directory is unavailable: no access rather than stale access
            logger.warning("imap.shared.recheck_failed", error=type(exc).__name__)
            share = None
        rights = share.rights(place.name) if share is not None else ""
        privateseen.follow_rights(place.acct, share)
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
        """LIST's view of the namespace: (client name, place) of each shared folder the user may
        list (``l``, RFC 4314 §4), and (name, None) of the namespace and owner nodes (\\Noselect).
        One directory query; an owner whose store fails is left out (logged)."""
        out: list[tuple[Any, Place | None]] = []
        shares = await self._shares_now()
        for owner in sorted(shares):
            share = shares[owner]
            if not share.lists_any():
                continue
            try:
                acct = await self._owner_store(share.owner, share)
                boxes = await acct.list_mailboxes()
            except Exception as exc:
                logger.warning("imap.shared.list_failed", owner=share.owner.address, error=type(exc).__name__)
                continue
            folders: list[tuple[Any, Place | None]] = []
            for b in boxes:
                rights = share.rights(b.name)
                if "l" in rights:
                    client = acl.shared_name(owner, b.name)
                    folders.append((client, Place(acct, b.name, rights, client, share.owner)))
            if folders:
                out.append((acl.shared_name(owner), None))
                out += folders
        if out:
            out.insert(0, (acl.OTHER_USERS, None))
        return out

    # -- RFC 4314 commands ---------------------------------------------------------------------

    def _me(self) -> str:
        """The user's identifier in ACLs: their address."""
        return str(getattr(self.user, "address", None) or getattr(self.user, "id", ""))

    def _owner_address(self, place: Place) -> str:
        return str(place.owner.address) if place.owner is not None else self._me()

    async def _acl_place(self, cmd: Command, need: str = "") -> Place:
        """The mailbox of an ACL command, which needs ``need``; it must exist (NONEXISTENT otherwise)."""
        place = await self._place(self._name_in(cmd.args["mailbox"]), need)
        try:
            await place.acct.mailbox_status(place.name)
        except Exception as exc:
            raise self._store_error(exc) from None
        return place

    async def _entries(self, place: Place) -> dict[str, tuple[Any, str, str]]:
        """``place``'s ACL as :meth:`Shares.acl` reads it (empty without a directory)."""
        if self.shares is None or self.user is None or not hasattr(self.user, "address"):
            return {}
        return await self.shares.acl(place.owner if place.owner is not None else self.user, place.name)

    async def cmd_myrights(self, cmd: Command) -> None:
        place = await self._acl_place(cmd)
        if not any(r in place.rights for r in "lrikxa"):  # RFC 4314 §4: MYRIGHTS needs any of these
            raise ImapError("NO", "No such mailbox", "NONEXISTENT")
        self.w(b"* MYRIGHTS " + self._name_out(place.client) + b" " + acl.with_virtual(place.rights).encode()
               + b"\r\n")

    async def cmd_getacl(self, cmd: Command) -> None:
        place = await self._acl_place(cmd, "a")  # RFC 4314 §4: GETACL needs "a"
        parts = [self._name_out(place.client), _identifier(self._owner_address(place).lower()),
                 acl.with_virtual(acl.OWNER_RIGHTS).encode()]
        entries = await self._entries(place)
        for who in sorted(entries):
            if entries[who][2]:  # an entry that takes the account grant's rights away: no rights, not shown
                parts += [_identifier(who), acl.with_virtual(entries[who][2]).encode()]
        self.w(b"* ACL " + b" ".join(parts) + b"\r\n")

    async def cmd_listrights(self, cmd: Command) -> None:
        place = await self._acl_place(cmd, "a")
        ident = cmd.args["identifier"]
        if ident.decode("utf-8", "replace").lower() == self._owner_address(place).lower():
            rest = [acl.with_virtual(acl.OWNER_RIGHTS).encode()]  # the owner always has every right
        else:
            # RFC 4314 §3.7: nothing is always granted; each right may be given on its own
            rest = [b'""' if not r else r.encode() for r in acl.LISTRIGHTS_OTHERS]
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
        """SETACL / DELETEACL (RFC 4314 §3.1, §3.2) on one folder, by its owner or a holder of ``a``.

        The result is stored as the folder's entry for the grantee (no entry when it equals the
        account grant, an empty one when the account grant gives more). DELETEACL leaves no right.
        """
        place = await self._acl_place(cmd, "a")  # RFC 4314 §4: SETACL / DELETEACL need "a"
        grantee = cmd.args["identifier"].decode("utf-8", "replace").strip().lower()
        owner = self._owner_address(place).lower()
        anyone = grantee in ANYONE and self.shares is not None and self.shares.anyone
        if not anyone and (grantee in ANYONE or grantee.startswith("-") or "@" not in grantee):
            raise ImapError("NO", "Rights are given to users by address (no groups, no negative rights)", "CANNOT")
        if grantee == owner:
            raise ImapError("NO", "The owner always has every right", "CANNOT")
        if not anyone and grantee.rpartition("@")[2] != owner.rpartition("@")[2]:
            # a tenant's users share among themselves; across domains an administrator decides
            raise ImapError("NO", "Shares with other domains are made by an administrator (mailsrv share grant)",
                            "CANNOT")
        if self.shares is None:
            raise ImapError("NO", "Sharing is not available here", "CANNOT")
        if not anyone:  # an alias names its user: the entry is the user's (by their address)
            found = await self.shares.account(grantee)
            grantee = found.address.lower() if found is not None else grantee
        entries = await self._entries(place)
        _acct, account, current = entries.get(grantee, (None, "", ""))
        wanted = acl.canonical(acl.modified(current, mode, rights))
        if wanted == current:
            return
        try:
            await self.shares.set_folder(owner, grantee, place.name,
                                         wanted or None if anyone else acl.stored_entry(wanted, account))
        except DirectoryError as exc:  # an unknown grantee, the owner under an alias
            raise ImapError("NO", f"Cannot change the ACL: {str(exc)[:100]}", "CANNOT") from None
        logger.info("imap.acl_changed", owner=owner, mailbox=place.name, grantee=grantee, rights=wanted or "none")


def _identifier(address: str) -> bytes:
    return resp.astring(address.encode("utf-8"))


def _identifier_raw(raw: bytes) -> bytes:
    return resp.astring(raw)
