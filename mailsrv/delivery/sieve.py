"""Sieve at local delivery (docs/sieve.md): each recipient's active script, compiled once per change,
decides the folders, flags, redirects and vacation reply of one message.

Contract with LocalDelivery.deliver: :meth:`SieveFilter.begin` once per message, then
:meth:`Pass.apply` per account; it returns the (mailbox, flags) copies to make and adds redirects and
replies to the LocalOutcome, which the caller queues durably before it acknowledges the message.
Whatever fails here (a broken script, a runtime error, a bug) becomes the implicit keep
(``sieve.failed``): a filter never loses mail. An account without a script costs one dict look-up
(and one stat(2) per CHECK_INTERVAL).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailsrv import log
from mailsrv.config import PolicyConfig, SieveConfig
from mailsrv.delivery import sieve_ledger
from mailsrv.delivery.local import unlink_quiet
from mailsrv.directory import Account, Kind
from mailsrv.mime.headers import decode_words, message_ids, parse_addresses, unfold
from mailsrv.sieve import MessageView, Outcome, Script, SieveError, SieveRuntimeError, Target
from mailsrv.sieve import compile as compile_script
from mailsrv.sieve import run as run_script
from mailsrv.sieve.autoreply import FIELDS, compose, no_reply_address, reply_subject, silenced
from mailsrv.sieve.editheader import Edit, apply_edits, body_of, head_end
from mailsrv.sieve.include import resolve as resolve_includes
from mailsrv.sieve.message import MAX_FIELD, environment, header_fields
from mailsrv.sieve.nodes import Notify
from mailsrv.sieve.notify import compose_notification, parse_mailto
from mailsrv.sieve.scripts import ACTIVE, DIRNAME, SUFFIX, BadName, active_script, check_name
from mailsrv.sieve.verdicts import OurVerdicts, Values
from mailsrv.sieve.verdicts import values as verdict_values
from mailsrv.store import account_root

logger = log.get("sieve")

#: Seconds an account's "which script, if any" answer is reused before one stat(2) looks again:
#: a script activated over ManageSieve applies to mail delivered from at most this much later
CHECK_INTERVAL = 1.0
#: accounts whose compiled script (or its absence) is kept
CACHE_SIZE = 10_000
#: bytes of a message's start read for its header block when it is not in memory
HEAD_MAX = 256 * 1024
#: bytes of a message a script's body test sees (RFC 5173; the rest is not searched)
BODY_MAX = 1 << 20
#: extensions whose tests read the message's body (RFC 5173 body; RFC 5703's MIME parts)
BODY_EXTENSIONS = frozenset({"body", "foreverypart", "mime", "extracttext", "replace", "enclose"})
#: Dovecot's loop marker: a message that carries the redirecting account's address here is not
#: redirected by that account again
REDIRECT_HEADER = "X-Sieve-Redirected-From"
#: script runs between two yields to the event loop (a 5000-member group runs 5000 scripts)
YIELD_EVERY = 32
#: vacation state: per account, (handle, sender) -> last reply; at most VACATION_ROWS rows
VACATION_DB = "sieve-vacation.db"
VACATION_ROWS = 10_000
#: the handle under which the JMAP VacationResponse's replies are recorded there (no script's: a NUL)
JMAP_HANDLE = "\0jmap"
#: RFC 5230 §4.5: the user's address must be in one of these for a reply
RECIPIENT_FIELDS = ("to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc")


@dataclass
class Ledger:
    """One account's part of a message in its retry ledger (mailsrv.delivery.sieve_ledger)."""

    root: Path
    msgid: str
    #: the message's ledger key ("" until needed)
    key: str = ""
    #: items a former attempt made (a retry skips them)
    done: frozenset[str] = frozenset()
    #: some copy failed: the recipient is retried, so what was made (copies, then redirects once
    #: queued) is recorded
    retrying: bool = False


@dataclass
class RedirectOrder:
    """Redirect the message (with ``X-Sieve-Redirected-From: account`` added) to ``addresses``, with
    the original envelope sender."""

    account: str
    addresses: list[str]
    ledger: Ledger | None = None
    #: the account's own copy of the message when its script edited the header (RFC 5293), removed
    #: once queued
    edited: Path | None = None
    #: in the queue (durable): :func:`remember` records it when the message is not acknowledged after all
    queued: bool = False


@dataclass
class ReplyOrder:
    """Queue ``message`` from the null reverse path (RFC 3834 §3.3) to ``to``."""

    to: str
    message: bytes
    #: a notification (RFC 5435): its account's ledger part and its ledger item, recorded as a
    #: redirect's once queued (a vacation reply has none: it is once per sender anyway)
    ledger: Ledger | None = None
    item: str = ""
    #: in the queue (durable): :func:`remember` records it when the message is not acknowledged after all
    queued: bool = False


def notify_item(n: Notify, rcpt: str) -> str:
    """The ledger item of notification ``n`` (RFC 5435 §3.8: its method and options are what makes
    two notifications identical) to ``rcpt``."""
    digest = hashlib.sha256("\0".join((n.method, *n.options)).encode("utf-8", "surrogateescape")).hexdigest()
    return f"notify:{digest[:32]}:{rcpt.lower()}"


@dataclass
class _Entry:
    checked: float
    #: stat of the active script's file, then of each file its includes read: (ino, mtime_ns, size)
    key: tuple[tuple[int, int, int] | None, ...] | None
    script: Script | None
    name: str = ""
    #: RFC 6609: the files the script's includes read (or would: a missing one counts), for the key
    paths: tuple[Path, ...] = ()
    #: the account's retry ledger file (mailsrv.delivery.sieve_ledger), as a str: one cheap stat
    ledger: str = ""


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)  # follows .active's symlink to the active script's file
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _stat_key(root: Path, paths: tuple[Path, ...] = ()) -> tuple[tuple[int, int, int] | None, ...] | None:
    """None when the account has no active script; else the stats of it and of ``paths``."""
    first = _stat(root / DIRNAME / ACTIVE)
    return None if first is None else (first, *(_stat(p) for p in paths))


def _include_path(root: Path, global_dir: Path, location: str, name: str) -> Path | None:
    try:
        check_name(name)
    except BadName:
        return None
    return (root / DIRNAME if location == "personal" else global_dir) / (name + SUFFIX)


def _load(root: Path, max_size: int, global_dir: Path) -> tuple[str, Script | None, str, tuple[Path, ...]]:
    """(name, compiled script or None, error, files its includes read) of the account's active script,
    with what it includes (RFC 6609: the account's scripts, ``global_dir``'s); blocking."""
    got = active_script(root)
    if got is None:
        return "", None, "", ()
    name, text = got
    paths: list[Path] = []

    def read(location: str, inc: str) -> str | None:
        path = _include_path(root, global_dir, location, inc)
        if path is None:
            return None
        paths.append(path)
        try:
            return path.read_bytes().decode("utf-8", "replace")
        except OSError:  # not there (yet): an error only when the include runs without :optional
            return None

    try:
        return name, resolve_includes(compile_script(text, max_size), read, max_size), "", tuple(paths)
    except SieveError as e:
        return name, None, str(e), tuple(paths)


def reply_text(reason: str) -> str:
    """A script's reject reason as SMTP reply text: one line of printable US-ASCII, at most 200."""
    text = " ".join(reason.split())
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:200] or "Rejected by the recipient's filter"


def redirected(data: bytes, account: str) -> bytes:
    """``data`` with the loop marker of ``account`` first (after a Return-Path line)."""
    block = f"{REDIRECT_HEADER}: {account}\r\n".encode()
    if data[:12].lower() == b"return-path:":
        nl = data.find(b"\n") + 1
        return data[:nl] + block + data[nl:]
    return block + data


def write_redirected(path: Path, spool: Path, account: str) -> None:
    """The redirected copy of a message held only in its ``spool`` file, streamed into ``path`` and
    fsync'd (blocking)."""
    with open(spool, "rb") as src, open(path, "wb") as out:
        first = src.readline(4096)
        out.write(redirected(first, account))
        while chunk := src.read(1 << 20):
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())


async def queue_orders(queue: Any, rcpt: Callable[[str], Any], outcome: Any, sender: str, spool: Path,
                       data: bytes | None, *, smtputf8: bool = False, body: str = "7BIT") -> None:
    """docs/sieve.md: the scripts' redirects (the original envelope ``sender``, a loop marker added) and
    vacation replies (the null reverse path) of ``outcome`` (a LocalOutcome), durable in ``queue`` (a
    mailsrv.queue.enqueue.Enqueuer; ``rcpt``: its recipient type, QRcpt) before the caller acknowledges
    the message. The message is ``data`` when in memory, else streamed from its ``spool`` file. The SMTP
    backend and JMAP submission call this. Raises OSError."""
    loop = asyncio.get_running_loop()
    for order in outcome.redirects:
        rcpts = [rcpt(a) for a in order.addresses]  # RFC 5228 §4.2: bounces go to the original sender
        if data is not None and order.edited is None:
            await queue.enqueue(redirected(data, order.account), sender, rcpts, smtputf8=smtputf8, body=body)
            order.queued = True
            await _record(order.ledger, _redirect_items(order), user=order.account)
            continue
        path = spool.with_name(spool.name + ".redirect")
        try:
            await loop.run_in_executor(None, write_redirected, path, order.edited or spool, order.account)
            await queue.enqueue(path, sender, rcpts, smtputf8=smtputf8, body=body)
            order.queued = True
        finally:
            await loop.run_in_executor(None, unlink_quiet, path)
            if order.edited is not None:
                await loop.run_in_executor(None, unlink_quiet, order.edited)
        await _record(order.ledger, _redirect_items(order), user=order.account)
    for reply in outcome.replies:  # RFC 3834 §3.3 / RFC 5230 §4.5: from the null reverse path
        await queue.enqueue(reply.message, "", [rcpt(reply.to)], smtputf8=smtputf8, body="8BITMIME")
        reply.queued = True
        if reply.item:  # a notification: recorded as a redirect is
            await _record(reply.ledger, [reply.item], rcpt=reply.to)


async def remember(outcome: Any) -> None:
    """docs/sieve.md "Retries": the message is answered 451 though copies of it were made (the queue
    failed after local delivery: a remote recipient, a redirect); each account's copies and queued
    redirects (and what a former attempt made) are recorded, durable before the reply, so that the
    sender's retry makes none of them again. Call it before the 451; never raises."""
    p = outcome.filtering
    if p is not None:
        await p.remember(outcome)


def pending(outcome: Any) -> bool:
    """Whether :func:`commit` of ``outcome`` has anything to record (duplicate ids of RFC 7352): without,
    a caller may skip its coroutine."""
    p = outcome.filtering
    return p is not None and bool(p.dups)


async def commit(outcome: Any) -> None:
    """RFC 7352 as Pigeonhole: the duplicate ids of the message's recipients commit with the
    transaction: call it when the final reply (a 250, or a 550 when every script refused it) is
    decided, never before a 451 (the sender's retry then finds the message new). Never raises."""
    p = outcome.filtering
    if p is not None:
        await p.commit(outcome)


def _redirect_items(order: RedirectOrder) -> list[str]:
    return [f"redirect:{a.lower()}" for a in order.addresses]


async def _record(led: Ledger | None, items: list[str], **who: str) -> None:
    """A queued redirect or notification of a recipient that is retried: recorded, so that the retry
    does not queue it again (docs/sieve.md "Retries"). A failure to record costs a possible second
    one, no mail."""
    if led is None or not led.retrying or not led.key:
        return
    try:
        await asyncio.get_running_loop().run_in_executor(None, sieve_ledger.record, led.root, led.key, led.msgid, items)
    except (OSError, sqlite3.Error) as exc:
        logger.warning("sieve.ledger_failed", **who, error=str(exc))


class VacationState:
    """Who got which vacation reply when, per account: a small SQLite file in the account's root
    (synchronous=FULL: a claim is durable before the reply is queued)."""

    @staticmethod
    def claim(root: Path, handle: str, sender: str, period: int, now: float | None = None) -> bool:
        """True (and recorded) when ``sender`` got no reply of ``handle`` in the last ``period``
        seconds (RFC 5230 §4.1); blocking."""
        now = time.time() if now is None else now
        db = VacationState._write(root, "sent (handle TEXT, sender TEXT, at REAL, PRIMARY KEY (handle, sender))")
        try:
            row = db.execute("SELECT at FROM sent WHERE handle = ? AND sender = ?", (handle, sender)).fetchone()
            if row is not None and now - row[0] < period:
                db.execute("ROLLBACK")
                return False
            db.execute("INSERT OR REPLACE INTO sent VALUES (?, ?, ?)", (handle, sender, now))
            sieve_ledger.bound_rows(db, "sent", "at", VACATION_ROWS)  # the oldest answers are forgotten first
            db.execute("COMMIT")
            return True
        finally:
            db.close()


    @staticmethod
    def notify_allowed(root: Path, per_hour: int, now: float | None = None) -> bool:
        """True (and counted) when the account sent fewer than ``per_hour`` Sieve notifications
        (RFC 5435) in the last hour; blocking."""
        now = time.time() if now is None else now
        db = VacationState._write(root, "notified (at REAL)")
        try:
            db.execute("DELETE FROM notified WHERE at < ?", (now - 3600,))
            (n,) = db.execute("SELECT count(*) FROM notified").fetchone()
            if n >= per_hour:
                db.execute("ROLLBACK")
                return False
            db.execute("INSERT INTO notified VALUES (?)", (now,))
            db.execute("COMMIT")
            return True
        finally:
            db.close()

    @staticmethod
    def seen(root: Path, key: str, now: float | None = None) -> bool:
        """RFC 7352: True when the account's duplicate state holds ``key`` unexpired; blocking."""
        now = time.time() if now is None else now
        return VacationState._exists(root, "SELECT 1 FROM dup WHERE key = ? AND expires > ?", (key, now))

    @staticmethod
    def _write(root: Path, table: str) -> sqlite3.Connection:
        """The account's state open in a write transaction (synchronous=FULL: durable at COMMIT), with
        ``table`` ("name (columns)") made if missing; the caller commits and closes."""
        db = sqlite3.connect(root / VACATION_DB, timeout=10, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=FULL")
            db.execute(f"CREATE TABLE IF NOT EXISTS {table}")
            db.execute("BEGIN IMMEDIATE")
        except BaseException:
            db.close()
            raise
        return db

    @staticmethod
    def _exists(root: Path, query: str, args: tuple[Any, ...]) -> bool:
        """Whether ``query`` finds a row in the account's state (read only; no file or table: False)."""
        path = root / VACATION_DB
        if not path.exists():
            return False
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            return db.execute(query, args).fetchone() is not None
        except sqlite3.OperationalError:  # the table is not there yet
            return False
        finally:
            db.close()

    @staticmethod
    def remember_ids(root: Path, items: tuple[tuple[str, int, bool, bool], ...], now: float | None = None) -> None:
        """RFC 7352 §3: record the (key, seconds, last, seen) of a completed run's duplicate tests: a new
        (or expired) id for its period, a seen one again only with :last (§3.3); at most
        VACATION_ROWS ids, the oldest expire first; blocking."""
        now = time.time() if now is None else now
        db = VacationState._write(root, "dup (key TEXT PRIMARY KEY, expires REAL)")
        try:
            db.execute("DELETE FROM dup WHERE expires <= ?", (now,))
            for key, seconds, last, seen in items:
                if last or not seen:
                    db.execute("INSERT OR REPLACE INTO dup VALUES (?, ?)", (key, now + seconds))
            sieve_ledger.bound_rows(db, "dup", "expires", VACATION_ROWS)
            db.execute("COMMIT")
        finally:
            db.close()

    @staticmethod
    def answered(root: Path, sender: str, since: float, handle: str | None = None) -> bool:
        """True when the account's Sieve vacation (any handle; ``handle``: that one, JMAP_HANDLE for the
        JMAP VacationResponse) answered ``sender`` (lower case) at or after ``since``; blocking. The
        other kind of auto-reply stays silent then (docs/sieve.md)."""
        return VacationState._exists(
            root, "SELECT 1 FROM sent WHERE sender = ? AND at >= ? AND "
            + ("handle = ?" if handle is not None else "handle != ?") + " LIMIT 1",
            (sender, since, JMAP_HANDLE if handle is None else handle))


def our_verdicts(policy: PolicyConfig, hostname: str, sieve: SieveConfig) -> OurVerdicts | None:
    """Where spamtest and virustest (RFC 5235) find our policy's verdicts at SMTP delivery; None when
    the policy does not run (every message is "not tested")."""
    if not policy.enabled:
        return None
    return OurVerdicts(policy.authserv_id or hostname, bool(policy.clamd_socket), sieve.spamtest_max_score)


class SieveFilter:
    """Per worker: the accounts' compiled scripts (cache keyed by account, checked by stat), and
    the retry ledger of every account, with or without a script (also when ``config.enabled`` is off).
    ``verdicts``: :func:`our_verdicts` for mail our policy judged (SMTP); None: nothing was judged
    (JMAP submissions)."""

    def __init__(self, config: SieveConfig, data_dir: Path, check_interval: float = CHECK_INTERVAL,
                 verdicts: OurVerdicts | None = None) -> None:
        self.config = config
        self.verdicts = verdicts
        #: RFC 5183 environment items (made at the first script run)
        self.environment: dict[str, str] | None = None
        self.data_dir = data_dir
        self.global_dir = data_dir / config.global_dir  # RFC 6609 :global scripts
        self.check_interval = check_interval
        self._cache: OrderedDict[int, _Entry] = OrderedDict()
        #: scripts compiled and runs made (tests, bench)
        self.compiled = 0
        self.runs = 0

    async def script(self, acct: Account) -> tuple[Script | None, str]:
        """The account's active script (compiled) and its name, or (None, ""): always so with
        ``[sieve] enabled = false`` (the filter then serves the retry ledger alone, docs/sieve.md)."""
        if not self.config.enabled:
            return None, ""
        now = time.monotonic()
        e = self._cache.get(acct.id)
        if e is not None and now - e.checked < self.check_interval:
            return e.script, e.name
        root = account_root(self.data_dir, acct.id, acct.store)
        # on the loop: one stat(2), as ResolveCache's change stamp (and one per included file)
        key = _stat_key(root, e.paths if e is not None else ())
        if e is not None and key == e.key:
            e.checked = now
            return e.script, e.name
        script, name, error, paths = None, "", "", tuple[Path, ...]()
        if key is not None:
            name, script, error, paths = await asyncio.get_running_loop().run_in_executor(
                None, _load, root, self.config.max_script_size, self.global_dir)
            self.compiled += 1
            if error:  # a script stored before a limit changed, or edited by hand: the mail is kept
                logger.warning("sieve.failed", user=acct.address, script=name, error=error)
            if paths:
                key = _stat_key(root, paths)
        self._cache[acct.id] = _Entry(now, key, script, name, paths, str(root / sieve_ledger.LEDGER_DB))
        self._cache.move_to_end(acct.id)
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return script, name

    def begin(self, local: Any, spool: Path, data: bytes | None, sender: str) -> Pass:
        """One message's filtering; ``local`` is the LocalDelivery (store, resolver)."""
        return Pass(self, local, spool, data, sender)


def _write_edited(path: Path, spool: Path, data: bytes | None, edits: tuple[Edit, ...]) -> bool:
    """The message with its header edited (RFC 5293) into ``path``, fsync'd (blocking); the body is the
    one the edits set (RFC 5703 replace, enclose) or streamed from ``data`` or the ``spool`` file. False
    (nothing written) when the header block does not end within HEAD_MAX bytes."""
    head = data[:HEAD_MAX] if data is not None else _head(spool)
    cut = head_end(head)
    if cut < 0:
        return False
    body = body_of(edits)  # RFC 5703 replace / enclose: a new body
    with open(path, "wb") as out:
        out.write(apply_edits(head[:cut], edits))
        if body is not None:
            out.write(body)
        elif data is not None:
            out.write(memoryview(data)[cut:])
        else:
            with open(spool, "rb") as src:
                src.seek(cut)
                while chunk := src.read(1 << 20):
                    out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return True


def _head(spool: Path, n: int = HEAD_MAX) -> bytes:
    with open(spool, "rb") as f:
        return f.read(n)


class Pass:
    """One message through the scripts of its recipients."""

    def __init__(self, filt: SieveFilter, local: Any, spool: Path, data: bytes | None, sender: str) -> None:
        self.filt = filt
        self.local = local
        self.spool = spool
        self.data = data
        self.sender = sender
        self._fields: list[tuple[str, bytes]] | None = None
        self._message: bytes | None = None
        self._size = len(data) if data is not None else -1
        self._key: str | None = None
        #: recipient address (as in LocalDelivery's batch) -> its ledger part, for :meth:`settle`
        self.ledgers: dict[str, Ledger] = {}
        #: RFC 5293: recipient address -> (its edited copy's file, its copies), delivered apart
        #: (:meth:`own_batch`, :meth:`flush_own`)
        self.own: dict[Path, list[tuple[str, Account, str]]] = {}
        #: (recipient address, folder) -> the edited file its copy is delivered from
        self.own_boxes: dict[tuple[str, str], Path] = {}
        #: RFC 7352: recipient address -> (its account's root, its run's duplicate ids), recorded by
        #: :meth:`commit` when the message is answered
        self.dups: dict[str, tuple[Path, tuple[tuple[str, int, bool, bool], ...]]] = {}

    async def fields(self) -> list[tuple[str, bytes]]:
        if self._fields is None:
            if self.data is not None:
                head = self.data[:HEAD_MAX]
            else:
                loop = asyncio.get_running_loop()
                head = await loop.run_in_executor(None, _head, self.spool)
                st = await loop.run_in_executor(None, os.stat, self.spool)
                self._size = st.st_size
            self._fields = header_fields(head)
        return self._fields

    async def message(self) -> bytes:
        """The message's first BODY_MAX bytes (for a script with a body test)."""
        if self._message is None:
            if self.data is not None:
                self._message = self.data[:BODY_MAX]
            else:
                self._message = await asyncio.get_running_loop().run_in_executor(None, _head, self.spool, BODY_MAX)
        return self._message

    def kept(self, acct: Account) -> bool:
        """True when :meth:`apply` is known to answer the plain keep (most mail), without its coroutines: the
        account has no active script (:meth:`SieveFilter.script`'s look at it still fresh) and no retry
        ledger (one stat(2), as :meth:`_unmade`); False: await :meth:`apply`."""
        filt = self.filt
        e = filt._cache.get(acct.id)
        if e is None or e.script is not None or not e.ledger or not filt.config.enabled \
                or time.monotonic() - e.checked >= filt.check_interval:
            return False
        return not sieve_ledger.exists_at(e.ledger)

    async def apply(self, address: str, acct: Account, mailbox: str, out: Any) -> list[tuple[str, frozenset[str]]]:
        """The copies (mailbox, flags) to make for ``acct`` (``address``: the recipient as addressed;
        ``mailbox``: where a keep goes); redirects and a vacation reply are added to ``out`` (a
        LocalOutcome). Never raises (a failure is the keep)."""
        keep = [(mailbox, frozenset[str]())]
        try:
            script, name = await self.filt.script(acct)
        except Exception as exc:  # a filter never loses mail
            logger.exception("sieve.failed", exc, user=acct.address)
            return keep
        if script is None:
            return await self._unmade(address, acct, keep)
        try:
            fields = await self.fields()
            body = await self.message() if not BODY_EXTENSIONS.isdisjoint(script.extensions) else None
            boxes = None
            if "mailbox" in script.extensions:  # RFC 5490 mailboxexists: the recipient's folders
                sacct = await self.local.store_account(acct)
                boxes = frozenset(m.name for m in await sacct.list_mailboxes())
            ours = self.filt.verdicts
            if self.filt.environment is None:  # RFC 5183: the store's host name (no store knows it at start)
                self.filt.environment = environment(getattr(self.local.store, "hostname", "") or "localhost")
            dup = "duplicate" in script.extensions
            root = account_root(self.filt.data_dir, acct.id, acct.store) if dup else None
            msg = MessageView(tuple(fields), self.sender, address, self._size, body, boxes,
                              verdicts=verdict_values(fields, ours) if ours is not None else Values(),
                              environment=self.filt.environment,
                              duplicate=(lambda key: VacationState.seen(root, key)) if root is not None else None)
            if root is None and body is None:
                outcome = run_script(script, msg, max_redirects=self.filt.config.max_redirects)
            else:  # RFC 7352 look-ups read SQLite; body and MIME part tests parse and decode up to
                # BODY_MAX of the message: the run goes to the I/O pool
                loop = asyncio.get_running_loop()
                outcome = await loop.run_in_executor(
                    None, lambda: run_script(script, msg, max_redirects=self.filt.config.max_redirects))
                if root is not None and outcome.duplicates:  # recorded with the answer (:func:`commit`)
                    self.dups[address] = (root, outcome.duplicates)
            self.filt.runs += 1
            if not self.filt.runs % YIELD_EVERY:  # a big group's scripts: let the loop breathe
                await asyncio.sleep(0)
            return await self._act(outcome, msg, address, acct, mailbox, out)
        except SieveRuntimeError as exc:  # RFC 5228 §2.10.6: a runtime error keeps the message
            logger.warning("sieve.failed", user=acct.address, script=name, error=str(exc))
        except Exception as exc:
            logger.exception("sieve.failed", exc, user=acct.address, script=name)
        return keep

    async def _act(self, o: Outcome, msg: MessageView, address: str, acct: Account, mailbox: str,
                   out: Any) -> list[tuple[str, frozenset[str]]]:
        if o.reject is not None:
            if self.sender:  # RFC 5429 §2.2: refused, told to the sender (never to the null path)
                out.rejects.append((address, o.reject))
            logger.info("sieve.rejected", user=acct.address)
            return []
        targets = list(o.targets)
        sent: list[str] = []
        if o.redirects:
            sent = await self._redirects(o.redirects, msg, acct)
            if not sent and not targets:  # nothing redirected after all: the message is kept
                targets.append(Target(mailbox, frozenset(), True))
        if o.vacation is not None:
            reply = await self._vacation(o, msg, address, acct)
            if reply is not None:
                out.replies.append(reply)
        copies = []
        edits_of: dict[str, int] = {}  # RFC 5293: folder -> how many edits its copy gets
        for t in targets:
            box = mailbox if t.keep and t.mailbox == "INBOX" else t.mailbox
            edits_of[box] = len(o.edits) if t.edits is None else t.edits
            if box != "INBOX" and box != mailbox:
                try:
                    await self.local.ensure_folder(acct, box, "sieve.folder_created")
                except Exception as exc:  # a bad name: the store puts the copy in INBOX
                    logger.warning("sieve.fileinto_failed", user=acct.address, folder=box, error=str(exc))
            copies.append((box, t.flags))
        if not copies and not sent:
            logger.info("sieve.discarded", user=acct.address)
            if not o.notifications:
                return copies
        led = await self._ledger(address, acct)
        if led.done:  # a retry: what the former attempt made is not made again (docs/sieve.md "Retries")
            copies = [c for c in copies if f"copy:{c[0]}" not in led.done]
            sent = [a for a in sent if f"redirect:{a.lower()}" not in led.done]
            logger.info("sieve.retried", user=acct.address, skipped=len(led.done))
            if not copies:  # no copy was missing: the record has served (remember() writes it again
                await self._forget(acct.address, led)  # should the redirects' queueing fail now)
        if o.notifications:  # RFC 5435; those a former attempt queued are not sent again
            out.replies += await self._notifications(o.notifications, msg, address, acct, led)
        files: dict[int, Path | None] = {0: None}  # RFC 5293: a file per edit count (0: the message as it came)
        for box, _ in copies:
            n = edits_of[box]
            if n not in files:
                files[n] = await self._edited(o.edits[:n], acct)
            path = files[n]
            if path is not None:
                self.own_boxes[(address, box)] = path
        by_edits: dict[int, list[str]] = {}
        redirect_edits = dict(zip(o.redirects, o.redirect_edits, strict=False))  # absent: all
        for a in sent:
            by_edits.setdefault(redirect_edits.get(a, len(o.edits)), []).append(a)
        for n, addrs in by_edits.items():
            if n not in files:
                files[n] = await self._edited(o.edits[:n], acct)
            out.redirects.append(RedirectOrder(acct.address, addrs, led, files[n]))
        return copies

    async def _edited(self, edits: tuple[Edit, ...], acct: Account) -> Path | None:
        """RFC 5293: the message with ``edits`` applied to its header, in its own spool file (copies are
        delivered from it: :meth:`own_batch`); None (the message as it came) when it cannot be made."""
        path = self.spool.with_name(f"{self.spool.name}.edit{len(self.own)}")
        try:
            made = await asyncio.get_running_loop().run_in_executor(
                None, _write_edited, path, self.spool, self.data, edits)
        except OSError as exc:
            logger.warning("sieve.editheader_failed", user=acct.address, error=str(exc))
            await asyncio.get_running_loop().run_in_executor(None, unlink_quiet, path)
            return None
        if not made:
            logger.warning("sieve.editheader_failed", user=acct.address, error="header block too large")
            return None
        self.own[path] = []
        return path

    def own_batch(self, address: str, batch: list[tuple[str, Account, str]],
                  box: str) -> list[tuple[str, Account, str]]:
        """Where LocalDelivery puts ``address``'s copy into ``box``: the list of its edited file when
        the script edited the header before filing it (RFC 5293), else ``batch``."""
        path = self.own_boxes.get((address, box))
        return batch if path is None else self.own[path]

    async def flush_own(self, flush: Callable[..., Awaitable[None]], out: Any) -> None:
        """Deliver each edited copy from its file (``flush``: LocalDelivery's), then remove the file
        unless a redirect still needs it (:func:`queue_orders` removes it then)."""
        keep = {o.edited for o in out.redirects if o.edited is not None}
        loop = asyncio.get_running_loop()
        for path, entries in self.own.items():
            try:
                await flush(entries, path, None, {})
            finally:
                if path not in keep:
                    await loop.run_in_executor(None, unlink_quiet, path)

    async def msgid(self) -> str:
        """The message's first Message-ID field, whitespace folded ("" without one)."""
        mids = [v for n, v in await self.fields() if n == "message-id"]
        return " ".join(mids[0].decode("latin-1").split()) if mids else ""

    async def key(self) -> str:
        """The message's ledger key (mailsrv.delivery.sieve_ledger.message_key)."""
        if self._key is None:
            fields, head = await self.fields(), await self.message()
            self._key = await asyncio.get_running_loop().run_in_executor(
                None, sieve_ledger.message_key, self.sender, fields, head)
        return self._key

    async def _unmade(self, address: str, acct: Account,
                      keep: list[tuple[str, frozenset[str]]]) -> list[tuple[str, frozenset[str]]]:
        """The keep of an account without a script, less the copy a former attempt made when the
        sender retries after a 451 (docs/sieve.md "Retries"; one stat(2) when it has no ledger)."""
        e = self.filt._cache.get(acct.id)  # filled by script(), just before
        if not sieve_ledger.exists_at(e.ledger if e is not None and e.ledger else
                              account_root(self.filt.data_dir, acct.id, acct.store) / sieve_ledger.LEDGER_DB):
            return keep
        led = await self._ledger(address, acct)
        if not led.done:
            return keep
        logger.info("sieve.retried", user=acct.address, skipped=len(led.done))
        copies = [c for c in keep if f"copy:{c[0]}" not in led.done]
        if not copies:
            await self._forget(acct.address, led)
        return copies

    async def _ledger(self, address: str, acct: Account, root: Path | None = None) -> Ledger:
        """The account's ledger part of this message; the items a former attempt made when its
        ledger has rows of it (one stat(2) on the loop when it has no ledger, most accounts)."""
        root = root or account_root(self.filt.data_dir, acct.id, acct.store)
        led = self.ledgers[address] = Ledger(root, await self.msgid())
        if sieve_ledger.exists(root):
            try:
                loop = asyncio.get_running_loop()
                if await loop.run_in_executor(None, sieve_ledger.has_rows, root, led.msgid):
                    led.key = await self.key()
                    led.done = frozenset(await loop.run_in_executor(None, sieve_ledger.done, root, led.key))
            except (OSError, sqlite3.Error) as exc:  # unreadable: the script's copies are all made
                logger.warning("sieve.ledger_failed", user=acct.address, error=str(exc))
        return led

    async def _forget(self, user: str, led: Ledger) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, sieve_ledger.forget, led.root, led.key)
        except (OSError, sqlite3.Error) as exc:  # the rows expire (LEDGER_TTL)
            logger.warning("sieve.ledger_failed", user=user, error=str(exc))

    async def settle(self, results: list[tuple[str, str, bool]]) -> None:
        """After the store made the copies: ``results`` are (address, folder, made) of each copy. A
        recipient with a failed copy is retried: its made copies are recorded (and its redirects
        once queued, :func:`queue_orders`); one whose retry made every copy has its rows removed.
        Never raises."""
        made: dict[str, list[str]] = {}
        failed: set[str] = set()
        for addr, box, ok in results:
            if addr in self.ledgers:
                made.setdefault(addr, [])
                if ok:
                    made[addr].append(box)
                else:
                    failed.add(addr)
        for addr, boxes in made.items():
            led = self.ledgers[addr]
            if addr not in failed:
                if led.done:
                    await self._forget(addr, led)
                continue
            try:
                led.key = await self.key()
                led.retrying = True
                if boxes:
                    await asyncio.get_running_loop().run_in_executor(
                        None, sieve_ledger.record, led.root, led.key, led.msgid, [f"copy:{b}" for b in boxes])
            except (OSError, sqlite3.Error) as exc:  # the retry may make a copy twice; no mail is lost
                logger.warning("sieve.ledger_failed", rcpt=addr, error=str(exc))

    async def commit(self, out: Any) -> None:
        """:func:`commit`, RFC 7352 as Pigeonhole (ids recorded when the delivery commits): the
        duplicate ids of each recipient none of whose copies failed (not in ``out.retry``: its retry
        finds the message new again, docs/sieve.md), once the caller's reply is final. Never raises."""
        loop = asyncio.get_running_loop()
        for addr, (root, items) in self.dups.items():
            if addr in out.retry:
                continue
            try:
                await loop.run_in_executor(None, VacationState.remember_ids, root, items)
            except (OSError, sqlite3.Error) as exc:  # the next copy of it is not told a duplicate
                logger.warning("sieve.duplicate_failed", user=addr, error=str(exc))
        self.dups.clear()

    async def remember(self, out: Any) -> None:
        """:func:`remember` of ``out`` (this message's LocalOutcome): per account, its copies made
        (``out.made``), its redirects and notifications queued and what a former attempt had made
        (its duplicate ids are not recorded: :func:`commit` is not called before a 451). Never raises."""
        items: dict[Path, tuple[str, set[str]]] = {}
        for addr, acct, box in out.made:
            led = self.ledgers.get(addr)
            root = led.root if led is not None else account_root(self.filt.data_dir, acct.id, acct.store)
            items.setdefault(root, (acct.address, set()))[1].add(f"copy:{box}")
        for order in out.redirects:
            if order.queued and order.ledger is not None:
                items.setdefault(order.ledger.root, (order.account, set()))[1].update(_redirect_items(order))
        for reply in out.replies:
            if reply.queued and reply.ledger is not None:
                items.setdefault(reply.ledger.root, ("", set()))[1].add(reply.item)
        for led in self.ledgers.values():
            if led.done:
                items.setdefault(led.root, ("", set()))[1].update(led.done)
        if not items:
            return
        loop = asyncio.get_running_loop()
        try:
            key, msgid = await self.key(), await self.msgid()
        except OSError as exc:  # the spool unreadable: the retry may duplicate; nothing is lost
            logger.warning("sieve.ledger_failed", error=str(exc))
            return
        for root, (user, made) in items.items():
            try:
                await loop.run_in_executor(None, sieve_ledger.record, root, key, msgid, sorted(made))
            except (OSError, sqlite3.Error) as exc:
                logger.warning("sieve.ledger_failed", user=user, error=str(exc))
        logger.info("sieve.remembered", accounts=len(items))

    async def _redirects(self, addresses: tuple[str, ...], msg: MessageView, acct: Account) -> list[str]:
        own = acct.address.lower()
        for v in msg.raw(REDIRECT_HEADER.lower()):
            if unfold(v).decode("utf-8", "replace").strip().lower() == own:
                logger.warning("sieve.redirect_loop", user=acct.address)
                return []
        sent = []
        for a in addresses:
            res = await self.local.resolver.resolve(a)
            if res.kind == Kind.OUTSIDE and not acct.may_send_outside:
                # the per-user policy "may not send outside" applies to redirects (docs/sieve.md)
                logger.warning("sieve.redirect_refused", user=acct.address, rcpt=a)
                continue
            if res.account is not None and res.account.id == acct.id:
                continue  # to oneself: the keep is the copy
            sent.append(a)
        return sent

    async def _notifications(self, notes: tuple[Notify, ...], msg: MessageView, address: str,
                             acct: Account, led: Ledger) -> list[ReplyOrder]:
        """RFC 5435/5436: the mailto notifications, from the null reverse path; none about an
        auto-submitted message (RFC 5436 §2.7), at most ``[sieve] notify_per_hour`` per account, none
        outside the organisation for a user who may not send there (as redirects), none a former
        attempt of the message queued (``led``, docs/sieve.md "Retries")."""
        auto = msg.decoded("auto-submitted")
        if auto and auto[0].lower() != "no":
            logger.info("sieve.notify_skipped", user=acct.address, reason="auto-submitted")
            return []
        own = {address.lower(), acct.address.lower()}
        about_from = msg.decoded("from")
        about_subject = msg.decoded("subject")
        root = account_root(self.filt.data_dir, acct.id, acct.store)
        loop = asyncio.get_running_loop()
        orders: list[ReplyOrder] = []
        for n in notes:
            uri = parse_mailto(n.method)
            assert uri is not None  # checked by the run
            rcpts = []
            for a in (*uri.to, *uri.cc):
                if notify_item(n, a) in led.done:
                    continue
                res = await self.local.resolver.resolve(a)
                if res.kind == Kind.OUTSIDE and not acct.may_send_outside:
                    logger.warning("sieve.notify_refused", user=acct.address, rcpt=a)
                    continue
                rcpts.append(a)
            if not rcpts:
                continue
            if not await loop.run_in_executor(None, VacationState.notify_allowed, root,
                                              self.filt.config.notify_per_hour):
                logger.warning("sieve.notify_skipped", user=acct.address, reason="rate")
                return orders
            from_ = n.from_ if n.from_ is not None and n.from_.strip("<> ").lower() in own else acct.address
            raw = compose_notification(uri, from_=from_, message=n.message, importance=n.importance,
                                       about_from=about_from[0] if about_from else "",
                                       about_subject=about_subject[0] if about_subject else "")
            logger.info("sieve.notified", user=acct.address, rcpts=len(rcpts))
            orders += [ReplyOrder(a, raw, led, notify_item(n, a)) for a in rcpts]
        return orders

    async def _vacation(self, o: Outcome, msg: MessageView, address: str, acct: Account) -> ReplyOrder | None:
        v = o.vacation
        assert v is not None
        sender = self.sender
        if not sender:  # RFC 5230 §4.5 / RFC 3834 §2: never to the null reverse path
            return None
        first = {n: decode_words(unfold(val)).strip() for n, val in reversed(msg.fields) if n in FIELDS}
        why = silenced(first)
        own = {address.lower(), acct.address.lower()} | {a.lower() for a in v.addresses}
        if why is None and no_reply_address(sender, own):
            why = "no-reply"
        if why is None:  # RFC 5230 §4.5: only when one of the user's addresses is a recipient
            listed = {f"{a.mailbox}@{a.host}".lower() for n in RECIPIENT_FIELDS for raw in msg.raw(n)
                      for a in parse_addresses(raw, limit=256) if a.mailbox and a.host}
            if not listed & own:
                why = "not-addressed"
        if why is not None:
            logger.info("sieve.vacation_skipped", user=acct.address, reason=why)
            return None
        root = account_root(self.filt.data_dir, acct.id, acct.store)
        loop = asyncio.get_running_loop()
        if await loop.run_in_executor(None, VacationState.answered, root, sender.lower(), time.time() - v.seconds,
                                      JMAP_HANDLE):
            # docs/sieve.md: the JMAP VacationResponse answered this sender within the script's period
            logger.info("sieve.vacation_skipped", user=acct.address, reason="jmap")
            return None
        claimed = await loop.run_in_executor(None, VacationState.claim, root, v.handle, sender.lower(), v.seconds)
        if not claimed:
            logger.info("sieve.vacation_skipped", user=acct.address, reason="period")  # RFC 5230 §4.1 :days
            return None
        subject = v.subject
        if subject is None:
            orig = msg.decoded("subject")
            subject = reply_subject(orig[0] if orig else "")
        mids = [i for raw in msg.raw("message-id") for i in message_ids(raw)]
        refs = [i for raw in msg.raw("references") for i in message_ids(raw)]
        raw = compose(from_=v.from_ or address, to=sender, subject=subject[:MAX_FIELD], text=v.reason,
                      msgid=mids[0] if mids else None, references=refs,
                      mime=v.reason.encode("utf-8") if v.mime else None)
        logger.info("sieve.vacation_reply", user=acct.address, rcpt=sender)
        return ReplyOrder(sender, raw)
