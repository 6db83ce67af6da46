"""Push: EventSource (RFC 8620 §7.3) and WebSocket (RFC 8887), driven by the backends' watches.

The backend's ``watch()`` wakes on a change made by any process (the store
uses inotify on the account's notify file), so a StateChange leaves within
the store's wake latency; no polling. A :class:`Follower` watches every account
the caller may see (their own and those shared with them) and re-reads that
list at each wake-up and every ``ACCOUNTS_REFRESH`` seconds, so a new or
revoked grant shows in a long-lived stream too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from mailsrv import log
from mailsrv.config import JmapConfig
from mailsrv.jmap import core, jsontext
from mailsrv.jmap.backend import TYPES, MailBackend, Watch
from mailsrv.jmap.errors import RequestError, not_request

if TYPE_CHECKING:
    from mailsrv.jmap.server import JmapApp, Principal

logger = log.get("jmap")


async def current_states(be: MailBackend, types: frozenset[str] | None) -> dict[str, str]:
    states = {t: await be.state(t) for t in TYPES if types is None or t in types}
    extra = getattr(be, "extra_states", None)  # EmailSubmission (submission.SubmissionTracking)
    if extra is not None:
        states.update({t: v for t, v in (await extra()).items() if types is None or t in types})
    return states


async def all_states(backends: list[MailBackend], types: frozenset[str] | None) -> dict[str, dict[str, str]]:
    """accountId -> type -> state, for every account the client may see (its own and shared ones)."""
    return {be.account_id: await current_states(be, types) for be in backends}


def differences(last: dict[str, dict[str, str]], now: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """The ``changed`` member of a StateChange: per account, the types whose state moved."""
    out = {}
    for aid, states in now.items():
        old = last.get(aid, {})
        moved = {t: v for t, v in states.items() if old.get(t) != v}
        if moved:
            out[aid] = moved
    return out


def state_change(changed: dict[str, dict[str, str]]) -> dict[str, Any]:
    return {"@type": "StateChange", "changed": changed}


class MultiWatch:
    """One :class:`Watch` over several accounts: wakes when any of them changes."""

    def __init__(self, watches: list[Watch]) -> None:
        self.watches = watches
        self.event = asyncio.Event()
        self.tasks = [asyncio.create_task(self._follow(w)) for w in watches] if len(watches) > 1 else []

    async def _follow(self, w: Watch) -> None:
        while True:
            if await w.wait(None):
                self.event.set()

    def poke(self) -> None:
        """Make the next :meth:`wait` return True (a watcher learnt of a change another way)."""
        self.event.set()

    async def wait(self, seconds: float | None = None) -> bool:
        if not self.tasks:  # one account: its own watch, no helper task
            if self.event.is_set():
                self.event.clear()
                return True
            return await self.watches[0].wait(seconds)
        try:
            async with asyncio.timeout(seconds):
                await self.event.wait()
        except TimeoutError:
            return False
        self.event.clear()  # states are read after this: a later change sets it again
        return True

    def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        for w in self.watches:
            w.close()


def watch_all(backends: list[MailBackend]) -> MultiWatch:
    """One watch over ``backends``; the caller must close it (its accounts' inotify watches go with the
    last watch of each account in the process). A watch that fails (OSError: no inotify watch left)
    closes those made before it."""
    watches: list[Watch] = []
    try:
        for be in backends:
            watches.append(be.watch())
    except BaseException:
        for w in watches:
            w.close()
        raise
    return MultiWatch(watches)


#: seconds between two reads of the accounts a stream follows when nothing changes (grants come and go)
ACCOUNTS_REFRESH = 60.0

#: returns every account the caller may see now, their own first
AccountsSource = Callable[[], Awaitable[list[MailBackend]]]


class Follower:
    """The StateChanges of every account a caller may see, for one push channel."""

    def __init__(self, source: AccountsSource, types: frozenset[str] | None) -> None:
        self.source = source
        self.types = types
        self.backends: list[MailBackend] = []
        self.watch: MultiWatch | None = None
        self.last: dict[str, dict[str, str]] = {}

    async def start(self) -> dict[str, dict[str, str]]:
        """Watch first, then read the states (no change can fall between them); returns them."""
        self.backends = await self.source()
        self.watch = watch_all(self.backends)
        self.last = await all_states(self.backends, self.types)
        return self.last

    async def changes(self, idle: float | None = None) -> dict[str, dict[str, str]] | None:
        """The ``changed`` map of the next StateChange ({} when a wake-up moved no state of ours), or
        None when ``idle`` seconds passed without a wake-up (None: wait for one)."""
        assert self.watch is not None, "start() first"
        loop = asyncio.get_running_loop()
        deadline = None if idle is None else loop.time() + idle
        while True:
            left = ACCOUNTS_REFRESH if deadline is None else min(ACCOUNTS_REFRESH, max(0.0, deadline - loop.time()))
            woke = await self.watch.wait(left)
            fresh = await self._fresh()
            if [b.account_id for b in fresh] != [b.account_id for b in self.backends]:
                # the new watch first: an account in both lists keeps its inotify watches, one that left
                # loses them with the old watch (when no other stream of this worker follows it)
                old, self.watch = self.watch, watch_all(fresh)
                old.close()
                self.backends = fresh
                woke = True
            if woke:
                break
            if deadline is not None and loop.time() >= deadline:
                return None
        now = await all_states(self.backends, self.types)
        changed = differences(self.last, now)
        self.last = now
        return changed

    async def _fresh(self) -> list[MailBackend]:
        try:
            return await self.source()
        except Exception as exc:  # the directory is away: keep following what we had
            logger.warning("jmap.push.accounts_failed", error=str(exc)[:200])
            return self.backends

    def close(self) -> None:
        """End following (idempotent): each account whose last stream this was is unwatched."""
        if self.watch is not None:
            self.watch.close()
            self.watch = None


def _parse_types(value: str) -> frozenset[str] | None:
    if value in ("", "*"):
        return None
    return frozenset(t.strip() for t in value.split(",") if t.strip())


async def eventsource(request: web.Request, accounts: AccountsSource, cfg: JmapConfig) -> web.StreamResponse:
    # RFC 8620 §7.3: types, closeafter (state|no), ping (seconds, 0 = none)
    types = _parse_types(request.query.get("types", "*"))
    closeafter = request.query.get("closeafter", "no")
    ping_raw = request.query.get("ping", "0")
    if closeafter not in ("state", "no") or not (ping_raw.isascii() and ping_raw.isdigit()):
        return web.json_response(
            {"type": "about:blank", "status": 400, "detail": "bad closeafter or ping"},
            status=400, content_type="application/problem+json",
        )
    ping = cfg.push_ping_max if len(ping_raw) > 9 else min(int(ping_raw), cfg.push_ping_max)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    follower = Follower(accounts, types)
    try:
        last = await follower.start()
        if closeafter == "no":
            # the current states at once, so a client that connected after a change misses nothing
            await _send(resp, "state", state_change(last))
        while True:
            changed = await follower.changes(ping if ping > 0 else None)
            if changed is None:
                await _send(resp, "ping", {"interval": ping})
            elif changed:
                await _send(resp, "state", state_change(changed))
                if closeafter == "state":
                    break
    except ConnectionResetError:
        pass
    finally:
        follower.close()
    return resp


async def _send(resp: web.StreamResponse, event: str, data: dict[str, Any]) -> None:
    await resp.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())


async def websocket_session(ws: web.WebSocketResponse, app: JmapApp, p: Principal) -> None:
    """RFC 8887: JMAP Request/Response over one WebSocket, plus push when enabled."""
    ctx, _ = await app._context(p)
    push_task: asyncio.Task[None] | None = None
    push_follower: Follower | None = None
    send_lock = asyncio.Lock()

    async def send(obj: dict[str, Any]) -> None:
        async with send_lock:
            await ws.send_str(jsontext.dumps(obj))  # as the HTTP API's responses

    async def pusher(follower: Follower) -> None:
        try:
            while True:
                changed = await follower.changes()
                if changed:
                    await send(state_change(changed))
        finally:
            follower.close()

    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                if msg.type == WSMsgType.BINARY:
                    await send({"@type": "RequestError", **not_request("binary frames are not JMAP").problem()})
                continue
            request_id = None
            try:
                try:
                    obj = json.loads(msg.data)
                except (ValueError, RecursionError):
                    from mailsrv.jmap.errors import not_json

                    raise not_json("not JSON") from None
                if not isinstance(obj, dict):
                    raise not_request("a message must be a JSON object")
                kind = obj.get("@type")
                request_id = obj.get("id")
                if kind == "Request":
                    body = {k: v for k, v in obj.items() if k not in ("@type", "id")}
                    # the accounts as the directory has them now: a revoked grant ends access at once
                    ctx, _ = await app._context(p)
                    session_state = ""
                    result = await core.process(body, ctx, session_state)
                    out: dict[str, Any] = {"@type": "Response", **result}
                    if request_id is not None:
                        out["requestId"] = request_id
                    await send(out)
                elif kind == "WebSocketPushEnable":
                    data_types = obj.get("dataTypes")
                    types = None if data_types is None else frozenset(data_types)
                    if push_task is not None:
                        push_task.cancel()
                    if push_follower is not None:
                        push_follower.close()
                    follower = push_follower = Follower(app._accounts_source(p), types)
                    last = await follower.start()
                    push_state = obj.get("pushState")
                    if push_state is not None and push_state != _push_state(last):
                        await send({"@type": "StateChange", "changed": last, "pushState": _push_state(last)})
                    push_task = asyncio.create_task(pusher(follower))
                elif kind == "WebSocketPushDisable":
                    if push_task is not None:
                        push_task.cancel()
                        push_task = None
                    if push_follower is not None:
                        push_follower.close()
                        push_follower = None
                else:
                    raise not_request(f"unknown @type {kind!r}")
            except RequestError as err:
                reply: dict[str, Any] = {"@type": "RequestError", **err.problem()}
                if request_id is not None:
                    reply["requestId"] = request_id
                await send(reply)
    finally:
        if push_task is not None:
            push_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await push_task
        if push_follower is not None:
            push_follower.close()


def _push_state(states: dict[str, dict[str, str]]) -> str:
    return ".".join(f"{a}/{k}:{v}" for a, per in sorted(states.items()) for k, v in sorted(per.items()))
