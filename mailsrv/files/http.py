"""The HTTP side of file links, served on the JMAP listener (docs/files.md).

Routes (added to the JMAP application by :meth:`FileLinkHttp.add_routes`):

    PUT  /files/{name}[?days=N]        upload the raw body as ``name`` (``curl -T FILE URL/files/``)
    POST /files?name=NAME[&days=N]     the same (``days``: a shorter life than ``[files] retention_days``)
    GET  /f/{token}[/{name}]           download, no login: Range, ETag, HEAD; rate and concurrency
                                       limited per client address and per link (``limits``: 429)

Uploads authenticate exactly as JMAP does (the caller's ``authenticate``/``refuse``: Basic only
over TLS or from trusted loopback, bearer tokens with the ``mail`` scope). Downloads are public to
whoever holds the link, and never render in the browser: a user's HTML must not run on our origin.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from aiohttp import web
from aiohttp.web_urldispatcher import _default_expect_handler

from mailsrv import log
from mailsrv.files.limits import BUSY_RETRY_AFTER, DownloadLimits, client_key
from mailsrv.files.links import TOKEN_RE, FileLink, FileLinkError
from mailsrv.files.names import content_disposition
from mailsrv.files.ranges import Unsatisfiable, if_range_holds, none_match, parse_range
from mailsrv.files.service import FileLinks

logger = log.get("files")

#: Octets of the request body handed to the upload at a time.
BODY_CHUNK = 256 * 1024

#: Headers of every download: a file, never a page (our mail origin must not serve a user's HTML or
#: script), not sniffed into something else, and the token not leaked through a Referer.
SAFE_HEADERS = {
    "Content-Type": "application/octet-stream",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "sandbox",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "Cache-Control": "private, max-age=0, must-revalidate",
    "Accept-Ranges": "bytes",
}


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"type": "about:blank", "status": status, "detail": detail}, status=status,
                             content_type="application/problem+json", headers=headers)


class FileLinkHttp:
    """Upload and download handlers over one :class:`FileLinks`.

    ``authenticate(request)`` returns a principal (``.id``, ``.username``) or None, ``refuse(request)``
    the 401/403 for None, ``base_url(request)`` the URL prefix when ``[files] public_url`` is empty;
    ``max_concurrent`` uploads of one user at a time (JMAP's maxConcurrentUpload), per process.
    """

    def __init__(self, links: FileLinks, authenticate: Callable[[web.Request], Awaitable[Any]],
                 refuse: Callable[[web.Request], web.StreamResponse],
                 base_url: Callable[[web.Request], str], max_concurrent: int = 4) -> None:
        self.links = links
        self.authenticate = authenticate
        self.refuse = refuse
        self.base_url = base_url
        self.max_concurrent = max_concurrent
        self._inflight: dict[str, int] = {}
        cfg = links.config
        self.limits = DownloadLimits(cfg.download_rate_per_ip, cfg.download_concurrent_per_ip,
                                     cfg.download_concurrent_per_link, cfg.download_bytes_per_second_per_ip)

    def install(self, app: web.Application) -> None:
        """Add the routes to ``app``; the expiry sweeps run while it does."""
        self.add_routes(app.router)

        async def start(app: web.Application) -> None:
            self.links.start_sweeper()

        app.on_startup.append(start)

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_route("PUT", "/files/{name}", self.put, expect_handler=self.expect)
        router.add_route("POST", "/files", self.post, expect_handler=self.expect)
        router.add_route("POST", "/files/", self.post, expect_handler=self.expect)
        for path in ("/f/{token}/{name}", "/f/{token}"):
            router.add_route("GET", path, self.download)
            router.add_route("HEAD", path, self.download)

    def link_url(self, request: web.Request, link: FileLink, token: str) -> str:
        base = self.links.config.public_url.rstrip("/") or self.base_url(request)
        return f"{base}/f/{token}/{quote(link.name, safe='')}"

    # --- upload --------------------------------------------------------------------------

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue`` (curl -T sends it): a body too large is refused before it is sent."""
        declared = request.content_length
        if declared is not None and declared > self.links.config.max_size:
            return problem(413, f"file larger than {self.links.config.max_size} bytes")
        await _default_expect_handler(request)
        return None

    async def put(self, request: web.Request) -> web.StreamResponse:
        return await self._upload(request, request.match_info["name"])

    async def post(self, request: web.Request) -> web.StreamResponse:
        name = request.query.get("name")
        if not name:
            return problem(400, "name the file: POST /files?name=NAME (or PUT /files/NAME)")
        return await self._upload(request, name)

    async def _upload(self, request: web.Request, name: str) -> web.StreamResponse:
        p = await self.authenticate(request)
        if p is None:
            return self.refuse(request)
        media_type = request.headers.get("Content-Type", "application/octet-stream").split(";")[0].strip().lower()
        days = request.query.get("days")
        longest = self.links.config.retention_days
        if days is not None and not (len(days) <= 6 and days.isascii() and days.isdigit() and 1 <= int(days) <= longest):
            return problem(400, f"days must be a number from 1 to {longest} ([files] retention_days)")
        owner = str(p.id)
        n = self._inflight.get(owner, 0)
        if n >= self.max_concurrent:
            return problem(429, f"at most {self.max_concurrent} uploads at a time")
        self._inflight[owner] = n + 1
        try:
            link, token = await self.links.upload(owner, p.username, name, media_type or "application/octet-stream",
                                                  request.content.iter_chunked(BODY_CHUNK), request.content_length,
                                                  None if days is None else int(days))
        except FileLinkError as exc:
            logger.info("files.upload_refused", user=p.username, status=exc.status, reason=str(exc))
            return problem(exc.status, str(exc))
        finally:
            self._inflight[owner] -= 1
            if not self._inflight[owner]:
                del self._inflight[owner]
        url = self.link_url(request, link, token)
        logger.info("files.uploaded", user=p.username, id=link.id, size=link.size)
        body = {"id": link.id, "url": url, "name": link.name, "size": link.size, "sha256": link.sha256,
                "type": link.type, "created": link.to_json()["created"], "expires": link.to_json()["expires"]}
        return web.json_response(body, status=201, headers={"Location": url, "Cache-Control": "no-store"})

    # --- download ------------------------------------------------------------------------

    async def download(self, request: web.Request) -> web.StreamResponse:
        client = client_key(request.remote)
        wait = self.limits.request(client)  # every request counts, a bad token too (before any lookup)
        if wait:
            logger.debug("files.download_limited", client=client, reason="rate")  # a flood: not one line each
            return problem(429, f"too many requests: at most {self.limits.rate} a minute from one address",
                           {"Retry-After": str(wait)})
        token = request.match_info["token"]
        link = await self.links.find(token) if TOKEN_RE.match(token) else None
        if link is None or link.state == "pending":  # a pending link's message is not accepted (yet)
            return problem(404, "no such link")
        if not link.live():
            return problem(410, "this link has expired or was deleted")
        size = link.size
        etag = f'"{link.sha256[:32]}"'
        headers = {**SAFE_HEADERS, "ETag": etag, "Content-Disposition": content_disposition(link.name)}
        if none_match(request.headers.get("If-None-Match"), etag):
            return web.Response(status=304, headers={"ETag": etag, "Cache-Control": SAFE_HEADERS["Cache-Control"]})
        start, stop, status = 0, size, 200
        rng = request.headers.get("Range")
        if rng is not None and if_range_holds(request.headers.get("If-Range"), etag):
            try:
                r = parse_range(rng, size)
            except Unsatisfiable:
                return problem(416, "range not satisfiable", {"Content-Range": f"bytes */{size}"})
            if r is not None:
                start, stop, status = r.start, r.stop, 206
                headers["Content-Range"] = r.content_range(size)
        fh = await self.links.open(link)
        if fh is None:
            return problem(410, "this link has expired or was deleted")
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = stop - start
        if request.method == "HEAD":
            fh.close()
            await resp.prepare(request)
            return resp
        busy = self.limits.begin(client, link.id)
        if busy is not None:
            fh.close()
            logger.info("files.download_limited", client=client, id=link.id, reason="concurrent")
            return problem(429, busy, {"Retry-After": str(BUSY_RETRY_AFTER)})
        try:
            if start == 0:  # a download begun; a resumed one (Range from further on) is not counted again
                await self.links.count_download(link.id)
            await resp.prepare(request)
            blocks = self.links.read(fh, start, stop)
            try:
                delay = 0.0
                async for block in blocks:
                    if delay:  # [files] download_bytes_per_second_per_ip: paced, not refused
                        await asyncio.sleep(delay)
                    await resp.write(block)
                    delay = self.limits.pace(client, len(block))
            finally:
                await blocks.aclose()  # the file is closed now, not when the generator is collected
            await resp.write_eof()
        finally:
            self.limits.end(client, link.id)
        logger.info("files.downloaded", id=link.id, status=status, bytes=stop - start)
        return resp
