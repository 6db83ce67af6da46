"""The listener's connection limits for HTTP (aiohttp): connections, connections per IP, idle time.

The stream listeners enforce ``limits.max_connections``, ``max_connections_per_ip``
and ``idle_timeout`` in ``mailsrv.net.listener``; an HTTP listener hands its
sockets to aiohttp, so the JMAP service enforces the same values here
(DESIGN.md "What bad input gets"), per listener and worker as the others do:

* a connection over ``max_connections`` or ``max_connections_per_ip`` is not
  counted; its first request is answered ``503`` with a problem-details body
  (RFC 9457) and ``Retry-After``, and the connection is closed;
* a connection is closed when the client has sent nothing for
  ``idle_timeout`` seconds while the server waits for it: before or inside a
  request's header, inside a request body, or between requests (aiohttp's
  keep-alive timeout is set to the same value). A push stream (EventSource,
  WebSocket) or a response being written is not idle.

Invariant: counts change only in ``connection_made``/``connection_lost`` of
:class:`_Tracked`, on the event loop thread.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_runner import BaseSite, SockSite

from mailsrv import log
from mailsrv.config import LimitsConfig, ListenerConfig
from mailsrv.net.proxy_transport import ForwardingProtocol

logger = log.get("jmap")

#: Seconds a client that is told 503 is asked to wait (RFC 9110 §10.2.3 Retry-After).
RETRY_AFTER = 5
#: Most seconds a refused connection may take to send the request it is answered 503 on.
REFUSED_GRACE = 10.0

_DEFAULT = LimitsConfig()


@dataclass(frozen=True)
class ConnLimits:
    """One listener's connection limits (``[limits]`` overridden by the ``[[listener]]``)."""

    max_connections: int = _DEFAULT.max_connections
    max_connections_per_ip: int = _DEFAULT.max_connections_per_ip
    idle_timeout: float = _DEFAULT.idle_timeout

    @classmethod
    def of(cls, listener: ListenerConfig, limits: LimitsConfig) -> ConnLimits:
        return cls(listener.limit(limits, "max_connections"), listener.limit(limits, "max_connections_per_ip"),
                   listener.limit(limits, "idle_timeout"))


class _Conn:
    __slots__ = ("ip", "refused", "last_rx", "busy", "request", "sending", "timer")

    def __init__(self, ip: str, refused: str | None, now: float) -> None:
        self.ip = ip
        self.refused = refused  # why this connection is over a limit, or None
        self.last_rx = now
        self.busy = 0  # requests inside a handler
        self.request: web.BaseRequest | None = None  # the latest request
        self.sending = False  # a response may still be written after its handler returned
        self.timer: asyncio.TimerHandle | None = None


class ConnectionLimiter:
    """Counts the connections of one HTTP listener in one worker and enforces :class:`ConnLimits`.

    Use :meth:`protocol_factory` around aiohttp's ``runner.server`` (or :class:`LimitedSockSite`)
    and put :meth:`middleware` in the application's middlewares.
    """

    def __init__(self, limits: ConnLimits, listener: str = "jmap") -> None:
        self.limits = limits
        self.listener = listener
        self.conns: dict[Any, _Conn] = {}  # transport -> state (counted or refused)
        self.count = 0
        self.per_ip: Counter[str] = Counter()

    # --- transport side ---------------------------------------------------------------

    def protocol_factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _Tracked(self, inner())

    def _opened(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        refused = None
        if self.count >= self.limits.max_connections:
            refused = "too many connections"
        elif self.per_ip[ip] >= self.limits.max_connections_per_ip:
            refused = "too many connections from your address"
        loop = asyncio.get_running_loop()
        c = _Conn(ip, refused, loop.time())
        self.conns[transport] = c
        if refused is None:
            self.count += 1
            self.per_ip[ip] += 1
        else:
            logger.warning("conn.refused", listener=self.listener, peer=ip, reason=refused)
        self._arm(transport, c, self._timeout(c))

    def _timeout(self, c: _Conn) -> float:
        return self.limits.idle_timeout if c.refused is None else min(self.limits.idle_timeout, REFUSED_GRACE)

    def _closed(self, transport: asyncio.BaseTransport) -> None:
        c = self.conns.pop(transport, None)
        if c is None:
            return
        if c.timer is not None:
            c.timer.cancel()
        if c.refused is None:
            self.count -= 1
            self.per_ip[c.ip] -= 1
            if self.per_ip[c.ip] <= 0:
                del self.per_ip[c.ip]

    def _received(self, transport: asyncio.BaseTransport) -> None:
        c = self.conns.get(transport)
        if c is not None:
            c.last_rx = asyncio.get_running_loop().time()
            c.sending = False  # the client speaks again: the previous response is out

    def _arm(self, transport: asyncio.BaseTransport, c: _Conn, delay: float) -> None:
        c.timer = asyncio.get_running_loop().call_later(max(delay, 0.01), self._check, transport)

    def _check(self, transport: asyncio.BaseTransport) -> None:
        c = self.conns.get(transport)
        if c is None:
            return
        now = asyncio.get_running_loop().time()
        silent = now - c.last_rx
        # waiting for the client: inside a request body (read by the handler or drained after it),
        # or before/inside a request header; not while a handler or a response is still at work
        waiting_for_client = (c.request is not None and not c.request.content.is_eof()) or (
            c.busy == 0 and not c.sending
        )
        timeout = self._timeout(c)
        if waiting_for_client and silent >= timeout:
            logger.info("conn.idle", listener=self.listener, peer=c.ip, seconds=round(silent, 1))
            c.timer = None
            transport.close()
            return
        self._arm(transport, c, timeout - silent if waiting_for_client else timeout)

    # --- HTTP side ----------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        c = self.conns.get(request.transport)
        if c is None:
            return await handler(request)
        if c.refused is not None:
            return over_limit(c.refused)
        c.busy += 1
        c.request = request
        try:
            return await handler(request)
        finally:
            # c.request stays: a body the handler left unread is drained after it (aiohttp lingering)
            c.busy -= 1
            c.sending = True
            c.last_rx = asyncio.get_running_loop().time()


def over_limit(reason: str) -> web.Response:
    """503 with an RFC 9457 problem-details body; the connection closes after it."""
    body = {"type": "about:blank", "title": "Service Unavailable", "status": 503, "detail": reason}
    resp = web.Response(status=503, body=json.dumps(body).encode(), content_type="application/problem+json",
                        headers={"Retry-After": str(RETRY_AFTER)})
    resp.force_close()
    return resp


class _Tracked(ForwardingProtocol):
    """aiohttp's per-connection protocol, with the limiter told of opens, closes and received bytes."""

    __slots__ = ("_lim", "_transport")

    def __init__(self, limiter: ConnectionLimiter, inner: asyncio.Protocol) -> None:
        super().__init__(inner)
        self._lim = limiter
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._lim._opened(transport)
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._lim._closed(self._transport)
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._transport is not None:
            self._lim._received(self._transport)
        self._inner.data_received(data)


class LimitedSockSite(SockSite):
    """``web.SockSite`` whose connections go through a :class:`ConnectionLimiter`."""

    __slots__ = ("_limiter",)

    def __init__(self, runner: web.BaseRunner, sock: Any, limiter: ConnectionLimiter, **kw: Any) -> None:
        super().__init__(runner, sock, **kw)
        self._limiter = limiter

    async def start(self) -> None:
        await BaseSite.start(self)  # registers the site with the runner (cleanup stops it)
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._limiter.protocol_factory(server), sock=self._sock, ssl=self._ssl_context, backlog=self._backlog
        )
