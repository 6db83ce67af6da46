"""``FileLink/get``, ``FileLink/set``, ``FileLink/query`` (capability ``urn:mailsrv:filelink``; docs/files.md).

A webmail turns a big attachment into a link: it uploads the file (RFC 8620 §6.1, the upload
URL), then creates a FileLink from the ``blobId``; the ``created`` response carries the link's
``url`` (the only time it is shown: only a hash of its token is kept). Properties: ``id``,
``name``, ``size``, ``sha256``, ``type``, ``created``, ``expires``, ``downloads`` (all server-set
except ``name`` and ``type`` at creation, when ``days`` may also ask for a shorter life than
``[files] retention_days``), and ``url`` in the create response only. Links belong to
the caller's personal account; ``update`` is not supported (a link is made or destroyed).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from mailsrv.jmap.core import RequestContext, is_id, registry
from mailsrv.jmap.errors import MethodError, SetError, invalid_arguments

FILELINK = "urn:mailsrv:filelink"
PROPERTIES = ("id", "name", "size", "sha256", "type", "created", "expires", "downloads")


def _files(ctx: RequestContext, args: dict[str, Any]) -> tuple[Any, Any, str]:
    """(FileLinks, backend, the owner's id) for the call's account. Raises MethodError."""
    be = ctx.account(args, FILELINK)
    files = ctx.extra.get("files")
    principal = ctx.extra.get("principal")
    if files is None or principal is None:
        raise MethodError("serverUnavailable", "file links are disabled ([files] enabled = false)")
    return files, be, str(principal.id)


def _object(link: Any, props: list[str] | None) -> dict[str, Any]:
    full = link.to_json()
    return {p: full[p] for p in (props or PROPERTIES) if p in full}


@registry.add("FileLink/get", FILELINK)
async def filelink_get(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    files, _, owner = _files(ctx, args)
    ids = args.get("ids")
    props = args.get("properties")
    if props is not None and (not isinstance(props, list) or any(p not in PROPERTIES for p in props)):
        raise invalid_arguments(f"properties must name some of {', '.join(PROPERTIES)}")
    mine = {link.id: link for link in await files.list(owner)}
    if ids is None:
        found, missing = list(mine.values()), []
    elif isinstance(ids, list) and all(is_id(i) for i in ids):
        if len(ids) > ctx.config.max_objects_in_get:
            raise MethodError("requestTooLarge", f"at most {ctx.config.max_objects_in_get} ids")
        found = [mine[i] for i in dict.fromkeys(ids) if i in mine]
        missing = [i for i in dict.fromkeys(ids) if i not in mine]
    else:
        raise invalid_arguments("ids must be null or an array of Ids")
    return {"accountId": args["accountId"], "state": _state(mine.values()),
            "list": [_object(link, props) for link in found], "notFound": missing}


@registry.add("FileLink/query", FILELINK)
async def filelink_query(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    """The caller's live links, newest first (no filter, no other sort)."""
    files, _, owner = _files(ctx, args)
    if args.get("filter") not in (None, {}) or args.get("sort") not in (None, []):
        raise MethodError("unsupportedFilter", "FileLink/query has no filter or sort")
    links = sorted(await files.list(owner), key=lambda link: link.created, reverse=True)
    position = args.get("position", 0)
    limit = args.get("limit")
    if not isinstance(position, int) or position < 0 or (limit is not None and (not isinstance(limit, int) or limit < 0)):
        raise invalid_arguments("position and limit must be non-negative integers")
    ids = [link.id for link in links][position:None if limit is None else position + limit]
    return {"accountId": args["accountId"], "queryState": _state(links), "canCalculateChanges": False,
            "position": position, "ids": ids, "total": len(links)}


@registry.add("FileLink/set", FILELINK)
async def filelink_set(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    files, be, owner = _files(ctx, args)
    create = args.get("create") or {}
    destroy = args.get("destroy") or []
    update = args.get("update") or {}
    if not isinstance(create, dict) or not isinstance(destroy, list) or not isinstance(update, dict):
        raise invalid_arguments("create, update and destroy have the wrong type")
    if len(create) + len(destroy) + len(update) > ctx.config.max_objects_in_set:
        raise MethodError("requestTooLarge", f"at most {ctx.config.max_objects_in_set} objects")
    old_state = _state(await files.list(owner))
    uploads = ctx.extra.get("uploads")
    base = (files.config.public_url or ctx.extra.get("base_url") or ctx.config.base_url).rstrip("/")
    created: dict[str, Any] = {}
    not_created: dict[str, Any] = {}
    for cid, obj in create.items():
        try:
            link, token = await _create(files, uploads, be, ctx, owner, obj)
        except SetError as err:
            not_created[cid] = err.to_json()
            continue
        ctx.created_ids[cid] = link.id
        created[cid] = {**_object(link, None), "url": f"{base}/f/{token}/{quote(link.name, safe='')}"}
    destroyed: list[str] = []
    not_destroyed: dict[str, Any] = {}
    for raw in destroy:
        lid = ctx.resolve_id(raw) if isinstance(raw, str) else None
        if lid is not None and await files.delete(lid, owner) is not None:
            destroyed.append(raw)
        else:
            not_destroyed[str(raw)] = SetError("notFound").to_json()
    not_updated = {k: SetError("forbidden", "a file link cannot be changed: destroy it and make another").to_json()
                   for k in update}
    return {"accountId": args["accountId"], "oldState": old_state, "newState": _state(await files.list(owner)),
            "created": created or None, "notCreated": not_created or None, "updated": None,
            "notUpdated": not_updated or None, "destroyed": destroyed or None, "notDestroyed": not_destroyed or None}


async def _create(files: Any, uploads: Any, be: Any, ctx: RequestContext, owner: str,
                  obj: Any) -> tuple[Any, str]:
    from mailsrv.files import FileLinkError

    if not isinstance(obj, dict) or not isinstance(obj.get("blobId"), str):
        raise SetError("invalidProperties", "blobId is required", properties=["blobId"])
    extra = set(obj) - {"blobId", "name", "type", "days"}
    if extra:
        raise SetError("invalidProperties", "only blobId, name, type and days may be set", properties=sorted(extra))
    days = obj.get("days")
    longest = files.config.retention_days
    if days is not None and (type(days) is not int or not 1 <= days <= longest):
        raise SetError("invalidProperties", f"days is a number from 1 to {longest}", properties=["days"])
    name, media_type = obj.get("name", "file"), obj.get("type")
    if not isinstance(name, str) or (media_type is not None and not isinstance(media_type, str)):
        raise SetError("invalidProperties", "name and type are Strings", properties=["name", "type"])
    blob_id = ctx.resolve_id(obj["blobId"]) or obj["blobId"]
    path = await uploads.path(be.account_id, blob_id) if uploads is not None else None
    if path is None:
        raise SetError("blobNotFound", "upload the file first (the upload URL)", notFound=[blob_id])
    if media_type is None:
        media_type = await uploads.content_type(be.account_id, blob_id)
    try:
        return await files.from_file(path, owner, ctx.username, name, media_type, days)
    except FileLinkError as exc:
        kind = "overQuota" if exc.status == 507 else "tooLarge"
        raise SetError(kind, str(exc)) from None


def _state(links: Any) -> str:
    """A state string that changes with any create or destroy (ids and count)."""
    import hashlib

    ids = sorted(link.id for link in links)
    return hashlib.sha256(",".join(ids).encode()).hexdigest()[:16]
