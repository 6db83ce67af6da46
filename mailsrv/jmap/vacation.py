"""VacationResponse auto-replies (RFC 8621 §8, RFC 3834): once per sender per period.

A watcher per account with an enabled VacationResponse follows the account's
Email changes; for each new email in the inbox it answers the sender unless
RFC 3834 §2 says not to (auto-submitted mail, lists, bulk, our own address,
no-reply senders). Who was answered is kept with the other per-account
objects; workers elect one replier per account with an ``fcntl`` lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.message
import email.policy
import email.utils
import fcntl
import time
from datetime import datetime
from typing import Any

from mailsrv import log
from mailsrv.jmap import message
from mailsrv.jmap.backend import CannotCalculateChanges, MailBackend
from mailsrv.jmap.objects import Collection, put

logger = log.get("jmap")

#: RFC 3834 §2: a responder should not answer the same sender more than once in a period (7 days suggested)
REPLY_PERIOD = 7 * 86400
NO_REPLY_LOCALS = ("mailer-daemon", "postmaster", "noreply", "no-reply", "do-not-reply", "donotreply",
                   "listserv", "majordomo", "owner-", "bounce")


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
    auto = message.as_text(get.get("auto-submitted", b"no")).lower()
    if auto and auto != "no":
        return None
    if message.as_text(get.get("precedence", b"")).lower() in ("bulk", "list", "junk"):
        return None
    if "list-id" in get or "list-unsubscribe" in get:
        return None
    rp = message.as_message_ids(get["return-path"]) if "return-path" in get else None
    addrs = [a["email"] for a in message.as_addresses(get["reply-to"])] if "reply-to" in get else []
    frm = [a["email"] for a in message.as_addresses(get["from"])] if "from" in get else []
    if "return-path" in get and not rp:
        return None  # null reverse path "<>": never answer (RFC 3834 §2)
    target = (rp or addrs or frm or [None])[0]
    if not target or "@" not in target or target.lower() == own.lower():
        return None
    if target.split("@", 1)[0].lower().startswith(NO_REPLY_LOCALS):
        return None
    mids = message.as_message_ids(get["message-id"]) if "message-id" in get else None
    return target, message.as_text(get.get("subject", b"")), mids[0] if mids else None


def compose(own: str, to: str, subject: str, msgid: str | None, rec: dict[str, Any]) -> bytes:
    m = email.message.EmailMessage(policy=email.policy.SMTP)
    m["From"] = own
    m["To"] = to
    m["Subject"] = rec.get("subject") or f"Auto: {subject}".strip()
    m["Date"] = email.utils.formatdate()
    m["Message-ID"] = email.utils.make_msgid(domain=own.split("@", 1)[-1])
    m["Auto-Submitted"] = "auto-replied"  # RFC 3834 §5
    if msgid:
        m["In-Reply-To"] = f"<{msgid}>"
        m["References"] = f"<{msgid}>"
    text = rec.get("textBody") or ""
    if rec.get("htmlBody"):
        m.set_content(text or message.html_to_text(rec["htmlBody"]))
        m.add_alternative(rec["htmlBody"], subtype="html")
    else:
        m.set_content(text)
    return m.as_bytes()


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

        def claim(d: dict[str, Any]) -> bool:
            last = d["records"].get(key, {}).get("at", 0)
            if now - last < REPLY_PERIOD:
                return False
            put(d, key, {"at": now})
            return True

        if not await sent.change(claim):
            return
        raw = compose(be.name, to, subject, msgid, rec)
        try:
            # RFC 3834 §3.3: the reply goes out with a null reverse path
            await self.submitter.submit(principal, raw, "", [to])
            logger.info("jmap.vacation.replied", account=be.account_id)
        except Exception as exc:
            logger.exception("jmap.vacation.failed", exc, account=be.account_id)
