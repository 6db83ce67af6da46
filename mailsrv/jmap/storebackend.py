"""The :class:`MailBackend` over ``mailsrv.store`` (docs/store-api.md).

States. The store keeps a modseq and a uidnext per mailbox, so a JMAP state
is the vector of every mailbox's ``(id, uidvalidity, uidnext, highestmodseq,
name-hash)``, compressed into an opaque string. ``/changes`` compares an old
vector with the current one and asks ``changes_since`` of each mailbox: a uid
at or past the old uidnext is new in that mailbox, a smaller one changed its
flags, an expunged uid left it. An email is *created* if none of its copies
existed in the old state, *destroyed* if none exists now.

Expunges: the store's ``ChangesSince.expunged_ids`` names the email and thread
of each expunged uid (also for expunges made by another worker). This module
also remembers ``(mailbox, uidvalidity, uid) -> (email id, thread id)`` for
every message it has seen; an expunge neither can name (expunged before the
index kept ids, or forgotten by an index rebuild) answers
``cannotCalculateChanges``, and the client resynchronises (RFC 8620 §5.2).

A grantee's view with private ``\\Seen`` (store/privateseen.py) adds a mark to the ``look`` of each
folder where the ``\\Seen`` shown is the grantee's own (they hold ``s``). A change of ``s`` flips it:
the state moves although no message did, and ``/changes`` names every email the folder held as
updated (their ``$seen`` is now the other one), Mailbox/changes the folder (``myRights``, counts).

Keywords (RFC 8621 §4.1.1): ``$seen $flagged $answered $draft`` are the IMAP
system flags, other keywords are IMAP keywords in lower case; ``\\Deleted``
is not shown. An email's keywords are those of its first copy; setting them
sets every copy.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import sqlite3
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailsrv import log
from mailsrv import store as st
from mailsrv.jmap.backend import (
    UNCHANGED,
    CannotCalculateChanges,
    ChangeSet,
    EmailMeta,
    Forbidden,
    InvalidName,
    Mailbox,
    MailboxHasChild,
    MailboxHasEmail,
    NameConflict,
    NotFound,
    OverQuota,
    Unchanged,
)
from mailsrv.mime import MessageStructure
from mailsrv.policy.pipeline import training_label

SYSTEM = {"\\seen": "$seen", "\\flagged": "$flagged", "\\answered": "$answered", "\\draft": "$draft"}
TO_SYSTEM = {"$seen": "\\Seen", "$flagged": "\\Flagged", "$answered": "\\Answered", "$draft": "\\Draft"}
DELIM = "/"

logger = log.get("jmap")


def keywords_of(flags: frozenset[str]) -> frozenset[str]:
    out = set()
    for f in flags:
        low = f.lower()
        if low in SYSTEM:
            out.add(SYSTEM[low])
        elif not f.startswith("\\"):
            out.add(low)
    return frozenset(out)


def flags_of(keywords: frozenset[str], current: frozenset[str]) -> frozenset[str]:
    """IMAP flags for ``keywords``, keeping flags JMAP does not show (\\Deleted, \\Recent)."""
    keep = {f for f in current if f.startswith("\\") and f.lower() not in SYSTEM}
    return frozenset(keep | {TO_SYSTEM.get(k, k) for k in keywords})


def role_of(info: st.MailboxInfo) -> str | None:
    if info.name.upper() == "INBOX":
        return "inbox"
    return info.special_use[1:].lower() if info.special_use else None


@dataclass(frozen=True)
class Entry:
    uidvalidity: int
    uidnext: int
    modseq: int
    look: str  # hash of name, subscription, role


#: after a folder's ``look`` in a grantee's state: the ``\\Seen`` shown there is the grantee's own
PRIVATE_MARK = "p"


def _flipped(o: Entry, n: Entry) -> bool:
    """Did the folder's \\Seen switch between the owner's and the grantee's own (a change of ``s``)?"""
    return o.look.endswith(PRIVATE_MARK) != n.look.endswith(PRIVATE_MARK)


_looks: dict[tuple[str, bool, str | None], str] = {}


def _look(info: st.MailboxInfo) -> str:
    """A short hash of what Mailbox/changes reports beside the counts (name, subscription, role);
    kept per worker by those values: each state reads it for every mailbox."""
    key = (info.name, info.subscribed, info.special_use)
    hit = _looks.get(key)
    if hit is None:
        if len(_looks) > 4096:
            _looks.clear()
        hit = _looks[key] = hashlib.sha1(f"{key[0]}\0{key[1]}\0{key[2]}".encode()).hexdigest()[:6]
    return hit


_encoded: dict[tuple[tuple[str, Entry], ...], str] = {}


def encode_state(vec: dict[str, Entry]) -> str:
    key = tuple(sorted(vec.items()))
    hit = _encoded.get(key)
    if hit is not None:
        return hit
    if len(_encoded) > 1024:
        _encoded.clear()
    _encoded[key] = out = _encode(vec)
    return out


def _encode(vec: dict[str, Entry]) -> str:
    text = ";".join(f"{k},{e.uidvalidity},{e.uidnext},{e.modseq},{e.look}" for k, e in sorted(vec.items()))
    return base64.urlsafe_b64encode(zlib.compress(text.encode(), 9)).decode().rstrip("=")


def decode_state(state: str) -> dict[str, Entry]:
    try:
        text = zlib.decompress(base64.urlsafe_b64decode(state + "=" * (-len(state) % 4))).decode()
        out = {}
        for item in filter(None, text.split(";")):
            k, v, n, m, look = item.split(",")
            out[k] = Entry(int(v), int(n), int(m), look)
        return out
    except (ValueError, zlib.error, UnicodeDecodeError):
        raise CannotCalculateChanges(state) from None


class StoreBackend:
    """One account of the store, seen through JMAP. One per account per worker (cached)."""

    def __init__(self, acct: Any, account_id: str, name: str, limits: st.QuotaLimits,
                 policy_source: Callable[[], Any] | None = None) -> None:
        self.acct = acct
        #: returns the worker's ``mailsrv.policy.Policy`` (or None): moves into or out of Junk train it
        self.policy_source = policy_source
        self.account_id = account_id
        self.name = name
        self.limits = limits
        self._seen: dict[tuple[str, int, int], tuple[str, str]] = {}
        self._infos_memo: tuple[object, list[st.MailboxInfo]] | None = None
        self._state_memo: tuple[list[st.MailboxInfo], str] | None = None
        self._by_id: dict[str, EmailMeta] = {}
        self._names: dict[str, str] = {}
        self._emails_cache: tuple[str, list[EmailMeta], dict[str, list[tuple[str, int, st.MessageInfo]]]] | None = None
        #: mailboxes(): (the email list and the folders it was made from, the Mailboxes)
        self._mailboxes_memo: tuple[list[EmailMeta], list[st.MailboxInfo], list[Mailbox]] | None = None

    # --- states --------------------------------------------------------------------

    async def _infos(self) -> list[st.MailboxInfo]:
        # Reused within one task (one API request): a state read earlier in the request is at worst
        # older than the data (changes get reported again), never newer; our own writes drop it.
        task = asyncio.current_task()
        if self._infos_memo is not None and self._infos_memo[0] is task:
            return self._infos_memo[1]
        infos = list(await self.acct.list_mailboxes())
        self._infos_memo = (task, infos)
        return infos

    async def index_waiting(self) -> None:
        """Index every mailbox with files waiting in ``new/`` (or changed behind the index); a
        sync that cannot run now is logged and left to the next reader, as every read does."""
        engine = self.acct.engine
        try:
            names = await self.acct.store.io.run(_waiting_mailboxes, engine)
        except (st.StoreError, OSError, sqlite3.Error) as exc:
            logger.warning("jmap.push.index_failed", account=self.acct.id, error=str(exc)[:200])
            return
        for name in names:
            try:
                await self.acct.sync(name)
            except (st.StoreError, OSError, sqlite3.Error) as exc:
                logger.warning("jmap.push.index_failed", account=self.acct.id, mailbox=name, error=str(exc)[:200])

    def _dirty(self) -> None:
        self._infos_memo = None
        self._emails_cache = None
        self._mailboxes_memo = None

    def _vector(self, infos: list[st.MailboxInfo]) -> dict[str, Entry]:
        # A grantee's private-\Seen view (store/privateseen.py) marks the folders where the \Seen shown
        # is the grantee's (they hold ``s``): a rights change that flips it moves the state, so the
        # email cache (keyed on it) is rebuilt and /changes names the folder's emails (module docstring).
        private = getattr(self.acct, "private", None)
        return {i.id: Entry(i.uidvalidity, i.uidnext, i.highestmodseq,
                            _look(i) + (PRIVATE_MARK if private is not None and private(i.name) else ""))
                for i in infos}

    async def state(self, type_: str) -> str:
        return self._state_of(await self._infos())

    def _state_of(self, infos: list[st.MailboxInfo]) -> str:
        """The state of this read of the folders (the email list's cache key too)."""
        memo = self._state_memo
        if memo is not None and memo[0] is infos:  # the same read (one request asks 2-3 times)
            return memo[1]
        out = encode_state(self._vector(infos))
        if getattr(self.acct, "private", None) is None:  # a private view's marks follow rights, not the read
            self._state_memo = (infos, out)
        return out

    async def changes(self, type_: str, since: str, max_changes: int | None) -> ChangeSet:
        old = decode_state(since)
        infos = await self._infos()
        new = self._vector(infos)
        if type_ == "Mailbox":
            cs = ChangeSet(since, encode_state(new), False)
            cs.created = [k for k in new if k not in old]
            cs.destroyed = [k for k in old if k not in new]
            changed = [k for k in new if k in old and new[k] != old[k]]
            cs.updated = changed
            cs.counts_only = bool(changed) and all(new[k].look == old[k].look for k in changed)
            if max_changes is not None and len(cs.created) + len(cs.updated) + len(cs.destroyed) > max_changes:
                raise CannotCalculateChanges("more mailbox changes than maxChanges")
            return cs
        by_id = {i.id: i for i in infos}
        _, _, copies = await self._all()
        created: set[str] = set()
        updated: set[str] = set()
        destroyed: set[str] = set()
        threads_touched: set[str] = set()
        for mid in sorted(set(old) | set(new)):
            o, n = old.get(mid), new.get(mid)
            if n is None:  # mailbox gone: its messages left it
                if o is not None and o.uidnext > 1:
                    raise CannotCalculateChanges("a mailbox with mail was deleted")
                continue
            info = by_id[mid]
            fresh = o is None  # a mailbox new since the old state: none of its uids were known
            if fresh and n.uidnext == 1:
                continue  # and it never held mail (a Mailbox/set create, an IMAP CREATE)
            if o is None or o.uidvalidity != n.uidvalidity:
                o = Entry(n.uidvalidity, 1, 0, "")
            if _flipped(o, n):  # every $seen there may differ now: each email it held is updated
                for eid, lst in copies.items():
                    for cmid, uid, m in lst:
                        if cmid == mid and uid < o.uidnext:
                            updated.add(eid)
                            threads_touched.add(m.thread_id)
            elif (o.uidnext, o.modseq) == (n.uidnext, n.modseq):
                continue
            since_m = await self.acct.changes_since(info.name, o.modseq)
            # RFC 8620 §5.2: refuse only when an expunge the client may have seen cannot be named. A
            # fresh mailbox's history starts at its creation (vanished_floor), so modseq 0 is
            # "truncated" there, but every uid of it is past the old state: what left it came and went.
            # (A new UIDVALIDITY of a known mailbox still refuses: the client's uids there are lost.)
            if getattr(since_m, "truncated", False) and not fresh:
                raise CannotCalculateChanges("the expunge history no longer reaches that state")
            for m in since_m.changed:
                self._seen[(mid, n.uidvalidity, m.uid)] = (m.email_id, m.thread_id)
                threads_touched.add(m.thread_id)
                (created if m.uid >= o.uidnext else updated).add(m.email_id)
            for uid in since_m.expunged:
                known = self._seen.get((mid, n.uidvalidity, uid)) or since_m.expunged_ids.get(uid)
                if known is None:
                    if uid >= o.uidnext:
                        continue  # came and went after the old state
                    raise CannotCalculateChanges("an expunged message is unknown to this worker")
                threads_touched.add(known[1])
                (destroyed if uid < o.uidnext else created).add(known[0])
        def existed_before(eid: str) -> bool:
            for mid, uid, _ in copies.get(eid, []):
                o = old.get(mid)
                if o is not None and uid < o.uidnext and o.uidvalidity == new[mid].uidvalidity:
                    return True
            return False
        out_created, out_updated, out_destroyed = [], [], []
        for eid in sorted(created | updated | destroyed):
            now = eid in copies
            before = existed_before(eid) or (eid in destroyed)
            if now and not before:
                out_created.append(eid)
            elif now:
                out_updated.append(eid)
            elif before:
                out_destroyed.append(eid)
        cs = ChangeSet(since, encode_state(new), False)
        if type_ == "Thread":
            members: dict[str, set[str]] = {}
            for eid, lst in copies.items():
                members.setdefault(lst[0][2].thread_id, set()).add(eid)
            new_emails = set(out_created)
            for t in sorted(threads_touched):
                if t not in members:
                    cs.destroyed.append(t)
                elif members[t] <= new_emails:
                    cs.created.append(t)  # every email of it is new: the thread is new
                else:
                    cs.updated.append(t)
        else:
            cs.created, cs.updated, cs.destroyed = out_created, out_updated, out_destroyed
        if max_changes is not None and len(cs.created) + len(cs.updated) + len(cs.destroyed) > max_changes:
            raise CannotCalculateChanges("more changes than maxChanges")
        return cs

    # --- mailboxes ---------------------------------------------------------------------

    async def mailboxes(self) -> list[Mailbox]:
        infos = await self._infos()
        metas, _, copies = await self._all()
        # the counts walk every email: kept while the email list (rebuilt at any change of the state)
        # and the folders (names, subscriptions, roles, counters) are the same; the folders are compared
        # too, though the state holds them, as its name/subscription/role part is a 24-bit hash
        memo = self._mailboxes_memo
        if memo is not None and memo[0] is metas and memo[1] == infos:
            return list(memo[2])
        by_name = {i.name: i for i in infos}
        unread_threads_all = {m.thread_id for m in metas if "$seen" not in m.keywords}
        per_box: dict[str, list[EmailMeta]] = {}
        for m in metas:
            for b in m.mailbox_ids:
                per_box.setdefault(b, []).append(m)
        out = []
        for i in infos:
            parent_name, _, leaf = i.name.rpartition(DELIM)
            parent = by_name.get(parent_name) if parent_name else None
            inside = per_box.get(i.id, [])
            threads = {m.thread_id for m in inside}
            out.append(Mailbox(
                i.id, "Inbox" if i.name.upper() == "INBOX" else leaf, parent.id if parent else None, role_of(i),
                0 if i.name.upper() == "INBOX" else 10, i.subscribed, len(inside),
                sum(1 for m in inside if "$seen" not in m.keywords), len(threads), len(threads & unread_threads_all),
            ))
        self._mailboxes_memo = (metas, infos, out)
        return list(out)

    async def _name_of(self, mailbox_id: str) -> str:
        for i in await self._infos():
            if i.id == mailbox_id:
                return str(i.name)
        raise NotFound(mailbox_id)

    async def create_mailbox(self, name: str, parent_id: str | None, role: str | None, sort_order: int,
                             is_subscribed: bool) -> Mailbox:
        if DELIM in name:
            raise NameConflict(f"{DELIM!r} is the hierarchy separator")
        full = name if parent_id is None else (await self._name_of(parent_id)) + DELIM + name
        try:
            info = await self.acct.create_mailbox(full, "\\" + role.title() if role else None)
        except st.MailboxExists:
            raise NameConflict(name) from None
        except st.BadMailboxName as exc:
            raise InvalidName(str(exc)) from None
        if is_subscribed:
            await self.acct.subscribe(full, True)
        self._dirty()
        return next(m for m in await self.mailboxes() if m.id == info.id)

    async def update_mailbox(self, mailbox_id: str, *, name: str | None = None,
                             parent_id: str | None | Unchanged = UNCHANGED, role: str | None | Unchanged = UNCHANGED,
                             sort_order: int | None = None, is_subscribed: bool | None = None) -> None:
        cur = await self._name_of(mailbox_id)
        infos = {i.id: i for i in await self._infos()}
        if not isinstance(role, Unchanged) and role != role_of(infos[mailbox_id]):
            raise NameConflict("the role of an existing mailbox cannot be changed here")
        parent_name, _, leaf = cur.rpartition(DELIM)
        if not isinstance(parent_id, Unchanged):
            if parent_id is not None and parent_id not in infos:
                raise NotFound(parent_id)
            parent_name = infos[parent_id].name if parent_id is not None else ""
        new_leaf = leaf if name is None else name
        if DELIM in new_leaf:
            raise NameConflict(f"{DELIM!r} is the hierarchy separator")
        target = f"{parent_name}{DELIM}{new_leaf}" if parent_name else new_leaf
        if target != cur:
            if target.startswith(cur + DELIM):
                raise NameConflict("a mailbox cannot move under itself")
            try:
                await self.acct.rename_mailbox(cur, target)
            except st.MailboxExists:
                raise NameConflict(target) from None
            except st.BadMailboxName as exc:
                raise InvalidName(str(exc)) from None
            cur = target
        if is_subscribed is not None:
            await self.acct.subscribe(cur, is_subscribed)
        self._dirty()

    async def destroy_mailbox(self, mailbox_id: str, remove_emails: bool) -> None:
        name = await self._name_of(mailbox_id)
        infos = await self._infos()
        if any(i.name.startswith(name + DELIM) for i in infos):
            raise MailboxHasChild(mailbox_id)
        info = next(i for i in infos if i.id == mailbox_id)
        if info.messages and not remove_emails:
            raise MailboxHasEmail(mailbox_id)
        if name.upper() == "INBOX":
            raise Forbidden("INBOX cannot be deleted")
        await self.acct.delete_mailbox(name)
        self._dirty()

    # --- emails ------------------------------------------------------------------------

    async def _all(self) -> tuple[list[EmailMeta], dict[str, EmailMeta], dict[str, list[tuple[str, int, st.MessageInfo]]]]:
        infos = await self._infos()
        key = self._state_of(infos)
        if self._emails_cache is not None and self._emails_cache[0] == key:
            return self._emails_cache[1], self._by_id, self._emails_cache[2]
        copies: dict[str, list[tuple[str, int, st.MessageInfo]]] = {}
        self._names = {i.id: i.name for i in infos}
        for i in infos:
            view = await self.acct.open_mailbox(i.name)
            for m in view.messages:
                copies.setdefault(m.email_id, []).append((i.id, m.uid, m))
                self._seen[(i.id, i.uidvalidity, m.uid)] = (m.email_id, m.thread_id)
        metas = []
        for eid, lst in copies.items():
            first = lst[0][2]
            metas.append(EmailMeta(eid, "B" + eid, first.thread_id, frozenset(c[0] for c in lst),
                                   keywords_of(first.flags), first.size, first.internal_date))
        self._emails_cache = (key, metas, copies)
        self._by_id = {m.id: m for m in metas}
        return metas, self._by_id, copies

    async def emails(self) -> list[EmailMeta]:
        return (await self._all())[0]

    async def get_emails(self, ids: list[str]) -> dict[str, EmailMeta]:
        _, by_id, _ = await self._all()
        return {i: by_id[i] for i in ids if i in by_id}

    async def read_blob(self, blob_id: str) -> bytes | None:
        if not blob_id.startswith("B"):
            return None
        cache = self._emails_cache
        if cache is not None and blob_id[1:] in cache[2]:
            names = self._names  # of the same snapshot as the cache (no list_mailboxes per blob)
            for mid, uid, _ in cache[2][blob_id[1:]]:
                try:
                    return bytes(await self.acct.read_message(names[mid], uid))
                except (st.StoreError, KeyError):
                    continue
        for mailbox, uid in await self.acct.find_email(blob_id[1:]):
            try:
                return bytes(await self.acct.read_message(mailbox, uid))
            except st.StoreError:
                continue
        return None

    async def structures(self, blob_ids: list[str]) -> dict[str, MessageStructure]:
        """The structures the store parsed at delivery (docs/store-api.md ``structures``): one index
        query per mailbox, no message file read."""
        _, _, copies = await self._all()
        names = self._names  # of the same snapshot as ``copies``
        by_box: dict[str, dict[int, str]] = {}
        for bid in blob_ids:
            lst = copies.get(bid[1:]) if bid.startswith("B") else None
            if lst:
                mid, uid, _ = lst[0]
                by_box.setdefault(mid, {})[uid] = bid
        out: dict[str, MessageStructure] = {}
        for mid, uids in by_box.items():
            try:
                got = await self.acct.structures(names[mid], list(uids))
            except (st.StoreError, KeyError):
                continue  # the mailbox went away: the caller reads (or misses) the message
            for uid, s in got.items():
                out[uids[uid]] = s
        return out

    async def blob_path(self, blob_id: str) -> Path | None:
        """Where a whole-message blob's file is now (downloads stream it; may move on a flag change)."""
        if not blob_id.startswith("B"):
            return None
        for mailbox, uid in await self.acct.find_email(blob_id[1:]):
            try:
                return Path(await self.acct.message_path(mailbox, uid))
            except st.StoreError:
                continue
        return None

    async def update_email(self, email_id: str, *, mailbox_ids: frozenset[str] | None = None,
                           keywords: frozenset[str] | None = None) -> None:
        _, by_id, copies = await self._all()
        if email_id not in by_id:
            raise NotFound(email_id)
        names = {i.id: i.name for i in await self._infos()}
        here = copies[email_id]
        if keywords is not None:
            for mid, uid, info in here:
                want = flags_of(keywords, info.flags)
                if want != info.flags:
                    await self.acct.store_flags(names[mid], [uid], want, "replace")
        if mailbox_ids is not None:
            if any(m not in names for m in mailbox_ids):
                raise NotFound("mailbox")
            have = {mid: uid for mid, uid, _ in here}
            add = [m for m in mailbox_ids if m not in have]
            remove = [m for m in have if m not in mailbox_ids]
            src, src_uid = next(iter(have.items()))
            training = await self._training(names, have, add, remove)
            # a move keeps the file and the email id; extra targets are copies
            while add and remove:
                dst = add.pop()
                rm = remove.pop()
                await self.acct.move(names[rm], [have[rm]], names[dst])
                if rm == src:
                    src, src_uid = dst, -1
            for dst in add:
                if src_uid == -1:
                    src_uid = await self._uid_in(names[src], email_id)
                await self.acct.copy(names[src], [src_uid], names[dst], self.limits)
            for rm in remove:
                await self.acct.expunge(names[rm], [have[rm]], only_deleted=False)
            if training is not None:
                await self._train(*training)
        self._dirty()

    async def _training(self, names: dict[str, str], have: dict[str, int], add: list[str],
                        remove: list[str]) -> tuple[Any, str, str, bytes] | None:
        """(policy, from, to, message) when a mailboxIds change moves the email into or out of Junk."""
        if self.policy_source is None or not add or not remove:
            return None
        for rm in remove:
            for dst in add:
                if training_label(names[rm], names[dst]) is not None:
                    policy = self.policy_source()
                    if policy is None:
                        return None
                    data = await self.acct.read_message(names[rm], have[rm])
                    return policy, names[rm], names[dst], data
        return None

    async def _train(self, policy: Any, src: str, dst: str, data: bytes) -> None:
        """After the move is durable (docs/policy.md): queued for the policy's background trainer with the
        message itself (read before the move); a training failure never fails the update."""
        try:
            await policy.train_later(self.name, src, dst, [(dst, 0)], messages=[data])
        except Exception as exc:
            logger.warning("jmap.train_failed", error=f"{type(exc).__name__}: {exc}"[:200])

    async def _uid_in(self, mailbox: str, email_id: str) -> int:
        view = await self.acct.open_mailbox(mailbox)
        return next(m.uid for m in view.messages if m.email_id == email_id)

    async def destroy_email(self, email_id: str) -> None:
        _, by_id, copies = await self._all()
        if email_id not in by_id:
            raise NotFound(email_id)
        names = {i.id: i.name for i in await self._infos()}
        for mid, uid, _ in copies[email_id]:
            await self.acct.expunge(names[mid], [uid], only_deleted=False)
        self._dirty()

    async def import_email(self, data: bytes | Path, mailbox_ids: frozenset[str], keywords: frozenset[str],
                           received_at: float | None) -> EmailMeta:
        names = {i.id: i.name for i in await self._infos()}
        if not mailbox_ids or any(m not in names for m in mailbox_ids):
            raise NotFound("mailbox")
        order = sorted(mailbox_ids)
        first = names[order[0]]
        try:
            uid = await self.acct.append(first, data, flags_of(keywords, frozenset()), received_at, self.limits)
            for m in order[1:]:
                await self.acct.copy(first, [uid], names[m], self.limits)
        except st.OverQuota:
            raise OverQuota() from None
        self._dirty()
        view = await self.acct.open_mailbox(first)
        info = view.by_uid(uid)
        assert info is not None
        return EmailMeta(info.email_id, "B" + info.email_id, info.thread_id, frozenset(mailbox_ids),
                         keywords_of(info.flags), info.size, info.internal_date)

    async def quota(self) -> tuple[int, int, int | None, int | None]:
        u = await self.acct.quota_usage()
        return u.storage, u.messages, self.limits.storage, self.limits.messages

    def watch(self) -> _StoreWatch:
        return _StoreWatch(self.acct.watch(), self)


def _waiting_mailboxes(engine: Any) -> list[str]:
    """Mailboxes whose ``new/`` holds files or whose ``cur/`` moved behind the index (one pool job)."""
    return [i.name for i in engine.list_mailboxes() if engine.needs_sync(i.name)]


class _StoreWatch:
    def __init__(self, w: Any, backend: StoreBackend) -> None:
        self.w = w
        self.backend = backend

    async def wait(self, seconds: float | None = None) -> bool:
        woke = bool(await self.w.wait(seconds))
        if woke:
            # A delivery wakes us through its new/ entry, before any indexer (maybe another
            # worker's, index_delay later) has given it a UID: index it now, as an IMAP IDLE
            # refresh does, so the StateChange leaves at once (the states count indexed mail only).
            await self.backend.index_waiting()
        self.backend._dirty()  # a long-lived push task must see the new state
        return woke

    def close(self) -> None:
        self.w.close()


def store_factory(store: Any, directory: Any, data_dir: Path,
                  policy_source: Callable[[], Any] | None = None) -> Callable[[Any], Awaitable[StoreBackend]]:
    """A BackendFactory for the worker: principal -> its account's StoreBackend (cached).

    ``policy_source``: returns the worker's Policy (or None), trained on moves into/out of Junk.
    """
    cache: dict[str, StoreBackend] = {}

    async def factory(p: Any) -> StoreBackend:
        be = cache.get(p.id)
        if be is not None:
            return be
        account = p.account
        if account is None and directory is not None:
            account = await directory.account(int(p.id))
        if account is None:
            raise NotFound(p.id)
        acct = await store.account(str(account.id), st.account_root(data_dir, account.id, account.store),
                                   domain=getattr(account, "domain", None))  # the domain quota root
        limits = st.QuotaLimits(account.quota_bytes, account.quota_messages)
        be = StoreBackend(acct, "A" + str(account.id), account.address, limits, policy_source)
        cache[p.id] = be
        return be

    return factory


def _store_backend(be: Any) -> StoreBackend | None:
    """The StoreBackend under ``be``'s wrappers (overlays, trackers), or None (another backend)."""
    for _ in range(8):
        if isinstance(be, StoreBackend):
            return be
        be = getattr(be, "__dict__", {}).get("be")
        if be is None:
            return None
    return None


def same_store(a: Any, b: Any) -> bool:
    """Are ``a`` and ``b`` one backend, or wrappers (made anew per request) of one StoreBackend?"""
    return a is b or ((sb := _store_backend(a)) is not None and sb is _store_backend(b))


def with_private_seen(shared: Any, own: Any) -> Any:
    """The owner's backend ``shared`` as the grantee whose own backend is ``own`` sees it with their
    private ``\\Seen`` (``[imap] shared_private_seen``, store/privateseen.py): ``$seen``,
    ``unreadEmails`` / ``unreadThreads``, Email/set of ``$seen`` and the states (which count the
    grantee's private writes) are the grantee's. ``shared`` itself when either is not on the store."""
    from mailsrv.jmap.overlay import SortOrderOverlay
    from mailsrv.store import privateseen

    sb, mine = _store_backend(shared), _store_backend(own)
    if sb is None or mine is None:
        return shared
    acct = privateseen.wrap(sb.acct, mine.acct)
    if acct is sb.acct:
        return shared
    be = StoreBackend(acct, sb.account_id, sb.name, sb.limits, sb.policy_source)
    return SortOrderOverlay(be, shared.meta) if isinstance(shared, SortOrderOverlay) else be


def follow_rights(view: Any, share: Any) -> None:
    """A view made by :func:`with_private_seen` takes the grantee's rights now (``OwnerShare``): its
    ``$seen`` is private in the folders where they hold ``s``, the owner's elsewhere."""
    from mailsrv.store import privateseen

    sb = _store_backend(view)
    if sb is not None:
        privateseen.follow_rights(sb.acct, share)


def with_sort_order(factory: Callable[[Any], Awaitable[Any]], root: Path, io: Any) -> Callable[[Any], Awaitable[Any]]:
    """Wrap a backend factory so that Mailbox sortOrder is kept (overlay.py)."""
    from mailsrv.jmap.objects import Collection
    from mailsrv.jmap.overlay import SortOrderOverlay

    async def wrapped(p: Any) -> Any:
        be = await factory(p)
        return SortOrderOverlay(be, Collection(root, io, be.account_id, "MailboxMeta"))

    return wrapped
