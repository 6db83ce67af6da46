"""Identity (RFC 8621 §6) and VacationResponse (RFC 8621 §8), kept in per-account collections.

The auto-replies themselves are sent by vacation.py's watcher, started when a
VacationResponse is enabled through this worker.
"""

from __future__ import annotations

from typing import Any

from mailsrv.jmap import args as A
from mailsrv.jmap.backend import CannotCalculateChanges
from mailsrv.jmap.core import RequestContext, registry
from mailsrv.jmap.errors import MethodError, SetError, invalid_arguments
from mailsrv.jmap.objects import Collection, drop, new_id, put

SUBMISSION = "urn:ietf:params:jmap:submission"
VACATION = "urn:ietf:params:jmap:vacationresponse"
IDENTITY_PROPS = ["id", "name", "email", "replyTo", "bcc", "textSignature", "htmlSignature", "mayDelete"]
VACATION_PROPS = ["id", "isEnabled", "fromDate", "toDate", "subject", "textBody", "htmlBody"]


def collection(ctx: RequestContext, account_id: str, type_: str) -> Collection:
    make = ctx.extra["objects"]
    coll: Collection = make(account_id, type_)
    return coll


async def identities(ctx: RequestContext, be: Any) -> Collection:
    """The account's identities; the first use creates the default one (its own address)."""
    coll = collection(ctx, be.account_id, "Identity")
    data = await coll.read()
    if not data["records"] and data["modseq"] == 0:
        def seed(d: dict[str, Any]) -> None:
            if not d["records"] and d["modseq"] == 0:
                put(d, new_id(d, "I"), {"name": "", "email": be.name, "replyTo": None, "bcc": None,
                                        "textSignature": "", "htmlSignature": "", "mayDelete": False})
        await coll.change(seed)
    return coll


async def get_objects(ctx: RequestContext, args: dict[str, Any], coll: Collection, props_all: list[str],
                      be: Any) -> dict[str, Any]:
    ids = A.ids(ctx, args, "ids")
    props = A.properties(args, "properties", props_all, props_all)
    if "id" not in props:
        props.insert(0, "id")
    data = await coll.read()
    recs = data["records"]
    if ids is None:
        ids = list(recs)
    A.get_limit(ctx, len(ids))
    found, nf = [], []
    for i in ids:
        if i in recs:
            obj = {"id": i, **recs[i]}
            found.append({p: obj.get(p) for p in props})
        else:
            nf.append(i)
    return {"accountId": be.account_id, "state": str(data["modseq"]), "list": found, "notFound": nf}


async def changes_objects(args: dict[str, Any], coll: Collection, be: Any) -> dict[str, Any]:
    A.check(args, ("accountId", "sinceState", "maxChanges"))
    since = A.state(args, "sinceState")
    try:
        cs = await coll.changes(since, A.uint(args, "maxChanges", None))
    except CannotCalculateChanges:
        raise MethodError("cannotCalculateChanges") from None
    return {"accountId": be.account_id, "oldState": since, "newState": cs.new_state, "hasMoreChanges": False,
            "created": cs.created, "updated": cs.updated, "destroyed": cs.destroyed}


def _addresses(v: Any, prop: str) -> list[dict[str, Any]] | None:
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(a, dict) and isinstance(a.get("email"), str) for a in v):
        raise SetError("invalidProperties", properties=[prop])
    return [{"name": a.get("name"), "email": a["email"]} for a in v]


def _identity_fields(obj: dict[str, Any], creating: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if k in ("name", "textSignature", "htmlSignature"):
            if not isinstance(v, str):
                raise SetError("invalidProperties", properties=[k])
            out[k] = v
        elif k in ("replyTo", "bcc"):
            out[k] = _addresses(v, k)
        elif k == "email" and creating:
            if not isinstance(v, str) or "@" not in v:
                raise SetError("invalidProperties", properties=[k])
            out[k] = v
        else:
            raise SetError("invalidProperties", f"{k} cannot be set", properties=[k])
    return out


@registry.add("Identity/get", SUBMISSION)
async def identity_get(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    A.check(args, ("accountId", "ids", "properties"))
    be = ctx.account(args)
    return await get_objects(ctx, args, await identities(ctx, be), IDENTITY_PROPS, be)


@registry.add("Identity/changes", SUBMISSION)
async def identity_changes(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    be = ctx.account(args)
    return await changes_objects(args, await identities(ctx, be), be)


@registry.add("Identity/set", SUBMISSION)
async def identity_set(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    A.check(args, ("accountId", "ifInState", "create", "update", "destroy"))
    be = ctx.account(args)
    coll = await identities(ctx, be)
    create = args.get("create") or {}
    update = args.get("update") or {}
    destroy = A.ids(ctx, args, "destroy") or []
    if not isinstance(create, dict) or not isinstance(update, dict):
        raise invalid_arguments("create and update must be maps")
    A.set_limit(ctx, len(create) + len(update) + len(destroy))
    old = await coll.state()
    if args.get("ifInState") is not None and args["ifInState"] != old:
        raise MethodError("stateMismatch")
    submitter = ctx.extra.get("submitter")
    created: dict[str, Any] = {}
    not_created: dict[str, Any] = {}
    for cid, obj in create.items():
        try:
            if not isinstance(obj, dict) or "email" not in obj:
                raise SetError("invalidProperties", "email is required", properties=["email"])
            fields = _identity_fields(obj, True)
            allowed = fields["email"].lower() == be.name.lower()
            if not allowed and submitter is not None:
                allowed = await submitter.may_send_as(ctx.extra.get("principal"), fields["email"])
            if not allowed:
                raise SetError("forbiddenFrom", "you may not send as this address")
            rec = {"name": "", "replyTo": None, "bcc": None, "textSignature": "", "htmlSignature": "",
                   "mayDelete": True, **fields}

            def add(d: dict[str, Any], rec: dict[str, Any] = rec) -> str:
                iid = new_id(d, "I")
                put(d, iid, rec)
                return iid

            iid = await coll.change(add)
            ctx.created_ids[cid] = iid
            created[cid] = {"id": iid, "mayDelete": True}
        except SetError as exc:
            not_created[cid] = exc.to_json()
    updated: dict[str, Any] = {}
    not_updated: dict[str, Any] = {}
    for iid, patch in update.items():
        try:
            if not isinstance(patch, dict):
                raise SetError("invalidPatch")
            fields = _identity_fields(patch, False)

            def upd(d: dict[str, Any], iid: str = iid, fields: dict[str, Any] = fields) -> bool:
                if iid not in d["records"]:
                    return False
                put(d, iid, {**d["records"][iid], **fields})
                return True

            if not await coll.change(upd):
                raise SetError("notFound")
            updated[iid] = None
        except SetError as exc:
            not_updated[iid] = exc.to_json()
    destroyed: list[str] = []
    not_destroyed: dict[str, Any] = {}
    for iid in destroy:
        recs = await coll.records()
        if iid not in recs:
            not_destroyed[iid] = {"type": "notFound"}
        elif not recs[iid].get("mayDelete", True):
            not_destroyed[iid] = {"type": "forbidden", "description": "the primary identity stays"}
        else:
            def rm(d: dict[str, Any], iid: str = iid) -> bool:
                return drop(d, iid)

            await coll.change(rm)
            destroyed.append(iid)
    return {"accountId": be.account_id, "oldState": old, "newState": await coll.state(),
            "created": created or None, "updated": updated or None, "destroyed": destroyed or None,
            "notCreated": not_created or None, "notUpdated": not_updated or None,
            "notDestroyed": not_destroyed or None}


DEFAULT_VACATION = {"isEnabled": False, "fromDate": None, "toDate": None, "subject": None, "textBody": None,
                    "htmlBody": None}


@registry.add("VacationResponse/get", VACATION)
async def vacation_get(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    A.check(args, ("accountId", "ids", "properties"))
    be = ctx.account(args)
    coll = collection(ctx, be.account_id, "VacationResponse")
    data = await coll.read()
    ids = A.ids(ctx, args, "ids")
    props = A.properties(args, "properties", VACATION_PROPS, VACATION_PROPS)
    rec = {"id": "singleton", **DEFAULT_VACATION, **data["records"].get("singleton", {})}
    found, nf = [], []
    for i in (ids if ids is not None else ["singleton"]):
        if i == "singleton":
            found.append({p: rec[p] for p in ["id", *[p for p in props if p != "id"]]})
        else:
            nf.append(i)
    return {"accountId": be.account_id, "state": str(data["modseq"]), "list": found, "notFound": nf}


@registry.add("VacationResponse/set", VACATION)
async def vacation_set(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    A.check(args, ("accountId", "ifInState", "create", "update", "destroy"))
    be = ctx.account(args)
    coll = collection(ctx, be.account_id, "VacationResponse")
    old = await coll.state()
    if args.get("ifInState") is not None and args["ifInState"] != old:
        raise MethodError("stateMismatch")
    not_created = {cid: {"type": "singleton"} for cid in (args.get("create") or {})}
    not_destroyed = {i: {"type": "singleton"} for i in (args.get("destroy") or [])}
    updated: dict[str, Any] = {}
    not_updated: dict[str, Any] = {}
    for iid, patch in (args.get("update") or {}).items():
        try:
            if iid != "singleton":
                raise SetError("notFound")
            if not isinstance(patch, dict):
                raise SetError("invalidPatch")
            for k, v in patch.items():
                if k == "isEnabled":
                    if not isinstance(v, bool):
                        raise SetError("invalidProperties", properties=[k])
                elif k in ("fromDate", "toDate", "subject", "textBody", "htmlBody"):
                    if v is not None and not isinstance(v, str):
                        raise SetError("invalidProperties", properties=[k])
                else:
                    raise SetError("invalidProperties", properties=[k])

            def upd(d: dict[str, Any], patch: dict[str, Any] = patch) -> None:
                put(d, "singleton", {**DEFAULT_VACATION, **d["records"].get("singleton", {}), **patch})

            await coll.change(upd)
            updated[iid] = None
            responder = ctx.extra.get("vacation")
            if responder is not None and (await coll.records())["singleton"].get("isEnabled"):
                await responder.ensure(be, ctx.extra.get("principal"), coll,
                                       collection(ctx, be.account_id, "VacationSent"))
        except SetError as exc:
            not_updated[iid] = exc.to_json()
    return {"accountId": be.account_id, "oldState": old, "newState": await coll.state(),
            "created": None, "updated": updated or None, "destroyed": None,
            "notCreated": not_created or None, "notUpdated": not_updated or None,
            "notDestroyed": not_destroyed or None}
