"""Mailbox/get, /changes, /query, /queryChanges, /set (RFC 8621 §2)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from mailsrv.jmap import args as A
from mailsrv.jmap.backend import (
    COUNT_PROPERTIES,
    CannotCalculateChanges,
    Forbidden,
    InvalidName,
    Mailbox,
    MailboxHasChild,
    MailboxHasEmail,
    NameConflict,
    NotFound,
)
from mailsrv.jmap.core import MAIL, RequestContext, registry
from mailsrv.jmap.errors import MethodError, SetError
from mailsrv.jmap.jsontext import Encoded
from mailsrv.jmap.query import compile_filter, compile_sort, window
from mailsrv.jmap.sharedview import my_rights

PROPERTIES = [
    "id", "name", "parentId", "role", "sortOrder", "totalEmails", "unreadEmails",
    "totalThreads", "unreadThreads", "myRights", "isSubscribed",
]
#: RFC 8621 §2: roles from the IANA "IMAP Mailbox Name Attributes" registry, lower case.
ROLES = frozenset("all archive drafts flagged important inbox junk sent subscribed trash snoozed memos scheduled".split())
#: RFC 8621 §2: the server may reject names over this many octets (also advertised).
MAX_NAME = 490
MY_RIGHTS = {
    "mayReadItems": True, "mayAddItems": True, "mayRemoveItems": True, "maySetSeen": True,
    "maySetKeywords": True, "mayCreateChild": True, "mayRename": True, "mayDelete": True, "maySubmit": True,
}
#: an account shared read-only: read, nothing else
READ_ONLY_RIGHTS = {k: k == "mayReadItems" for k in MY_RIGHTS}
#: an account shared read-write: everything but sending as its owner
SHARED_RIGHTS = {**MY_RIGHTS, "maySubmit": False}


def rights_for(ctx: RequestContext, account_id: str) -> dict[str, bool]:
    """RFC 8621 §2 myRights: what the caller may do in the mailboxes of ``account_id``."""
    if account_id in ctx.read_only:
        return READ_ONLY_RIGHTS
    if account_id in ctx.account_capabilities:  # shared with the caller
        return SHARED_RIGHTS
    return MY_RIGHTS


async def rights_map(ctx: RequestContext, be: Any) -> Callable[[str], dict[str, bool]]:
    """mailbox id -> its myRights: per mailbox in a shared account (the grantee's RFC 4314 rights
    there, sharedview.py), the same for every mailbox otherwise."""
    by_id = getattr(be, "rights_by_id", None)
    if by_id is None:
        same = rights_for(ctx, be.account_id)
        return lambda _mid: same
    letters: dict[str, str] = await by_id()
    return lambda mid: my_rights(letters.get(mid, ""))


def to_json(m: Mailbox, props: list[str], rights: dict[str, bool] = MY_RIGHTS) -> dict[str, Any]:
    full = {
        "id": m.id, "name": m.name, "parentId": m.parent_id, "role": m.role, "sortOrder": m.sort_order,
        "totalEmails": m.total_emails, "unreadEmails": m.unread_emails, "totalThreads": m.total_threads,
        "unreadThreads": m.unread_threads, "myRights": dict(rights), "isSubscribed": m.is_subscribed,
    }
    return {p: full[p] for p in props}


@registry.add("Mailbox/get", MAIL)
async def mailbox_get(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    A.check(args, ("accountId", "ids", "properties"))
    be = ctx.account(args)
    ids = A.ids(ctx, args, "ids")
    props = A.properties(args, "properties", PROPERTIES, PROPERTIES)
    if "id" not in props:
        props.insert(0, "id")  # RFC 8620 §5.1: id is always returned
    if ids is not None:
        A.get_limit(ctx, len(ids))
    state = await be.state("Mailbox")
    boxes = {m.id: m for m in await be.mailboxes()}
    found, texts, not_found = [], [], []
    rights = await rights_map(ctx, be)
    shape = tuple(props)
    for i in (ids if ids is not None else list(boxes)):
        if i in boxes:
            r = rights(i)
            key = (boxes[i], shape, tuple(r.items()))  # every value the object is made of
            hit = _objects.get(key)
            if hit is None:
                if len(_objects) >= OBJECTS:
                    _objects.clear()
                obj = to_json(boxes[i], props, r)
                hit = _objects[key] = (obj, json.dumps(obj))
            found.append(hit[0])
            texts.append(hit[1])
        else:
            not_found.append(i)
    # the objects' texts are spliced into the response (jsontext.dumps), as Email/get's
    return {"accountId": be.account_id, "state": state, "list": Encoded(found, texts), "notFound": not_found}


#: Mailbox objects and their JSON texts by what they are made of (the Mailbox, with its counts; the
#: properties asked; myRights): shared by the responses that list them, never changed. Per worker,
#: at most this many (about 0.5 KiB of text each), then emptied.
OBJECTS = 4096
_objects: dict[tuple[Any, ...], tuple[dict[str, Any], str]] = {}


async def standard_changes(ctx: RequestContext, args: dict[str, Any], type_: str) -> dict[str, Any]:
    """RFC 8620 §5.2 /changes, for any type the backend tracks."""
    A.check(args, ("accountId", "sinceState", "maxChanges"))
    be = ctx.account(args)
    since = A.state(args, "sinceState")
    max_changes = A.uint(args, "maxChanges", None)
    if max_changes == 0:
        raise MethodError("invalidArguments", "maxChanges must be greater than 0")
    try:
        cs = await be.changes(type_, since, max_changes)
    except CannotCalculateChanges:
        raise MethodError("cannotCalculateChanges") from None
    out: dict[str, Any] = {
        "accountId": be.account_id, "oldState": since, "newState": cs.new_state, "hasMoreChanges": cs.has_more,
        "created": cs.created, "updated": cs.updated, "destroyed": cs.destroyed,
    }
    if type_ == "Mailbox":
        out["updatedProperties"] = list(COUNT_PROPERTIES) if cs.counts_only else None
    return out


@registry.add("Mailbox/changes", MAIL)
async def mailbox_changes(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    return await standard_changes(ctx, args, "Mailbox")


def _condition(cond: dict[str, Any]) -> Callable[[Mailbox], bool]:
    known = {"parentId", "name", "role", "hasAnyRole", "isSubscribed"}
    for k in cond:
        if k not in known:
            raise MethodError("unsupportedFilter", f"unknown Mailbox filter {k!r}")
    tests: list[Callable[[Mailbox], bool]] = []
    if "parentId" in cond:
        parent = cond["parentId"]
        tests.append(lambda m: m.parent_id == parent)
    if "name" in cond:
        if not isinstance(cond["name"], str):
            raise MethodError("unsupportedFilter", "name must be a String")
        needle = cond["name"].casefold()
        tests.append(lambda m: needle in m.name.casefold())
    if "role" in cond:
        role = cond["role"]
        tests.append(lambda m: m.role == role)
    if "hasAnyRole" in cond:
        has_role = cond["hasAnyRole"]
        tests.append(lambda m: (m.role is not None) == has_role)
    if "isSubscribed" in cond:
        sub = cond["isSubscribed"]
        tests.append(lambda m: m.is_subscribed == sub)
    return lambda m: all(t(m) for t in tests)


def _sort_key(comp: dict[str, Any]) -> Callable[[Mailbox], Any]:
    prop = comp["property"]
    if prop == "sortOrder":
        return lambda m: m.sort_order
    if prop == "name":
        return lambda m: m.name.casefold()
    raise MethodError("unsupportedSort", f"cannot sort Mailboxes by {prop!r}")


def _as_tree(boxes: list[Mailbox], ordered: list[Mailbox]) -> list[Mailbox]:
    # RFC 8621 §2.3 sortAsTree: parents before children, siblings in sort order.
    rank = {m.id: i for i, m in enumerate(ordered)}
    children: dict[str | None, list[Mailbox]] = {}
    ids = {m.id for m in boxes}
    for m in boxes:
        children.setdefault(m.parent_id if m.parent_id in ids else None, []).append(m)
    out: list[Mailbox] = []

    def walk(pid: str | None) -> None:
        for m in sorted(children.get(pid, []), key=lambda x: rank[x.id]):
            out.append(m)
            walk(m.id)

    walk(None)
    return out


async def _query_ids(be: Any, args: dict[str, Any]) -> list[str]:
    """The full ordered result of a Mailbox/query's filter, sort, sortAsTree and filterAsTree."""
    pred = compile_filter(args["filter"], _condition) if args.get("filter") is not None else (lambda m: True)
    sorter = compile_sort(args.get("sort"), _sort_key)
    as_tree = A.boolean(args, "sortAsTree", False)
    filter_tree = A.boolean(args, "filterAsTree", False)
    boxes = await be.mailboxes()
    by_id = {m.id: m for m in boxes}
    matched = [m for m in boxes if pred(m)]
    if filter_tree:
        # RFC 8621 §2.3: a mailbox matches only if its ancestors match too.
        ok = {m.id for m in matched}
        def anc_ok(m: Mailbox) -> bool:
            p = m.parent_id
            while p is not None:
                if p not in ok:
                    return False
                p = by_id[p].parent_id if p in by_id else None
            return True
        matched = [m for m in matched if anc_ok(m)]
    ordered = sorter(sorted(matched, key=lambda m: m.id))
    if as_tree:
        ordered = _as_tree(matched, ordered)
    return [m.id for m in ordered]


@registry.add("Mailbox/query", MAIL)
async def mailbox_query(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    A.check(args, ("accountId", "filter", "sort", "position", "anchor", "anchorOffset", "limit",
                   "calculateTotal", "sortAsTree", "filterAsTree"))
    be = ctx.account(args)
    calc = A.boolean(args, "calculateTotal", False)
    state = await be.state("Mailbox")
    all_ids = await _query_ids(be, args)
    page, pos = window(all_ids, args)
    # the query state is the Mailbox state: /queryChanges asks Mailbox/changes what moved since
    out: dict[str, Any] = {"accountId": be.account_id, "queryState": state, "canCalculateChanges": True,
                           "position": pos, "ids": page}
    if calc:
        out["total"] = len(all_ids)
    return out


@registry.add("Mailbox/queryChanges", MAIL)
async def mailbox_query_changes(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    A.check(args, ("accountId", "filter", "sort", "sinceQueryState", "maxChanges", "upToId", "calculateTotal",
                   "sortAsTree", "filterAsTree"))
    be = ctx.account(args)
    since = A.state(args, "sinceQueryState")
    max_changes = A.uint(args, "maxChanges", None)
    if args.get("upToId") is not None and not isinstance(args["upToId"], str):
        raise MethodError("invalidArguments", "upToId must be an Id")
    if A.boolean(args, "sortAsTree", False) or A.boolean(args, "filterAsTree", False):
        # a rename or move of one mailbox reorders or re-filters its whole sub-tree
        raise MethodError("cannotCalculateChanges", "not for sortAsTree or filterAsTree queries")
    try:
        cs = await be.changes("Mailbox", since, None)
    except CannotCalculateChanges:
        raise MethodError("cannotCalculateChanges") from None
    ids = await _query_ids(be, args)
    # RFC 8620 §5.6: every mailbox that may have moved is removed, then re-added at its new index
    # (a count-only change cannot move a mailbox: no filter or sort reads counts)
    touched = set(cs.created) | (set() if cs.counts_only else set(cs.updated))
    removed = sorted((touched - set(cs.created)) | set(cs.destroyed))
    added = [{"id": i, "index": n} for n, i in enumerate(ids) if i in touched]
    if max_changes is not None and len(removed) + len(added) > max_changes:
        raise MethodError("tooManyChanges")
    out: dict[str, Any] = {"accountId": be.account_id, "oldQueryState": since,
                           "newQueryState": cs.new_state, "removed": removed, "added": added}
    if A.boolean(args, "calculateTotal", False):
        out["total"] = len(ids)
    return out


def _validate_name(name: Any) -> str:
    if not isinstance(name, str) or not name or len(name.encode()) > MAX_NAME or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise SetError("invalidProperties", "bad name", properties=["name"])
    return name


def _validate_role(role: Any, boxes: list[Mailbox], own: str | None) -> str | None:
    if role is None:
        return None
    if not isinstance(role, str) or role not in ROLES:
        raise SetError("invalidProperties", "unknown role", properties=["role"])
    if any(m.role == role and m.id != own for m in boxes):
        # RFC 8621 §2: no two mailboxes may share a role
        raise SetError("invalidProperties", "role already in use", properties=["role"])
    return role


@registry.add("Mailbox/set", MAIL)
async def mailbox_set(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    A.check(args, ("accountId", "ifInState", "create", "update", "destroy", "onDestroyRemoveEmails"))
    be = ctx.account(args)
    create = args.get("create") or {}
    update = args.get("update") or {}
    destroy = A.ids(ctx, args, "destroy") or []
    if not isinstance(create, dict) or not isinstance(update, dict):
        raise MethodError("invalidArguments", "create and update must be maps")
    A.set_limit(ctx, len(create) + len(update) + len(destroy))
    remove_emails = A.boolean(args, "onDestroyRemoveEmails", False)
    old_state = await be.state("Mailbox")
    if_in = args.get("ifInState")
    if if_in is not None and if_in != old_state:
        raise MethodError("stateMismatch")
    created: dict[str, Any] = {}
    not_created: dict[str, Any] = {}
    updated: dict[str, Any] = {}
    not_updated: dict[str, Any] = {}
    destroyed: list[str] = []
    not_destroyed: dict[str, Any] = {}
    writable = {"name", "parentId", "role", "sortOrder", "isSubscribed"}
    for cid, obj in create.items():
        try:
            if not isinstance(obj, dict):
                raise SetError("invalidProperties", "not an object")
            bad = [k for k in obj if k not in writable]
            if bad:
                raise SetError("invalidProperties", "server-set or unknown properties", properties=bad)
            boxes = await be.mailboxes()
            name = _validate_name(obj.get("name"))
            parent = obj.get("parentId")
            if parent is not None:
                if not isinstance(parent, str):
                    raise SetError("invalidProperties", properties=["parentId"])
                parent = ctx.resolve_id(parent)
            role = _validate_role(obj.get("role"), boxes, None)
            sort_order = obj.get("sortOrder", 0)
            if isinstance(sort_order, bool) or not isinstance(sort_order, int) or not 0 <= sort_order <= A.MAX_SAFE:
                raise SetError("invalidProperties", properties=["sortOrder"])
            sub = obj.get("isSubscribed", False)
            if not isinstance(sub, bool):
                raise SetError("invalidProperties", properties=["isSubscribed"])
            try:
                m = await be.create_mailbox(name, parent, role, sort_order, sub)
            except NotFound:
                raise SetError("invalidProperties", "no such parent", properties=["parentId"]) from None
            except InvalidName as exc:
                raise SetError("invalidProperties", str(exc), properties=["name"]) from None
            except NameConflict:
                raise SetError("alreadyExists", "a sibling has that name") from None
            ctx.created_ids[cid] = m.id
            full = to_json(m, PROPERTIES, (await rights_map(ctx, be))(m.id))
            created[cid] = {k: v for k, v in full.items() if k not in obj}
        except SetError as exc:
            not_created[cid] = exc.to_json()
    for mid, patch in update.items():
        rid = ctx.resolve_id(mid) or mid
        try:
            if not isinstance(patch, dict):
                raise SetError("invalidPatch", "not an object")
            boxes = await be.mailboxes()
            cur = next((m for m in boxes if m.id == rid), None)
            if cur is None:
                raise SetError("notFound")
            kw: dict[str, Any] = {}
            for k, v in patch.items():
                if k == "name":
                    kw["name"] = _validate_name(v)
                elif k == "parentId":
                    if v is not None and not isinstance(v, str):
                        raise SetError("invalidProperties", properties=["parentId"])
                    kw["parent_id"] = ctx.resolve_id(v) if v is not None else None
                elif k == "role":
                    kw["role"] = _validate_role(v, boxes, rid)
                elif k == "sortOrder":
                    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= A.MAX_SAFE:
                        raise SetError("invalidProperties", properties=["sortOrder"])
                    kw["sort_order"] = v
                elif k == "isSubscribed":
                    if not isinstance(v, bool):
                        raise SetError("invalidProperties", properties=["isSubscribed"])
                    kw["is_subscribed"] = v
                elif k in PROPERTIES:
                    # server-set properties may be "set" to their current value only
                    if to_json(cur, [k], (await rights_map(ctx, be))(cur.id))[k] != v:
                        raise SetError("invalidProperties", f"{k} is server-set", properties=[k])
                else:
                    raise SetError("invalidProperties", f"unknown property {k}", properties=[k])
            try:
                await be.update_mailbox(rid, **kw)
            except NotFound:
                raise SetError("invalidProperties", "no such parent", properties=["parentId"]) from None
            except NameConflict as exc:
                raise SetError("invalidProperties", str(exc), properties=["parentId", "name"]) from None
            updated[mid] = None
        except SetError as exc:
            not_updated[mid] = exc.to_json()
    for mid in destroy:
        try:
            try:
                await be.destroy_mailbox(mid, remove_emails)
            except NotFound:
                raise SetError("notFound") from None
            except MailboxHasChild:
                raise SetError("mailboxHasChild") from None
            except MailboxHasEmail:
                raise SetError("mailboxHasEmail") from None
            except Forbidden as exc:
                raise SetError("forbidden", str(exc)) from None
            destroyed.append(mid)
        except SetError as exc:
            not_destroyed[mid] = exc.to_json()
    return {
        "accountId": be.account_id, "oldState": old_state, "newState": await be.state("Mailbox"),
        "created": created or None, "updated": updated or None, "destroyed": destroyed or None,
        "notCreated": not_created or None, "notUpdated": not_updated or None, "notDestroyed": not_destroyed or None,
    }
