"""PushSubscription (RFC 8620 §7.2): verification, then StateChange POSTs to the client's URL.

One watcher task per account with verified subscriptions. Workers share the
subscriptions (objects.py) and elect one pusher per account with a
non-blocking ``fcntl`` lock on ``<upload_dir>/<accountId>/.push.lock``, so
each change is POSTed once. A worker starts watchers when a subscription is
created or verified through it. The watcher also follows the accounts shared
with the subscription's owner (push.Follower), so StateChanges name them too.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import secrets
import ssl
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from mailsrv import log
from mailsrv.jmap import args as A
from mailsrv.jmap.backend import MailBackend
from mailsrv.jmap.core import CORE, RequestContext, registry
from mailsrv.jmap.errors import SetError, invalid_arguments
from mailsrv.jmap.identity import collection
from mailsrv.jmap.objects import Collection, drop, new_id, put
from mailsrv.jmap.push import AccountsSource, Follower

logger = log.get("jmap")

PROPS = ["id", "deviceClientId", "verificationCode", "expires", "types"]
#: RFC 8620 §7.2: the server may limit how long a subscription lives
MAX_LIFETIME = 7 * 86400
POST_TIMEOUT = 10.0


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_utc(v: Any) -> float:
    if not isinstance(v, str):
        raise SetError("invalidProperties", properties=["expires"])
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise SetError("invalidProperties", properties=["expires"]) from None
    if dt.tzinfo is None:
        raise SetError("invalidProperties", properties=["expires"])
    return dt.timestamp()


class PushManager:
    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.posts: set[asyncio.Task[bool]] = set()

    def spawn_post(self, url: str, body: dict[str, Any]) -> None:
        task = asyncio.create_task(self.post(url, body))
        self.posts.add(task)
        task.add_done_callback(self.posts.discard)

    async def post(self, url: str, body: dict[str, Any]) -> bool:
        try:
            timeout = aiohttp.ClientTimeout(total=POST_TIMEOUT)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                async with http.post(url, data=json.dumps(body), ssl=self.ssl_context or True,
                                     headers={"Content-Type": "application/json", "TTL": "86400"}) as r:
                    return 200 <= r.status < 300
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            logger.warning("jmap.push.failed", url=urlsplit(url).netloc, error=str(exc))
            return False

    async def ensure(self, be: MailBackend, coll: Collection, accounts: AccountsSource | None = None) -> None:
        """Start the account's pusher (if not running); returns once it watches. ``accounts``: the
        accounts to follow (own and shared); without it, ``be`` alone."""
        task = self.tasks.get(be.account_id)
        if task is None or task.done():
            ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.tasks[be.account_id] = asyncio.create_task(self._run(be, coll, ready, accounts))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await asyncio.shield(ready)

    async def close(self) -> None:
        for t in [*self.tasks.values(), *self.posts]:
            t.cancel()
        for t in [*self.tasks.values(), *self.posts]:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def _run(self, be: MailBackend, coll: Collection, ready: asyncio.Future[None],
                   accounts: AccountsSource | None = None) -> None:
        lock_path = coll.dir / ".push.lock"

        def take() -> Any:
            coll.dir.mkdir(parents=True, exist_ok=True)
            f = open(lock_path, "a+b")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                return None
            return f

        lock = None
        try:
            lock = await asyncio.to_thread(take)
        finally:
            if lock is None and not ready.done():
                ready.set_result(None)  # another worker pushes for this account
        if lock is None:
            return
        async def own() -> list[MailBackend]:
            return [be]

        follower = Follower(accounts or own, None)
        try:
            await follower.start()
            ready.set_result(None)
            while True:
                changed = await follower.changes()
                subs = await coll.records()
                if not subs:
                    return
                now_ts = time.time()
                live = {i: s for i, s in subs.items() if s.get("verified") and s["expiresAt"] > now_ts}
                for s in live.values():
                    types = s.get("types")
                    mine = {aid: picked for aid, per in (changed or {}).items()
                            if (picked := {t: v for t, v in per.items() if types is None or t in types})}
                    if mine:
                        await self.post(s["url"], {"@type": "StateChange", "changed": mine})
        finally:
            if not ready.done():
                ready.set_result(None)
            follower.close()
            lock.close()


def manager(ctx: RequestContext) -> PushManager:
    m: PushManager = ctx.extra["push"]
    return m


@registry.add("PushSubscription/get", CORE)
async def push_get(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    # RFC 8620 §7.2.1: no accountId; url and keys are never returned
    A.check(args, ("ids", "properties"))
    be = next(iter(ctx.accounts.values()))
    coll = collection(ctx, be.account_id, "PushSubscription")
    ids = A.ids(ctx, args, "ids")
    props = A.properties(args, "properties", PROPS, PROPS)
    recs = await coll.records()
    found, nf = [], []
    for i in (ids if ids is not None else list(recs)):
        r = recs.get(i)
        if r is None:
            nf.append(i)
            continue
        full = {"id": i, "deviceClientId": r["deviceClientId"], "verificationCode": r.get("verificationCode"),
                "expires": _iso(r["expiresAt"]), "types": r.get("types")}
        found.append({p: full[p] for p in ["id", *[p for p in props if p != "id"]]})
    return {"list": found, "notFound": nf}


@registry.add("PushSubscription/set", CORE)
async def push_set(ctx: RequestContext, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    A.check(args, ("create", "update", "destroy"))
    be = next(iter(ctx.accounts.values()))
    coll = collection(ctx, be.account_id, "PushSubscription")
    create = args.get("create") or {}
    update = args.get("update") or {}
    destroy = A.ids(ctx, args, "destroy") or []
    if not isinstance(create, dict) or not isinstance(update, dict):
        raise invalid_arguments("create and update must be maps")
    A.set_limit(ctx, len(create) + len(update) + len(destroy))
    pm = manager(ctx)
    created: dict[str, Any] = {}
    not_created: dict[str, Any] = {}
    for cid, obj in create.items():
        try:
            if not isinstance(obj, dict):
                raise SetError("invalidProperties")
            bad = [k for k in obj if k not in ("deviceClientId", "url", "keys", "expires", "types")]
            if bad or "verificationCode" in obj:
                raise SetError("invalidProperties", properties=bad or ["verificationCode"])
            url = obj.get("url")
            # RFC 8620 §7.2: the URL MUST begin with "https://"
            if not isinstance(url, str) or not url.startswith("https://") or not urlsplit(url).hostname:
                raise SetError("invalidProperties", "url must be https", properties=["url"])
            if not isinstance(obj.get("deviceClientId"), str):
                raise SetError("invalidProperties", properties=["deviceClientId"])
            types = obj.get("types")
            if types is not None and (not isinstance(types, list) or not all(isinstance(t, str) for t in types)):
                raise SetError("invalidProperties", properties=["types"])
            limit_ts = time.time() + MAX_LIFETIME
            expires = min(_parse_utc(obj["expires"]), limit_ts) if obj.get("expires") else limit_ts
            code = secrets.token_urlsafe(16)
            rec = {"deviceClientId": obj["deviceClientId"], "url": url, "keys": obj.get("keys"),
                   "expiresAt": expires, "types": types, "verificationCode": None, "expected": code,
                   "verified": False}

            def add(d: dict[str, Any], rec: dict[str, Any] = rec) -> str:
                sid = new_id(d, "P")
                put(d, sid, rec)
                return sid

            sid = await coll.change(add)
            ctx.created_ids[cid] = sid
            out: dict[str, Any] = {"id": sid, "keys": None}
            if not obj.get("expires") or expires != _parse_utc(obj["expires"]):
                out["expires"] = _iso(expires)
            created[cid] = out
            # RFC 8620 §7.2.2: push a PushVerification to the URL right away
            pm.spawn_post(url, {"@type": "PushVerification", "pushSubscriptionId": sid, "verificationCode": code})
        except SetError as exc:
            not_created[cid] = exc.to_json()
    updated: dict[str, Any] = {}
    not_updated: dict[str, Any] = {}
    for sid, patch in update.items():
        try:
            if not isinstance(patch, dict) or set(patch) - {"verificationCode", "expires", "types"}:
                raise SetError("invalidProperties", "only verificationCode, expires and types change")
            cur = (await coll.records()).get(sid)
            if cur is None:
                raise SetError("notFound")
            new = dict(cur)
            if "verificationCode" in patch:
                if patch["verificationCode"] != cur["expected"]:
                    raise SetError("invalidProperties", "wrong verification code", properties=["verificationCode"])
                new["verificationCode"] = patch["verificationCode"]
                new["verified"] = True
            if "expires" in patch:
                new["expiresAt"] = min(_parse_utc(patch["expires"]), time.time() + MAX_LIFETIME)
            if "types" in patch:
                new["types"] = patch["types"]

            def upd(d: dict[str, Any], sid: str = sid, new: dict[str, Any] = new) -> None:
                put(d, sid, new)

            await coll.change(upd)
            updated[sid] = None
            if new["verified"]:
                await pm.ensure(be, coll, ctx.extra.get("accounts"))
        except SetError as exc:
            not_updated[sid] = exc.to_json()
    destroyed: list[str] = []
    not_destroyed: dict[str, Any] = {}
    for sid in destroy:
        def rm(d: dict[str, Any], sid: str = sid) -> bool:
            return drop(d, sid)

        if await coll.change(rm):
            destroyed.append(sid)
        else:
            not_destroyed[sid] = {"type": "notFound"}
    return {"created": created or None, "updated": updated or None, "destroyed": destroyed or None,
            "notCreated": not_created or None, "notUpdated": not_updated or None,
            "notDestroyed": not_destroyed or None}


__all__ = ["PushManager"]
