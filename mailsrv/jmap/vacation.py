"""VacationResponse auto-replies (RFC 8621 §8, RFC 3834): once per sender per period.

A watcher per account with an enabled VacationResponse follows the account's
Email changes; for each new email in the inbox it answers the sender unless
RFC 3834 §2 says not to (auto-submitted mail, lists, bulk, our own address,
no-reply senders) or the account's Sieve vacation answered the sender in
the last REPLY_PERIOD (docs/sieve.md). Who was answered is kept with the
other per-account objects; workers elect one replier per account with an
``fcntl`` lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import sqlite3
import time
from datetime import datetime
from typing import Any

from mailsrv import log
from mailsrv.delivery.sieve import JMAP_HANDLE, VacationState
from mailsrv.jmap import message
from mailsrv.jmap.backend import CannotCalculateChanges, MailBackend
from mailsrv.jmap.objects import Collection, put
from mailsrv.sieve.autoreply import FIELDS, REPLY_PERIOD, no_reply_address, silenced
from mailsrv.sieve.autoreply import compose as compose_reply

logger = log.get("jmap")


def _ts(v: str | None) -> float | None:
    if not v:
        return None
    try:
        return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def active(rec: dict[str, Any], now: float) -> bool:
    if not rec.get("isEnabled"):
        return False
    start, end = _ts(rec.get("fromDate")), _ts(rec.get("toDate"))
    return (start is None or now >= start) and (end is None or now < end)


def reply_to(raw: bytes, own: str) -> tuple[str, str, str | None] | None:
    """(address to answer, original subject, Message-ID) or None when RFC 3834 says stay silent."""
    h = message.header_list(raw)
    get: dict[str, bytes] = {}
    for k, v in h:
        get.setdefault(k.lower(), v)
    # RFC 3834 §2 (shared with Sieve vacation: mailsrv.sieve.autoreply)
    if silenced({k: message.as_text(get[k]) for k in FIELDS if k in get}):
        return None
    rp = message.as_message_ids(get["return-path"]) if "return-path" in get else None
    addrs = [a["email"] for a in message.as_addresses(get["reply-to"])] if "reply-to" in get else []
    frm = [a["email"] for a in message.as_addresses(get["from"])] if "from" in get else []
    if "return-path" in get and not rp:
        return None  # null reverse path "<>": never answer (RFC 3834 §2)
    target = (rp or addrs or frm or [None])[0]
    if not target or no_reply_address(target, (own,)):
        return None
    mids = message.as_message_ids(get["message-id"]) if "message-id" in get else None
    return target, message.as_text(get.get("subject", b"")), mids[0] if mids else None


def compose(own: str, to: str, subject: str, msgid: str | None, rec: dict[str, Any]) -> bytes:
    text, html = rec.get("textBody") or "", rec.get("htmlBody") or None
    return compose_reply(from_=own, to=to, subject=rec.get("subject") or f"Auto: {subject}".strip(),
                         text=text or (message.html_to_text(html) if html else ""), msgid=msgid, html=html)


class Responder:
    def __init__(self, submitter: Any) -> None:
        self.submitter = submitter
        self.tasks: dict[str, asyncio.Task[None]] = {}

    async def ensure(self, be: MailBackend, principal: Any, settings: Collection, sent: Collection) -> None:
        """Start the account's replier (if not running) and return once it watches: mail that
        arrives after this returns is answered."""
        if self.submitter is None:
            return
        t = self.tasks.get(be.account_id)
        if t is None or t.done():
            ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.tasks[be.account_id] = asyncio.create_task(self._run(be, principal, settings, sent, ready))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await asyncio.shield(ready)

    async def close(self) -> None:
        for t in self.tasks.values():
            t.cancel()
        for t in self.tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def _run(self, be: MailBackend, principal: Any, settings: Collection, sent: Collection,
                   ready: asyncio.Future[None]) -> None:
        def take() -> Any:
            settings.dir.mkdir(parents=True, exist_ok=True)
            f = open(settings.dir / ".vacation.lock", "a+b")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                return None
            return f

        lock = None
        try:
            lock = await asyncio.to_thread(take)
        finally:
            if lock is None and not ready.done():
                ready.set_result(None)  # another worker answers for this account
        if lock is None:
            return
        watch = be.watch()
        try:
            state = await be.state("Email")
            ready.set_result(None)
            while True:
                rec = (await settings.records()).get("singleton", {})
                if not rec.get("isEnabled"):
                    return
                await watch.wait(None)
                try:
                    cs = await be.changes("Email", state, None)
                except CannotCalculateChanges:
                    state = await be.state("Email")
                    continue
                state = cs.new_state
                now = time.time()
                if not cs.created or not active(rec, now):
                    continue
                inbox = {m.id for m in await be.mailboxes() if m.role == "inbox"}
                for meta in (await be.get_emails(cs.created)).values():
                    if not meta.mailbox_ids & inbox:
                        continue
                    raw = await be.read_blob(meta.blob_id)
                    target = reply_to(raw, be.name) if raw else None
                    if target is None:
                        continue
                    await self._answer(be, principal, sent, rec, target, now)
        finally:
            if not ready.done():
                ready.set_result(None)
            watch.close()
            lock.close()

    async def _answer(self, be: MailBackend, principal: Any, sent: Collection, rec: dict[str, Any],
                      target: tuple[str, str, str | None], now: float) -> None:
        to, subject, msgid = target
        key = to.lower()
        root = getattr(getattr(be, "acct", None), "root", None)  # the store account's (StoreBackend)
        if root is not None and await asyncio.to_thread(VacationState.answered, root, key, now - REPLY_PERIOD):
            # docs/sieve.md: the account's Sieve vacation answered this sender (at delivery, before this
            # email was stored): one auto-reply per sender per period, not two
            logger.info("jmap.vacation.skipped", account=be.account_id, reason="sieve")
            return

        def claim(d: dict[str, Any]) -> bool:
            last = d["records"].get(key, {}).get("at", 0)
            if now - last < REPLY_PERIOD:
                return False
            put(d, key, {"at": now})
            return True

        if not await sent.change(claim):
            logger.info("jmap.vacation.skipped", account=be.account_id, reason="period")
            return
        if root is not None:  # docs/sieve.md: the script's vacation stays silent for this sender
            try:
                await asyncio.to_thread(VacationState.claim, root, JMAP_HANDLE, key, 0, now)
            except (OSError, sqlite3.Error) as exc:  # a second auto-reply at worst
                logger.warning("jmap.vacation.record_failed", account=be.account_id, error=str(exc))
        raw = compose(be.name, to, subject, msgid, rec)
        try:
            # RFC 3834 §3.3: the reply goes out with a null reverse path
            await self.submitter.submit(principal, raw, "", [to])
            logger.info("jmap.vacation.replied", account=be.account_id)
        except Exception as exc:
            logger.exception("jmap.vacation.failed", exc, account=be.account_id)
