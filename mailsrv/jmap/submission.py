"""EmailSubmission (RFC 8621 §7): sending an Email through local delivery and the outbound queue.

A submission without a delay is final at once (``undoStatus: "final"``): local copies are durable
and remote recipients are in the durable queue when /set returns. A delayed one (RFC 4865
FUTURERELEASE: ``HOLDFOR`` / ``HOLDUNTIL`` in ``envelope.mailFrom.parameters``, or ``sendAt``) goes
whole into the outbound queue with no attempt before its release time (kept on disk: it survives
restarts); it is ``pending`` until then and setting ``undoStatus`` to ``canceled`` takes it back.
deliveryStatus follows the queue (:func:`settle`, RFC 8621 §7.1); :class:`SubmissionTracking` makes
those changes visible to push.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from mailsrv import log
from mailsrv.jmap import args as A
from mailsrv.jmap import message, reports
from mailsrv.jmap.backend import NotFound
from mailsrv.jmap.core import RequestContext, registry
from mailsrv.jmap.email_set import _utc, apply_patch
from mailsrv.jmap.errors import MethodError, SetError, invalid_arguments
from mailsrv.jmap.identity import SUBMISSION, changes_objects, collection, get_objects, identities
from mailsrv.jmap.objects import new_id, put
from mailsrv.jmap.push import MultiWatch
from mailsrv.mime.hops import TOO_MANY_HOPS_REPLY, too_many_hops
from mailsrv.store import notify

logger = log.get("jmap")

PROPS = ["id", "identityId", "emailId", "threadId", "envelope", "sendAt", "undoStatus", "deliveryStatus",
         "dsnBlobIds", "mdnBlobIds"]
#: RFC 8621 §7: the envelope addresses of a message with no explicit envelope
RCPT_HEADERS = ("to", "cc", "bcc")
BCC_RE = re.compile(rb"(?im)^bcc:.*(?:\r?\n[ \t].*)*\r?\n")


#: a delayed submission closer than this to its release can no longer be cancelled (the queue
#: runner may be starting it)
CANCEL_MARGIN = 2.0


class Submitter(Protocol):
    """Sends for an authenticated principal. ``submit`` returns rcpt -> (delivered, smtpReply)."""

    async def may_send_as(self, principal: Any, address: str) -> bool: ...

    async def submit(self, principal: Any, raw: bytes, mail_from: str, rcpts: list[str]) -> dict[str, tuple[str, str]]: ...

    async def submit_later(self, principal: Any, raw: bytes, mail_from: str, rcpts: list[str],
                           send_at: float) -> tuple[str | None, dict[str, tuple[str, str]]]:
        """Queue for release at ``send_at`` (durable on return): (queue id or None when no recipient
        was accepted, rcpt -> (delivered, smtpReply))."""

    async def cancel(self, queue_id: str) -> bool:
        """Take back a delayed submission; False when it is already (being) sent."""


class TrackingSubmitter(Submitter, Protocol):
    """A Submitter whose queued recipients can be followed (the real one; tests may use a plain one)."""

    async def submit_queued(self, principal: Any, raw: bytes, mail_from: str,
                            rcpts: list[str]) -> tuple[str | None, dict[str, tuple[str, str]]]:
        """:meth:`Submitter.submit`, plus the queue id of the recipients it queued (None: none)."""

    async def status(self, queue_id: str) -> dict[str, tuple[str, str]] | None:
        """Where the queued recipients of ``queue_id`` stand: rcpt -> (delivered, smtpReply) with
        delivered "queued" / "yes" / "no"; None when the queue no longer knows the entry."""

    def watch_paths(self) -> list[Path]:
        """Directories where a new file means that some queued recipient's status may have moved."""


class DirectorySubmitter:
    """The real one: directory policy, local delivery (mailsrv.delivery), the outbound queue."""

    def __init__(self, directory: Any, store: Any, data_dir: Path, archive: Any = None, sieve: Any = None,
                 max_hops: int = 0) -> None:
        from mailsrv.delivery.local import LocalDelivery
        from mailsrv.delivery.spool import spool_dir
        from mailsrv.queue.enqueue import Enqueuer

        self.directory = directory
        self.archive = archive  # mailsrv.delivery.archive.ArchiveRules (docs/archive.md) or None
        self.local = LocalDelivery(directory, store, data_dir)
        if sieve is not None:  # docs/sieve.md: local recipients' filters, as over SMTP (the ledger when disabled)
            from mailsrv.delivery.sieve import SieveFilter

            self.local.sieve = SieveFilter(sieve, data_dir)
        self.queue = Enqueuer(data_dir)
        self.spool_dir = spool_dir(data_dir)
        #: [smtp] max_hops: a message with more Received fields is refused (invalidEmail; 0: no bound)
        self.max_hops = max_hops
        #: docs/files.md: attachments over the sender's threshold become links of theirs (``files``: the
        #: worker's mailsrv.files.FileLinks, set with :meth:`convert_with`); None = never
        self.files: Any = None
        self.convert: Any = None
        self.link_base = ""

    def convert_with(self, files: Any, convert_over: int, link_base: str) -> None:
        """``convert_over``: the default threshold; a domain's or user's own setting overrides it."""
        from mailsrv.files.convert import ConvertPolicy

        self.files, self.link_base = files, link_base
        self.convert = ConvertPolicy(convert_over, self.directory)

    async def _account(self, principal: Any) -> Any:
        return principal.account if principal.account is not None else await self.directory.account(int(principal.id))

    async def _converted(self, acct: Any, raw: bytes) -> tuple[bytes, list[str]]:
        """``raw`` with its big attachments as links of ``acct``'s (docs/files.md), else ``raw``; and the
        links made, pending until :meth:`_settle`."""
        over = await self.convert.threshold(acct) if self.convert is not None and acct is not None else 0
        if over and len(raw) > over:
            from mailsrv.files.convert import converted

            conv = await converted(raw, self.files, over, str(acct.id), acct.address, self.link_base)
            if conv is not None:
                return conv.data, conv.links
        return raw, []

    async def _settle(self, made: list[str], out: dict[str, tuple[str, str]] | None) -> None:
        """The conversion's links live once a recipient accepted the message (``out``), else removed
        (``out`` None: the submission failed)."""
        if made:
            keep = out is not None and any(status != "no" for status, _ in out.values())
            await self.files.settle(made, keep=keep)

    async def may_send_as(self, principal: Any, address: str) -> bool:
        acct = await self._account(principal)
        return acct is not None and bool(await self.directory.may_send_as(acct.id, address))

    async def submit(self, principal: Any, raw: bytes, mail_from: str, rcpts: list[str]) -> dict[str, tuple[str, str]]:
        return (await self.submit_queued(principal, raw, mail_from, rcpts))[1]

    async def submit_queued(self, principal: Any, raw: bytes, mail_from: str,
                            rcpts: list[str]) -> tuple[str | None, dict[str, tuple[str, str]]]:
        acct = await self._account(principal)
        raw, made = await self._converted(acct, raw)
        result = None
        try:
            result = await self._submit_queued(acct, raw, mail_from, rcpts)
        finally:
            await self._settle(made, result[1] if result is not None else None)
        return result

    async def _refused_notice(self, mail_from: str, refused: list[tuple[str, str]], data: bytes) -> None:
        """A "failed" delivery status notification (RFC 3464) to the submitter about recipients whose
        Sieve script refused the message (docs/sieve.md), queued before the submission answers; a
        failure to queue it is logged (the others' copies are made)."""
        from mailsrv.delivery.sieve import reply_text
        from mailsrv.queue import dsn
        from mailsrv.queue.store import Envelope, QRcpt

        rcpts = [QRcpt(a, diag=f"550 5.7.1 {reply_text(why)}") for a, why in refused]
        body = dsn.build(Envelope(id="", sender=mail_from, rcpts=[]), rcpts, "failed", data[:dsn.MAX_RETURNED_BODY],
                         reporting_mta=self.local.store.hostname)
        try:
            await self.queue.enqueue(body, "", [QRcpt(mail_from)], body="8BITMIME")
        except OSError as exc:
            logger.exception("dsn.enqueue_failed", exc)

    async def _submit_queued(self, acct: Any, raw: bytes, mail_from: str,
                             rcpts: list[str]) -> tuple[str | None, dict[str, tuple[str, str]]]:
        from mailsrv.delivery.archive import envelope_block
        from mailsrv.delivery.sieve import commit, queue_orders, remember, reply_text
        from mailsrv.queue.store import QRcpt

        spool = self.spool_dir / f"{time.time_ns():x}.{os.getpid()}.{secrets.token_hex(6)}"
        loop = asyncio.get_running_loop()
        # RFC 5321 §4.4: final delivery writes the Return-Path on the first line, as SMTP delivery does (recall
        # trusts only that line: docs/recall.md); the queue takes it off before relaying (strip_return_path)
        trace = b"Return-Path: <" + mail_from.encode("utf-8", "replace") + b">\r\n"
        data = trace + raw
        await loop.run_in_executor(None, _write_durable, spool, data)
        out: dict[str, tuple[str, str]] = {}
        qid: str | None = None
        apath: Path | None = None  # the archive copies' own file, when a failed one is retried
        outcome = None
        try:
            local: list[tuple[str, Any]] = []
            remote: list[str] = []
            for r in rcpts:
                chk = await self.local.check(r, sender=mail_from, size=len(raw), authenticated=acct, may_relay=False)
                if chk.code >= 400:
                    out[r] = ("no", f"{chk.code} {chk.enh} {chk.text}")
                elif chk.kind == "outside":
                    remote.append(r)
                else:
                    local.append((r, chk.resolution))
            # docs/archive.md: the archive copies join the local delivery (outbound-only mail gets one too)
            plan = (await self.archive.plan(mail_from, acct, local=bool(local))
                    if self.archive is not None and self.archive.enabled else None)
            if plan is not None:  # the envelope: every recipient, Bcc included (docs/archive.md)
                plan.envelope = envelope_block(mail_from, [r for r in rcpts if r not in out])
            later: list[QRcpt] = []  # failed archive copies: retried by the queue, never reported
            archived: set[str] = set()  # local recipients queued for retry after the archive copies were made
            if local or plan is not None:
                outcome = await self.local.deliver(spool, local, archive=plan, sender=mail_from)
                refused = dict(outcome.rejects)  # docs/sieve.md: a recipient's script refused it (RFC 5429)
                for r, _ in local:
                    out[r] = (("no", f"550 5.7.1 {reply_text(refused[r])}") if r in refused
                              else ("queued", "250 2.0.0 queued for retry") if r in outcome.retry
                              else ("yes", "250 2.0.0 delivered"))
                members = [(a, why) for a, why in outcome.rejects if a not in out]
                if members:  # a group's members (the group is delivered): told as over SMTP (RFC 5429 §2.1)
                    await self._refused_notice(mail_from, members, data)
                if outcome.redirects or outcome.replies:  # durable before /set answers, as over SMTP
                    try:
                        await queue_orders(self.queue, QRcpt, outcome, mail_from, spool, data)
                    except OSError as exc:  # not acknowledged, as a remote recipient's failed enqueue:
                        logger.exception("sieve.enqueue_failed", exc)  # a resend may duplicate, not lose
                        raise
                remote += outcome.outside + outcome.retry
                if plan is not None:  # archived now: not again when the queue retries them (docs/archive.md)
                    archived = set(outcome.retry)
                later = [QRcpt(a, notify=["NEVER"], orcpt=self.archive.retry_orcpt(mail_from, a, f))
                         for a, f in outcome.archive_retry]
                apath = outcome.archive_spool
            if later:  # their own entry: retried into their folders, without other recipients (docs/archive.md)
                await self.queue.enqueue(apath or spool, mail_from, later)
            if remote:
                qid = await self.queue.enqueue(spool, mail_from, [
                    QRcpt(r, orcpt=self.archive.archived_orcpt(mail_from, r, None)) if r in archived else QRcpt(r)
                    for r in remote])
                for r in remote:
                    out.setdefault(r, ("queued", f"250 2.0.0 queued as {qid}"))
                    if out[r][0] != "yes":
                        out[r] = ("queued", f"250 2.0.0 queued as {qid}")
            if outcome is not None:  # RFC 7352: the duplicate ids commit with the submission
                await commit(outcome)
        except OSError:  # not acknowledged: the copies made are recorded, a resend skips them (docs/sieve.md)
            if outcome is not None:
                await remember(outcome)
            raise
        finally:
            await loop.run_in_executor(None, _unlink, spool)
            if apath is not None:
                await loop.run_in_executor(None, _unlink, apath)
        return qid, out


    async def submit_later(self, principal: Any, raw: bytes, mail_from: str, rcpts: list[str],
                           send_at: float) -> tuple[str | None, dict[str, tuple[str, str]]]:
        """Every accepted recipient, local ones too, waits in the outbound queue until ``send_at``
        (the runner hands local mail to the local SMTP listener). The archive copies are made now, for
        every recipient (docs/archive.md); the local ones' ORCPT says so when they are delivered."""
        acct = await self._account(principal)
        raw, made = await self._converted(acct, raw)
        result = None
        try:
            result = await self._submit_later(acct, raw, mail_from, rcpts, send_at)
        finally:
            await self._settle(made, result[1] if result is not None else None)
        return result

    async def _submit_later(self, acct: Any, raw: bytes, mail_from: str, rcpts: list[str],
                            send_at: float) -> tuple[str | None, dict[str, tuple[str, str]]]:
        from mailsrv.queue.store import QRcpt

        out: dict[str, tuple[str, str]] = {}
        accepted: list[str] = []
        local: list[tuple[str, Any]] = []
        for r in rcpts:
            chk = await self.local.check(r, sender=mail_from, size=len(raw), authenticated=acct, may_relay=False)
            if chk.code >= 400:
                out[r] = ("no", f"{chk.code} {chk.enh} {chk.text}")
            else:
                accepted.append(r)
                if chk.kind != "outside":
                    local.append((r, chk.resolution))
        if not accepted:
            return None, out
        archived = set()
        if self.archive is not None and self.archive.enabled and await self._archive_held(
                acct, raw, mail_from, accepted, local):
            archived = {r for r, _ in local}
        qid = await self.queue.enqueue(raw, mail_from, [
            QRcpt(r, orcpt=self.archive.archived_orcpt(mail_from, r, None)) if r in archived else QRcpt(r)
            for r in accepted],
            not_before=send_at)
        for r in accepted:
            out[r] = ("queued", f"250 2.0.0 held until {message.utc_date(send_at)} as {qid}")
        return qid, out

    async def _archive_held(self, acct: Any, raw: bytes, mail_from: str, accepted: list[str],
                            local: list[tuple[str, Any]]) -> bool:
        """The archive copies of a submission held until sendAt, made at acceptance (a failed one is
        queued for retry now, as in :meth:`submit_queued`). True when the message had an archive plan."""
        from mailsrv.delivery.archive import envelope_block
        from mailsrv.queue.store import QRcpt

        plan = await self.archive.plan(mail_from, acct, local=bool(local))
        if plan is None:
            return False
        plan.envelope = envelope_block(mail_from, accepted)
        await plan.see(self.directory, local)
        loop = asyncio.get_running_loop()
        spool = self.spool_dir / f"{time.time_ns():x}.{os.getpid()}.{secrets.token_hex(6)}"
        trace = b"Return-Path: <" + mail_from.encode("utf-8", "replace") + b">\r\n"  # as submit_queued
        await loop.run_in_executor(None, _write_durable, spool, trace + raw)
        apath: Path | None = None
        try:
            outcome = await self.local.deliver(spool, [], archive=plan)
            apath = outcome.archive_spool
            if outcome.archive_retry:
                await self.queue.enqueue(apath or spool, mail_from, [
                    QRcpt(a, notify=["NEVER"], orcpt=self.archive.retry_orcpt(mail_from, a, f))
                    for a, f in outcome.archive_retry])
        finally:
            await loop.run_in_executor(None, _unlink, spool)
            if apath is not None:
                await loop.run_in_executor(None, _unlink, apath)
        return True

    async def cancel(self, queue_id: str) -> bool:
        return await self.queue.cancel_delayed(queue_id, CANCEL_MARGIN)

    async def status(self, queue_id: str) -> dict[str, tuple[str, str]] | None:
        outcome = await asyncio.get_running_loop().run_in_executor(None, self.queue.qd.outcome, queue_id)
        if outcome is None:
            return None
        return {r: delivery_status(st, reply) for r, (st, reply) in outcome.items()}

    def watch_paths(self) -> list[Path]:
        # the runner renames a rewritten envelope into env/ after each attempt, an outcome into done/
        return [self.queue.qd.env, self.queue.qd.done]


def delivery_status(queue_status: str, reply: str) -> tuple[str, str]:
    """RFC 8621 §7: a queue recipient's status as (delivered, smtpReply): "queued" while the queue
    retries (the last 4xx reply, if any), "yes" after the remote 250, "no" once failed or expired."""
    from mailsrv.queue.store import PENDING, SENT

    if queue_status == PENDING:
        return "queued", reply
    return ("yes" if queue_status == SENT else "no"), reply


def _write_durable(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def envelope_of(raw: bytes, identity_email: str) -> dict[str, Any]:
    # RFC 8621 §7.5: mailFrom from the Sender/From header, rcptTo from To, Cc, Bcc (deduplicated)
    h = message.header_list(raw)
    sender = next((a["email"] for k, v in h if k.lower() == "sender" for a in message.as_addresses(v)), None)
    frm = next((a["email"] for k, v in h if k.lower() == "from" for a in message.as_addresses(v)), None)
    rcpts: list[str] = []
    for k, v in h:
        if k.lower() in RCPT_HEADERS:
            for a in message.as_addresses(v):
                if a["email"] not in rcpts:
                    rcpts.append(a["email"])
    return {"mailFrom": {"email": sender or frm or identity_email, "parameters": None},
            "rcptTo": [{"email": r, "parameters": None} for r in rcpts]}


def release_time(obj: dict[str, Any], env: dict[str, Any], max_delay: int, now: float) -> float | None:
    """When a submission is to be released, or None for at once (RFC 8621 §7, RFC 4865).

    RFC 4865 §3: ``HOLDFOR`` (seconds, 1*9DIGIT) or ``HOLDUNTIL`` (a date) among the MAIL FROM
    parameters; deviation (RFC 8621 §7 makes sendAt server-set): a ``sendAt`` given at create is
    taken as a HOLDUNTIL too. Raises SetError invalidProperties past maxDelayedSend."""
    params = env["mailFrom"].get("parameters") or {}
    if not isinstance(params, dict):
        raise SetError("invalidProperties", "mailFrom parameters must be an object", properties=["envelope"])
    upper = {str(k).upper(): v for k, v in params.items()}
    asked: list[tuple[float, str]] = []
    if "HOLDFOR" in upper:
        v = upper["HOLDFOR"]
        if not isinstance(v, str) or not (v.isascii() and v.isdigit()) or len(v) > 9:
            raise SetError("invalidProperties", "HOLDFOR is a number of seconds", properties=["envelope"])
        asked.append((now + int(v), "envelope"))
    if "HOLDUNTIL" in upper:
        asked.append((_utc(upper["HOLDUNTIL"], "envelope"), "envelope"))
    if obj.get("sendAt") is not None:
        asked.append((_utc(obj["sendAt"], "sendAt"), "sendAt"))
    if len(asked) > 1:
        raise SetError("invalidProperties", "one of HOLDFOR, HOLDUNTIL, sendAt", properties=[asked[1][1]])
    if not asked or asked[0][0] <= now:
        return None
    until, prop = asked[0]
    if until - now > max_delay:
        raise SetError("invalidProperties", f"a delay longer than maxDelayedSend ({max_delay} s)", properties=[prop])
    return until


def queue_followed(d: dict[str, Any]) -> bool:
    """True while the outbound queue may still change one of these submissions: one with a queue
    entry, not canceled, with a recipient still "queued" (a pending one has all of them queued)."""
    return any(r.get("queueId") and r.get("undoStatus") != "canceled"
               and any(v.get("delivered") == "queued" for v in r["deliveryStatus"].values())
               for r in d["records"].values())


async def refresh(be: Any, coll: Any, submitter: Any) -> bool:
    """Reports first (:func:`reports.link_reports`), then :func:`settle`; returns what settle does.

    A report look that fails (a blob that cannot be read now, a failed write) is logged and tried
    again at the next look: it never fails the submissions' own /get, /changes or push."""
    try:
        data = await reports.link_reports(be, coll)
    except Exception as exc:
        logger.warning("jmap.submission.reports_failed", account=getattr(be, "account_id", ""),
                       error=f"{type(exc).__name__}: {exc}"[:200])
        data = None
    return await settle(coll, submitter, data=data)


async def settle(coll: Any, submitter: Any = None, now: float | None = None,
                 data: dict[str, Any] | None = None) -> bool:
    """Bring the submissions up to date (each change is a state change clients see); returns
    :func:`queue_followed` of the result (whether queue writes can still matter to this account).

    RFC 8621 §7: a pending submission whose release time has come is final; RFC 8621 §7.1 ("the
    server updates deliveryStatus as it learns"): a recipient still "queued" takes its status from
    the outbound queue (the live entry, or the outcome record once done), when the submitter can
    follow it. A queue entry the queue no longer knows (its record pruned) leaves "unknown".
    ``data``: the collection as just read (saves a read)."""
    now = time.time() if now is None else now
    status_of = getattr(submitter, "status", None)

    def due(d: dict[str, Any]) -> list[str]:
        return [i for i, r in d["records"].items() if r.get("undoStatus") == "pending" and r.get("releaseAt", 0) <= now]

    def following(d: dict[str, Any]) -> dict[str, str]:
        """submission id -> queue id, for released submissions with a recipient still queued"""
        return {i: r["queueId"] for i, r in d["records"].items()
                if r.get("queueId") and r.get("undoStatus") != "canceled" and r.get("releaseAt", 0) <= now
                and any(v.get("delivered") == "queued" for v in r["deliveryStatus"].values())}

    data = await coll.read() if data is None else data
    learnt: dict[str, dict[str, dict[str, str]]] = {}
    if status_of is not None:
        for sid, qid in following(data).items():
            known = await status_of(qid)
            cur = data["records"][sid]["deliveryStatus"]
            fresh = {r: v for r, v in cur.items() if v.get("delivered") == "queued"}
            for r, v in fresh.items():
                if known is None:
                    fresh[r] = {**v, "delivered": "unknown"}
                elif r in known:
                    delivered, reply = known[r]
                    fresh[r] = {**v, "delivered": delivered, "smtpReply": reply or v["smtpReply"]}
            moved = {r: v for r, v in fresh.items() if v != cur[r]}
            if moved:
                learnt[sid] = moved
    if not due(data) and not learnt:
        return queue_followed(data)

    def apply(d: dict[str, Any]) -> bool:
        ids = set(due(d)) | set(learnt)
        for i in ids:
            rec = d["records"].get(i)
            if rec is None:
                continue
            status = rec["deliveryStatus"]
            if i in learnt and rec.get("undoStatus") != "canceled":
                # only recipients that are still queued on disk (another worker may have been first)
                status = {**status, **{r: v for r, v in learnt[i].items()
                                       if status.get(r, {}).get("delivered") == "queued"}}
            undo = "final" if rec.get("undoStatus") == "pending" and rec.get("releaseAt", 0) <= now \
                else rec.get("undoStatus")
            if status != rec["deliveryStatus"] or undo != rec.get("undoStatus"):
                put(d, i, {**rec, "undoStatus": undo, "deliveryStatus": status})
        return queue_followed(d)

    return bool(await coll.change(apply))


class SubmissionTracking:
    """A MailBackend as push sees it, plus the account's EmailSubmission state (RFC 8620 §7.1):
    :meth:`extra_states` settles the submissions first, and :meth:`watch` also wakes when the
    account's submissions change (a /set in any worker) and, while one of them is followed in the
    outbound queue (:func:`queue_followed`), when the queue writes (an attempt's result, an outcome).
    An account with nothing queued ignores queue writes: no re-read of its submissions for them."""

    def __init__(self, be: Any, coll: Any, submitter: TrackingSubmitter) -> None:
        self.be = be
        self.coll = coll
        self.submitter = submitter
        self.account_id = be.account_id
        self.name = be.name
        #: whether queue writes may change a submission (None until the first settle: assume so)
        self.following: bool | None = None
        self._queue: GatedWatch | None = None
        self._watch: MultiWatch | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.be, name)

    async def extra_states(self) -> dict[str, str]:
        gate = self._queue
        seen = gate.fired if gate is not None else 0
        was = self.following
        self.following = await refresh(self.be, self.coll, self.submitter)
        if self.following and was is False and gate is not None and gate.fired != seen and self._watch is not None:
            # the queue wrote while settle() ran and the gate was still shut: look again
            self._watch.poke()
        return {"EmailSubmission": await self.coll.state()}

    def watch(self) -> MultiWatch:
        watches: list[Any] = [self.be.watch()]
        try:
            watches.append(_collection_watch(self.coll.dir))
            gate = lambda: self.following is not False  # noqa: E731
        except OSError as exc:  # no inotify watch left (fs.inotify.max_user_watches): every queue write
            logger.warning("jmap.push.objects_unwatched", account=self.account_id, error=str(exc))
            gate = lambda: True  # noqa: E731 - wakes us, as before the gate, so no submission is missed
        try:
            self._queue = GatedWatch(_queue_watch(self.submitter.watch_paths()), gate)
        except BaseException:  # the watches made so far would hold their inotify watches until exit
            for w in watches:
                w.close()
            raise
        self._watch = MultiWatch([*watches, self._queue])
        return self._watch


def tracking(be: Any, coll: Any, submitter: Any) -> Any:
    """``be`` wrapped in :class:`SubmissionTracking` when the submitter can follow the queue."""
    if submitter is None or not hasattr(submitter, "watch_paths"):
        return be
    return SubmissionTracking(be, coll, submitter)


class GatedWatch:
    """A Watch whose wake-ups pass only while ``gate()`` is true; ``fired`` counts all of them."""

    def __init__(self, inner: notify.Watch, gate: Callable[[], bool]) -> None:
        self.inner = inner
        self.gate = gate
        self.fired = 0

    async def wait(self, seconds: float | None = None) -> bool:
        loop = asyncio.get_running_loop()
        deadline = None if seconds is None else loop.time() + seconds
        while True:
            left = None if deadline is None else max(0.0, deadline - loop.time())
            if not await self.inner.wait(left):
                return False
            self.fired += 1
            if self.gate():
                return True

    def close(self) -> None:
        self.inner.close()


_queue_notifier: notify.Notifier | None = None


def _notifier() -> notify.Notifier:
    """The process's inotify descriptor for queue and collection watches (one per event loop)."""
    global _queue_notifier
    loop = asyncio.get_running_loop()
    if _queue_notifier is None or _queue_notifier.loop is not loop:
        _queue_notifier = notify.Notifier(loop)
    return _queue_notifier


def _queue_watch(paths: list[Path]) -> notify.Watch:
    """A store-notify Watch on the queue directories."""
    n = _notifier()
    for p in paths:
        n.add_path("queue", p, notify.DIR_MASK)
    w = notify.Watch(n, "queue")
    n.register(w)
    return w


def _collection_watch(path: Path) -> notify.Watch:
    """A Watch on an account's object collections (each change renames a file into ``path``)."""
    n = _notifier()
    path.mkdir(parents=True, exist_ok=True)  # a metadata call, like the inotify_add_watch beside it
    key = f"objects:{path}"
    n.add_path(key, path, notify.DIR_MASK)
    w = notify.Watch(n, key)
    n.register(w)
    return w


@registry.add("EmailSubmission/get", SUBMISSION)
async def submission_get(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    A.check(args, ("accountId", "ids", "properties"))
    be = ctx.account(args)
    coll = collection(ctx, be.account_id, "EmailSubmission")
    await refresh(be, coll, ctx.extra.get("submitter"))
    return await get_objects(ctx, args, coll, PROPS, be)


@registry.add("EmailSubmission/changes", SUBMISSION)
async def submission_changes(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    be = ctx.account(args)
    coll = collection(ctx, be.account_id, "EmailSubmission")
    await refresh(be, coll, ctx.extra.get("submitter"))
    return await changes_objects(args, coll, be)


@registry.add("EmailSubmission/query", SUBMISSION)
async def submission_query(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    A.check(args, ("accountId", "filter", "sort", "position", "anchor", "anchorOffset", "limit", "calculateTotal"))
    be = ctx.account(args)
    coll = collection(ctx, be.account_id, "EmailSubmission")
    await refresh(be, coll, ctx.extra.get("submitter"))
    data = await coll.read()
    recs = data["records"]
    flt = args.get("filter") or {}
    if not isinstance(flt, dict) or set(flt) - {"identityIds", "emailIds", "threadIds", "undoStatus", "before", "after"}:
        raise MethodError("unsupportedFilter")
    ids = [i for i, r in recs.items()
           if ("identityIds" not in flt or r["identityId"] in flt["identityIds"])
           and ("emailIds" not in flt or r["emailId"] in flt["emailIds"])
           and ("threadIds" not in flt or r["threadId"] in flt["threadIds"])
           and ("undoStatus" not in flt or r["undoStatus"] == flt["undoStatus"])]
    ids.sort(key=lambda i: recs[i]["sendAt"], reverse=True)
    out: dict[str, Any] = {"accountId": be.account_id, "queryState": str(data["modseq"]),
                           "canCalculateChanges": False, "position": 0, "ids": ids}
    if A.boolean(args, "calculateTotal", False):
        out["total"] = len(ids)
    return out


@registry.add("EmailSubmission/set", SUBMISSION)
async def submission_set(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    A.check(args, ("accountId", "ifInState", "create", "update", "destroy", "onSuccessUpdateEmail",
                   "onSuccessDestroyEmail"))
    be = ctx.account(args)
    create = args.get("create") or {}
    if not isinstance(create, dict):
        raise invalid_arguments("create must be a map")
    on_update = args.get("onSuccessUpdateEmail") or {}
    on_destroy = args.get("onSuccessDestroyEmail") or []
    if not isinstance(on_update, dict) or not isinstance(on_destroy, list):
        raise invalid_arguments("onSuccessUpdateEmail must be a map, onSuccessDestroyEmail a list")
    A.set_limit(ctx, len(create) + len(args.get("update") or {}) + len(args.get("destroy") or []))
    coll = collection(ctx, be.account_id, "EmailSubmission")
    await refresh(be, coll, ctx.extra.get("submitter"))
    old = await coll.state()
    if args.get("ifInState") is not None and args["ifInState"] != old:
        raise MethodError("stateMismatch")
    submitter: Submitter | None = ctx.extra.get("submitter")
    idents = await (await identities(ctx, be)).records()
    created: dict[str, Any] = {}
    not_created: dict[str, Any] = {}
    for cid, obj in create.items():
        try:
            if not isinstance(obj, dict) or set(obj) - CREATE_PROPS:
                raise SetError("invalidProperties", properties=sorted(set(obj) - CREATE_PROPS)
                               if isinstance(obj, dict) else None)
            iid = ctx.resolve_id(str(obj.get("identityId", "")))
            eid = ctx.resolve_id(str(obj.get("emailId", "")))
            if iid not in idents:
                raise SetError("invalidProperties", "no such identity", properties=["identityId"])
            meta = (await be.get_emails([eid])).get(eid) if eid else None
            if meta is None:
                raise SetError("invalidProperties", "no such email", properties=["emailId"])
            raw = await be.read_blob(meta.blob_id)
            if raw is None:
                raise SetError("invalidProperties", "no such email", properties=["emailId"])
            env = obj.get("envelope") or envelope_of(raw, idents[iid]["email"])
            if (not isinstance(env, dict) or not isinstance(env.get("mailFrom"), dict)
                    or not isinstance(env.get("rcptTo"), list)):
                raise SetError("invalidProperties", properties=["envelope"])
            mail_from = env["mailFrom"].get("email", "")
            given = [r.get("email") for r in env["rcptTo"] if isinstance(r, dict)]
            rcpts = [r for r in given if isinstance(r, str) and "@" in r]
            if not given:
                raise SetError("noRecipients")
            if len(rcpts) != len(given):
                raise SetError("invalidRecipients", invalidRecipients=[str(r) for r in given if r not in rcpts])
            if len(raw) > 50 * 1024 * 1024:
                raise SetError("tooLarge", maxSize=50 * 1024 * 1024)
            now = time.time()
            send_at = release_time(obj, env, ctx.config.max_delayed_send, now)
            if submitter is None:
                raise SetError("forbiddenToSend", "sending is not configured on this server")
            # RFC 5321 §6.3 (a loop, as our MTA refuses it): the message itself is at fault, so RFC 8621
            # §7.5's invalidEmail over its headers (forbiddenToSend is about the user, not the message)
            max_hops = getattr(submitter, "max_hops", 0)
            if max_hops and too_many_hops(raw, max_hops):
                raise SetError("invalidEmail", f"{TOO_MANY_HOPS_REPLY}: more than {max_hops} Received header "
                               "fields", properties=["headers"])
            principal = ctx.extra.get("principal")
            if mail_from.lower() != be.name.lower() and not await submitter.may_send_as(principal, mail_from):
                raise SetError("forbiddenMailFrom")
            frm = next((a["email"] for k, v in message.header_list(raw) if k.lower() == "from"
                        for a in message.as_addresses(v)), None)
            if frm is not None and frm.lower() != be.name.lower() and not await submitter.may_send_as(principal, frm):
                raise SetError("forbiddenFrom")
            # RFC 8621 §7.5: the Bcc header field is not sent
            outgoing = BCC_RE.sub(b"", raw, count=0)
            report_from = await be.state("Email")  # its reports arrive after this (reports.link_reports)
            qid: str | None = None
            if send_at is None:
                submit_queued = getattr(submitter, "submit_queued", None)
                if submit_queued is not None:  # the queue id lets settle() follow the queued recipients
                    qid, status = await submit_queued(principal, outgoing, mail_from, rcpts)
                else:
                    status = await submitter.submit(principal, outgoing, mail_from, rcpts)
            else:
                qid, status = await submitter.submit_later(principal, outgoing, mail_from, rcpts, send_at)
            release = now if send_at is None or qid is None else send_at
            undo = "pending" if send_at is not None and qid is not None else "final"
            rec = {"identityId": iid, "emailId": meta.id, "threadId": meta.thread_id, "envelope": env,
                   "sendAt": message.utc_date(release), "undoStatus": undo,
                   "deliveryStatus": {r: {"smtpReply": s[1], "delivered": s[0], "displayed": "unknown"}
                                      for r, s in status.items()},
                   "dsnBlobIds": [], "mdnBlobIds": [], "queueId": qid, "releaseAt": release,
                   "messageId": reports.submitted_message_id(outgoing), "reportFrom": report_from,
                   "mdnWanted": reports.wants_mdn(outgoing)}

            def add(d: dict[str, Any], rec: dict[str, Any] = rec) -> str:
                sid = new_id(d, "S")
                put(d, sid, rec)
                return sid

            sid = await coll.change(add)
            ctx.created_ids[cid] = sid
            created[cid] = {"id": sid, "threadId": meta.thread_id, "sendAt": rec["sendAt"], "undoStatus": undo}
            logger.info("jmap.submitted", rcpts=len(rcpts), submission=sid, queue_id=qid or "",
                        release=rec["sendAt"] if undo == "pending" else "now")
        except SetError as exc:
            not_created[cid] = exc.to_json()
    updated, not_updated = await _cancel(ctx, coll, submitter, args.get("update") or {})
    not_destroyed = {i: {"type": "forbidden", "description": "submissions are kept"}
                     for i in (args.get("destroy") or [])}
    response = {"accountId": be.account_id, "oldState": old, "newState": await coll.state(),
                "created": created or None, "updated": updated or None, "destroyed": None,
                "notCreated": not_created or None, "notUpdated": not_updated or None,
                "notDestroyed": not_destroyed or None}
    # RFC 8621 §7.5: the implicit Email/set for onSuccessUpdateEmail / onSuccessDestroyEmail, for the
    # submissions this call created ("#creationId") or updated (their id)
    done = {**{f"#{cid}": c["id"] for cid, c in created.items()}, **{sid: sid for sid in updated}}
    if done and (on_update or on_destroy):
        await _implicit_email_set(ctx, be, call_id, done, on_update, on_destroy)
    return response


CREATE_PROPS = frozenset({"identityId", "emailId", "envelope", "sendAt"})


async def _cancel(ctx: RequestContext, coll: Any, submitter: Submitter | None,
                  update: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """RFC 8621 §7: the only change a client may make is undoStatus -> "canceled", while pending."""
    if not isinstance(update, dict):
        raise invalid_arguments("update must be a map")
    updated: dict[str, Any] = {}
    not_updated: dict[str, Any] = {}
    for sid, patch in update.items():
        try:
            recs = await coll.records()
            rec = recs.get(sid)
            if rec is None:
                raise SetError("notFound")
            if not isinstance(patch, dict):
                raise SetError("invalidPatch", "not an object")
            bad = sorted(k for k in patch if k != "undoStatus")
            if bad or patch.get("undoStatus") != "canceled":
                raise SetError("invalidProperties", "only undoStatus may be set, to canceled",
                               properties=bad or ["undoStatus"])
            if rec["undoStatus"] != "canceled":
                if rec["undoStatus"] != "pending" or not rec.get("queueId") or submitter is None \
                        or not await submitter.cancel(rec["queueId"]):
                    raise SetError("cannotUnsend", "the message is already (being) sent")

                def mark(d: dict[str, Any], sid: str = sid) -> None:
                    cur = d["records"][sid]
                    status = {r: {**v, "delivered": "no", "smtpReply": "550 5.0.0 canceled before release"}
                              for r, v in cur["deliveryStatus"].items()}
                    put(d, sid, {**cur, "undoStatus": "canceled", "deliveryStatus": status})

                await coll.change(mark)
                logger.info("jmap.submission_canceled", submission=sid, queue_id=rec["queueId"])
            updated[sid] = None
        except SetError as exc:
            not_updated[sid] = exc.to_json()
    return updated, not_updated


async def _implicit_email_set(ctx: RequestContext, be: Any, call_id: str, done: dict[str, str],
                              on_update: dict[str, Any], on_destroy: list[Any]) -> None:
    coll = collection(ctx, be.account_id, "EmailSubmission")
    recs = await coll.records()

    def email_of(ref: str) -> str | None:
        sid = done.get(ref)  # only submissions that succeeded in this call
        rec = recs.get(sid) if sid is not None else None
        return rec["emailId"] if rec else None

    old = await be.state("Email")
    boxes = {m.id for m in await be.mailboxes()}
    updated: dict[str, Any] = {}
    not_updated: dict[str, Any] = {}
    for ref, patch in on_update.items():
        eid = email_of(ref)
        if eid is None:
            continue
        try:
            cur = (await be.get_emails([eid])).get(eid)
            if cur is None:
                raise SetError("notFound")
            if not isinstance(patch, dict):
                raise SetError("invalidPatch", "not an object")
            kws, mbs = apply_patch(ctx, cur, patch, boxes)
            await be.update_email(eid, mailbox_ids=mbs, keywords=kws)
            updated[eid] = None
        except SetError as exc:
            not_updated[eid] = exc.to_json()
    destroyed: list[str] = []
    not_destroyed: dict[str, Any] = {}
    for ref in on_destroy:
        eid = email_of(ref) if isinstance(ref, str) else None
        if eid is not None:
            try:
                await be.destroy_email(eid)
                destroyed.append(eid)
            except NotFound:
                not_destroyed[eid] = {"type": "notFound"}
    ctx.emit("Email/set", {"accountId": be.account_id, "oldState": old, "newState": await be.state("Email"),
                           "created": None, "updated": updated or None, "destroyed": destroyed or None,
                           "notCreated": None, "notUpdated": not_updated or None,
                           "notDestroyed": not_destroyed or None}, call_id)
