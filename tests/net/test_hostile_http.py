"""A request aiohttp cannot parse (JMAP, the admin API, file links) is answered 400 and logged as one
structured debug line, not as a traceback on stderr for every such request from anyone."""

from __future__ import annotations

import asyncio
import io

import pytest
from aiohttp import web

from mailsrv import log


async def _raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await reader.read(65536)
    writer.close()
    await writer.wait_closed()
    return answer


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


@pytest.mark.parametrize("request_bytes", [
    b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(2000)) + b"\r\n",
    b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\nx",
], ids=["headers", "long-path", "content-length"])
async def test_a_malformed_request_is_one_log_line(request_bytes: bytes, captured_log: io.StringIO,
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    log.configure("debug", captured_log)  # as the master does at start: installs the filter
    app = web.Application()
    app.router.add_get("/", _ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        assert (await _raw(port, request_bytes)).startswith(b"HTTP/1.0 400 Bad Request")
        assert (await _raw(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")).endswith(b"ok")
    finally:
        await runner.cleanup()
    log.flush()
    assert "http.bad_request" in captured_log.getvalue()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Error handling request" not in err
