"""Email/set, Email/import, Email/parse, Email/copy (RFC 8621 §4.6-§4.9).

Creating an Email composes an RFC 5322 message from the JMAP object (stdlib
``email`` with CRLF line ends) and hands it to the backend like an import.
"""

from __future__ import annotations

import email.message
import email.policy
import email.utils
import re
import time
from datetime import datetime
from typing import Any

from mailsrv.jmap import args as A
from mailsrv.jmap.backend import EmailMeta, MailBackend, NotFound, OverQuota
from mailsrv.jmap.core import MAIL, RequestContext, registry
from mailsrv.jmap.email import (
    BODY_PART_PROPERTIES,
    CONVENIENCE,
    DEFAULT_BODY_PROPERTIES,
    BodyOptions,
    check_properties,
    email_json,
    parse_header_prop,
    read_blob,
)
from mailsrv.jmap.errors import MethodError, SetError, invalid_arguments

#: RFC 8621 §4.1.1: keyword syntax is IMAP atom characters minus "]" (we also refuse "%*\\")
KEYWORD_RE = re.compile(r"^[\x21-\x7e]{1,255}$")
KEYWORD_BAD = set('()]{%*"\\')
PARSE_DEFAULT = ["messageId", "inReplyTo", "references", "sender", "from", "to", "cc", "bcc", "replyTo",
                 "subject", "sentAt", "hasAttachment", "preview", "bodyValues", "textBody", "htmlBody", "attachments"]
SMTP = email.policy.SMTP.clone(max_line_length=998)


def valid_keyword(k: Any) -> bool:
    return isinstance(k, str) and KEYWORD_RE.match(k) is not None and not (set(k) & KEYWORD_BAD)


def keyword_set(value: Any, prop: str = "keywords") -> frozenset[str]:
    if not isinstance(value, dict) or not all(v is True for v in value.values()):
        raise SetError("invalidProperties", "keywords must map keywords to true", properties=[prop])
    for k in value:
        if not valid_keyword(k):
            raise SetError("invalidProperties", f"bad keyword {k!r}", properties=[prop])
    return frozenset(k.lower() for k in value)


def mailbox_set(ctx: RequestContext, value: Any, known: set[str]) -> frozenset[str]:
    if not isinstance(value, dict) or not all(v is True for v in value.values()):
        raise SetError("invalidProperties", "mailboxIds must map ids to true", properties=["mailboxIds"])
    out = set()
    for k in value:
        rid = ctx.resolve_id(k)
        if rid is None or rid not in known:
            raise SetError("invalidProperties", f"no mailbox {k!r}", properties=["mailboxIds"])
        out.add(rid)
    if not out:
        raise SetError("invalidProperties", "an Email must be in at least one mailbox", properties=["mailboxIds"])
    return frozenset(out)


def _utc(value: Any, prop: str) -> float:
    if not isinstance(value, str):
        raise SetError("invalidProperties", properties=[prop])
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise SetError("invalidProperties", properties=[prop]) from None
    if dt.tzinfo is None:
        raise SetError("invalidProperties", properties=[prop])
    return dt.timestamp()


# --- composing ---------------------------------------------------------------------


def _addresses(value: Any, prop: str) -> str:
    if not isinstance(value, list):
        raise SetError("invalidProperties", properties=[prop])
    out = []
    for a in value:
        if not isinstance(a, dict) or not isinstance(a.get("email"), str) or set(a) - {"name", "email"}:
            raise SetError("invalidProperties", properties=[prop])
        name = a.get("name")
        if name is not None and not isinstance(name, str):
            raise SetError("invalidProperties", properties=[prop])
        out.append(email.utils.formataddr((name or "", a["email"])))
    return ", ".join(out)


def _header_text(prop: str, form: str, value: Any) -> str:
    if form == "Raw":
        if not isinstance(value, str):
            raise SetError("invalidProperties", properties=[prop])
        return value.strip()
    if form == "Text":
        if not isinstance(value, str):
            raise SetError("invalidProperties", properties=[prop])
        return value
    if form == "Addresses":
        return _addresses(value, prop)
    if form == "GroupedAddresses":
        if not isinstance(value, list):
            raise SetError("invalidProperties", properties=[prop])
        parts = []
        for g in value:
            if not isinstance(g, dict):
                raise SetError("invalidProperties", properties=[prop])
            inner = _addresses(g.get("addresses", []), prop)
            parts.append(f"{g['name']}: {inner};" if g.get("name") else inner)
        return ", ".join(p for p in parts if p)
    if form == "MessageIds":
        if not isinstance(value, list) or not all(isinstance(x, str) and x for x in value):
            raise SetError("invalidProperties", properties=[prop])
        return " ".join(f"<{x}>" for x in value)
    if form == "Date":
        if not isinstance(value, str):
            raise SetError("invalidProperties", properties=[prop])
        try:
            return email.utils.format_datetime(datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            raise SetError("invalidProperties", properties=[prop]) from None
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise SetError("invalidProperties", properties=[prop])
    return ", ".join(f"<{x}>" for x in value)


class Composer:
    def __init__(self, ctx: RequestContext, be: MailBackend, obj: dict[str, Any]) -> None:
        self.ctx = ctx
        self.be = be
        self.obj = obj
        bv = obj.get("bodyValues") or {}
        if not isinstance(bv, dict):
            raise SetError("invalidProperties", properties=["bodyValues"])
        self.body_values = bv
        self.used_values: set[str] = set()

    async def part(self, p: Any, prop: str, default_type: str = "text/plain") -> email.message.EmailMessage:
        if not isinstance(p, dict):
            raise SetError("invalidProperties", properties=[prop])
        for k in p:
            if k not in BODY_PART_PROPERTIES and not k.startswith("header:"):
                raise SetError("invalidProperties", f"unknown body part property {k}", properties=[prop])
        if "size" in p and "blobId" not in p:
            raise SetError("invalidProperties", "size only with blobId", properties=[prop])
        m = email.message.EmailMessage(policy=SMTP)
        ptype = p.get("type")
        if ptype is not None and (not isinstance(ptype, str) or "/" not in ptype):
            raise SetError("invalidProperties", properties=[prop])
        sub = p.get("subParts")
        if sub is not None:
            if not isinstance(sub, list):
                raise SetError("invalidProperties", properties=[prop])
            mtype = (ptype or "multipart/mixed").lower()
            if not mtype.startswith("multipart/"):
                raise SetError("invalidProperties", "subParts need a multipart type", properties=[prop])
            m.set_type(mtype)  # creates Content-Type with a boundary on serialisation
            m.set_payload([])
            m["MIME-Version"] = "1.0"
            del m["MIME-Version"]
            for s in sub:
                m.attach(await self.part(s, prop))
        elif "partId" in p:
            pid = p["partId"]
            value = self.body_values.get(pid) if isinstance(pid, str) else None
            if not isinstance(value, dict) or not isinstance(value.get("value"), str):
                raise SetError("invalidProperties", f"no bodyValue for part {pid!r}", properties=[prop])
            if value.get("isEncodingProblem") or value.get("isTruncated"):
                raise SetError("invalidProperties", "bodyValue is truncated or has an encoding problem", properties=["bodyValues"])
            if "charset" in p and p["charset"] not in (None, "utf-8", "UTF-8"):
                raise SetError("invalidProperties", "text parts are always UTF-8", properties=[prop])
            self.used_values.add(pid)
            mtype = (ptype or default_type).lower()
            if not mtype.startswith("text/"):
                raise SetError("invalidProperties", "partId parts must be text", properties=[prop])
            m.set_content(value["value"], subtype=mtype.split("/", 1)[1], charset="utf-8", cte="quoted-printable")
        elif "blobId" in p:
            bid = p["blobId"]
            data = await read_blob(self.be, self.ctx.extra.get("uploads"), bid) if isinstance(bid, str) else None
            if data is None:
                raise SetError("blobNotFound", notFound=[bid])
            mtype = (ptype or "application/octet-stream").lower()
            maintype, subtype = mtype.split("/", 1)
            if maintype == "text":
                cs = p.get("charset") or "us-ascii"
                m.set_content(data, maintype="text", subtype=subtype, cte="base64")
                m.set_param("charset", cs)
            elif maintype == "message":
                m.set_content(data, maintype="application", subtype="octet-stream", cte="7bit")
                m.replace_header("Content-Type", mtype)
            else:
                m.set_content(data, maintype=maintype, subtype=subtype, cte="base64")
        else:
            raise SetError("invalidProperties", "a body part needs partId, blobId or subParts", properties=[prop])
        disp = p.get("disposition")
        name = p.get("name")
        if disp is not None or name is not None:
            if "Content-Disposition" in m:
                del m["Content-Disposition"]
            m.add_header("Content-Disposition", disp or "attachment", **({"filename": name} if name else {}))
        if name is not None and sub is None:
            m.set_param("name", name)
        if p.get("cid"):
            m["Content-ID"] = f"<{p['cid']}>"
        if p.get("language"):
            m["Content-Language"] = ", ".join(p["language"])
        if p.get("location"):
            m["Content-Location"] = p["location"]
        for k, v in p.items():
            if k.startswith("header:"):
                hp = parse_header_prop(k)
                if hp is None or hp[0].lower().startswith("content-transfer-encoding"):
                    raise SetError("invalidProperties", properties=[prop])
                m[hp[0]] = _header_text(k, hp[1], v)
        return m

    async def build(self) -> bytes:
        o = self.obj
        if "bodyStructure" in o:
            if any(k in o for k in ("textBody", "htmlBody", "attachments")):
                raise SetError("invalidProperties", "bodyStructure excludes textBody/htmlBody/attachments",
                               properties=["bodyStructure"])
            root = await self.part(o["bodyStructure"], "bodyStructure")
        else:
            text = o.get("textBody") or []
            htm = o.get("htmlBody") or []
            att = o.get("attachments") or []
            if not isinstance(text, list) or len(text) > 1:
                raise SetError("invalidProperties", "at most one textBody part", properties=["textBody"])
            if not isinstance(htm, list) or len(htm) > 1:
                raise SetError("invalidProperties", "at most one htmlBody part", properties=["htmlBody"])
            if not isinstance(att, list):
                raise SetError("invalidProperties", properties=["attachments"])
            t = [await self.part(p, "textBody", "text/plain") for p in text]
            h = [await self.part(p, "htmlBody", "text/html") for p in htm]
            if t and h:
                body = email.message.EmailMessage(policy=SMTP)
                body.set_type("multipart/alternative")
                body.set_payload([])
                body.attach(t[0])
                body.attach(h[0])
            elif t or h:
                body = (t or h)[0]
            else:
                body = email.message.EmailMessage(policy=SMTP)
                body.set_content("", charset="utf-8")
            if att:
                root = email.message.EmailMessage(policy=SMTP)
                root.set_type("multipart/mixed")
                root.set_payload([])
                root.attach(body)
                for p in att:
                    a = await self.part(p, "attachments", "application/octet-stream")
                    if "Content-Disposition" not in a:
                        a.add_header("Content-Disposition", "attachment")
                    root.attach(a)
            else:
                root = body
        unused = set(self.body_values) - self.used_values
        if unused:
            raise SetError("invalidProperties", "bodyValues for parts that are not in the body", properties=["bodyValues"])
        # Top-level headers: header:* forms first, then the convenience properties.
        for k, v in o.items():
            if k.startswith("header:"):
                hp = parse_header_prop(k)
                if hp is None or hp[0].lower().startswith("content-"):
                    raise SetError("invalidProperties", properties=[k])
                if hp[2]:
                    if not isinstance(v, list):
                        raise SetError("invalidProperties", properties=[k])
                    for item in v:
                        root[hp[0]] = _header_text(k, hp[1], item)
                else:
                    root[hp[0]] = _header_text(k, hp[1], v)
        for prop, (hname, form) in CONVENIENCE.items():
            if prop in o and o[prop] is not None:
                if hname in root:
                    raise SetError("invalidProperties", f"{prop} given twice", properties=[prop])
                root[hname.title() if hname != "message-id" else "Message-ID"] = _header_text(prop, form, o[prop])
        if "Date" not in root:
            root["Date"] = email.utils.formatdate(localtime=False)
        if "Message-ID" not in root:
            root["Message-ID"] = email.utils.make_msgid(domain="jmap.invalid")
        if "MIME-Version" not in root:
            root["MIME-Version"] = "1.0"
        # Headers go first: move MIME-Version/Content-* after the RFC 5322 ones (cosmetic).
        return root.as_bytes(policy=SMTP)


async def email_state(be: MailBackend, if_in_state: Any) -> str:
    """The account's Email state; stateMismatch when ``if_in_state`` is given and differs (RFC 8620 §5.3)."""
    state = await be.state("Email")
    if if_in_state is not None and if_in_state != state:
        raise MethodError("stateMismatch")
    return state


CREATE_PROPS = frozenset(
    ["mailboxIds", "keywords", "receivedAt", "headers", "bodyStructure", "bodyValues", "textBody", "htmlBody",
     "attachments", *CONVENIENCE]
)


@registry.add("Email/set", MAIL)
async def email_set(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    A.check(args, ("accountId", "ifInState", "create", "update", "destroy"))
    be: MailBackend = ctx.account(args)
    create = args.get("create") or {}
    update = args.get("update") or {}
    destroy = A.ids(ctx, args, "destroy") or []
    if not isinstance(create, dict) or not isinstance(update, dict):
        raise invalid_arguments("create and update must be maps")
    A.set_limit(ctx, len(create) + len(update) + len(destroy))
    old_state = await email_state(be, args.get("ifInState"))
    boxes = {m.id for m in await be.mailboxes()}
    created: dict[str, Any] = {}
    not_created: dict[str, Any] = {}
    for cid, obj in create.items():
        try:
            if not isinstance(obj, dict):
                raise SetError("invalidProperties", "not an object")
            bad = [k for k in obj if k not in CREATE_PROPS and not k.startswith("header:")]
            if bad:
                raise SetError("invalidProperties", "server-set or unknown properties", properties=bad)
            if "headers" in obj and obj["headers"]:
                raise SetError("invalidProperties", "use header:* properties", properties=["headers"])
            mboxes = mailbox_set(ctx, obj.get("mailboxIds"), boxes)
            kws = keyword_set(obj.get("keywords", {}))
            received = _utc(obj["receivedAt"], "receivedAt") if "receivedAt" in obj else None
            raw = await Composer(ctx, be, obj).build()
            try:
                meta = await be.import_email(raw, mboxes, kws, received)
            except OverQuota:
                raise SetError("overQuota") from None
            ctx.created_ids[cid] = meta.id
            created[cid] = {"id": meta.id, "blobId": meta.blob_id, "threadId": meta.thread_id, "size": meta.size}
        except SetError as exc:
            not_created[cid] = exc.to_json()
    updated: dict[str, Any] = {}
    not_updated: dict[str, Any] = {}
    for eid, patch in update.items():
        rid = ctx.resolve_id(eid) or eid
        try:
            if not isinstance(patch, dict):
                raise SetError("invalidPatch", "not an object")
            cur = (await be.get_emails([rid])).get(rid)
            if cur is None:
                raise SetError("notFound")
            new_kws, new_mbs = apply_patch(ctx, cur, patch, boxes)
            try:
                await be.update_email(rid, mailbox_ids=new_mbs, keywords=new_kws)
            except NotFound:
                raise SetError("notFound") from None
            updated[eid] = None
        except SetError as exc:
            not_updated[eid] = exc.to_json()
    destroyed: list[str] = []
    not_destroyed: dict[str, Any] = {}
    for eid in destroy:
        try:
            await be.destroy_email(eid)
            destroyed.append(eid)
        except NotFound:
            not_destroyed[eid] = {"type": "notFound"}
        except SetError as exc:  # a shared mailbox without the rights (sharedview.py)
            not_destroyed[eid] = exc.to_json()
    return {
        "accountId": be.account_id, "oldState": old_state, "newState": await be.state("Email"),
        "created": created or None, "updated": updated or None, "destroyed": destroyed or None,
        "notCreated": not_created or None, "notUpdated": not_updated or None, "notDestroyed": not_destroyed or None,
    }


def apply_patch(
    ctx: RequestContext, cur: EmailMeta, patch: dict[str, Any], boxes: set[str]
) -> tuple[frozenset[str] | None, frozenset[str] | None]:
    """RFC 8620 §5.3 PatchObject over keywords and mailboxIds (the only mutable properties)."""
    kws: set[str] | None = None
    mbs: set[str] | None = None
    whole = {k for k in patch if "/" not in k}
    for path, value in patch.items():
        head, _, rest = path.partition("/")
        if head not in ("keywords", "mailboxIds"):
            raise SetError("invalidProperties", f"{head} cannot be changed", properties=[head])
        if rest and head in whole:
            raise SetError("invalidPatch", f"{path} conflicts with {head}")
        if head == "keywords":
            if not rest:
                kws = set(keyword_set(value))
                continue
            key = rest.replace("~1", "/").replace("~0", "~")
            if not valid_keyword(key) or value not in (True, None):
                raise SetError("invalidPatch", f"bad patch {path}", properties=["keywords"])
            kws = set(cur.keywords) if kws is None else kws
            (kws.add if value else kws.discard)(key.lower())
        else:
            if not rest:
                mbs = set(mailbox_set(ctx, value, boxes))
                continue
            mid = ctx.resolve_id(rest.replace("~1", "/").replace("~0", "~"))
            if value not in (True, None) or mid is None:
                raise SetError("invalidPatch", f"bad patch {path}", properties=["mailboxIds"])
            if value and mid not in boxes:
                raise SetError("invalidProperties", f"no mailbox {mid}", properties=["mailboxIds"])
            mbs = set(cur.mailbox_ids) if mbs is None else mbs
            (mbs.add if value else mbs.discard)(mid)
    if mbs is not None and not mbs:
        raise SetError("invalidProperties", "an Email must be in at least one mailbox", properties=["mailboxIds"])
    return (frozenset(kws) if kws is not None else None, frozenset(mbs) if mbs is not None else None)


@registry.add("Email/import", MAIL)
async def email_import(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    A.check(args, ("accountId", "ifInState", "emails"))
    be: MailBackend = ctx.account(args)
    emails = args.get("emails")
    if not isinstance(emails, dict):
        raise invalid_arguments("emails must be a map")
    A.set_limit(ctx, len(emails))
    old_state = await email_state(be, args.get("ifInState"))
    boxes = {m.id for m in await be.mailboxes()}
    uploads = ctx.extra.get("uploads")
    created: dict[str, Any] = {}
    not_created: dict[str, Any] = {}
    for cid, obj in emails.items():
        try:
            if not isinstance(obj, dict) or not isinstance(obj.get("blobId"), str):
                raise SetError("invalidProperties", "blobId is required", properties=["blobId"])
            bad = [k for k in obj if k not in ("blobId", "mailboxIds", "keywords", "receivedAt")]
            if bad:
                raise SetError("invalidProperties", properties=bad)
            mboxes = mailbox_set(ctx, obj.get("mailboxIds"), boxes)
            kws = keyword_set(obj.get("keywords", {}))
            received = _utc(obj["receivedAt"], "receivedAt") if obj.get("receivedAt") is not None else None
            blob_id = ctx.resolve_id(obj["blobId"]) or obj["blobId"]
            # an uploaded blob goes to the backend as a file (hard link / streamed copy), never whole in memory
            path = await uploads.path(be.account_id, blob_id) if uploads is not None else None
            data: Any = path
            if path is None:
                data = await read_blob(be, uploads, blob_id)
                if data is None:
                    raise SetError("blobNotFound", notFound=[obj["blobId"]])
            try:
                meta = await be.import_email(data, mboxes, kws, received)
            except OverQuota:
                raise SetError("overQuota") from None
            except NotFound:
                raise SetError("invalidProperties", properties=["mailboxIds"]) from None
            ctx.created_ids[cid] = meta.id
            created[cid] = {"id": meta.id, "blobId": meta.blob_id, "threadId": meta.thread_id, "size": meta.size}
        except SetError as exc:
            not_created[cid] = exc.to_json()
    return {"accountId": be.account_id, "oldState": old_state, "newState": await be.state("Email"),
            "created": created or None, "notCreated": not_created or None}


@registry.add("Email/parse", MAIL)
async def email_parse(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    A.check(args, ("accountId", "blobIds", "properties", "bodyProperties", "fetchTextBodyValues",
                   "fetchHTMLBodyValues", "fetchAllBodyValues", "maxBodyValueBytes"))
    be: MailBackend = ctx.account(args)
    blob_ids = A.ids(ctx, args, "blobIds", nullable=False) or []
    A.get_limit(ctx, len(blob_ids))
    from mailsrv.jmap.email import PROPERTIES

    props = check_properties(args.get("properties"), PROPERTIES, PARSE_DEFAULT, "properties")
    body_props = check_properties(args.get("bodyProperties"), BODY_PART_PROPERTIES, DEFAULT_BODY_PROPERTIES,
                                  "bodyProperties")
    opts = BodyOptions(args)
    parsed: dict[str, Any] = {}
    not_found: list[str] = []
    not_parsable: list[str] = []
    for bid in blob_ids:
        data = await read_blob(be, ctx.extra.get("uploads"), bid)
        if data is None:
            not_found.append(bid)
            continue
        meta = EmailMeta("", bid, "", frozenset(), frozenset(), len(data), time.time())
        try:
            obj = email_json(meta, data, props, body_props, opts)
        except Exception:
            not_parsable.append(bid)
            continue
        # RFC 8621 §4.9: id, mailboxIds, keywords, receivedAt, threadId are null for a parsed blob
        for k in ("id", "mailboxIds", "keywords", "receivedAt", "threadId"):
            if k in obj:
                obj[k] = None
        parsed[bid] = obj
    return {"accountId": be.account_id, "parsed": parsed or None, "notParsable": not_parsable or None,
            "notFound": not_found or None}


@registry.add("Email/copy", MAIL)
async def email_copy(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    """RFC 8620 §5.4 + RFC 8621 §4.7: copy emails from another account the caller may read (a shared
    one, or their own into a shared one); the dispatcher already refused a read-only destination."""
    A.check(args, ("fromAccountId", "ifFromInState", "accountId", "ifInState", "create",
                   "onSuccessDestroyOriginal", "destroyFromIfInState"))
    be: MailBackend = ctx.account(args)
    src_id = args.get("fromAccountId")
    if not isinstance(src_id, str):
        raise invalid_arguments("fromAccountId must be an Id")
    src: MailBackend | None = ctx.accounts.get(src_id)
    if src is None:
        raise MethodError("fromAccountNotFound")
    if src_id == be.account_id:
        # RFC 8620 §5.4: /copy is between two different accounts; use Email/set to change mailboxIds
        raise invalid_arguments("fromAccountId and accountId are the same account")
    caps = ctx.account_capabilities.get(src_id)
    if caps is not None and MAIL not in caps:
        raise MethodError("fromAccountNotSupportedByMethod")
    create = args.get("create")
    if not isinstance(create, dict):
        raise invalid_arguments("create must be a map")
    A.set_limit(ctx, len(create))
    destroy_original = A.boolean(args, "onSuccessDestroyOriginal", False)
    for name in ("ifFromInState", "ifInState", "destroyFromIfInState"):
        if args.get(name) is not None and not isinstance(args[name], str):
            raise invalid_arguments(f"{name} must be a String")
    await email_state(src, args.get("ifFromInState"))
    old_state = await email_state(be, args.get("ifInState"))
    boxes = {m.id for m in await be.mailboxes()}
    created: dict[str, Any] = {}
    not_created: dict[str, Any] = {}
    copied: list[str] = []
    for cid, obj in create.items():
        try:
            created[cid] = await _copy_one(ctx, src, be, obj, boxes)
            ctx.created_ids[cid] = created[cid]["id"]
            copied.append(obj["id"])
        except SetError as exc:
            not_created[cid] = exc.to_json()
    out = {"fromAccountId": src_id, "accountId": be.account_id, "oldState": old_state,
           "newState": await be.state("Email"), "created": created or None, "notCreated": not_created or None}
    if destroy_original and copied:
        # RFC 8620 §5.4: an implicit /set on the source account, answered after this response
        destroy = {"accountId": src_id, "destroy": copied}
        if args.get("destroyFromIfInState") is not None:
            destroy["ifInState"] = args["destroyFromIfInState"]
        try:
            if src_id in ctx.read_only:
                raise MethodError("accountReadOnly", f"account {src_id} is shared with you read-only")
            ctx.emit("Email/set", await email_set(ctx, destroy, call_id), call_id)
        except MethodError as exc:
            ctx.emit("error", exc.to_json(), call_id)
    return out


async def _copy_one(ctx: RequestContext, src: MailBackend, be: MailBackend, obj: Any,
                    boxes: set[str]) -> dict[str, Any]:
    if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
        raise SetError("invalidProperties", "id (of the email to copy) is required", properties=["id"])
    # RFC 8621 §4.7: only mailboxIds, keywords and receivedAt may be given besides the id
    bad = [k for k in obj if k not in ("id", "mailboxIds", "keywords", "receivedAt")]
    if bad:
        raise SetError("invalidProperties", properties=bad)
    meta = (await src.get_emails([obj["id"]])).get(obj["id"])
    if meta is None:
        raise SetError("notFound", f"no email {obj['id']} in {src.account_id}")
    mboxes = mailbox_set(ctx, obj.get("mailboxIds"), boxes)
    kws = keyword_set(obj["keywords"]) if "keywords" in obj else meta.keywords
    received = _utc(obj["receivedAt"], "receivedAt") if obj.get("receivedAt") is not None else meta.received_at
    # the message file when the source has one (hard-linked by the store, no copy in memory), else its
    # bytes; not with a new receivedAt: the store sets the file's time, which the link shares with the source
    blob_path = getattr(src, "blob_path", None) if received == meta.received_at else None
    data: Any = await blob_path(meta.blob_id) if blob_path is not None else None
    if data is None:
        data = await src.read_blob(meta.blob_id)
        if data is None:
            raise SetError("notFound", "the email's message is gone")
    try:
        try:
            new = await be.import_email(data, mboxes, kws, received)
        except FileNotFoundError:  # renamed (a flag change) between the lookup and the link: take the bytes
            raw = await src.read_blob(meta.blob_id)
            if raw is None:
                raise SetError("notFound", "the email's message is gone") from None
            new = await be.import_email(raw, mboxes, kws, received)
    except OverQuota:
        raise SetError("overQuota") from None
    except NotFound:
        raise SetError("invalidProperties", properties=["mailboxIds"]) from None
    return {"id": new.id, "blobId": new.blob_id, "threadId": new.thread_id, "size": new.size}
