"""An in-memory :class:`MailBackend`: the reference semantics, and the fast backend for tests.

One account-wide modseq counts every change; each change appends an event
``(modseq, type, id, kind, counts_only)``; states are the modseq in decimal.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, replace
from pathlib import Path

from mailsrv import mime
from mailsrv.jmap import message
from mailsrv.jmap.backend import (
    UNCHANGED,
    CannotCalculateChanges,
    ChangeSet,
    EmailMeta,
    Mailbox,
    MailboxHasChild,
    MailboxHasEmail,
    NameConflict,
    NotFound,
    Unchanged,
)
from mailsrv.mime import MessageStructure

ROLES_AT_START = (("Inbox", "inbox"), ("Sent", "sent"), ("Drafts", "drafts"), ("Trash", "trash"), ("Junk", "junk"), ("Archive", "archive"))


@dataclass
class _Box:
    id: str
    name: str
    parent_id: str | None
    role: str | None
    sort_order: int
    is_subscribed: bool


@dataclass
class _Event:
    modseq: int
    type: str
    id: str
    kind: str  # created | updated | destroyed
    counts_only: bool = False


class _MemoryWatch:
    def __init__(self, backend: MemoryBackend) -> None:
        self.backend = backend
        self.event = asyncio.Event()
        backend._watchers.add(self)

    async def wait(self, seconds: float | None = None) -> bool:
        try:
            async with asyncio.timeout(seconds):
                await self.event.wait()
        except TimeoutError:
            return False
        self.event.clear()
        return True

    def close(self) -> None:
        self.backend._watchers.discard(self)

    def __enter__(self) -> _MemoryWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MemoryBackend:
    """Thread-unsafe, loop-local; every call is 'durable' at once."""

    _ids = itertools.count(1)

    def __init__(self, account_id: str = "A1", name: str = "user@example.test") -> None:
        self.account_id = account_id
        self.name = name
        self.modseq = 0
        self.events: list[_Event] = []
        self.boxes: dict[str, _Box] = {}
        self.emails_: dict[str, EmailMeta] = {}
        self.blobs: dict[str, bytes] = {}
        self.structs: dict[str, MessageStructure] = {}  # what the store caches at delivery
        self.msgids: dict[str, str] = {}  # Message-ID -> thread id
        self.quota_limit: tuple[int | None, int | None] = (None, None)
        self._watchers: set[_MemoryWatch] = set()
        for i, (n, role) in enumerate(ROLES_AT_START):
            bid = self._new_id("M")
            self.boxes[bid] = _Box(bid, n, None, role, i, True)

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids)}"

    def _bump(self, *events: tuple[str, str, str, bool]) -> None:
        self.modseq += 1
        for type_, id_, kind, counts in events:
            self.events.append(_Event(self.modseq, type_, id_, kind, counts))
        for w in list(self._watchers):
            w.event.set()

    async def state(self, type_: str) -> str:
        return str(self.modseq)

    async def changes(self, type_: str, since: str, max_changes: int | None) -> ChangeSet:
        if not (since.isascii() and since.isdigit()) or len(since) > 20 or int(since) > self.modseq:
            raise CannotCalculateChanges(since)
        s = int(since)
        evs = [e for e in self.events if e.type == type_ and e.modseq > s]
        upto = self.modseq
        has_more = False
        if max_changes is not None:
            ids_seen: list[str] = []
            for e in evs:
                if e.id not in ids_seen:
                    if len(ids_seen) == max_changes:
                        # cut before this modseq, keeping whole modseq groups
                        upto = e.modseq - 1
                        has_more = True
                        break
                    ids_seen.append(e.id)
            if has_more and upto <= s:
                raise CannotCalculateChanges("one change touches more than maxChanges objects")
            evs = [e for e in evs if e.modseq <= upto]
            # drop ids that appear again after the cut? they stay: their later change waits for the next call
        first: dict[str, str] = {}
        last: dict[str, str] = {}
        counts_only: dict[str, bool] = {}
        for e in evs:
            first.setdefault(e.id, e.kind)
            last[e.id] = e.kind
            counts_only[e.id] = counts_only.get(e.id, True) and e.counts_only
        cs = ChangeSet(since, str(upto), has_more)
        for id_, k in first.items():
            end = last[id_]
            if k == "created":
                if end != "destroyed":
                    cs.created.append(id_)
            elif end == "destroyed":
                cs.destroyed.append(id_)
            else:
                cs.updated.append(id_)
        cs.counts_only = bool(cs.updated) and all(counts_only[i] for i in cs.updated) and not cs.created and not cs.destroyed
        return cs

    async def mailboxes(self) -> list[Mailbox]:
        out = []
        for b in self.boxes.values():
            inside = [e for e in self.emails_.values() if b.id in e.mailbox_ids]
            unread = [e for e in inside if "$seen" not in e.keywords]
            threads = {e.thread_id for e in inside}
            # RFC 8621 §2: a thread is unread if any email in it (in any mailbox) is unread
            all_unread_threads = {e.thread_id for e in self.emails_.values() if "$seen" not in e.keywords and "$draft" not in e.keywords}
            out.append(
                Mailbox(b.id, b.name, b.parent_id, b.role, b.sort_order, b.is_subscribed,
                        len(inside), len(unread), len(threads), len(threads & all_unread_threads))
            )
        return out

    def _check_name(self, name: str, parent_id: str | None, exclude: str | None = None) -> None:
        for b in self.boxes.values():
            if b.id != exclude and b.parent_id == parent_id and b.name == name:
                raise NameConflict(name)

    async def create_mailbox(
        self, name: str, parent_id: str | None, role: str | None, sort_order: int, is_subscribed: bool
    ) -> Mailbox:
        if parent_id is not None and parent_id not in self.boxes:
            raise NotFound(parent_id)
        self._check_name(name, parent_id)
        bid = self._new_id("M")
        self.boxes[bid] = _Box(bid, name, parent_id, role, sort_order, is_subscribed)
        self._bump(("Mailbox", bid, "created", False))
        return next(m for m in await self.mailboxes() if m.id == bid)

    async def update_mailbox(
        self,
        mailbox_id: str,
        *,
        name: str | None = None,
        parent_id: str | None | Unchanged = UNCHANGED,
        role: str | None | Unchanged = UNCHANGED,
        sort_order: int | None = None,
        is_subscribed: bool | None = None,
    ) -> None:
        b = self.boxes.get(mailbox_id)
        if b is None:
            raise NotFound(mailbox_id)
        new_parent = b.parent_id if isinstance(parent_id, Unchanged) else parent_id
        if new_parent is not None and new_parent not in self.boxes:
            raise NotFound(new_parent)
        p = new_parent
        while p is not None:  # no cycles
            if p == mailbox_id:
                raise NameConflict("a mailbox cannot be its own ancestor")
            p = self.boxes[p].parent_id
        self._check_name(b.name if name is None else name, new_parent, exclude=mailbox_id)
        b.parent_id = new_parent
        if name is not None:
            b.name = name
        if not isinstance(role, Unchanged):
            b.role = role
        if sort_order is not None:
            b.sort_order = sort_order
        if is_subscribed is not None:
            b.is_subscribed = is_subscribed
        self._bump(("Mailbox", mailbox_id, "updated", False))

    async def destroy_mailbox(self, mailbox_id: str, remove_emails: bool) -> None:
        if mailbox_id not in self.boxes:
            raise NotFound(mailbox_id)
        if any(b.parent_id == mailbox_id for b in self.boxes.values()):
            raise MailboxHasChild(mailbox_id)
        inside = [e for e in self.emails_.values() if mailbox_id in e.mailbox_ids]
        if inside and not remove_emails:
            raise MailboxHasEmail(mailbox_id)
        for e in inside:
            if e.mailbox_ids == {mailbox_id}:
                await self.destroy_email(e.id)
            else:
                await self.update_email(e.id, mailbox_ids=e.mailbox_ids - {mailbox_id})
        del self.boxes[mailbox_id]
        self._bump(("Mailbox", mailbox_id, "destroyed", False))

    async def emails(self) -> list[EmailMeta]:
        return list(self.emails_.values())

    async def get_emails(self, ids: list[str]) -> dict[str, EmailMeta]:
        return {i: self.emails_[i] for i in ids if i in self.emails_}

    async def read_blob(self, blob_id: str) -> bytes | None:
        return self.blobs.get(blob_id)

    async def structures(self, blob_ids: list[str]) -> dict[str, MessageStructure]:
        return {b: self.structs[b] for b in blob_ids if b in self.structs}

    def _email_events(self, old: EmailMeta | None, new: EmailMeta | None) -> list[tuple[str, str, str, bool]]:
        evs: list[tuple[str, str, str, bool]] = []
        ref = old if old is not None else new
        assert ref is not None
        eid = ref.id
        if old is None:
            evs.append(("Email", eid, "created", False))
        elif new is None:
            evs.append(("Email", eid, "destroyed", False))
        else:
            evs.append(("Email", eid, "updated", False))
        boxes = (old.mailbox_ids if old else frozenset()) | (new.mailbox_ids if new else frozenset())
        if old is not None and new is not None and old.keywords == new.keywords:
            boxes = old.mailbox_ids ^ new.mailbox_ids
        tid = ref.thread_id
        members = [e for e in self.emails_.values() if e.thread_id == tid]
        if old is None and len(members) == 1:
            evs.append(("Thread", tid, "created", False))
        elif new is None and not members:
            evs.append(("Thread", tid, "destroyed", False))
        elif old is None or new is None:
            evs.append(("Thread", tid, "updated", False))
        # RFC 8621 §2: every email change can change counts of any mailbox holding the thread
        thread_boxes = {m for e in members for m in e.mailbox_ids}
        for b in sorted(boxes | thread_boxes):
            if b in self.boxes:
                evs.append(("Mailbox", b, "updated", True))
        return evs

    async def update_email(
        self, email_id: str, *, mailbox_ids: frozenset[str] | None = None, keywords: frozenset[str] | None = None
    ) -> None:
        old = self.emails_.get(email_id)
        if old is None:
            raise NotFound(email_id)
        if mailbox_ids is not None and any(m not in self.boxes for m in mailbox_ids):
            raise NotFound("mailbox")
        new = replace(
            old,
            mailbox_ids=old.mailbox_ids if mailbox_ids is None else frozenset(mailbox_ids),
            keywords=old.keywords if keywords is None else frozenset(keywords),
        )
        if new == old:
            return
        self.emails_[email_id] = new
        self._bump(*self._email_events(old, new))

    async def destroy_email(self, email_id: str) -> None:
        old = self.emails_.pop(email_id, None)
        if old is None:
            raise NotFound(email_id)
        self.blobs.pop(old.blob_id, None)
        self.structs.pop(old.blob_id, None)
        self._bump(*self._email_events(old, None))

    async def import_email(
        self, data: bytes | Path, mailbox_ids: frozenset[str], keywords: frozenset[str], received_at: float | None
    ) -> EmailMeta:
        if not mailbox_ids or any(m not in self.boxes for m in mailbox_ids):
            raise NotFound("mailbox")
        raw = await asyncio.to_thread(data.read_bytes) if isinstance(data, Path) else data
        used, count, lim_b, lim_n = await self.quota()
        if (lim_b is not None and used + len(raw) > lim_b) or (lim_n is not None and count + 1 > lim_n):
            from mailsrv.jmap.backend import OverQuota

            raise OverQuota()
        eid = self._new_id("E")
        structure = await asyncio.to_thread(mime.parse, raw)  # as the store does at delivery
        thread_id = self._thread_for(structure) or self._new_id("T")
        meta = EmailMeta(eid, "B" + eid, thread_id, frozenset(mailbox_ids), frozenset(keywords), len(raw),
                         time.time() if received_at is None else received_at)
        self.blobs[meta.blob_id] = raw
        self.structs[meta.blob_id] = structure
        self.emails_[eid] = meta
        for v in structure.root.field_all(b"message-id"):
            for mid in message.as_message_ids(v) or []:
                self.msgids.setdefault(mid, thread_id)
        self._bump(*self._email_events(None, meta))
        return meta

    def _thread_for(self, structure: MessageStructure) -> str | None:
        refs: list[str] = []
        for h in (b"references", b"in-reply-to"):
            for v in structure.root.field_all(h):
                refs.extend(message.as_message_ids(v) or [])
        for mid in refs:
            tid = self.msgids.get(mid)
            if tid is not None and any(e.thread_id == tid for e in self.emails_.values()):
                return tid
        return None

    async def quota(self) -> tuple[int, int, int | None, int | None]:
        return (sum(e.size for e in self.emails_.values()), len(self.emails_), *self.quota_limit)

    def watch(self) -> _MemoryWatch:
        return _MemoryWatch(self)
