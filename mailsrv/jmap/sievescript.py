"""``SieveScript/get|set|query|changes|validate`` (RFC 9661, capability ``urn:ietf:params:jmap:sieve``).

The scripts are the files ManageSieve and ``mailsrv sieve`` use (:mod:`mailsrv.sieve.scripts`:
same directory, same ``[sieve]`` limits, same compiler), so a script set here runs at the next
delivery. Script content travels as blobs: a client uploads it (RFC 8620 §6.1) and names the
``blobId``; a script's own ``blobId`` is the upload store's id of its octets (``G`` + SHA-256),
put there when a /get shows it, so the download URL serves it.

Ids: the files are keyed by name, JMAP objects by an immutable id. The account's
``SieveScript`` collection (:mod:`mailsrv.jmap.objects`) maps id -> (name, content hash,
active) and is brought in line with the files at each call, so /changes also reports what
ManageSieve or the CLI did; a rename made there is seen as a destroy and a create (a new id).
Only the caller's own account has this capability (never a shared one).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from mailsrv import log
from mailsrv.config import SieveConfig
from mailsrv.jmap.backend import CannotCalculateChanges
from mailsrv.jmap.core import RequestContext, registry
from mailsrv.jmap.errors import MethodError, SetError, invalid_arguments
from mailsrv.jmap.objects import Collection, drop, new_id, put
from mailsrv.jmap.push import MultiWatch
from mailsrv.jmap.query import compile_filter, compile_sort, window
from mailsrv.jmap.submission import _notifier
from mailsrv.sieve import EXTENSIONS
from mailsrv.sieve import scripts as S
from mailsrv.store import notify

SIEVE = "urn:ietf:params:jmap:sieve"
PROPERTIES = ("id", "name", "blobId", "isActive")
IMPLEMENTATION = "mailsrv"

logger = log.get("jmap")


def account_capability(cfg: SieveConfig) -> dict[str, Any]:
    """RFC 9661 §2: the account's ``urn:ietf:params:jmap:sieve`` capability object."""
    return {
        "implementation": IMPLEMENTATION,
        "maxSizeScriptName": S.MAX_NAME,
        "maxSizeScript": cfg.max_script_size,
        "maxNumberScripts": cfg.max_scripts,
        "maxNumberRedirects": cfg.max_redirects,
        "sieveExtensions": sorted(EXTENSIONS),
        "notificationMethods": ["mailto"] if "enotify" in EXTENSIONS else None,
        "externalLists": None,
    }


def blob_id(data: bytes) -> str:
    """The upload store's id for these octets (mailsrv.jmap.blobs: ``G`` + 40 hex of SHA-256)."""
    return "G" + hashlib.sha256(data).hexdigest()[:40]


class _Account:
    """One call's view of the caller's scripts: the root, limits, collection and upload store."""

    def __init__(self, ctx: RequestContext, args: dict[str, Any]) -> None:
        be = ctx.account(args, SIEVE)
        root = getattr(getattr(be, "acct", None), "root", None)
        objects, uploads = ctx.extra.get("objects"), ctx.extra.get("uploads")
        cfg: SieveConfig | None = ctx.extra.get("sieve")
        if cfg is None:
            raise MethodError("serverUnavailable", "Sieve is off ([sieve] enabled = false)")
        if root is None or objects is None or uploads is None:
            raise MethodError("serverUnavailable", "Sieve scripts need the mail store")
        self.account_id: str = be.account_id
        self.root = Path(root)
        self.cfg = cfg
        self.coll: Collection = objects(be.account_id, "SieveScript")
        self.uploads = uploads
        self.io = uploads.io

    async def sync(self) -> dict[str, dict[str, Any]]:
        """Bring the id map in line with the files (blocking part in the I/O pool); id -> record."""
        return await sync(self.coll, self.root)

    async def publish(self, recs: dict[str, dict[str, Any]]) -> None:
        """Each script's blob in the upload store (absent or expired ones written anew)."""
        for rec in recs.values():
            if await self.uploads.path(self.account_id, rec["blobId"]) is None:
                text = await self.io.run(S.get_script, self.root, rec["name"])
                await self.uploads.put(self.account_id, _one(text.encode("utf-8")), "application/sieve",
                                       len(text.encode("utf-8")))

    async def text_of(self, ctx: RequestContext, raw_blob: Any) -> str:
        """The script text of an uploaded blob. Raises SetError (blobNotFound, tooLarge, invalidSieve)."""
        bid = ctx.resolve_id(raw_blob) if isinstance(raw_blob, str) else None
        if not bid:
            raise SetError("invalidProperties", "blobId is required", properties=["blobId"])
        data = await self.uploads.read(self.account_id, bid, self.cfg.max_script_size + 1)
        if data is None:
            raise SetError("blobNotFound", "upload the script first (the upload URL)", notFound=[bid])
        if len(data) > self.cfg.max_script_size:
            raise SetError("tooLarge", f"script larger than {self.cfg.max_script_size} octets")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise SetError("invalidSieve", "script is not valid UTF-8") from None

    async def run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await self.io.run(fn, self.root, *args, **kwargs)


async def sync(coll: Collection, root: Path) -> dict[str, dict[str, Any]]:
    """Bring the id map ``coll`` in line with the script files under ``root`` (blocking part in the
    collection's I/O pool); id -> record. Each script changed since moves the collection's state."""

    def reconcile(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
        files = {}
        for name, active in S.list_scripts(root):
            try:
                octets = S.get_script(root, name).encode("utf-8")
            except S.NoSuchScript:  # deleted between the listing and the read
                continue
            files[name] = {"name": name, "blobId": blob_id(octets), "isActive": active, "size": len(octets)}
        by_name = {rec["name"]: i for i, rec in data["records"].items()}
        for name, i in by_name.items():
            if name not in files:
                drop(data, i)
        for name, rec in files.items():
            i = by_name.get(name)
            if i is None:
                put(data, new_id(data, "S"), rec)
            elif data["records"][i] != rec:
                put(data, i, rec)
        return dict(data["records"])

    return await coll.change(reconcile)


#: what changes the script directory: a script or the active marker written (temp file renamed in),
#: deleted (DELETESCRIPT, deactivation unlinks the marker) or renamed away
_SCRIPT_DIR_MASK = notify.IN_CREATE | notify.IN_MOVED_TO | notify.IN_DELETE | notify.IN_MOVED_FROM


class ScriptTracking:
    """The caller's own backend as push sees it, plus the ``SieveScript`` state (RFC 9661 §1.3, RFC
    8620 §7.1): :meth:`watch` also wakes when the account's script directory changes (JMAP, ManageSieve
    or ``mailsrv sieve`` in any process), and :meth:`extra_states` then brings the id map in line with
    the files (:func:`sync`) before reading its state. Wake-ups of the mail store alone do not re-read
    the scripts (the state read last is kept)."""

    def __init__(self, be: Any, coll: Collection, root: Path) -> None:
        self.be = be
        self.coll = coll
        self.root = Path(root)
        self.account_id = be.account_id
        self.name = be.name
        #: the scripts may have changed since the last sync (True until the first)
        self.stale = True
        self._state: str | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.be, name)

    async def extra_states(self) -> dict[str, str]:
        inner = getattr(self.be, "extra_states", None)  # EmailSubmission (submission.SubmissionTracking)
        out: dict[str, str] = dict(await inner()) if inner is not None else {}
        if self.stale or self._state is None:
            self.stale = False  # first: a change during the sync wakes us again
            await sync(self.coll, self.root)
            self._state = await self.coll.state()
        out["SieveScript"] = self._state
        return out

    def watch(self) -> Any:
        inner = self.be.watch()
        try:
            d = self.root / S.DIRNAME
            d.mkdir(mode=0o700, exist_ok=True)  # in the store's root (opened before); a metadata call like the watch
            n = _notifier()
            key = f"sieve:{d}"
            n.add_path(key, d, _SCRIPT_DIR_MASK)
            scripts = notify.Watch(n, key)
            n.register(scripts)
        except OSError as exc:  # no inotify watch left: sync at each wake-up instead
            logger.warning("jmap.push.sieve_unwatched", account=self.account_id, error=str(exc))
            return _Always(inner, self)
        except BaseException:
            inner.close()
            raise
        return MultiWatch([inner, _Marking(scripts, self)])


class _Marking:
    """A Watch that marks ``tracker`` stale at each wake-up (its scripts changed)."""

    def __init__(self, inner: Any, tracker: ScriptTracking) -> None:
        self.inner = inner
        self.tracker = tracker

    async def wait(self, seconds: float | None = None) -> bool:
        woke = bool(await self.inner.wait(seconds))
        if woke:
            self.tracker.stale = True
        return woke

    def close(self) -> None:
        self.inner.close()


class _Always(_Marking):
    """The fallback without a watch on the scripts: every wake-up of the store may be theirs."""


def tracking(be: Any, coll: Collection, root: Any) -> Any:
    """``be`` wrapped in :class:`ScriptTracking` (``root``: the account's root, None when the
    backend has no store: then ``be`` as it is)."""
    if root is None:
        return be
    return ScriptTracking(be, coll, Path(root))


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _set_error(exc: S.ScriptError, recs: dict[str, dict[str, Any]], name: str | None = None) -> SetError:
    """RFC 9661 §2.2's SetError for a refusal of mailsrv.sieve.scripts."""
    if isinstance(exc, S.InvalidScript):
        return SetError("invalidSieve", exc.message)
    if isinstance(exc, S.ScriptTooBig):
        return SetError("tooLarge", exc.message)
    if isinstance(exc, S.TooManyScripts):
        return SetError("overQuota", exc.message)
    if isinstance(exc, S.ScriptExists):
        existing = next((i for i, r in recs.items() if r["name"] == name), None)
        return SetError("alreadyExists", exc.message, existingId=existing)
    if isinstance(exc, S.ScriptActive):
        return SetError("sieveIsActive", exc.message)
    if isinstance(exc, S.NoSuchScript):
        return SetError("notFound", exc.message)
    return SetError("invalidProperties", exc.message, properties=["name"])


def _object(i: str, rec: dict[str, Any], props: list[str] | None) -> dict[str, Any]:
    full = {"id": i, "name": rec["name"], "blobId": rec["blobId"], "isActive": rec["isActive"]}
    return {p: full[p] for p in (props or PROPERTIES)} | {"id": i}


@registry.add("SieveScript/get", SIEVE)
async def sieve_get(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    acct = _Account(ctx, args)
    ids, props = args.get("ids"), args.get("properties")
    if props is not None and (not isinstance(props, list) or any(p not in PROPERTIES for p in props)):
        raise invalid_arguments(f"properties must name some of {', '.join(PROPERTIES)}")
    recs = await acct.sync()
    if ids is None:
        wanted = list(recs)
    elif isinstance(ids, list) and all(isinstance(i, str) for i in ids):
        if len(ids) > ctx.config.max_objects_in_get:
            raise MethodError("requestTooLarge", f"at most {ctx.config.max_objects_in_get} ids")
        wanted = [ctx.resolve_id(i) or i for i in dict.fromkeys(ids)]
    else:
        raise invalid_arguments("ids must be null or an array of Ids")
    found = {i: recs[i] for i in wanted if i in recs}
    if props is None or "blobId" in props:
        await acct.publish(found)
    return {"accountId": acct.account_id, "state": await acct.coll.state(),
            "list": [_object(i, r, props) for i, r in found.items()],
            "notFound": [i for i in wanted if i not in recs]}


@registry.add("SieveScript/changes", SIEVE)
async def sieve_changes(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    acct = _Account(ctx, args)
    since, max_changes = args.get("sinceState"), args.get("maxChanges")
    if not isinstance(since, str) or (max_changes is not None and (type(max_changes) is not int or max_changes < 1)):
        raise invalid_arguments("sinceState is a String, maxChanges a positive integer")
    await acct.sync()
    try:
        cs = await acct.coll.changes(since, max_changes)
    except CannotCalculateChanges:
        raise MethodError("cannotCalculateChanges") from None
    return {"accountId": acct.account_id, "oldState": since, "newState": cs.new_state, "hasMoreChanges": False,
            "created": cs.created, "updated": cs.updated, "destroyed": cs.destroyed}


@registry.add("SieveScript/query", SIEVE)
async def sieve_query(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    """RFC 9661 §2.4: filter ``name`` (substring, case-insensitive) and ``isActive``; sort ``name``, ``isActive``."""
    acct = _Account(ctx, args)
    match = compile_filter(args["filter"], _condition) if args.get("filter") is not None else None
    order = compile_sort(args.get("sort"), _sort_key)
    recs = await acct.sync()
    items = order(sorted((r | {"id": i} for i, r in recs.items() if match is None or match(r)),
                         key=lambda r: r["name"]))
    ids = [r["id"] for r in items]
    page, position = window(ids, args)
    return {"accountId": acct.account_id, "queryState": await acct.coll.state(), "canCalculateChanges": False,
            "position": position, "ids": page, "total": len(ids)}


def _condition(cond: dict[str, Any]) -> Callable[[dict[str, Any]], bool]:
    if set(cond) - {"name", "isActive"}:
        raise MethodError("unsupportedFilter", "filter on name and isActive only")
    name, active = cond.get("name"), cond.get("isActive")
    if (name is not None and not isinstance(name, str)) or (active is not None and not isinstance(active, bool)):
        raise MethodError("unsupportedFilter", "name is a String, isActive a Boolean")
    needle = name.casefold() if name is not None else None
    return lambda r: ((needle is None or needle in r["name"].casefold())
                      and (active is None or r["isActive"] == active))


def _sort_key(comp: dict[str, Any]) -> Callable[[dict[str, Any]], Any]:
    prop = comp["property"]
    if prop not in ("name", "isActive"):
        raise MethodError("unsupportedSort", "sort by name or isActive")
    return lambda r: r[prop]


@registry.add("SieveScript/validate", SIEVE)
async def sieve_validate(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    """RFC 9661 §2.6: does the blob compile? ``error`` is an ``invalidSieve`` SetError or null."""
    acct = _Account(ctx, args)
    error = None
    try:
        text = await acct.text_of(ctx, args.get("blobId"))
        await acct.io.run(S.validate, text, acct.cfg.max_script_size)
    except SetError as err:
        if err.type == "invalidProperties":
            raise invalid_arguments("blobId must be an Id") from None
        error = err.to_json()
    except S.ScriptError as exc:
        error = _set_error(exc, {}).to_json()
    return {"accountId": acct.account_id, "error": error}


@registry.add("SieveScript/set", SIEVE)
async def sieve_set(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    acct = _Account(ctx, args)
    create, update, destroy = args.get("create") or {}, args.get("update") or {}, args.get("destroy") or []
    if not isinstance(create, dict) or not isinstance(update, dict) or not isinstance(destroy, list):
        raise invalid_arguments("create, update and destroy have the wrong type")
    if len(create) + len(update) + len(destroy) > ctx.config.max_objects_in_set:
        raise MethodError("requestTooLarge", f"at most {ctx.config.max_objects_in_set} objects")
    activate, deactivate = args.get("onSuccessActivateScript"), args.get("onSuccessDeactivateScript")
    if (activate is not None and not isinstance(activate, str)) or deactivate not in (None, True, False):
        raise invalid_arguments("onSuccessActivateScript is an Id, onSuccessDeactivateScript a Boolean")
    recs = await acct.sync()  # first: what ManageSieve changed since is in oldState, not in this call's changes
    old_state = await acct.coll.state()
    if args.get("ifInState") is not None and args["ifInState"] != old_state:
        raise MethodError("stateMismatch")
    names = {r["name"]: i for i, r in recs.items()}
    created: dict[str, Any] = {}
    not_created: dict[str, Any] = {}
    for cid, obj in create.items():
        try:
            name = await _create(ctx, acct, obj, names, recs)
        except SetError as err:
            not_created[cid] = err.to_json()
            continue
        recs = await acct.sync()
        i = next(k for k, r in recs.items() if r["name"] == name)
        names[name] = ctx.created_ids[cid] = i
        created[cid] = {"id": i, "name": name, "blobId": recs[i]["blobId"], "isActive": False}
    updated: dict[str, Any] = {}
    not_updated: dict[str, Any] = {}
    for raw, patch in update.items():
        i = ctx.resolve_id(raw) or raw
        try:
            await _update(ctx, acct, i, recs.get(i), patch, names, recs)
        except SetError as err:
            not_updated[raw] = err.to_json()
            continue
        recs = await acct.sync()
        names = {r["name"]: k for k, r in recs.items()}
        updated[i] = None
    destroyed: list[str] = []
    not_destroyed: dict[str, Any] = {}
    for raw in destroy:
        i = (ctx.resolve_id(raw) or raw) if isinstance(raw, str) else ""
        rec = recs.get(i)
        try:
            if rec is None:
                raise SetError("notFound")
            try:
                await acct.run(S.delete_script, rec["name"])
            except S.ScriptError as exc:
                raise _set_error(exc, recs) from None
        except SetError as err:
            not_destroyed[str(raw)] = err.to_json()
            continue
        destroyed.append(i)
    failed = not_created or not_updated or not_destroyed
    if not failed and (deactivate or activate is not None):
        recs = await acct.sync()
        before = next((i for i, r in recs.items() if r["isActive"]), None)
        target = ctx.resolve_id(activate) if activate is not None else None
        target = target if target in recs else None  # RFC 9661 §2.2: an unknown id is ignored
        if deactivate and before is not None and target is None:
            await acct.run(S.set_active, None)  # RFC 9661 §2.2: deactivation is processed first
        if target is not None:
            await acct.run(S.set_active, recs[target]["name"])
        after = target if target is not None else (None if deactivate else before)
        for sid, on in ((before, False), (after, True)):
            if sid is None or before == after:
                continue
            cid = next((c for c, o in created.items() if o["id"] == sid), None)
            if cid is not None:
                created[cid]["isActive"] = on
            else:
                updated[sid] = {**(updated.get(sid) or {}), "isActive": on}
    await acct.sync()
    return {"accountId": acct.account_id, "oldState": old_state, "newState": await acct.coll.state(),
            "created": created or None, "notCreated": not_created or None, "updated": updated or None,
            "notUpdated": not_updated or None, "destroyed": destroyed or None, "notDestroyed": not_destroyed or None}


def _check_name(name: Any, names: dict[str, str], recs: dict[str, dict[str, Any]], own: str | None = None) -> str:
    if not isinstance(name, str):
        raise SetError("invalidProperties", "name is a String", properties=["name"])
    try:
        S.check_name(name)
    except S.BadName as exc:
        raise SetError("invalidProperties", exc.message, properties=["name"]) from None
    if name in names and names[name] != own:
        raise SetError("alreadyExists", f"a script named {name!r} exists", existingId=names[name])
    return name


async def _create(ctx: RequestContext, acct: _Account, obj: Any, names: dict[str, str],
                  recs: dict[str, dict[str, Any]]) -> str:
    """Store a new script; returns its name. Raises SetError."""
    if not isinstance(obj, dict):
        raise SetError("invalidProperties", "a SieveScript is an object")
    extra = set(obj) - {"name", "blobId", "isActive"}
    if extra or obj.get("isActive") not in (None, False):
        raise SetError("invalidProperties", "only name and blobId may be set (isActive is server-set)",
                       properties=sorted(extra) or ["isActive"])
    name = obj.get("name")
    if name is None:  # RFC 9661 §2.1: the server picks a name
        name = next(n for n in (f"script-{k}" for k in range(1, len(names) + 2)) if n not in names)
    name = _check_name(name, names, recs)
    text = await acct.text_of(ctx, obj.get("blobId"))
    if len(names) >= acct.cfg.max_scripts:
        raise SetError("overQuota", f"at most {acct.cfg.max_scripts} scripts")
    try:
        await acct.run(S.create_script, name, text, max_size=acct.cfg.max_script_size,
                       max_scripts=acct.cfg.max_scripts)
    except S.ScriptError as exc:
        raise _set_error(exc, recs, name) from None
    return name


async def _update(ctx: RequestContext, acct: _Account, i: str, rec: dict[str, Any] | None, patch: Any,
                  names: dict[str, str], recs: dict[str, dict[str, Any]]) -> None:
    """Rename and/or replace the content of one script. Raises SetError."""
    if rec is None:
        raise SetError("notFound")
    if not isinstance(patch, dict):
        raise SetError("invalidPatch", "a patch is an object")
    extra = set(patch) - {"name", "blobId", "isActive", "id"}
    if extra or ("isActive" in patch and patch["isActive"] != rec["isActive"]) or (
            "id" in patch and patch["id"] != names.get(rec["name"])):
        raise SetError("invalidProperties", "only name and blobId may change (isActive through "
                       "onSuccessActivateScript)", properties=sorted(extra) or ["isActive"])
    name = rec["name"]
    text = await acct.text_of(ctx, patch["blobId"]) if "blobId" in patch else None
    if text is not None:  # refused before anything changes (a rename is not half of a failed update)
        try:
            await acct.io.run(S.validate, text, acct.cfg.max_script_size)
        except S.ScriptError as exc:
            raise _set_error(exc, recs, name) from None
    if "name" in patch and patch["name"] != name:
        new = _check_name(patch["name"], names, recs, own=i)
        root = acct.root

        def rename(data: dict[str, Any]) -> None:
            # under the collection's lock, so the id follows the name (no destroy + create)
            S.rename_script(root, name, new)
            if i in data["records"]:
                put(data, i, {**data["records"][i], "name": new})

        try:
            await acct.coll.change(rename)
        except S.ScriptError as exc:
            raise _set_error(exc, recs, new) from None
        name = new
    if text is not None:
        try:
            await acct.run(S.put_script, name, text, max_size=acct.cfg.max_script_size,
                           max_scripts=acct.cfg.max_scripts)
        except S.ScriptError as exc:
            raise _set_error(exc, recs, name) from None
