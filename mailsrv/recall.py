"""Recall of internal mail: a sender takes back the unread local copies of a message they sent.

Invariants: only copies whose Return-Path (or, without one, From) is one of the sender's own
addresses (primary or alias; not a group they may send as) are ever touched; a copy flagged
``\\Seen`` is left; removal goes through ``Account.expunge`` (the path of IMAP EXPUNGE and JMAP
destroy: IMAP sessions get EXPUNGE/VANISHED, JMAP push a state change, quota counters drop).
The sender's own account is never changed. Mail that left the organisation cannot be recalled.

Finding the copies: every local account's index is asked, read-only and outside the store's account
cache, whether it ever saw that Message-ID (``store.engine.may_hold_msgid``: one primary-key read);
only the accounts that did (and those with mail waiting in ``new/``) are opened, their recent rows
read (``Account.recent_with_msgid``) and the cached structures of those checked. Cost is about one
index lookup per account ([recall] max_accounts bounds it; docs/recall.md has measurements).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, make_msgid
from pathlib import Path
from typing import Any, Literal

from mailsrv import log
from mailsrv.config import Config, RecallConfig
from mailsrv.delivery.local import LocalDelivery
from mailsrv.delivery.spool import spool_dir
from mailsrv.directory import Account, Kind, Resolution
from mailsrv.mime.headers import parse_addresses
from mailsrv.store import StoreError, account_root
from mailsrv.store.engine import may_hold_msgid

logger = log.get("recall")

Status = Literal["recalled", "read", "expired", "not found", "external", "failed"]

#: recalls one process runs at once (each scans the organisation's indexes); more wait their turn
RECALLS_AT_ONCE = 2
#: accounts taken from the directory per round of peeks
ACCOUNT_PAGE = 256
#: accounts whose index is asked at the same time (the store's I/O pool runs them)
RECALL_CONCURRENCY = 16
#: threads peeking at the indexes of accounts not open in this process (~1 ms each, 1/3 of it CPU)
PEEK_THREADS = 4
#: copies older than the window are still reported ("expired") up to this many windows back
LOOKBACK_WINDOWS = 2
#: tries to mark a copy \Deleted while its owner changes its flags at that very moment
FLAG_RACE_TRIES = 3
#: header bytes read to find a copy's Return-Path (it is the first line of a local delivery)
HEADER_READ_MAX = 64 * 1024
#: RFC 5321 §4.4: the Return-Path local delivery writes as a copy's first line (only there is it ours)
_RETURN_PATH = re.compile(rb"return-path:[ \t]*<([^\r\n]*)>[ \t]*\r?\n", re.IGNORECASE)
_MSGID = re.compile(r"<?\s*([^<>\s]{1,500})\s*>?")


class RecallError(Exception):
    """The recall cannot be made: disabled, unknown sender, malformed Message-ID."""


@dataclass(frozen=True)
class RecallResult:
    """One recipient: ``recipient`` is the account's address (or an outside address)."""

    recipient: str
    status: Status
    mailbox: str | None = None
    uid: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"recipient": self.recipient, "status": self.status, "mailbox": self.mailbox, "uid": self.uid}


class RecallResults(list[RecallResult]):
    """One recall's results, sorted by recipient. ``truncated``: the scan stopped at ``[recall]
    max_accounts`` accounts, so copies in the accounts after them were not looked at: the results
    (and the recall) may be incomplete."""

    truncated: bool = False


def normalise_message_id(message_id: str) -> str:
    """``<id@host>`` or ``id@host`` -> ``id@host`` (as the store's index keeps it). Raises RecallError."""
    m = _MSGID.fullmatch(message_id.strip())
    if m is None:
        raise RecallError(f"not a Message-ID: {message_id!r}")
    return m.group(1)


@dataclass
class _Copy:
    account: Account
    sacct: Any  # its store Account
    mailbox: str
    uid: int
    flags: frozenset[str]
    internal_date: float
    modseq: int
    subject: str
    listed: list[str]  # To/Cc/Bcc addresses of the copy


class Recaller:
    """Per process (a worker's admin or JMAP service, or the CLI); ``store``, ``directory`` as in a worker."""

    def __init__(self, config: RecallConfig, store: Any, directory: Any, data_dir: Path,
                 archives: Iterable[str] = ()) -> None:
        self.config = config
        #: the archiving rules' accounts (docs/archive.md): never searched, never reported to the sender
        self.archives = tuple(archives)
        self.store = store
        self.directory = directory
        self.data_dir = Path(data_dir)
        self.delivery = LocalDelivery(directory, store, self.data_dir)
        self._gate = asyncio.Semaphore(RECALLS_AT_ONCE)

    @classmethod
    def of(cls, cfg: Config, store: Any, directory: Any) -> Recaller:
        """As the configuration says: [recall], the data directory, and the archive accounts to leave alone."""
        return cls(cfg.recall, store, directory, Path(cfg.server.data_dir),
                   archives=[rule.to for rule in cfg.archive.rule.values()])

    async def recall(self, sender: str, message_id: str, *, now: float | None = None) -> RecallResults:
        """Recall ``message_id`` sent by the local user ``sender`` (any of their addresses).

        Returns one result per recipient, sorted by address (``.truncated`` when ``[recall]
        max_accounts`` cut the scan short). Raises RecallError.
        """
        async with self._gate:
            return await self._recall(sender, message_id, now)

    async def _recall(self, sender: str, message_id: str, now: float | None) -> RecallResults:
        if not self.config.enabled:
            raise RecallError("recall is disabled ([recall] enabled = false)")
        owner = await self.directory.account_by_address(sender)
        if owner is None:
            raise RecallError(f"no local user {sender}")
        msgid = normalise_message_id(message_id)
        now = time.time() if now is None else now
        since = now - self.config.window * LOOKBACK_WINDOWS
        owned: dict[str, bool] = {}
        skip = {a.id for a in [await self.directory.account_by_address(x) for x in self.archives] if a is not None}
        own_copies: list[_Copy] = []
        out: list[RecallResult] = []
        recalled: list[_Copy] = []
        theirs: list[list[_Copy]] = []
        found, truncated = await self._find(msgid, since, owner, owned)
        for acct, copies in found:
            if acct.id in skip:  # an archive keeps its copy (delivered read) and is not the sender's business
                continue
            if acct.id == owner.id:
                own_copies += copies
            else:
                theirs.append(copies)
        # accounts in parallel (each removal is two index transactions); one account's copies in turn
        for i in range(0, len(theirs), RECALL_CONCURRENCY):
            part = theirs[i:i + RECALL_CONCURRENCY]
            for res, done in await asyncio.gather(*(self._take_all(cs, now) for cs in part)):
                out.append(res)
                recalled += done
        out += await self._unreached(own_copies, {r.recipient for r in out}, owner)
        logger.info("recall.done", sender=owner.address, msgid=msgid, recalled=len(recalled),
                    results=len(out), truncated=truncated)
        if recalled and self.config.notice:
            await self._notify(owner, recalled, now)
        results = RecallResults(sorted(out, key=lambda r: r.recipient))
        results.truncated = truncated
        return results

    # -- finding the copies ----------------------------------------------------------------------------

    async def _find(self, msgid: str, since: float, owner: Account,
                    owned: dict[str, bool]) -> tuple[list[tuple[Account, list[_Copy]]], bool]:
        """The accounts holding copies, and whether max_accounts stopped the scan before the last one."""
        found: list[tuple[Account, list[_Copy]]] = []
        batch: list[Account] = []
        seen = 0
        truncated = False

        async def flush() -> None:
            pairs = [(a, account_root(self.data_dir, a.id, a.store)) for a in batch]
            # an account open in this process answers from its index at once; the others are peeked at
            roots = [p for p in pairs if self.store.cached_account(str(p[0].id)) is not None]
            others = [p for p in pairs if self.store.cached_account(str(p[0].id)) is None]
            for peeked in await asyncio.gather(*(asyncio.to_thread(_candidates, others[i::PEEK_THREADS], msgid)
                                                 for i in range(min(PEEK_THREADS, len(others))))):
                roots += peeked
            for i in range(0, len(roots), RECALL_CONCURRENCY):
                part = roots[i:i + RECALL_CONCURRENCY]
                got = await asyncio.gather(*(self._copies(a, root, msgid, since, owner, owned) for a, root in part))
                found.extend((a, c) for (a, _), c in zip(part, got, strict=True) if c)
            batch.clear()

        async for acct in self.directory.iter_accounts(None):
            seen += 1
            if seen > self.config.max_accounts:
                logger.warning("recall.truncated", max_accounts=self.config.max_accounts)
                truncated = True
                break
            batch.append(acct)
            if len(batch) >= ACCOUNT_PAGE:
                await flush()
        await flush()
        return found, truncated

    async def _copies(self, acct: Account, root: Path, msgid: str, since: float, owner: Account,
                      owned: dict[str, bool]) -> list[_Copy]:
        aid = str(acct.id)
        try:
            sacct = self.store.cached_account(aid) or await self.store.account(aid, root, domain=acct.domain)
            await sacct.mailbox_status("INBOX")  # indexes a delivery still waiting in new/
            rows = await sacct.recent_with_msgid(msgid, since)
        except StoreError as exc:  # one unreadable account does not stop the others' recall
            logger.warning("recall.account_failed", account=acct.address, error=str(exc))
            return []
        out: list[_Copy] = []
        by_box: dict[str, list[tuple[int, frozenset[str], float, int]]] = {}
        for mailbox, uid, flags, idate, modseq in rows:
            by_box.setdefault(mailbox, []).append((uid, flags, idate, modseq))
        for mailbox, entries in by_box.items():
            try:
                structs = await sacct.structures(mailbox, [e[0] for e in entries])
            except StoreError:
                continue  # the mailbox went away meanwhile
            for uid, flags, idate, modseq in entries:
                st = structs.get(uid)
                if st is None or st.message_id != msgid:
                    continue
                if not await self._is_owners(sacct, mailbox, uid, st, owner, owned):
                    continue
                listed = [a for name in (b"to", b"cc", b"bcc") for a in _addrs(st.field(name))]
                out.append(_Copy(acct, sacct, mailbox, uid, flags, idate, modseq, st.subject or "", listed))
        return out

    async def _is_owners(self, sacct: Any, mailbox: str, uid: int, st: Any, owner: Account,
                         owned: dict[str, bool]) -> bool:
        """Return-Path decides when the copy starts with one (SMTP delivery writes it first); else From."""
        try:
            head = await sacct.read_message(mailbox, uid, 0, min(st.header_end, HEADER_READ_MAX))
        except StoreError:
            return False
        # Only the first line is ours: a Return-Path lower down (a copy with none of ours: JMAP submission, a
        # client's APPEND) was written by whoever wrote the message, who could name anyone there.
        if head[:12].lower() == b"return-path:":
            m = _RETURN_PATH.match(head)
            addrs = [m.group(1).decode("utf-8", "replace")] if m else []
        else:
            addrs = _addrs(st.field(b"from"))
        if not addrs:
            return False
        for a in addrs:
            if a.lower() not in owned:
                acct = await self.directory.account_by_address(a) if a else None
                owned[a.lower()] = acct is not None and acct.id == owner.id
            if not owned[a.lower()]:
                return False
        return True

    # -- acting on them --------------------------------------------------------------------------------

    async def _take_all(self, copies: list[_Copy], now: float) -> tuple[RecallResult, list[_Copy]]:
        """One account's copies: its strongest result (recalled > read > expired > not found), the removed."""
        best: RecallResult | None = None
        done: list[_Copy] = []
        for c in copies:
            r = await self._take_back(c, now)
            if r.status == "recalled":
                done.append(c)
            if best is None or _RANK[r.status] > _RANK[best.status]:
                best = r
        assert best is not None  # _copies returns no empty list
        return best, done

    async def _take_back(self, c: _Copy, now: float) -> RecallResult:
        who = c.account.address
        if "\\Seen" in c.flags:
            return RecallResult(who, "read", c.mailbox, c.uid)
        if c.internal_date < now - self.config.window:
            return RecallResult(who, "expired", c.mailbox, c.uid)
        try:
            refused = await self._mark_deleted(c)
        except StoreError as exc:
            logger.warning("recall.expunge_failed", account=who, mailbox=c.mailbox, uid=c.uid, error=str(exc))
            return RecallResult(who, "failed", c.mailbox, c.uid)
        if refused is not None:
            return RecallResult(who, refused, c.mailbox, c.uid)
        try:
            # a read between the mark and this (the mark is not a lock) keeps the copy: not if \Seen
            done = await c.sacct.expunge(c.mailbox, [c.uid], only_deleted=True, unseen_only=True)
        except StoreError as exc:
            logger.warning("recall.expunge_failed", account=who, mailbox=c.mailbox, uid=c.uid, error=str(exc))
            await self._unmark(c)
            return RecallResult(who, "failed", c.mailbox, c.uid)
        if c.uid not in done:  # read meanwhile (it stays, as it was), or expunged by its owner
            await self._unmark(c)
            try:  # marked since the look: a copy still there is among the changes
                still = any(i.uid == c.uid for i in (await c.sacct.changes_since(c.mailbox, c.modseq)).changed)
            except StoreError:
                still = False
            return RecallResult(who, "read" if still else "not found", c.mailbox, c.uid)
        logger.info("recall.removed", account=who, mailbox=c.mailbox, uid=c.uid)
        return RecallResult(who, "recalled", c.mailbox, c.uid)

    async def _unmark(self, c: _Copy) -> None:
        """Best effort: take back the ``\\Deleted`` :meth:`_mark_deleted` gave a copy that stays."""
        if "\\Deleted" in c.flags:  # it had it before: not ours to take
            return
        with contextlib.suppress(StoreError):
            await c.sacct.store_flags(c.mailbox, [c.uid], frozenset({"\\Deleted"}), "remove")

    async def _mark_deleted(self, c: _Copy) -> Status | None:
        """RFC 7162 §3.1.3 UNCHANGED SINCE: ``\\Deleted`` only if nothing (a read) changed the copy since
        it was looked at; then the caller's UID EXPUNGE takes it only while it is still ``\\Deleted``.
        None when marked, else why not ("read", "not found"). Raises StoreError."""
        modseq = c.modseq
        for _ in range(FLAG_RACE_TRIES):
            _, failed = await c.sacct.store_flags(c.mailbox, [c.uid], frozenset({"\\Deleted"}), "add",
                                                  unchanged_since=modseq)
            if not failed:
                return None
            now_info = [i for i in (await c.sacct.changes_since(c.mailbox, modseq)).changed if i.uid == c.uid]
            if not now_info:
                return "not found"  # expunged meanwhile
            if "\\Seen" in now_info[0].flags:
                return "read"
            modseq = now_info[0].modseq
        return "read"  # kept changing: left as if opened

    async def _unreached(self, own: list[_Copy], reached: set[str], owner: Account) -> list[RecallResult]:
        """Recipients the sender's own copy (Sent) lists but no local copy answered for."""
        out: list[RecallResult] = []
        done = set(reached) | {owner.address}
        for addr in dict.fromkeys(a.lower() for c in own for a in c.listed):
            if addr in done:
                continue
            res: Resolution = await self.directory.resolve(addr)
            if res.kind == Kind.OUTSIDE:
                out.append(RecallResult(addr, "external"))
            elif res.kind == Kind.GROUP:
                continue  # its members answered for themselves
            else:
                label = res.account.address if res.account is not None else addr
                if label not in done:
                    out.append(RecallResult(label, "not found"))
            done.add(addr)
        return out

    async def _notify(self, owner: Account, recalled: Iterable[_Copy], now: float) -> None:
        """A notice to each recipient whose copy was removed, through the normal local delivery: one
        message per subject, hard-linked into every INBOX (a group of thousands is one delivery)."""
        by_subject: dict[str, dict[int, Account]] = {}
        for c in recalled:
            by_subject.setdefault(c.subject, {})[c.account.id] = c.account
        spool = await asyncio.to_thread(spool_dir, self.data_dir)
        for subject, accounts in by_subject.items():
            to = next(iter(accounts.values())).address if len(accounts) == 1 else "undisclosed-recipients:;"
            raw = notice_message(owner, to, subject, now)
            path = spool / f"recall.{time.time_ns():x}.{os.getpid()}.{secrets.token_hex(6)}"
            try:
                rcpts = [(a.address, Resolution(a.address, Kind.USER, a)) for a in accounts.values()]
                out = await self.delivery.deliver(path, rcpts, data=raw)
                for addr in out.retry:
                    logger.warning("recall.notice_failed", account=addr)
            finally:
                await asyncio.to_thread(_unlink, path)


_CONTROLS = dict.fromkeys([*range(0x20), 0x7F], " ")
_RANK = {"not found": 0, "failed": 1, "expired": 2, "read": 3, "recalled": 4}


def notice_message(owner: Account, recipient: str, subject: str, now: float) -> bytes:
    """The notice left in a recipient's INBOX (as Exchange does): "<sender> recalled the message ..."."""
    # the copy's Subject decoded may hold CR LF and other controls (encoded-words): one line of text here
    subject = " ".join(subject.translate(_CONTROLS).split())
    msg = EmailMessage()
    msg["From"] = formataddr((owner.display_name, owner.address))
    msg["To"] = recipient
    msg["Subject"] = f"Recall: {subject}"
    msg["Date"] = format_datetime(datetime.fromtimestamp(now, UTC))
    msg["Message-ID"] = make_msgid(domain=owner.domain)
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834 §5
    name = owner.display_name or owner.address
    msg.set_content(f'{name} <{owner.address}> recalled the message "{subject}".\n')
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def _addrs(value: bytes | None) -> list[str]:
    if value is None:
        return []
    return [f"{a.mailbox}@{a.host}" for a in parse_addresses(value) if a.mailbox and a.host]


def _candidates(pairs: list[tuple[Account, Path]], msgid: str) -> list[tuple[Account, Path]]:
    """Blocking (a thread): the accounts that may hold the message, without opening them in the store
    (its account cache stays as the worker's sessions left it; a user without mail gets no maildir)."""
    return [(a, p) for a, p in pairs if may_hold_msgid(p, msgid)]


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
