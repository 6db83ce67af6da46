"""JMAP HTTP service (placeholder until the JMAP issue lands: answers 503 problem details)."""

from __future__ import annotations

import socket
import ssl

from aiohttp import web

from mailsrv import log
from mailsrv.net.service import ServiceContext

logger = log.get("jmap")


async def _unavailable(request: web.Request) -> web.Response:
    # RFC 7807 problem details, as RFC 8620 §3.6.1 uses for request-level errors.
    return web.json_response(
        {"type": "about:blank", "status": 503, "detail": "JMAP is not available on this server yet"},
        status=503,
        content_type="application/problem+json",
    )


class JmapService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.runner: web.AppRunner | None = None

    async def start(self, socks: list[socket.socket], ssl_context: ssl.SSLContext | None) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", _unavailable)
        self.runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=self.ctx.config.server.shutdown_grace
        )
        await self.runner.setup()
        for sock in socks:
            site = web.SockSite(self.runner, sock, ssl_context=ssl_context)
            await site.start()

    async def stop(self, grace: float) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def make_service(ctx: ServiceContext) -> JmapService:
    return JmapService(ctx)
