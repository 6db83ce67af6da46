"""The worker's SMTP backend: directory policy, local delivery through the store, remote mail into the queue.

Partial failures after DATA follow Postfix: once at least one copy is
durable the message is accepted, and recipients whose local copy failed
temporarily (or went over quota since RCPT) are queued; the queue retries
them through our own MTA listener, which bounces them if they keep failing.
"""

from __future__ import annotations

import asyncio
import mmap
from pathlib import Path
from typing import Any

from mailsrv import log
from mailsrv.delivery.archive import ArchiveRules, envelope_block
from mailsrv.delivery.local import LocalDelivery, LocalOutcome, unlink_quiet
from mailsrv.delivery.sieve import (
    SieveFilter,
    commit,
    our_verdicts,
    pending,
    queue_orders,
    remember,
    reply_text,
)
from mailsrv.delivery.spool import FileSpool, clean, spool_dir
from mailsrv.files.convert import ConvertPolicy, converted, link_base
from mailsrv.net.service import ServiceContext
from mailsrv.queue import dsn
from mailsrv.queue.enqueue import Enqueuer
from mailsrv.queue.store import Envelope, QRcpt
from mailsrv.smtp.backend import MailBackend, SessionInfo, Spool, Transaction, Verdict
from mailsrv.util import fsio, timeline

logger = log.get("smtp")

_NOTIFY_ORDER = ("SUCCESS", "FAILURE", "DELAY", "NEVER")
#: check_sender's answer to every sender it accepts (made once: a Verdict is frozen)
_SENDER_OK = Verdict(250, "2.1.0", "Sender OK")


def _accepted(sid: str, delivered: int) -> Verdict:
    """The 250 of a message accepted with no remote recipient (its log fields go into the session's
    ``message.accepted`` line)."""
    return Verdict(*_accepted_reply(sid), log={"local": delivered, "queued": 0, "qid": None})


def _accepted_reply(sid: str) -> tuple[int, str, str]:
    """(code, enhanced code, text) of :func:`_accepted` (also what an early reply sends: the same bytes)."""
    return 250, "2.0.0", f"OK id={sid}"


def _by_address(tx: Transaction) -> dict[str, Any]:
    """Address as checked at RCPT (``route[2]``) -> its Recipient (NOTIFY, ORCPT of a retry or bounce)."""
    return {r.route[2]: r for r in tx.rcpts}


def _qrcpt(address: str, rcpt: Any = None) -> QRcpt:
    if rcpt is None:
        return QRcpt(address)
    notify = [n for n in _NOTIFY_ORDER if n in rcpt.notify]
    return QRcpt(address, notify=notify, orcpt=rcpt.orcpt)


def retry_rcpts(archive: ArchiveRules, sender: str, failed: list[tuple[str, str]]) -> list[QRcpt]:
    """Queue recipients of failed archive copies ((address, folder) of LocalOutcome.archive_retry)."""
    return [QRcpt(a, notify=["NEVER"], orcpt=archive.retry_orcpt(sender, a, folder)) for a, folder in failed]


class DirectoryBackend:
    """:class:`~mailsrv.smtp.backend.MailBackend` over the real directory, store and queue."""

    def __init__(self, directory: Any, store: Any, data_dir: Path, archive: ArchiveRules | None = None,
                 files: Any = None, convert_over: int = 0, link_base: str = "", sieve: Any = None,
                 verdicts: Any = None) -> None:
        self.directory = directory
        #: docs/files.md: an authenticated sender's attachments over their threshold become links (``files``:
        #: the worker's mailsrv.files.FileLinks; ``convert_over`` the default, overridden per domain and user)
        self.files = files
        self.convert = ConvertPolicy(convert_over, directory) if files is not None else None
        self.link_base = link_base
        self.archive = archive  # docs/archive.md: None or no rules -> no archive copies
        self.local = LocalDelivery(directory, store, data_dir)
        if sieve is not None:  # docs/sieve.md: the recipients' filters; the retry ledger also when disabled
            self.local.sieve = SieveFilter(sieve, data_dir, verdicts=verdicts)  # spamtest: our policy's verdicts
        self.queue = Enqueuer(data_dir)
        self.spool_dir = spool_dir(data_dir)
        clean(self.spool_dir)  # unacknowledged leftovers of a crashed worker (once, at start)

    async def check_sender(self, info: SessionInfo, sender: str) -> Verdict:
        acct = info.account
        if acct is not None and sender and not await self.directory.may_send_as(acct.id, sender):
            # issue 5: an authenticated user may only use addresses that are theirs
            return Verdict(553, "5.7.1", f"<{sender}>: Sender address not owned by {acct.address}")
        return _SENDER_OK

    async def check_recipient(self, info: SessionInfo, tx: Transaction, address: str) -> Verdict:
        if address == "postmaster":
            address = f"postmaster@{info.hostname}"
        rcpt = tx.checking
        # docs/archive.md: a retried archive copy (our queue's marker) ignores the archive account's own
        # quota, as its first delivery did
        own_quota = (rcpt is None or rcpt.orcpt is None or self.archive is None or not self.archive.enabled
                     or self.archive.retry_folder(info.peer_ip, tx.sender, address, rcpt.orcpt) is None)
        chk = await self.local.check(address, sender=tx.sender, size=tx.size_hint or 0,
                                     authenticated=info.account, may_relay=info.trusted, own_quota=own_quota)
        return Verdict(chk.code, chk.enh, chk.text, route=(chk.kind, chk.resolution, address))

    def open_spool(self) -> Spool:
        return FileSpool(self.spool_dir, lazy=True)  # sealed in memory: the store's job writes it

    async def deliver(self, info: SessionInfo, tx: Transaction, spool: Spool, converted: bool = False) -> Verdict:
        if self.convert is not None and not converted and info.account is not None:
            over = await self.convert.threshold(info.account)
            if over and getattr(spool, "size", 0) > over:
                return await self._deliver_converted(info, tx, spool, over)
        local: list[tuple[str, Any]] = []
        remote: list[QRcpt] = []
        for r in tx.rcpts:
            kind, res, address = r.route
            if kind == "outside":
                remote.append(_qrcpt(address, r))
            else:
                local.append((address, res))
        mailbox = "Junk" if tx.junk else "INBOX"  # issue 12: spam goes to Junk (INBOX if there is none)
        # the spool's in-memory copy (when it has one) is parsed instead of reading the file back; a
        # sealed spool has no file yet: the store's delivery job writes it before linking
        data = getattr(spool, "content", None)
        plan = retried = None
        if self.archive is not None and self.archive.enabled and not self.archive.archived(
                info.peer_ip, tx.sender, [(r.route[2], r.orcpt) for r in tx.rcpts if r.route[0] != "outside"]):
            # docs/archive.md: our queue retrying failed archive copies: into their folders, nothing more
            retried = await self.archive.retried(info.peer_ip, tx.sender, [
                (res.account, a, r.orcpt) for r in tx.rcpts for kind, res, a in [r.route] if kind != "outside"])
            plan = retried or await self.archive.plan(tx.sender, info.account, local=bool(local))
            if retried is not None:
                local = []
            elif plan is not None:  # the envelope as received: every recipient, local and remote (Bcc)
                plan.envelope = envelope_block(tx.sender, [r.address for r in tx.rcpts])
        # nobody needs the spool file after the local copies (no remote recipient, archive copy or
        # success notice: an outside group member or a retry writes it again from memory): the store
        # moves it into the last mailbox instead of linking it and having it removed after the reply
        consume = (plan is None and not remote and isinstance(spool, FileSpool) and spool.sealed
                   and not any("SUCCESS" in r.notify for r in tx.rcpts))
        # mailsrv.smtp.early: the 250 from the store's round thread when nothing below can change it once
        # the one store call's copies are durable: one local recipient (no group: outside members go to
        # the queue), no remote one, no archive copy, no conversion (its links settle after the store),
        # no success notice; local.deliver drops the hook unless the recipient's Sieve is the plain keep
        durable = None
        if (tx.early is not None and not converted and not remote and plan is None and retried is None
                and len(tx.rcpts) == 1 and tx.rcpts[0].route[0] == "local" and "SUCCESS" not in tx.rcpts[0].notify):
            durable = tx.early.arm(*_accepted_reply(info.sid), rec=timeline.current() if timeline.on else None)
        outcome = (await self.local.deliver(spool.path, local, mailbox=mailbox, data=data, archive=plan,
                                            consume=consume, sender=tx.sender, durable=durable)
                   if local or plan is not None else None)
        if outcome is not None and outcome.spool_consumed and isinstance(spool, FileSpool):
            spool.forget()
        only_local = not remote  # before the failed local copies join the queue's recipients
        if outcome is not None:
            remote.extend(_qrcpt(a) for a in outcome.outside)
            by_addr = _by_address(tx) if outcome.retry else {}
            retry = [_qrcpt(a, by_addr.get(a)) for a in outcome.retry]
            if plan is not None and self.archive is not None:  # archived now: not their retries (docs/archive.md)
                retry = [QRcpt(q.addr, notify=q.notify, orcpt=self.archive.archived_orcpt(tx.sender, q.addr, q.orcpt))
                         for q in retry]
            remote.extend(retry)
        delivered = outcome.delivered if outcome is not None else 0
        if (outcome is not None and outcome.rejects and not delivered and not remote and not outcome.retry
                and not outcome.redirects and not outcome.replies):
            # docs/sieve.md: every recipient's script refused the message: refused here (RFC 5429 §2.1), no bounce
            await commit(outcome)
            return Verdict(550, "5.7.1", reply_text(outcome.rejects[0][1]))
        if retried is not None and delivered == 0:
            return Verdict(451, "4.3.0", "Temporary local delivery failure, try again later")  # the queue retries
        if outcome is not None and outcome.archive_retry:
            await self._queue_archive_retry(tx, spool, outcome)
        if (outcome is not None and only_local and local and delivered == 0 and outcome.retry
                and not outcome.outside and not outcome.archive_retry):
            # every copy failed, nothing to queue but their retry: the sender (our queue too, which
            # connects here to retry) tries again later; queueing it would loop through our MTA at once
            await remember(outcome)  # docs/sieve.md "Retries": what a former attempt made stays recorded
            return Verdict(451, "4.3.0", "Temporary local delivery failure, try again later")
        # docs/sieve.md "Retries": the redirects before a retried recipient's entry, whose retry may
        # come at once and must find them recorded
        if outcome is not None and (outcome.redirects or outcome.replies):
            try:
                await queue_orders(self.queue, QRcpt, outcome, tx.sender, spool.path, data,
                                   smtputf8=tx.smtputf8, body=tx.body)
            except OSError as exc:  # a redirect or reply not queued: not acknowledged (as below)
                logger.exception("sieve.enqueue_failed", exc)
                await remember(outcome)
                return Verdict(451, "4.3.0", "Queue not available, try again later")
        qid = ""
        if remote:
            try:
                if not (outcome is not None and outcome.spool_linked) and isinstance(spool, FileSpool):
                    await spool.materialize()  # sealed and not made by a delivery job: the queue links it
                qid = await self.queue.enqueue(spool.path, tx.sender, remote, envid=tx.envid, ret=tx.ret,
                                               smtputf8=tx.smtputf8, body=tx.body)
            except OSError as exc:
                # not accepted even when local copies are durable already (a 250 would lose the remote
                # recipients, RFC 5321 §6.1): they are recorded, the client's retry skips them
                logger.exception("queue.enqueue_failed", exc)
                if outcome is not None:  # docs/sieve.md "Retries": the retry does not make them again
                    await remember(outcome)
                return Verdict(451, "4.3.0", "Queue not available, try again later")
        if outcome is not None and outcome.rejects:  # the others got it: a bounce for the refusing ones
            by_addr = _by_address(tx)
            await self._notice(info, tx, spool, data, "failed",
                               [QRcpt(a, orcpt=by_addr[a].orcpt if a in by_addr else None,
                                      diag=f"550 5.7.1 {reply_text(reason)}") for a, reason in outcome.rejects])
        if delivered and tx.sender and any("SUCCESS" in r.notify for r in tx.rcpts):
            await self._success_notices(info, tx, spool, outcome.retry if outcome is not None else [])
        if outcome is not None and pending(outcome):  # RFC 7352: the duplicate ids commit with the 250,
            await commit(outcome)  # never before a 451
        if not remote:
            return _accepted(info.sid, delivered)
        # one log line per message: the session's message.accepted carries these fields
        return Verdict(250, "2.0.0", f"OK id={info.sid}{' queued as ' + qid if qid else ''}",
                       log={"local": delivered, "queued": len(remote), "qid": qid or None})

    async def _deliver_converted(self, info: SessionInfo, tx: Transaction, spool: Spool, over: int) -> Verdict:
        """docs/files.md: the message with its attachments over ``over`` bytes as links of the sender's, delivered and
        queued for every recipient instead of what the client sent; as sent when nothing converts or
        the conversion fails (``files.convert_failed``). The caller discards ``spool``. The links stay
        pending until the message is accepted (removed if it is not: docs/files.md)."""
        acct = info.account
        loop = asyncio.get_running_loop()
        raw: Any = getattr(spool, "content", None)
        mapped = None
        new = None
        conv = None
        try:
            if raw is None:
                raw = mapped = await loop.run_in_executor(None, _map, spool.path)
            conv = await converted(raw, self.files, over, str(acct.id), acct.address, self.link_base)
            if conv is not None:
                new = FileSpool(self.spool_dir, lazy=True)
                await new.write(conv.data)
                if not new.seal():  # a big remainder was written out: finish the file
                    await new.commit()
        except OSError as exc:  # the spool unreadable, the new one unwritable: sent as written
            logger.warning("files.convert_failed", user=acct.address, error=str(exc))
            if new is not None:
                new.discard()
            new = None
        finally:
            if mapped is not None:
                try:
                    mapped.close()
                except BufferError:  # a view is still held somewhere: the collector closes it
                    pass
        if new is None or conv is None:
            if conv is not None:
                await self.files.settle(conv.links, keep=False)
            return await self.deliver(info, tx, spool, converted=True)
        verdict = None
        try:
            verdict = await self.deliver(info, tx, new, converted=True)
        finally:
            new.discard()
            if verdict is None or not verdict.ok:  # not accepted (an error, a cancellation): the links go
                self.files.settle_later(conv.links, keep=False)
        if verdict.ok:  # before the reply: an accepted message's links are live
            await self.files.settle(conv.links, keep=True)
        return verdict

    async def _queue_archive_retry(self, tx: Transaction, spool: Spool, outcome: LocalOutcome) -> None:
        """Failed archive copies are retried through our MTA in their own entry, each with its folder
        (ORCPT, :meth:`~mailsrv.delivery.archive.ArchiveRules.retry_orcpt`); the sender hears nothing (NEVER).
        The entry is the copies' own file (its envelope block included) when they had one."""
        failed, apath = outcome.archive_retry, outcome.archive_spool
        try:
            if apath is None and isinstance(spool, FileSpool):
                await spool.materialize()  # sealed and not made by a delivery job: the queue links it
            assert self.archive is not None  # only a plan makes archive copies
            await self.queue.enqueue(apath or spool.path, tx.sender, retry_rcpts(self.archive, tx.sender, failed),
                                     smtputf8=tx.smtputf8, body=tx.body)
        except OSError as exc:  # the message is accepted: its recipients' copies are durable
            logger.exception("archive.enqueue_failed", exc)
        finally:
            if apath is not None:
                await asyncio.get_running_loop().run_in_executor(None, unlink_quiet, apath)

    async def _success_notices(self, info: SessionInfo, tx: Transaction, spool: Spool, failed: list[str]) -> None:
        """RFC 3461 §4.1 NOTIFY=SUCCESS on a local recipient: a "delivered" DSN to the sender."""
        wanted = [r for r in tx.rcpts if "SUCCESS" in r.notify and r.route[0] in ("local", "group")
                  and r.route[2] not in failed]
        if not wanted:
            return
        rcpts = [QRcpt(r.address, orcpt=r.orcpt, diag="250 2.0.0 delivered to mailbox") for r in wanted]
        await self._notice(info, tx, spool, None, "delivered", rcpts)

    async def _notice(self, info: SessionInfo, tx: Transaction, spool: Spool, data: bytes | None, action: str,
                      rcpts: list[QRcpt]) -> None:
        """An RFC 3464 notice of ``action`` about ``rcpts`` to the sender, queued (a failure is logged)."""
        if data is not None:
            head = data[:dsn.MAX_RETURNED_BODY]
        else:
            head = await asyncio.get_running_loop().run_in_executor(None, fsio.read_prefix, spool.path,
                                                                      dsn.MAX_RETURNED_BODY)
        env = Envelope(id="", sender=tx.sender, rcpts=[], envid=tx.envid, ret=tx.ret, smtputf8=tx.smtputf8)
        body = dsn.build(env, rcpts, action, head, reporting_mta=info.hostname)
        try:
            await self.queue.enqueue(body, "", [QRcpt(tx.sender)], smtputf8=tx.smtputf8, body="8BITMIME")
        except OSError as exc:  # the message itself is delivered; a lost notice is logged
            logger.exception("dsn.enqueue_failed", exc)


def _map(path: Path) -> mmap.mmap:
    with open(path, "rb") as fh:
        return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)


def build_backend(ctx: ServiceContext) -> MailBackend:
    """From the worker's resources (docs/directory-api.md, docs/store-api.md)."""
    directory = ctx.resources.get("directory")
    store = ctx.resources.get("store")
    if directory is None or store is None:
        raise RuntimeError("the SMTP service needs resources['directory'] and resources['store']")
    cfg = ctx.config
    files = ctx.resources.get("files") if cfg.files.enabled else None  # convert_over: per domain and user too
    return DirectoryBackend(directory, store, cfg.server.data_dir, ctx.resources.get("archive"),
                            files=files, convert_over=cfg.files.convert_over, link_base=link_base(cfg),
                            sieve=cfg.sieve, verdicts=our_verdicts(cfg.policy, cfg.server.hostname, cfg.sieve))
