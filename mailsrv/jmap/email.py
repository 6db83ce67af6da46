"""Email/get, Email/changes, Thread/get, Thread/changes and blob reading (RFC 8621 §3, §4).

Importing this module also registers Email/query, /set, /import, /parse and
/copy (email_query.py, email_set.py).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections import OrderedDict
from collections.abc import Callable
from operator import attrgetter
from typing import Any

from mailsrv import mime
from mailsrv.jmap import args as A
from mailsrv.jmap import message
from mailsrv.jmap.backend import EmailMeta, MailBackend
from mailsrv.jmap.core import MAIL, RequestContext, registry
from mailsrv.jmap.errors import MethodError, invalid_arguments
from mailsrv.jmap.jsontext import Encoded
from mailsrv.jmap.mailbox import standard_changes
from mailsrv.mime import MessageStructure, Part

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
PART_ID = re.compile(r"[1-9][0-9]{0,8}(\.[1-9][0-9]{0,8}){0,100}")
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


def header_value(structure: MessageStructure, raw: Any, part: Part | None, prop: str) -> Any:
    parsed = parse_header_prop(prop)
    assert parsed is not None
    name, form, all_ = parsed
    values = message.field_values(structure, raw, part, name)
    if all_:
        return [message.parse_form(v, form) for v in values]
    if not values:
        return None
    # RFC 8621 §4.1.3: without :all, the last instance
    return message.parse_form(values[-1], form)


def header_prop_needs_raw(prop: str) -> bool:
    """Whether a header:* property reads a field the cached structure does not keep."""
    parsed = parse_header_prop(prop)
    return parsed is None or parsed[0].lower() not in message.STRUCTURAL


def convenience(structure: MessageStructure, prop: str) -> Any:
    # RFC 8621 §4.1.3: each is identical to header:{name}:as{Form}, i.e. the last instance.
    name, form = CONVENIENCE[prop]
    values = message.field_values(structure, None, None, name)
    if not values:
        return None
    return message.parse_form(values[-1], form)


def part_json(part: Part, structure: MessageStructure, raw: Any, blob_base: str, props: list[str]) -> dict[str, Any]:
    """One EmailBodyPart (RFC 8621 §4.1.4); ``raw`` may be None when the properties do not need it
    (:func:`message.parts_need_raw`)."""
    pid = message.part_id(part)
    out: dict[str, Any] = {}
    for p in props:
        if p == "partId":
            out[p] = pid
        elif p == "blobId":
            out[p] = f"{blob_base}_{pid}" if pid is not None else None
        elif p == "size":
            out[p] = message.part_size(raw, part)
        elif p == "headers":
            out[p] = [{"name": k, "value": message.as_raw(v)} for k, v in message.header_list(raw, part)]
        elif p == "name":
            out[p] = part.filename
        elif p == "type":
            out[p] = part.mime_type
        elif p == "charset":
            out[p] = message.charset_of(part)
        elif p == "disposition":
            out[p] = part.disposition
        elif p == "cid":
            out[p] = part.content_id
        elif p == "language":
            out[p] = part.language
        elif p == "location":
            out[p] = part.location
        elif p == "subParts":
            out[p] = [part_json(s, structure, raw, blob_base, props) for s in part.children] if pid is None else None
        elif p.startswith("header:"):
            out[p] = header_value(structure, raw, part, p)
    return out


class BodyOptions:
    def __init__(self, args: dict[str, Any]) -> None:
        self.text = A.boolean(args, "fetchTextBodyValues", False)
        self.html = A.boolean(args, "fetchHTMLBodyValues", False)
        self.all = A.boolean(args, "fetchAllBodyValues", False)
        self.max_bytes = A.uint(args, "maxBodyValueBytes", 0) or 0


def body_value(raw: Any, part: Part, max_bytes: int) -> dict[str, Any]:
    text, problem = message.decode_text(raw, part)
    text, truncated = message.truncate_utf8(text, max_bytes)
    return {"value": text, "isEncodingProblem": problem, "isTruncated": truncated}


#: derived (message-content) properties kept per worker, by (blob, request shape): blobs are
#: immutable; messages larger than the second bound are not kept. With them, the JSON text of the
#: last Email object made from them, with the EmailMeta and the object's form (Shape.text_key) it was
#: made for: a text is taken only for an equal EmailMeta (any change of keywords, mailboxes or other
#: metadata makes a new one) and the same form. The texts held are bounded by the third (the derived
#: values take about as much again): one worker holds at most 2 000 entries and ~2 x 32 MiB.
PARSE_CACHE = 2000
PARSE_CACHE_MAX_SIZE = 256 * 1024
PARSE_CACHE_TEXT_BYTES = 32 * 1024 * 1024


class _Derived:
    """One entry of the derived cache: the content properties, and the last Email object made with
    them (shared by the responses that list it: never changed, as the values it holds) and its text."""

    __slots__ = ("meta", "obj", "text", "text_key", "values")

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        self.meta: EmailMeta | None = None  # what the object was made from (None: no object yet)
        self.text_key = -1  # the Shape.text_key it was made for
        self.obj: dict[str, Any] = {}
        self.text = ""  # json.dumps(obj)


_derived: OrderedDict[tuple[str, int], _Derived] = OrderedDict()
_derived_text_bytes = 0  # the sum of the entries' len(text)


#: metadata property -> its value from the EmailMeta (never cached: flags and mailboxes change)
_METADATA_VALUE: dict[str, Callable[[EmailMeta], Any]] = {
    "id": attrgetter("id"),
    "blobId": attrgetter("blob_id"),
    "threadId": attrgetter("thread_id"),
    "mailboxIds": lambda m: dict.fromkeys(sorted(m.mailbox_ids), True),
    "keywords": lambda m: dict.fromkeys(sorted(m.keywords), True),
    "size": attrgetter("size"),
    "receivedAt": lambda m: message.utc_date(m.received_at),
}


class Shape:
    """What one Email/get asks of each message, worked out once for all its messages: ``key``, the number
    of what it asks (properties, body properties, body value options), with the blob id the derived
    cache's key; ``content``, the properties that cache holds; ``plan``, each property in order with
    its metadata reader (None: from the derived properties); ``text_key``, the number of the whole
    object's form (``key`` and every property in order: the metadata ones too), which an Email
    object's cached text was made for."""

    __slots__ = ("content", "key", "plan", "text_key")

    def __init__(self, props: list[str], body_props: list[str], opts: BodyOptions) -> None:
        self.content = [p for p in props if p not in METADATA]
        asked = (tuple(self.content), tuple(body_props), opts.text, opts.html, opts.all, opts.max_bytes)
        # a number per distinct request shape: the cache's keys hash and compare as (str, int), not as
        # nested tuples of a dozen strings, 100 times per Email/get of 50
        self.key = _shape_number(asked)
        self.text_key = _shape_number((self.key, tuple(props)))
        self.plan = [(p, _METADATA_VALUE.get(p)) for p in props]


def _shape_number(asked: tuple[Any, ...]) -> int:
    key = _shape_numbers.get(asked)
    if key is None:
        if len(_shape_numbers) > SHAPES:
            _shape_numbers.clear()  # numbers are never reused: forgotten shapes' entries just age out
        key = _shape_numbers[asked] = next(_next_shape)
    return key


#: request shapes numbered at once (beyond it the numbering starts over with new numbers)
SHAPES = 1024
_shape_numbers: dict[tuple[Any, ...], int] = {}
_next_shape = itertools.count()


def needs_raw(structure: MessageStructure, props: list[str], body_props: list[str], opts: BodyOptions) -> bool:
    """Whether these properties of this message need its bytes (else the cached structure answers)."""
    for p in props:
        if p in ("headers", "preview"):
            return True
        if p == "bodyValues" and (opts.text or opts.html or opts.all):
            return True
        if p.startswith("header:") and header_prop_needs_raw(p):
            return True
    if any(p in ("bodyStructure", "textBody", "htmlBody", "attachments") for p in props):
        return message.parts_need_raw(structure, body_props)
    return False


def email_json(meta: EmailMeta, raw: Any, props: list[str], body_props: list[str], opts: BodyOptions,
               structure: MessageStructure | None = None, shape: Shape | None = None) -> dict[str, Any]:
    """The Email object; content properties from ``structure`` (parsed from ``raw`` if None) and
    ``raw`` (None when :func:`needs_raw` says so). ``shape``: the :class:`Shape` of the other
    arguments, when the caller made it once for many messages."""
    if shape is None:
        shape = Shape(props, body_props, opts)
    return _object(_derive(meta, raw, body_props, opts, structure, shape)[1], meta, shape)


def email_object(meta: EmailMeta, raw: Any, body_props: list[str], opts: BodyOptions,
                 structure: MessageStructure | None, shape: Shape) -> tuple[dict[str, Any], str]:
    """:func:`email_json` and its JSON text (``json.dumps`` of it), both kept with the derived properties
    and taken again for an equal ``meta`` in the same form. The object is shared: never change it."""
    global _derived_text_bytes
    key = (meta.blob_id, shape.key)
    entry = _derived.get(key)
    if entry is not None and entry.text_key == shape.text_key and (entry.meta is meta or entry.meta == meta):
        _derived.move_to_end(key)
        return entry.obj, entry.text  # the same values in the same form: the same object and text
    entry, values = _derive(meta, raw, body_props, opts, structure, shape)
    obj = _object(values, meta, shape)
    text = json.dumps(obj)
    if entry is not None:
        _derived_text_bytes += len(text) - len(entry.text)
        entry.meta, entry.text_key, entry.obj, entry.text = meta, shape.text_key, obj, text
        _trim()
    return obj, text


def _derive(meta: EmailMeta, raw: Any, body_props: list[str], opts: BodyOptions, structure: MessageStructure | None,
            shape: Shape) -> tuple[_Derived | None, dict[str, Any]]:
    """The cache entry (None for a message too large to keep) and the derived properties."""
    key = (meta.blob_id, shape.key)
    entry = _derived.get(key)
    if entry is not None:
        _derived.move_to_end(key)
        return entry, entry.values
    if structure is None and shape.content:
        structure = mime.parse(raw if raw is not None else b"")
    values = _email_json(meta, structure, raw, shape.content, body_props, opts)
    if meta.size > PARSE_CACHE_MAX_SIZE:
        return None, values
    entry = _derived[key] = _Derived(values)
    _trim()
    return entry, values


def _trim() -> None:
    """Oldest entries out until the cache is within its bounds (entries, bytes of text)."""
    global _derived_text_bytes
    while len(_derived) > PARSE_CACHE or _derived_text_bytes > PARSE_CACHE_TEXT_BYTES:
        _derived_text_bytes -= len(_derived.popitem(last=False)[1].text)


def _object(values: dict[str, Any], meta: EmailMeta, shape: Shape) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p, value in shape.plan:
        out[p] = values[p] if value is None else value(meta)
    return out


def _email_json(meta: EmailMeta, s: MessageStructure | None, raw: Any, props: list[str], body_props: list[str],
                opts: BodyOptions) -> dict[str, Any]:
    out: dict[str, Any] = {}
    lists = message.body_lists(s) if s is not None and any(p in BODY for p in props) else ([], [], [])
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
        elif s is None:
            out[p] = None
        elif p == "headers":
            out[p] = [{"name": k, "value": message.as_raw(v)} for k, v in message.header_list(raw, s.root)]
        elif p in CONVENIENCE:
            out[p] = convenience(s, p)
        elif p.startswith("header:"):
            out[p] = header_value(s, raw, None, p)
        elif p == "bodyStructure":
            bp = body_props if "subParts" in body_props else [*body_props, "subParts"]
            out[p] = part_json(s.root, s, raw, meta.blob_id, bp)
        elif p in ("textBody", "htmlBody", "attachments"):
            idx = ("textBody", "htmlBody", "attachments").index(p)
            bp = [b for b in body_props if b != "subParts"]
            out[p] = [part_json(x, s, raw, meta.blob_id, bp) for x in lists[idx]]
        elif p == "hasAttachment":
            out[p] = bool(lists[2])
        elif p == "preview":
            out[p] = message.preview(raw, s)
        elif p == "bodyValues":
            chosen: list[Part] = []
            if opts.all:
                chosen = [x for x in message.leaves(s) if x.type == "text"]
            else:
                if opts.text:
                    chosen += [x for x in lists[0] if x.type == "text"]
                if opts.html:
                    chosen += [x for x in lists[1] if x.type == "text"]
            values: dict[str, Any] = {}
            for x in chosen:
                pid = message.part_id(x)
                assert pid is not None
                values[pid] = body_value(raw, x, opts.max_bytes)
            out[p] = values
    return out


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
    shape = Shape(props, body_props, opts)
    # 1. the cached structures (no file read) of what the derived cache does not hold
    todo = [m for m in metas.values() if (m.blob_id, shape.key) not in _derived] if shape.content else []
    structs = await be.structures([m.blob_id for m in todo]) if todo else {}
    # 2. the bytes, read once and concurrently (the backend's I/O threads), only where needed
    need = [m for m in todo if m.blob_id not in structs
            or needs_raw(structs[m.blob_id], props, body_props, opts)]
    datas = await asyncio.gather(*(be.read_blob(m.blob_id) for m in need))
    raws = {m.blob_id: d for m, d in zip(need, datas, strict=True)}
    found, texts, not_found = [], [], []
    for i in ids:
        meta = metas.get(i)
        if meta is None or (meta.blob_id in raws and raws[meta.blob_id] is None):  # or expunged meanwhile
            not_found.append(i)
            continue
        obj, text = email_object(meta, raws.get(meta.blob_id), body_props, opts, structs.get(meta.blob_id), shape)
        found.append(obj)
        texts.append(text)
    # the list's JSON text is the objects' texts (jsontext.dumps splices it into the response)
    return {"accountId": be.account_id, "state": state, "list": Encoded(found, texts), "notFound": not_found}


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
    # a body part: "<email blob>_<partId>", the partId being the part's IMAP section ("1.2")
    base, sep, pid = blob_id.rpartition("_")
    if not sep or PART_ID.fullmatch(pid) is None:
        return None
    raw = await be.read_blob(base)
    if raw is None:
        return None
    structure = (await be.structures([base])).get(base) or mime.parse(raw)
    part = message.find_part(structure, pid)
    return mime.decoded_body(raw, part) if part is not None else None


from mailsrv.jmap import email_query as _q  # noqa: E402,F401  (registers Email/query)
from mailsrv.jmap import email_set as _s  # noqa: E402,F401  (registers Email/set, /import, /parse, /copy)
