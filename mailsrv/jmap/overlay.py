"""Mailbox sortOrder kept by JMAP itself, for backends that have no place for it (the store).

:class:`SortOrderOverlay` wraps a MailBackend: sortOrder lives in a per-account
collection (objects.py), the Mailbox state becomes ``"<backend state>~<collection
modseq>"`` and Mailbox changes include sortOrder changes. Everything else is the
wrapped backend's.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from mailsrv.jmap.backend import (
    UNCHANGED,
    CannotCalculateChanges,
    ChangeSet,
    MailBackend,
    Mailbox,
    Unchanged,
)
from mailsrv.jmap.objects import Collection, put

SEP = "~"


class SortOrderOverlay:
    def __init__(self, be: MailBackend, meta: Collection) -> None:
        self.be = be
        self.meta = meta
        self.account_id = be.account_id
        self.name = be.name

    def __getattr__(self, name: str) -> Any:
        return getattr(self.be, name)

    async def state(self, type_: str) -> str:
        base = await self.be.state(type_)
        return f"{base}{SEP}{await self.meta.state()}" if type_ == "Mailbox" else base

    async def changes(self, type_: str, since: str, max_changes: int | None) -> ChangeSet:
        if type_ != "Mailbox":
            return await self.be.changes(type_, since, max_changes)
        base, sep, mseq = since.rpartition(SEP)
        if not sep:
            raise CannotCalculateChanges(since)
        cs = await self.be.changes("Mailbox", base, max_changes)
        if cs.has_more:
            cs.old_state, cs.new_state = since, f"{cs.new_state}{SEP}{mseq}"  # sortOrder with the last page
            return cs
        extra = await self.meta.changes(mseq, None)
        live = {m.id for m in await self.be.mailboxes()}
        known = set(cs.created) | set(cs.updated) | set(cs.destroyed)
        moved = [i for i in extra.created + extra.updated if i in live and i not in known]
        if moved:
            cs.updated = cs.updated + moved
            cs.counts_only = False
        cs.old_state, cs.new_state = since, f"{cs.new_state}{SEP}{extra.new_state}"
        return cs

    async def mailboxes(self) -> list[Mailbox]:
        orders = await self.meta.records()
        return [replace(m, sort_order=orders[m.id]["sortOrder"]) if m.id in orders else m
                for m in await self.be.mailboxes()]

    async def _set_order(self, mailbox_id: str, value: int) -> None:
        def upd(d: dict[str, Any]) -> None:
            put(d, mailbox_id, {"sortOrder": value})

        await self.meta.change(upd)

    async def create_mailbox(self, name: str, parent_id: str | None, role: str | None, sort_order: int,
                             is_subscribed: bool) -> Mailbox:
        m = await self.be.create_mailbox(name, parent_id, role, sort_order, is_subscribed)
        if sort_order:
            await self._set_order(m.id, sort_order)
            m = replace(m, sort_order=sort_order)
        return m

    async def update_mailbox(self, mailbox_id: str, *, name: str | None = None,
                             parent_id: str | None | Unchanged = UNCHANGED, role: str | None | Unchanged = UNCHANGED,
                             sort_order: int | None = None, is_subscribed: bool | None = None) -> None:
        await self.be.update_mailbox(mailbox_id, name=name, parent_id=parent_id, role=role,
                                     is_subscribed=is_subscribed)
        if sort_order is not None:
            await self._set_order(mailbox_id, sort_order)
