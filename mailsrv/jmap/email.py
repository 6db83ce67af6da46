"""Email/get, Email/changes, Thread/get, Thread/changes and blob reading (RFC 8621 §3, §4).

Importing this module also registers Email/query, /set, /import, /parse and
/copy (email_query.py, email_set.py).
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from typing import Any

from mailsrv.jmap import args as A
from mailsrv.jmap import message
from mailsrv.jmap.backend import EmailMeta, MailBackend
from mailsrv.jmap.core import MAIL, RequestContext, registry
from mailsrv.jmap.errors import MethodError, invalid_arguments
from mailsrv.jmap.mailbox import standard_changes

METADATA = ["id", "blobId", "threadId", "mailboxIds", "keywords", "size", "receivedAt"]
HEADER_CONVENIENCE = ["messageId", "inReplyTo", "references", "sender", "from", "to", "cc", "bcc", "replyTo",
                      "subject", "sentAt"]
BODY = ["bodyStructure", "bodyValues", "textBody", "htmlBody", "attachments", "hasAttachment", "preview"]
PROPERTIES = METADATA + ["headers"] + HEADER_CONVENIENCE + BODY
# RFC 8621 §4.2: the default property list of Email/get
DEFAULT_PROPERTIES = METADATA + HEADER_CONVENIENCE + ["hasAttachment", "preview", "bodyValues", "textBody",
                                                      "htmlBody", "attachments"]
BODY_PART_PROPERTIES = ["partId", "blobId", "size", "headers", "name", "type", "charset", "disposition", "cid",
                        "language", "location", "subParts"]
DEFAULT_BODY_PROPERTIES = ["partId", "blobId", "size", "name", "type", "charset", "disposition", "cid", "language",
                           "location"]
HEADER_PROP = re.compile(r"^header:([!-9;-~]+?)(?::as(Raw|Text|Addresses|GroupedAddresses|MessageIds|Date|URLs))?(:all)?$")
# convenience property -> (header, form)
CONVENIENCE = {
    "messageId": ("message-id", "MessageIds"), "inReplyTo": ("in-reply-to", "MessageIds"),
    "references": ("references", "MessageIds"), "sender": ("sender", "Addresses"), "from": ("from", "Addresses"),
    "to": ("to", "Addresses"), "cc": ("cc", "Addresses"), "bcc": ("bcc", "Addresses"),
    "replyTo": ("reply-to", "Addresses"), "subject": ("subject", "Text"), "sentAt": ("date", "Date"),
}


def parse_header_prop(prop: str) -> tuple[str, str, bool] | None:
    """``header:Name:asForm:all`` -> (name, form, all), or None if malformed or not allowed."""
    m = HEADER_PROP.match(prop)
    if m is None:
        return None
    name, form, all_ = m.group(1), m.group(2) or "Raw", bool(m.group(3))
    if not message.form_allowed(name, form):
        return None
    return name, form, all_


def check_properties(props: Any, known: list[str], default: list[str], what: str) -> list[str]:
    if props is None:
        return list(default)
    if not isinstance(props, list) or not all(isinstance(p, str) for p in props):
        raise invalid_arguments(f"{what} must be an array of strings")
    for p in props:
        if p not in known and not (p.startswith("header:") and parse_header_prop(p) is not None):
            raise invalid_arguments(f"unknown or invalid property {p!r}")
    return list(dict.fromkeys(props))


def header_value(headers: list[tuple[str, str]], prop: str) -> Any:
    parsed = parse_header_prop(prop)
    assert parsed is not None
    name, form, all_ = parsed
    values = [v for k, v in headers if k.lower() == name.lower()]
    if all_:
        return [message.parse_form(v, form) for v in values]
    if not values:
        return None
    # RFC 8621 §4.1.3: without :all, the last instance
    return message.parse_form(values[-1], form)


def convenience(headers: list[tuple[str, str]], prop: str) -> Any:
    # RFC 8621 §4.1.3: each is identical to header:{name}:as{Form}, i.e. the last instance.
    name, form = CONVENIENCE[prop]
    values = [v for k, v in headers if k.lower() == name]
    if not values:
        return None
    return message.parse_form(values[-1], form)


def part_json(part: message.Part, blob_base: str, props: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in props:
        if p == "partId":
            out[p] = part.part_id
        elif p == "blobId":
            out[p] = f"{blob_base}_{part.part_id}" if part.part_id is not None else None
        elif p == "size":
            out[p] = len(part.content()) if part.part_id is not None else 0
        elif p == "headers":
            out[p] = [{"name": k, "value": message.to_text(v)} for k, v in part.headers]
        elif p == "name":
            out[p] = part.name
        elif p == "type":
            out[p] = part.type
        elif p == "charset":
            out[p] = part.charset if part.part_id is not None else None
        elif p == "disposition":
            out[p] = part.disposition
        elif p == "cid":
            v = part.msg.get("content-id")
            ids = message.as_message_ids(v) if v else None
            out[p] = ids[0] if ids else (v.strip() if v else None)
        elif p == "language":
            v = part.msg.get("content-language")
            out[p] = [x.strip() for x in message.to_text(v).split(",") if x.strip()] if v else None
        elif p == "location":
            v = part.msg.get("content-location")
            out[p] = message.as_text(v) if v else None
        elif p == "subParts":
            out[p] = [part_json(s, blob_base, props) for s in part.subparts] if part.part_id is None else None
        elif p.startswith("header:"):
            out[p] = header_value(part.headers, p)
    return out


class BodyOptions:
    def __init__(self, args: dict[str, Any]) -> None:
        self.text = A.boolean(args, "fetchTextBodyValues", False)
        self.html = A.boolean(args, "fetchHTMLBodyValues", False)
        self.all = A.boolean(args, "fetchAllBodyValues", False)
        self.max_bytes = A.uint(args, "maxBodyValueBytes", 0) or 0


def body_value(part: message.Part, max_bytes: int) -> dict[str, Any]:
    text, problem = message.decode_text(part)
    text, truncated = message.truncate_utf8(text, max_bytes)
    return {"value": text, "isEncodingProblem": problem, "isTruncated": truncated}


#: parsed messages kept per worker (by blob id: a blob never changes), and the largest one kept
PARSE_CACHE = 2000
PARSE_CACHE_MAX_SIZE = 256 * 1024
_parsed: OrderedDict[str, message.ParsedMessage] = OrderedDict()


def parsed_message(blob_id: str, raw: bytes) -> message.ParsedMessage:
    hit = _parsed.get(blob_id)
    if hit is not None:
        _parsed.move_to_end(blob_id)
        return hit
    parsed = message.parse(raw)
    if len(raw) <= PARSE_CACHE_MAX_SIZE:
        _parsed[blob_id] = parsed
        if len(_parsed) > PARSE_CACHE:
            _parsed.popitem(last=False)
    return parsed


#: derived (message-content) properties per (blob, request shape): blobs are immutable
_derived: OrderedDict[tuple[Any, ...], dict[str, Any]] = OrderedDict()


def email_json(meta: EmailMeta, raw: bytes | None, props: list[str], body_props: list[str], opts: BodyOptions) -> dict[str, Any]:
    content = [p for p in props if p not in METADATA]
    key = (meta.blob_id, tuple(content), tuple(body_props), opts.text, opts.html, opts.all, opts.max_bytes)
    derived = _derived.get(key)
    if derived is not None:
        _derived.move_to_end(key)
    else:
        derived = _email_json(meta, raw, content, body_props, opts)
        if meta.size <= PARSE_CACHE_MAX_SIZE:
            _derived[key] = derived
            if len(_derived) > PARSE_CACHE:
                _derived.popitem(last=False)
    out = _email_json(meta, None, [p for p in props if p in METADATA], body_props, opts)
    out.update(derived)
    return {p: out[p] for p in props}


def _email_json(meta: EmailMeta, raw: bytes | None, props: list[str], body_props: list[str], opts: BodyOptions) -> dict[str, Any]:
    out: dict[str, Any] = {}
    parsed = parsed_message(meta.blob_id, raw) if raw is not None else None
    lists = message.body_lists(parsed.root) if parsed is not None else ([], [], [])
    for p in props:
        if p == "id":
            out[p] = meta.id
        elif p == "blobId":
            out[p] = meta.blob_id
        elif p == "threadId":
            out[p] = meta.thread_id
        elif p == "mailboxIds":
            out[p] = {m: True for m in sorted(meta.mailbox_ids)}
        elif p == "keywords":
            out[p] = {k: True for k in sorted(meta.keywords)}
        elif p == "size":
            out[p] = meta.size
        elif p == "receivedAt":
            out[p] = message.utc_date(meta.received_at)
        elif parsed is None:
            out[p] = None
        elif p == "headers":
            out[p] = [{"name": k, "value": message.to_text(v)} for k, v in parsed.headers]
        elif p in CONVENIENCE:
            out[p] = convenience(parsed.headers, p)
        elif p.startswith("header:"):
            out[p] = header_value(parsed.headers, p)
        elif p == "bodyStructure":
            out[p] = part_json(parsed.root, meta.blob_id, body_props if "subParts" in body_props else [*body_props, "subParts"])
        elif p in ("textBody", "htmlBody", "attachments"):
            idx = ("textBody", "htmlBody", "attachments").index(p)
            out[p] = [part_json(x, meta.blob_id, [b for b in body_props if b != "subParts"]) for x in lists[idx]]
        elif p == "hasAttachment":
            out[p] = bool(lists[2])
        elif p == "preview":
            out[p] = message.preview(lists[0], lists[1])
        elif p == "bodyValues":
            values: dict[str, Any] = {}
            chosen: list[message.Part] = []
            if opts.all:
                chosen = [x for x in parsed.leaves.values() if x.type.startswith("text/")]
            else:
                if opts.text:
                    chosen += [x for x in lists[0] if x.type.startswith("text/")]
                if opts.html:
                    chosen += [x for x in lists[1] if x.type.startswith("text/")]
            for x in chosen:
                assert x.part_id is not None
                values[x.part_id] = body_value(x, opts.max_bytes)
            out[p] = values
    return out


def needs_raw(props: list[str]) -> bool:
    return any(p not in METADATA for p in props)


@registry.add("Email/get", MAIL)
async def email_get(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    A.check(args, ("accountId", "ids", "properties", "bodyProperties", "fetchTextBodyValues",
                   "fetchHTMLBodyValues", "fetchAllBodyValues", "maxBodyValueBytes"))
    be: MailBackend = ctx.account(args)
    ids = A.ids(ctx, args, "ids")
    props = check_properties(args.get("properties"), PROPERTIES, DEFAULT_PROPERTIES, "properties")
    if "id" not in props:
        props.insert(0, "id")
    body_props = check_properties(args.get("bodyProperties"), BODY_PART_PROPERTIES, DEFAULT_BODY_PROPERTIES,
                                  "bodyProperties")
    opts = BodyOptions(args)
    state = await be.state("Email")
    if ids is None:
        metas_all = await be.emails()
        if len(metas_all) > ctx.config.max_objects_in_get:
            raise MethodError("requestTooLarge", "too many emails; ask for ids")
        ids = [m.id for m in metas_all]
    A.get_limit(ctx, len(ids))
    metas = await be.get_emails(ids)
    found, not_found = [], []
    raw_needed = needs_raw(props)
    raws: dict[str, bytes | None] = {}
    if raw_needed:
        # the reads run concurrently in the backend's I/O threads
        wanted = [m for m in metas.values() if m.blob_id not in _parsed]
        datas = await asyncio.gather(*(be.read_blob(m.blob_id) for m in wanted))
        raws = {m.blob_id: d for m, d in zip(wanted, datas, strict=True)}
    for i in ids:
        meta = metas.get(i)
        if meta is None:
            not_found.append(i)
            continue
        raw = raws.get(meta.blob_id, b"" if meta.blob_id in _parsed else None) if raw_needed else None
        if raw_needed and raw is None:  # expunged meanwhile
            not_found.append(i)
            continue
        found.append(email_json(meta, raw, props, body_props, opts))
    return {"accountId": be.account_id, "state": state, "list": found, "notFound": not_found}


@registry.add("Email/changes", MAIL)
async def email_changes(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    return await standard_changes(ctx, args, "Email")


@registry.add("Thread/changes", MAIL)
async def thread_changes(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    return await standard_changes(ctx, args, "Thread")


@registry.add("Thread/get", MAIL)
async def thread_get(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    A.check(args, ("accountId", "ids", "properties"))
    be: MailBackend = ctx.account(args)
    ids = A.ids(ctx, args, "ids")
    props = A.properties(args, "properties", ["id", "emailIds"], ["id", "emailIds"])
    state = await be.state("Thread")
    threads: dict[str, list[EmailMeta]] = {}
    for e in await be.emails():
        threads.setdefault(e.thread_id, []).append(e)
    if ids is None:
        ids = list(threads)
    A.get_limit(ctx, len(ids))
    found, not_found = [], []
    for i in ids:
        members = threads.get(i)
        if not members:
            not_found.append(i)
            continue
        # RFC 8621 §3: emailIds sorted by receivedAt, oldest first
        members.sort(key=lambda e: (e.received_at, e.id))
        obj: dict[str, Any] = {"id": i}
        if "emailIds" in props:
            obj["emailIds"] = [e.id for e in members]
        found.append(obj)
    return {"accountId": be.account_id, "state": state, "list": found, "notFound": not_found}


async def read_blob(be: MailBackend, uploads: Any, blob_id: str) -> bytes | None:
    """The octets of any blob id this account can see: an email, a part of one, an upload."""
    data = await be.read_blob(blob_id)
    if data is not None:
        return data
    if uploads is not None:
        up = await uploads.read(be.account_id, blob_id)
        if up is not None:
            return up
    base, sep, part_id = blob_id.rpartition("_")
    if not sep or not part_id.isdigit():
        return None
    raw = await be.read_blob(base)
    if raw is None:
        return None
    part = message.parse(raw).leaves.get(part_id)
    return part.content() if part is not None else None


from mailsrv.jmap import email_query as _q  # noqa: E402,F401  (registers Email/query)
from mailsrv.jmap import email_set as _s  # noqa: E402,F401  (registers Email/set, /import, /parse, /copy)
