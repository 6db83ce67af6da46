"""Quota (RFC 9425) and Blob/upload, Blob/get, Blob/lookup (RFC 9404)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from typing import Any

from mailsrv.jmap import args as A
from mailsrv.jmap.backend import MailBackend
from mailsrv.jmap.core import RequestContext, registry
from mailsrv.jmap.errors import MethodError, SetError, invalid_arguments

QUOTA = "urn:ietf:params:jmap:quota"
BLOB = "urn:ietf:params:jmap:blob"
QUOTA_PROPS = ["id", "resourceType", "used", "hardLimit", "scope", "name", "types", "warnLimit", "softLimit",
               "description"]
#: RFC 9404 §4: limits of Blob/upload
MAX_DATA_SOURCES = 64


async def quotas(be: MailBackend) -> tuple[str, dict[str, dict[str, Any]]]:
    used, count, lim_b, lim_n = await be.quota()
    objs: dict[str, dict[str, Any]] = {}
    # RFC 9425 §4: one Quota per limited resource; an unlimited resource has none
    if lim_b is not None:
        objs["storage"] = {"id": "storage", "resourceType": "octets", "used": used, "hardLimit": lim_b,
                           "scope": "account", "name": "mail storage", "types": ["Mailbox", "Email", "Thread"],
                           "warnLimit": None, "softLimit": None, "description": None}
    if lim_n is not None:
        objs["messages"] = {"id": "messages", "resourceType": "count", "used": count, "hardLimit": lim_n,
                            "scope": "account", "name": "messages", "types": ["Email"],
                            "warnLimit": None, "softLimit": None, "description": None}
    await _domain_quotas(be, objs)
    state = hashlib.sha1(repr(sorted((k, v["used"], v["hardLimit"]) for k, v in objs.items())).encode()).hexdigest()[:12]
    return state, objs


async def _domain_quotas(be: MailBackend, objs: dict[str, dict[str, Any]]) -> None:
    """RFC 9425 §4: the quotas of the user's domain (every user's mail counts), scope "domain"."""
    acct = getattr(be, "acct", None)
    domain = getattr(acct, "domain", None)
    if acct is None or not domain:
        return
    limits = await acct.domain_limits()
    if limits.storage is None and limits.messages is None:
        return
    usage = await acct.domain_usage()
    common = {"scope": "domain", "warnLimit": None, "softLimit": None, "description": None}
    if limits.storage is not None:
        objs["domain-storage"] = {"id": "domain-storage", "resourceType": "octets", "used": usage.storage,
                                  "hardLimit": limits.storage, "name": f"mail storage of {domain}",
                                  "types": ["Mailbox", "Email", "Thread"], **common}
    if limits.messages is not None:
        objs["domain-messages"] = {"id": "domain-messages", "resourceType": "count", "used": usage.messages,
                                   "hardLimit": limits.messages, "name": f"messages of {domain}",
                                   "types": ["Email"], **common}


@registry.add("Quota/get", QUOTA)
async def quota_get(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    A.check(args, ("accountId", "ids", "properties"))
    be = ctx.account(args)
    ids = A.ids(ctx, args, "ids")
    props = A.properties(args, "properties", QUOTA_PROPS, QUOTA_PROPS)
    state, objs = await quotas(be)
    found, nf = [], []
    for i in (ids if ids is not None else list(objs)):
        if i in objs:
            found.append({p: objs[i][p] for p in ["id", *[p for p in props if p != "id"]]})
        else:
            nf.append(i)
    return {"accountId": be.account_id, "state": state, "list": found, "notFound": nf}


@registry.add("Quota/changes", QUOTA)
async def quota_changes(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    A.check(args, ("accountId", "sinceState", "maxChanges"))
    be = ctx.account(args)
    since = A.state(args, "sinceState")
    state, objs = await quotas(be)
    # the state is a digest of the values: equal means unchanged, else every quota may have changed
    updated = [] if since == state else list(objs)
    return {"accountId": be.account_id, "oldState": since, "newState": state, "hasMoreChanges": False,
            "created": [], "updated": updated, "destroyed": []}


@registry.add("Quota/query", QUOTA)
async def quota_query(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    A.check(args, ("accountId", "filter", "sort", "position", "anchor", "anchorOffset", "limit", "calculateTotal"))
    be = ctx.account(args)
    state, objs = await quotas(be)
    if args.get("filter"):
        raise MethodError("unsupportedFilter")
    out: dict[str, Any] = {"accountId": be.account_id, "queryState": state, "canCalculateChanges": False,
                           "position": 0, "ids": sorted(objs)}
    if A.boolean(args, "calculateTotal", False):
        out["total"] = len(objs)
    return out


async def _source_bytes(ctx: RequestContext, be: MailBackend, src: Any) -> bytes:
    from mailsrv.jmap.email import read_blob

    if not isinstance(src, dict):
        raise SetError("invalidProperties", "a DataSourceObject must be an object", properties=["data"])
    if set(src) == {"data:asText"} and isinstance(src["data:asText"], str):
        return bytes(src["data:asText"].encode())
    if set(src) == {"data:asBase64"} and isinstance(src["data:asBase64"], str):
        try:
            return base64.b64decode(src["data:asBase64"], validate=True)
        except ValueError:
            raise SetError("invalidProperties", "bad base64", properties=["data"]) from None
    if "blobId" in src and set(src) <= {"blobId", "offset", "length"}:
        bid = ctx.resolve_id(src["blobId"]) if isinstance(src["blobId"], str) else None
        data = await read_blob(be, ctx.extra.get("uploads"), bid) if bid else None
        if data is None:
            raise SetError("blobNotFound", notFound=[src["blobId"]])
        off = src.get("offset", 0) or 0
        length = src.get("length")
        if not isinstance(off, int) or off < 0 or (length is not None and (not isinstance(length, int) or length < 0)):
            raise SetError("invalidProperties", properties=["data"])
        if off + (length or 0) > len(data):
            raise SetError("invalidProperties", "range beyond the blob", properties=["data"])
        return data[off:] if length is None else data[off:off + length]
    raise SetError("invalidProperties", "unknown DataSourceObject", properties=["data"])


@registry.add("Blob/upload", BLOB)
async def blob_upload(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    A.check(args, ("accountId", "create"))
    be = ctx.account(args)
    create = args.get("create")
    if not isinstance(create, dict):
        raise invalid_arguments("create must be a map")
    A.set_limit(ctx, len(create))
    uploads = ctx.extra["uploads"]
    created: dict[str, Any] = {}
    not_created: dict[str, Any] = {}
    for cid, obj in create.items():
        try:
            if not isinstance(obj, dict) or not isinstance(obj.get("data"), list) or set(obj) - {"data", "type"}:
                raise SetError("invalidProperties", properties=["data"])
            if len(obj["data"]) > MAX_DATA_SOURCES:
                raise SetError("tooManyDataSources")
            parts = [await _source_bytes(ctx, be, s) for s in obj["data"]]
            total = sum(len(p) for p in parts)
            if total > ctx.config.max_size_upload:
                raise SetError("tooLarge")
            ctype = obj.get("type") or "application/octet-stream"

            async def chunks(parts: list[bytes] = parts) -> AsyncIterator[bytes]:
                for p in parts:
                    yield p

            blob_id, size = await uploads.put(be.account_id, chunks(), ctype, ctx.config.max_size_upload)
            ctx.created_ids[cid] = blob_id
            created[cid] = {"id": blob_id, "type": ctype, "size": size}
        except SetError as exc:
            not_created[cid] = exc.to_json()
    return {"accountId": be.account_id, "created": created or None, "notCreated": not_created or None}


BLOB_PROPS = ["data:asText", "data:asBase64", "data", "digest:sha", "digest:sha-256", "size"]


@registry.add("Blob/get", BLOB)
async def blob_get(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    from mailsrv.jmap.email import read_blob

    A.check(args, ("accountId", "ids", "properties", "offset", "length"))
    be = ctx.account(args)
    ids = A.ids(ctx, args, "ids", nullable=False) or []
    A.get_limit(ctx, len(ids))
    props = A.properties(args, "properties", BLOB_PROPS, ["data", "size"])
    off = A.uint(args, "offset", 0) or 0
    length = A.uint(args, "length", None)
    found, nf = [], []
    for i in ids:
        data = await read_blob(be, ctx.extra.get("uploads"), i)
        if data is None:
            nf.append(i)
            continue
        piece = data[off:] if length is None else data[off:off + length]
        obj: dict[str, Any] = {"id": i}
        truncated = length is not None and off + length > len(data) or off > len(data)
        for p in props:
            if p in ("data", "data:asText"):
                try:
                    obj["data:asText"] = piece.decode("utf-8")
                except UnicodeDecodeError:
                    if p == "data:asText":
                        obj["data:asText"] = None
                    obj["isEncodingProblem"] = True
                    if p == "data":
                        obj["data:asBase64"] = base64.b64encode(piece).decode()
            elif p == "data:asBase64":
                obj[p] = base64.b64encode(piece).decode()
            elif p == "digest:sha":
                obj[p] = base64.b64encode(hashlib.sha1(piece).digest()).decode()
            elif p == "digest:sha-256":
                obj[p] = base64.b64encode(hashlib.sha256(piece).digest()).decode()
            elif p == "size":
                obj[p] = len(data)
        obj.setdefault("isEncodingProblem", False)
        obj["isTruncated"] = truncated
        found.append(obj)
    return {"accountId": be.account_id, "list": found, "notFound": nf}


@registry.add("Blob/lookup", BLOB)
async def blob_lookup(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    A.check(args, ("accountId", "typeNames", "ids"))
    be = ctx.account(args)
    types = A.string_list(args, "typeNames")
    if types is None:
        raise invalid_arguments("typeNames is required")
    for t in types:
        if t not in ("Mailbox", "Thread", "Email"):
            raise MethodError("unknownDataType", f"cannot look up {t}")
    ids = A.ids(ctx, args, "ids", nullable=False) or []
    metas = {m.blob_id: m for m in await be.emails()}
    found, nf = [], []
    for i in ids:
        base = i.rsplit("_", 1)[0] if i not in metas and "_" in i else i
        m = metas.get(base)
        if m is None:
            if await ctx.extra["uploads"].path(be.account_id, i) is None:
                nf.append(i)
            else:
                found.append({"id": i, "matchedIds": {t: [] for t in types}})
            continue
        matched = {"Email": [m.id], "Thread": [m.thread_id], "Mailbox": sorted(m.mailbox_ids)}
        found.append({"id": i, "matchedIds": {t: matched[t] for t in types}})
    return {"accountId": be.account_id, "list": found, "notFound": nf}
