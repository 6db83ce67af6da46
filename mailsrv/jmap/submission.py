"""EmailSubmission (RFC 8621 §7): sending an Email through local delivery and the outbound queue.

Submissions are final at once (``undoStatus: "final"``): local copies are
durable and remote recipients are in the durable queue when /set returns.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any, Protocol

from mailsrv import log
from mailsrv.jmap import args as A
from mailsrv.jmap import message
from mailsrv.jmap.core import RequestContext, registry
from mailsrv.jmap.email_set import apply_patch
from mailsrv.jmap.errors import MethodError, SetError, invalid_arguments
from mailsrv.jmap.identity import SUBMISSION, changes_objects, collection, get_objects, identities
from mailsrv.jmap.objects import new_id, put

logger = log.get("jmap")

PROPS = ["id", "identityId", "emailId", "threadId", "envelope", "sendAt", "undoStatus", "deliveryStatus",
         "dsnBlobIds", "mdnBlobIds"]
#: RFC 8621 §7: the envelope addresses of a message with no explicit envelope
RCPT_HEADERS = ("to", "cc", "bcc")
BCC_RE = re.compile(rb"(?im)^bcc:.*(?:\r?\n[ \t].*)*\r?\n")


class Submitter(Protocol):
    """Sends for an authenticated principal. ``submit`` returns rcpt -> (delivered, smtpReply)."""

    async def may_send_as(self, principal: Any, address: str) -> bool: ...

    async def submit(self, principal: Any, raw: bytes, mail_from: str, rcpts: list[str]) -> dict[str, tuple[str, str]]: ...


class DirectorySubmitter:
    """The real one: directory policy, local delivery (mailsrv.delivery), the outbound queue."""

    def __init__(self, directory: Any, store: Any, data_dir: Path) -> None:
        from mailsrv.delivery.local import LocalDelivery
        from mailsrv.delivery.spool import spool_dir
        from mailsrv.queue.enqueue import Enqueuer

        self.directory = directory
        self.local = LocalDelivery(directory, store, data_dir)
        self.queue = Enqueuer(data_dir)
        self.spool_dir = spool_dir(data_dir)

    async def _account(self, principal: Any) -> Any:
        return principal.account if principal.account is not None else await self.directory.account(int(principal.id))

    async def may_send_as(self, principal: Any, address: str) -> bool:
        acct = await self._account(principal)
        return acct is not None and bool(await self.directory.may_send_as(acct.id, address))

    async def submit(self, principal: Any, raw: bytes, mail_from: str, rcpts: list[str]) -> dict[str, tuple[str, str]]:
        from mailsrv.queue.store import QRcpt

        acct = await self._account(principal)
        spool = self.spool_dir / f"{time.time_ns():x}.{os.getpid()}.{secrets.token_hex(6)}"
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, _write_durable, spool, raw)
        out: dict[str, tuple[str, str]] = {}
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
            if local:
                outcome = await self.local.deliver(spool, local)
                for r, _ in local:
                    out[r] = ("queued", "250 2.0.0 queued for retry") if r in outcome.retry else ("yes", "250 2.0.0 delivered")
                remote += outcome.outside + outcome.retry
            if remote:
                qid = await self.queue.enqueue(spool, mail_from, [QRcpt(r) for r in remote])
                for r in remote:
                    out.setdefault(r, ("queued", f"250 2.0.0 queued as {qid}"))
                    if out[r][0] != "yes":
                        out[r] = ("queued", f"250 2.0.0 queued as {qid}")
        finally:
            await loop.run_in_executor(None, _unlink, spool)
        return out


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


@registry.add("EmailSubmission/get", SUBMISSION)
async def submission_get(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    A.check(args, ("accountId", "ids", "properties"))
    be = ctx.account(args)
    return await get_objects(ctx, args, collection(ctx, be.account_id, "EmailSubmission"), PROPS, be)


@registry.add("EmailSubmission/changes", SUBMISSION)
async def submission_changes(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    be = ctx.account(args)
    return await changes_objects(args, collection(ctx, be.account_id, "EmailSubmission"), be)


@registry.add("EmailSubmission/query", SUBMISSION)
async def submission_query(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    A.check(args, ("accountId", "filter", "sort", "position", "anchor", "anchorOffset", "limit", "calculateTotal"))
    be = ctx.account(args)
    coll = collection(ctx, be.account_id, "EmailSubmission")
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
    old = await coll.state()
    if args.get("ifInState") is not None and args["ifInState"] != old:
        raise MethodError("stateMismatch")
    submitter: Submitter | None = ctx.extra.get("submitter")
    idents = await (await identities(ctx, be)).records()
    created: dict[str, Any] = {}
    not_created: dict[str, Any] = {}
    for cid, obj in create.items():
        try:
            if not isinstance(obj, dict) or set(obj) - {"identityId", "emailId", "envelope"}:
                raise SetError("invalidProperties", properties=sorted(set(obj) - {"identityId", "emailId", "envelope"})
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
            if submitter is None:
                raise SetError("forbiddenToSend", "sending is not configured on this server")
            principal = ctx.extra.get("principal")
            if mail_from.lower() != be.name.lower() and not await submitter.may_send_as(principal, mail_from):
                raise SetError("forbiddenMailFrom")
            frm = next((a["email"] for k, v in message.header_list(raw) if k.lower() == "from"
                        for a in message.as_addresses(v)), None)
            if frm is not None and frm.lower() != be.name.lower() and not await submitter.may_send_as(principal, frm):
                raise SetError("forbiddenFrom")
            # RFC 8621 §7.5: the Bcc header field is not sent
            outgoing = BCC_RE.sub(b"", raw, count=0)
            status = await submitter.submit(principal, outgoing, mail_from, rcpts)
            now = time.time()
            rec = {"identityId": iid, "emailId": meta.id, "threadId": meta.thread_id, "envelope": env,
                   "sendAt": message.utc_date(now), "undoStatus": "final",
                   "deliveryStatus": {r: {"smtpReply": s[1], "delivered": s[0], "displayed": "unknown"}
                                      for r, s in status.items()},
                   "dsnBlobIds": [], "mdnBlobIds": []}

            def add(d: dict[str, Any], rec: dict[str, Any] = rec) -> str:
                sid = new_id(d, "S")
                put(d, sid, rec)
                return sid

            sid = await coll.change(add)
            ctx.created_ids[cid] = sid
            created[cid] = {"id": sid, "threadId": meta.thread_id, "sendAt": rec["sendAt"], "undoStatus": "final"}
            logger.info("jmap.submitted", rcpts=len(rcpts), submission=sid)
        except SetError as exc:
            not_created[cid] = exc.to_json()
    not_updated = {i: {"type": "cannotUnsend", "description": "submissions are final"}
                   for i in (args.get("update") or {})}
    not_destroyed = {i: {"type": "forbidden", "description": "submissions are kept"}
                     for i in (args.get("destroy") or [])}
    response = {"accountId": be.account_id, "oldState": old, "newState": await coll.state(),
                "created": created or None, "updated": None, "destroyed": None,
                "notCreated": not_created or None, "notUpdated": not_updated or None,
                "notDestroyed": not_destroyed or None}
    # RFC 8621 §7.5: the implicit Email/set for onSuccessUpdateEmail / onSuccessDestroyEmail
    if created and (on_update or on_destroy):
        await _implicit_email_set(ctx, be, call_id, created, on_update, on_destroy)
    return response


async def _implicit_email_set(ctx: RequestContext, be: Any, call_id: str, created: dict[str, Any],
                              on_update: dict[str, Any], on_destroy: list[Any]) -> None:
    coll = collection(ctx, be.account_id, "EmailSubmission")
    recs = await coll.records()

    def email_of(ref: str) -> str | None:
        sid = created[ref[1:]]["id"] if ref.startswith("#") and ref[1:] in created else ref
        rec = recs.get(sid)
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
            kws, mbs = apply_patch(ctx, cur, patch, boxes)
            await be.update_email(eid, mailbox_ids=mbs, keywords=kws)
            updated[eid] = None
        except SetError as exc:
            not_updated[eid] = exc.to_json()
    destroyed: list[str] = []
    for ref in on_destroy:
        eid = email_of(ref) if isinstance(ref, str) else None
        if eid is not None:
            await be.destroy_email(eid)
            destroyed.append(eid)
    ctx.emit("Email/set", {"accountId": be.account_id, "oldState": old, "newState": await be.state("Email"),
                           "created": None, "updated": updated or None, "destroyed": destroyed or None,
                           "notCreated": None, "notUpdated": not_updated or None, "notDestroyed": None}, call_id)
