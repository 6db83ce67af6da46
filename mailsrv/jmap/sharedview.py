"""A shared account as its grantee sees it over JMAP: the owner's folders filtered and checked by the
grantee's RFC 4314 rights, the same per-folder ACL IMAP enforces (docs/shared-mailboxes.md).

:class:`SharedFolders` wraps the owner's MailBackend. Mailbox/get shows the mailboxes with ``l``; an
email is visible when one of its mailboxes gives ``r`` (its ``mailboxIds`` keep only those); each
change needs the rights RFC 8621 §2 maps onto RFC 4314 (:func:`my_rights`). Refusals are
``forbidden`` SetErrors; an email or blob the grantee may not read is not found.

Rights are those of the moment the request began (the server reads the directory at every
request, so a revoke or a changed ACL acts at the next request).

States. A grantee's state is the owner's, then ``.`` and what the grantee could see at it: the
mailboxes with ``r`` (Email, Thread) or ``l`` (Mailbox), each as 3 bytes of its id's SHA-1. So
/changes after an ACL change names what the change hid (``destroyed``) or showed (``created``),
as RFC 8620 §5.2 asks, instead of letting the grantee's copies go stale.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from mailsrv.directory.rights import OwnerShare, shares_by_owner
from mailsrv.jmap.backend import (
    UNCHANGED,
    CannotCalculateChanges,
    ChangeSet,
    EmailMeta,
    MailBackend,
    Mailbox,
    MessageStructure,
    NotFound,
    Unchanged,
)
from mailsrv.jmap.errors import SetError

#: (owner account id, "create" / "delete" / "rename", folder name, parent or new name): the directory's
#: ACL entries follow a folder change made through JMAP, as IMAP's (sharing.Shares.folder_changed)
FolderHook = Callable[[int, str, str, str], Awaitable[None]]


def directory_sources(directory: Any, *, anyone: bool = False) -> tuple[Callable[[Any], Awaitable[list[OwnerShare]]],
                                                                        FolderHook]:
    """For the JMAP server over ``directory`` (``mailsrv.directory.Directory``): what is shared with a
    principal (read at each request, one query; ``anyone``: ``[imap] acl_anyone``), and the hook that
    carries ACL entries along."""
    async def shares(p: Any) -> list[OwnerShare]:
        found = await directory.run(lambda d: d.shares_for(int(p.id), anyone))
        return list(shares_by_owner(*found).values())

    async def folder_changed(owner_id: int, op: str, name: str, other: str) -> None:
        await directory.run(lambda d: d.folder_changed(owner_id, op, name, other))

    return shares, folder_changed


def folder_names(boxes: list[Mailbox]) -> dict[str, str]:
    """mailbox id -> its folder name as IMAP and the ACL entries know it ("Projects/Q1", "INBOX")."""
    by_id = {m.id: m for m in boxes}
    paths: dict[str, str] = {}

    def path(m: Mailbox, depth: int = 0) -> str:
        if m.id not in paths:
            parent = by_id.get(m.parent_id) if m.parent_id and depth < 64 else None
            if parent is None:
                paths[m.id] = "INBOX" if m.role == "inbox" else m.name
            else:
                paths[m.id] = path(parent, depth + 1) + "/" + m.name
        return paths[m.id]

    for m in boxes:
        path(m)
    return paths


def my_rights(letters: str, personal: bool = False) -> dict[str, bool]:
    """RFC 8621 §2 ``myRights`` from RFC 4314 rights (the mapping Dovecot and Cyrus use)."""
    return {
        "mayReadItems": "r" in letters, "mayAddItems": "i" in letters,
        "mayRemoveItems": "t" in letters and "e" in letters, "maySetSeen": "s" in letters,
        "maySetKeywords": "w" in letters, "mayCreateChild": "k" in letters, "mayRename": "x" in letters,
        "mayDelete": "x" in letters, "maySubmit": personal,  # never send as the owner through a share
    }


#: between the owner's state and the grantee's sight in a shared account's state (not in base64url,
#: nor in the sortOrder overlay's "~")
SIGHT_SEP = "."


def _box_key(mailbox_id: str) -> bytes:
    return hashlib.sha1(mailbox_id.encode()).digest()[:3]


def sight(mailbox_ids: Iterable[str]) -> str:
    """The mailboxes a grantee sees, compact enough for a state (4 characters a mailbox)."""
    return base64.urlsafe_b64encode(b"".join(sorted(_box_key(i) for i in mailbox_ids))).decode()


def _unsight(token: str) -> set[bytes]:
    try:
        raw = base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True)  # garbage is refused
    except (ValueError, binascii.Error):
        raise CannotCalculateChanges(token) from None
    if len(raw) % 3:
        raise CannotCalculateChanges(token)
    return {raw[i:i + 3] for i in range(0, len(raw), 3)}


def _forbid(need: str, have: str, what: str) -> None:
    missing = "".join(r for r in need if r not in have)
    if missing:
        raise SetError("forbidden", f"{what} needs the {missing} right on that mailbox")


class _Around:
    """A MailBackend that is ``be`` but for the methods a subclass defines."""

    def __init__(self, be: MailBackend) -> None:
        self.be = be
        self.account_id = be.account_id
        self.name = be.name

    def __getattr__(self, name: str) -> Any:
        return getattr(self.be, name)


class SharedFolders(_Around):
    """The owner's backend ``be`` through ``share`` (what the owner shares with the grantee)."""

    def __init__(self, be: MailBackend, share: OwnerShare, hook: FolderHook | None = None) -> None:
        super().__init__(be)
        self.share = share
        self.hook = hook

    # -- rights ------------------------------------------------------------------------------------

    async def _all_boxes(self) -> tuple[list[Mailbox], dict[str, str], dict[str, str]]:
        """(every mailbox, id -> folder name, id -> the grantee's rights)."""
        boxes = await self.be.mailboxes()
        paths = folder_names(boxes)
        return boxes, paths, {m.id: self.share.rights(paths[m.id]) for m in boxes}

    async def rights_by_id(self) -> dict[str, str]:
        """mailbox id -> the grantee's RFC 4314 rights there."""
        return (await self._all_boxes())[2]

    async def _readable(self) -> set[str]:
        return {i for i, r in (await self.rights_by_id()).items() if "r" in r}

    def _visible(self, m: EmailMeta, readable: set[str]) -> EmailMeta | None:
        inside = m.mailbox_ids & readable
        if not inside:
            return None
        return m if inside == m.mailbox_ids else EmailMeta(m.id, m.blob_id, m.thread_id, frozenset(inside),
                                                           m.keywords, m.size, m.received_at)

    # -- reading -----------------------------------------------------------------------------------

    async def mailboxes(self) -> list[Mailbox]:
        boxes, _paths, rights = await self._all_boxes()
        listed = {i for i, r in rights.items() if "l" in r}
        out = []
        for m in boxes:
            if m.id in listed:
                parent = m.parent_id if m.parent_id in listed else None
                out.append(m if parent == m.parent_id else Mailbox(
                    m.id, m.name, parent, m.role, m.sort_order, m.is_subscribed, m.total_emails, m.unread_emails,
                    m.total_threads, m.unread_threads))
        return out

    async def emails(self) -> list[EmailMeta]:
        readable = await self._readable()
        return [v for m in await self.be.emails() if (v := self._visible(m, readable)) is not None]

    async def get_emails(self, ids: list[str]) -> dict[str, EmailMeta]:
        readable = await self._readable()
        got = await self.be.get_emails(ids)
        return {k: v for k, m in got.items() if (v := self._visible(m, readable)) is not None}

    async def _blob_allowed(self, blob_ids: list[str]) -> set[str]:
        wanted = set(blob_ids)
        return {m.blob_id for m in await self.emails() if m.blob_id in wanted}

    async def read_blob(self, blob_id: str) -> bytes | None:
        if not await self._blob_allowed([blob_id]):
            return None
        return await self.be.read_blob(blob_id)

    async def structures(self, blob_ids: list[str]) -> dict[str, MessageStructure]:
        allowed = await self._blob_allowed(blob_ids)
        return await self.be.structures([b for b in blob_ids if b in allowed])

    async def blob_path(self, blob_id: str) -> Path | None:
        inner = getattr(self.be, "blob_path", None)
        if inner is None or not await self._blob_allowed([blob_id]):
            return None
        result: Path | None = await inner(blob_id)
        return result

    async def _sight(self, type_: str) -> tuple[set[str], set[str]]:
        """(every mailbox id of the owner's, those the grantee sees for ``type_``: ``l`` for Mailbox,
        ``r`` for Email and Thread)."""
        rights = await self.rights_by_id()
        letter = "l" if type_ == "Mailbox" else "r"
        return set(rights), {i for i, r in rights.items() if letter in r}

    async def state(self, type_: str) -> str:
        return f"{await self.be.state(type_)}{SIGHT_SEP}{sight((await self._sight(type_))[1])}"

    async def changes(self, type_: str, since: str, max_changes: int | None) -> ChangeSet:
        """The owner's changes as the grantee sees them (module docstring, "States"): ids the grantee
        cannot see now are left out of ``created`` and ``updated``; an updated email no longer
        readable is ``destroyed`` (it may have left a readable mailbox, so an email changed in an
        unreadable one is named there too); when the grantee's sight changed since ``since``, the
        untouched emails and mailboxes it hid are ``destroyed`` and those it showed ``created``."""
        base, sep, token = since.rpartition(SIGHT_SEP)
        if not sep:  # the owner's own state, or one made before shared states carried the sight
            raise CannotCalculateChanges(since)
        old = _unsight(token)
        cs = await self.be.changes(type_, base, max_changes)
        boxes, now_boxes = await self._sight(type_)
        cs.old_state = since
        if type_ == "Thread":
            cs.new_state = f"{cs.new_state}{SIGHT_SEP}{sight(now_boxes)}"
            return cs
        if cs.has_more:  # the sight's changes go with the last page
            cs.new_state = f"{cs.new_state}{SIGHT_SEP}{token}"
        else:
            cs.new_state = f"{cs.new_state}{SIGHT_SEP}{sight(now_boxes)}"
        if type_ == "Email":
            items = {m.id: m.mailbox_ids for m in await self.be.emails()}
        else:
            items = {i: frozenset((i,)) for i in boxes}
        was_boxes = {i for i in boxes if _box_key(i) in old}
        now = {i for i, b in items.items() if b & now_boxes}
        touched = set(cs.created) | set(cs.updated) | set(cs.destroyed)
        created = [i for i in cs.created if i in now]
        updated = [i for i in cs.updated if i in now]
        if type_ == "Email":
            destroyed = list(cs.destroyed) + [i for i in cs.updated if i not in now]
        else:  # a mailbox's own sight is known: only one the grantee saw is destroyed for them
            destroyed = [i for i in cs.destroyed + [u for u in cs.updated if u not in now] if _box_key(i) in old]
        if not cs.has_more and was_boxes != now_boxes:
            for i, b in items.items():
                if i not in touched and bool(b & was_boxes) != (i in now):
                    (created if i in now else destroyed).append(i)
        if max_changes is not None and len(created) + len(updated) + len(destroyed) > max_changes:
            raise CannotCalculateChanges("more changes than maxChanges")
        cs.created, cs.updated, cs.destroyed = sorted(created), sorted(updated), sorted(destroyed)
        return cs

    # -- changes -----------------------------------------------------------------------------------

    async def update_email(self, email_id: str, *, mailbox_ids: frozenset[str] | None = None,
                           keywords: frozenset[str] | None = None) -> None:
        rights = await self.rights_by_id()
        cur = (await self.get_emails([email_id])).get(email_id)
        if cur is None:
            raise NotFound(email_id)
        full = (await self.be.get_emails([email_id]))[email_id]
        if mailbox_ids is not None:
            for mid in mailbox_ids - cur.mailbox_ids:
                _forbid("i", rights.get(mid, ""), "adding an email")
            for mid in cur.mailbox_ids - mailbox_ids:
                _forbid("te", rights.get(mid, ""), "removing an email")
            mailbox_ids = mailbox_ids | (full.mailbox_ids - cur.mailbox_ids)  # where it is unseen by the grantee
        if keywords is not None and keywords != full.keywords:
            changed = keywords ^ full.keywords
            need = ("s" if "$seen" in changed else "") + ("w" if changed - {"$seen"} else "")
            for mid in cur.mailbox_ids:
                _forbid(need, rights.get(mid, ""), "changing keywords")
        await self.be.update_email(email_id, mailbox_ids=mailbox_ids, keywords=keywords)

    async def destroy_email(self, email_id: str) -> None:
        rights = await self.rights_by_id()
        full = (await self.be.get_emails([email_id])).get(email_id)
        if full is None or self._visible(full, {i for i, r in rights.items() if "r" in r}) is None:
            raise NotFound(email_id)
        for mid in full.mailbox_ids:
            _forbid("te", rights.get(mid, ""), "destroying an email")
        await self.be.destroy_email(email_id)

    async def import_email(self, data: bytes | Path, mailbox_ids: frozenset[str], keywords: frozenset[str],
                           received_at: float | None) -> EmailMeta:
        rights = await self.rights_by_id()
        for mid in mailbox_ids:
            if mid not in rights:
                raise NotFound(mid)
            _forbid("i", rights[mid], "adding an email")
        # RFC 4314 §4 (as IMAP APPEND): a keyword without its right is dropped, the email still stored
        keep = frozenset(k for k in keywords
                         if all(("s" if k == "$seen" else "w") in rights[mid] for mid in mailbox_ids))
        return await self.be.import_email(data, mailbox_ids, keep, received_at)

    async def create_mailbox(self, name: str, parent_id: str | None, role: str | None, sort_order: int,
                             is_subscribed: bool) -> Mailbox:
        _boxes, paths, rights = await self._all_boxes()
        if parent_id is None:
            raise SetError("forbidden", "only the owner creates top-level mailboxes")
        if parent_id not in rights:
            raise NotFound(parent_id)
        _forbid("k", rights[parent_id], "creating a mailbox")
        if role is not None:
            raise SetError("forbidden", "a role is the owner's to set")
        made = await self.be.create_mailbox(name, parent_id, role, sort_order, is_subscribed)
        await self._follow("create", paths[parent_id] + "/" + name, paths[parent_id])
        return made

    async def update_mailbox(self, mailbox_id: str, *, name: str | None = None,
                             parent_id: str | None | Unchanged = UNCHANGED, role: str | None | Unchanged = UNCHANGED,
                             sort_order: int | None = None, is_subscribed: bool | None = None) -> None:
        _boxes, paths, rights = await self._all_boxes()
        if mailbox_id not in rights or "l" not in rights[mailbox_id]:
            raise NotFound(mailbox_id)
        have = rights[mailbox_id]
        moved = name is not None or not isinstance(parent_id, Unchanged)
        if moved:
            _forbid("x", have, "renaming a mailbox")
            if not isinstance(parent_id, Unchanged):
                if parent_id is None:
                    raise SetError("forbidden", "only the owner creates top-level mailboxes")
                _forbid("k", rights.get(parent_id, ""), "moving a mailbox into another")
        if not isinstance(role, Unchanged):
            raise SetError("forbidden", "a role is the owner's to set")
        if (sort_order is not None or is_subscribed is not None) and not any(r in have for r in "iestwx"):
            raise SetError("forbidden", "this mailbox is shared with you read-only")
        old = paths[mailbox_id]
        await self.be.update_mailbox(mailbox_id, name=name, parent_id=parent_id, role=role, sort_order=sort_order,
                                     is_subscribed=is_subscribed)
        if moved:
            parent = old.rpartition("/")[0] if isinstance(parent_id, Unchanged) else paths.get(parent_id or "", "")
            new = (parent + "/" if parent else "") + (name if name is not None else old.rpartition("/")[2])
            await self._follow("rename", old, new)

    async def destroy_mailbox(self, mailbox_id: str, remove_emails: bool) -> None:
        _boxes, paths, rights = await self._all_boxes()
        if mailbox_id not in rights or "l" not in rights[mailbox_id]:
            raise NotFound(mailbox_id)
        _forbid("x" + ("te" if remove_emails else ""), rights[mailbox_id], "destroying a mailbox")
        await self.be.destroy_mailbox(mailbox_id, remove_emails)
        await self._follow("delete", paths[mailbox_id], "")

    async def _follow(self, op: str, name: str, other: str) -> None:
        if self.hook is not None:
            await self.hook(int(self.share.owner.id), op, name, other)


class OwnFolders(_Around):
    """The owner's own backend: a mailbox the owner creates, renames or destroys over JMAP carries its
    ACL entries along, as over IMAP (``hook``)."""

    def __init__(self, be: MailBackend, owner_id: int, hook: FolderHook) -> None:
        super().__init__(be)
        self.owner_id = owner_id
        self.hook = hook

    async def create_mailbox(self, name: str, parent_id: str | None, role: str | None, sort_order: int,
                             is_subscribed: bool) -> Mailbox:
        made = await self.be.create_mailbox(name, parent_id, role, sort_order, is_subscribed)
        paths = folder_names(await self.be.mailboxes())
        if made.id in paths:
            await self.hook(self.owner_id, "create", paths[made.id], paths[made.id].rpartition("/")[0])
        return made

    async def update_mailbox(self, mailbox_id: str, *, name: str | None = None,
                             parent_id: str | None | Unchanged = UNCHANGED, role: str | None | Unchanged = UNCHANGED,
                             sort_order: int | None = None, is_subscribed: bool | None = None) -> None:
        moved = name is not None or not isinstance(parent_id, Unchanged)
        old = folder_names(await self.be.mailboxes()).get(mailbox_id) if moved else None
        await self.be.update_mailbox(mailbox_id, name=name, parent_id=parent_id, role=role, sort_order=sort_order,
                                     is_subscribed=is_subscribed)
        if old is not None and old != "INBOX":
            new = folder_names(await self.be.mailboxes()).get(mailbox_id)
            if new is not None and new != old:
                await self.hook(self.owner_id, "rename", old, new)

    async def destroy_mailbox(self, mailbox_id: str, remove_emails: bool) -> None:
        old = folder_names(await self.be.mailboxes()).get(mailbox_id)
        await self.be.destroy_mailbox(mailbox_id, remove_emails)
        if old is not None:
            await self.hook(self.owner_id, "delete", old, "")
