"""An in-memory store with the shape of ``docs/store-api.md``, for fast session tests and benches.

It implements the subset of the store API that the IMAP session calls
(accounts, mailboxes, views with ``refresh``, flags, copy/move/expunge,
reading, changes since a modseq, watching). It is one process's memory: it
is not durable and shares nothing across processes. The real store
(``mailsrv.store``) is what the server uses in production.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

SPECIAL = {"Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash", "Junk": "\\Junk", "Archive": "\\Archive"}


class StoreError(Exception):
    pass


class MailboxNotFound(StoreError):
    pass


class MailboxExists(StoreError):
    pass


class OverQuota(StoreError):
    pass


class MessageGone(StoreError):
    pass


@dataclass(frozen=True)
class MessageInfo:
    uid: int
    key: str
    flags: frozenset[str]
    modseq: int
    internal_date: float
    saved_date: float
    size: int
    email_id: str
    thread_id: str


@dataclass(frozen=True)
class MailboxInfo:
    name: str
    id: str
    special_use: str | None
    subscribed: bool
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    messages: int
    unseen: int
    size: int


@dataclass
class Changes:
    added: list[MessageInfo]
    expunged: list[int]
    flags: list[MessageInfo]
    uidnext: int
    highestmodseq: int


@dataclass
class ChangesSince:
    changed: list[MessageInfo]
    expunged: list[int]
    highestmodseq: int


@dataclass(frozen=True)
class QuotaLimits:
    storage: int | None = None
    messages: int | None = None


@dataclass(frozen=True)
class QuotaUsage:
    storage: int
    messages: int


_ids = itertools.count(1)


@dataclass
class _Box:
    name: str
    id: str
    uidvalidity: int
    special_use: str | None = None
    uidnext: int = 1
    highestmodseq: int = 1
    msgs: dict[int, MessageInfo] = field(default_factory=dict)
    data: dict[int, bytes] = field(default_factory=dict)
    #: uid -> modseq at which it was expunged
    expunged: dict[int, int] = field(default_factory=dict)
    #: RFC 3501 \\Recent: UIDs from here on were recent in no session yet (Engine.claim_recent)
    first_recent: int = 1


class MemoryWatch:
    def __init__(self, acct: MemoryAccount) -> None:
        self.acct = acct
        self.event = asyncio.Event()
        acct._watches.add(self)

    async def wait(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109 - the store API's name
        try:
            async with asyncio.timeout(timeout):
                await self.event.wait()
        except TimeoutError:
            return False
        self.event.clear()
        return True

    def changed(self) -> bool:
        """Without waiting: did the account change since the last call (clears it)?"""
        if self.event.is_set():
            self.event.clear()
            return True
        return False

    def close(self) -> None:
        self.acct._watches.discard(self)

    def __enter__(self) -> MemoryWatch:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class MemoryView:
    """A session's snapshot of one mailbox; changes only on :meth:`refresh`."""

    def __init__(self, acct: MemoryAccount, box: _Box) -> None:
        self.acct = acct
        self._box = box
        self.name = box.name
        self.id = box.id
        self.uidvalidity = box.uidvalidity
        self.uidnext = box.uidnext
        self.highestmodseq = box.highestmodseq
        self.messages: list[MessageInfo] = [box.msgs[u] for u in sorted(box.msgs)]
        #: expunged UIDs kept in the view by ``refresh(hold_expunged=True)`` (store MailboxView's)
        self.held: list[int] = []

    def by_uid(self, uid: int) -> MessageInfo | None:
        i = bisect_left(self.messages, uid, key=lambda m: m.uid)
        if i < len(self.messages) and self.messages[i].uid == uid:
            return self.messages[i]
        return None

    async def refresh(self, hold_expunged: bool = False) -> Changes:
        box = self._box
        old = {m.uid: m for m in self.messages}
        expunged = sorted(u for u in old if u not in box.msgs)
        added = [box.msgs[u] for u in sorted(box.msgs) if u not in old]
        changed = [box.msgs[u] for u in sorted(box.msgs) if u in old and box.msgs[u] is not old[u]]
        if hold_expunged:
            self.held = expunged
            kept = {**{u: old[u] for u in expunged}, **box.msgs}
            self.messages = [kept[u] for u in sorted(kept)]
            expunged = []
        else:
            self.held = []
            self.messages = [box.msgs[u] for u in sorted(box.msgs)]
        self.uidnext = box.uidnext
        self.highestmodseq = box.highestmodseq
        return Changes(added, expunged, changed, box.uidnext, box.highestmodseq)


class MemoryAccount:
    def __init__(self, account_id: str) -> None:
        self.account_id = account_id
        self._boxes: dict[str, _Box] = {}
        self._subscribed: set[str] = set()
        self._watches: set[MemoryWatch] = set()
        self._validity = itertools.count(int(time.time()))
        self._create("INBOX", None)
        for name, use in SPECIAL.items():
            self._create(name, use)
            self._subscribed.add(name)
        self._subscribed.add("INBOX")

    # helpers

    def _create(self, name: str, use: str | None) -> _Box:
        box = _Box(name, f"M{next(_ids)}", next(self._validity), use)
        self._boxes[name] = box
        return box

    def _box(self, name: str) -> _Box:
        if name.upper() == "INBOX":
            name = "INBOX"
        try:
            return self._boxes[name]
        except KeyError:
            raise MailboxNotFound(name) from None

    def _notify(self) -> None:
        for w in self._watches:
            w.event.set()

    def _info(self, box: _Box) -> MailboxInfo:
        return MailboxInfo(
            box.name, box.id, box.special_use, box.name in self._subscribed, box.uidvalidity,
            box.uidnext, box.highestmodseq, len(box.msgs),
            sum(1 for m in box.msgs.values() if "\\Seen" not in m.flags),
            sum(m.size for m in box.msgs.values()),
        )

    # mailboxes

    async def list_mailboxes(self) -> list[MailboxInfo]:
        return [self._info(b) for b in self._boxes.values()]

    async def create_mailbox(self, name: str, special_use: str | None = None) -> MailboxInfo:
        if name.upper() == "INBOX" or name in self._boxes:
            raise MailboxExists(name)
        box = self._create(name, special_use)
        self._notify()
        return self._info(box)

    async def delete_mailbox(self, name: str) -> None:
        box = self._box(name)
        if box.name == "INBOX":
            raise StoreError("INBOX cannot be deleted")
        del self._boxes[box.name]
        self._notify()

    async def rename_mailbox(self, old: str, new: str) -> None:
        box = self._box(old)
        if new in self._boxes or new.upper() == "INBOX":
            raise MailboxExists(new)
        if box.name == "INBOX":
            moved = self._create(new, None)
            moved.msgs, moved.data, moved.uidnext = box.msgs, box.data, box.uidnext
            box.msgs, box.data = {}, {}
        else:
            for name in [n for n in self._boxes if n == old or n.startswith(old + "/")]:
                b = self._boxes.pop(name)
                b.name = new + name[len(old):]
                self._boxes[b.name] = b
        self._notify()

    async def subscribe(self, name: str, subscribed: bool = True) -> None:
        if subscribed:
            self._subscribed.add(name)
        else:
            self._subscribed.discard(name)

    async def mailbox_status(self, name: str) -> MailboxInfo:
        return self._info(self._box(name))

    async def open_mailbox(self, name: str) -> MemoryView:
        return MemoryView(self, self._box(name))

    async def claim_recent(self, mailbox: str, upto: int | None = None) -> int:
        box = self._box(mailbox)
        first = box.first_recent
        if upto is not None:
            box.first_recent = max(first, upto)
        return first

    async def recent_count(self, mailbox: str) -> int:
        box = self._box(mailbox)
        return sum(1 for u in box.msgs if u >= box.first_recent)

    # messages

    async def domain_limits(self) -> QuotaLimits:
        """No domain quota root here (the store's account has one)."""
        return QuotaLimits()

    async def append(self, mailbox: str, data: bytes, flags: frozenset[str] = frozenset(),
                     internal_date: float | None = None, limits: QuotaLimits = QuotaLimits(),
                     domain_limits: QuotaLimits | None = None) -> int:
        box = self._box(mailbox)
        if limits.messages is not None and len(box.msgs) + 1 > limits.messages:
            raise OverQuota(mailbox)
        now = time.time()
        return self._add(box, data, flags, now if internal_date is None else internal_date, f"E{next(_ids)}")

    def _add(self, box: _Box, data: bytes, flags: frozenset[str], when: float, email_id: str) -> int:
        uid = box.uidnext
        box.uidnext += 1
        box.highestmodseq += 1
        info = MessageInfo(uid, f"k{uid}", frozenset(flags), box.highestmodseq, when, time.time(), len(data),
                           email_id, f"T{email_id[1:]}")
        box.msgs[uid] = info
        box.data[uid] = data
        self._notify()
        return uid

    async def copy(self, src: str, uids: Sequence[int], dst: str,
                   limits: QuotaLimits = QuotaLimits()) -> list[tuple[int, int]]:
        a, b = self._box(src), self._box(dst)
        out = []
        for uid in uids:
            m = a.msgs.get(uid)
            if m is not None:
                out.append((uid, self._add(b, a.data[uid], m.flags, m.internal_date, m.email_id)))
        return out

    async def move(self, src: str, uids: Sequence[int], dst: str) -> list[tuple[int, int]]:
        mapping = await self.copy(src, uids, dst)
        await self.expunge(src, [s for s, _ in mapping], only_deleted=False)
        return mapping

    async def store_flags(self, mailbox: str, uids: Sequence[int], flags: frozenset[str],
                          mode: Literal["add", "remove", "replace"],
                          unchanged_since: int | None = None) -> tuple[list[MessageInfo], list[int]]:
        box = self._box(mailbox)
        modified, failed = [], []
        for uid in uids:
            m = box.msgs.get(uid)
            if m is None:
                continue
            if unchanged_since is not None and m.modseq > unchanged_since:
                failed.append(uid)
                continue
            new = m.flags | flags if mode == "add" else m.flags - flags if mode == "remove" else flags
            if new == m.flags:
                continue
            box.highestmodseq += 1
            m = replace(m, flags=frozenset(new), modseq=box.highestmodseq)
            box.msgs[uid] = m
            modified.append(m)
        if modified:
            self._notify()
        return modified, failed

    async def expunge(self, mailbox: str, uids: Sequence[int] | None = None,
                      only_deleted: bool = True) -> list[int]:
        box = self._box(mailbox)
        candidates = sorted(box.msgs) if uids is None else sorted(u for u in uids if u in box.msgs)
        gone = [u for u in candidates if not only_deleted or "\\Deleted" in box.msgs[u].flags]
        for u in gone:
            box.highestmodseq += 1
            del box.msgs[u]
            del box.data[u]
            box.expunged[u] = box.highestmodseq
        if gone:
            self._notify()
        return gone

    async def read_message(self, mailbox: str, uid: int, offset: int = 0, length: int | None = None) -> bytes:
        box = self._box(mailbox)
        try:
            data = box.data[uid]
        except KeyError:
            raise MessageGone(uid) from None
        return data[offset:] if length is None else data[offset : offset + length]

    async def changes_since(self, mailbox: str, modseq: int) -> ChangesSince:
        box = self._box(mailbox)
        changed = [box.msgs[u] for u in sorted(box.msgs) if box.msgs[u].modseq > modseq]
        gone = sorted(u for u, ms in box.expunged.items() if ms > modseq)
        return ChangesSince(changed, gone, box.highestmodseq)

    async def structures(self, mailbox: str, uids: Sequence[int]) -> dict[int, Any]:
        return {}

    async def quota_usage(self) -> QuotaUsage:
        boxes = self._boxes.values()
        return QuotaUsage(sum(m.size for b in boxes for m in b.msgs.values()), sum(len(b.msgs) for b in boxes))

    def watch(self, mailbox: str | None = None) -> MemoryWatch:
        """Any change of the account wakes it (``mailbox``, the one a session selected, is not needed)."""
        return MemoryWatch(self)


class MemoryStore:
    """``store.account(id)`` over process memory."""

    def __init__(self) -> None:
        self._accounts: dict[str, MemoryAccount] = {}

    async def account(self, account_id: str, maildir: Any = None) -> MemoryAccount:
        acct = self._accounts.get(account_id)
        if acct is None:
            acct = self._accounts[account_id] = MemoryAccount(account_id)
        return acct

    async def close(self) -> None:
        return None


@dataclass(frozen=True)
class MemoryUser:
    id: int
    address: str
    store: str = ""
    backend: str = "local"
    quota_bytes: int | None = None
    quota_messages: int | None = None


@dataclass
class LoginResult:
    ok: bool
    account: MemoryUser | None
    reason: str = ""
    delay: float = 0.0


class MemoryAuth:
    """Password logins from a dict, with the shape of ``mailsrv.auth.Authenticator`` (LOGIN, PLAIN)."""

    def __init__(self, users: dict[str, str]) -> None:
        self.users = users
        self.ids = {name: i + 1 for i, name in enumerate(sorted(users))}

    def plaintext_allowed(self, *, tls: bool, client_ip: str) -> bool:
        return True

    def mechanisms(self, *, tls: bool, client_ip: str, channel_binding: bool = False) -> list[str]:
        return ["PLAIN"]

    async def login(self, username: str, password: str, *, protocol: str, client_ip: str,
                    tls: bool) -> LoginResult:
        if self.users.get(username) == password:
            return LoginResult(True, MemoryUser(self.ids[username], username, f"mail/{username}"))
        return LoginResult(False, None, "bad password")
