"""Connection.discard_pipelined + starttls over a real loopback socket with real TLS (trustme)."""

from __future__ import annotations

import asyncio
import io
import ssl
from collections.abc import AsyncIterator

import pytest

from mailsrv.net.connection import Connection, ConnectionClosed


class Upgrader:
    """A tiny STARTTLS server: answers ``+GO`` to the first line, upgrades, then echoes lines."""

    def __init__(self, server_ctx: ssl.SSLContext, *, discard: bool) -> None:
        self.server_ctx = server_ctx
        self.discard = discard
        self.discarded: int | None = None
        self.seen: list[bytes] = []
        self.outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(reader, writer, listener="t", max_line_length=1000, idle_timeout=10)
        try:
            self.seen.append(await conn.readline())
            await conn.send(b"+GO\r\n")
            if self.discard:
                self.discarded = conn.discard_pipelined()
            await conn.starttls(self.server_ctx)
            while line := await conn.readline():
                self.seen.append(line)
                await conn.send(b"+TLS " + line)
        except ConnectionClosed as exc:
            self.outcome.set_result(f"closed {exc}")
        finally:
            if not self.outcome.done():
                self.outcome.set_result("ended")
            await conn.close()


@pytest.fixture
async def serve(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> AsyncIterator[object]:
    servers: list[asyncio.Server] = []

    async def start(upgrader: Upgrader) -> int:
        srv = await asyncio.start_server(upgrader.handle, "127.0.0.1", 0)
        servers.append(srv)
        return int(srv.sockets[0].getsockname()[1])

    yield start
    for srv in servers:
        srv.close()
        await srv.wait_closed()


async def test_pipelined_plain_text_is_discarded_logged_and_tls_goes_on(
        serve, contexts: tuple[ssl.SSLContext, ssl.SSLContext], captured_log: io.StringIO) -> None:
    server_ctx, client_ctx = contexts
    up = Upgrader(server_ctx, discard=True)
    r, w = await asyncio.open_connection("127.0.0.1", await serve(up))
    w.write(b"STARTTLS\r\nINJECTED\r\n")  # one segment: both in the server's buffer at once
    assert await r.readline() == b"+GO\r\n"
    await w.start_tls(client_ctx, server_hostname="localhost")
    w.write(b"HELLO\r\n")
    assert await asyncio.wait_for(r.readline(), 10) == b"+TLS HELLO\r\n"  # not "+TLS INJECTED"
    w.close()
    await asyncio.wait_for(up.outcome, 10)
    assert up.seen == [b"STARTTLS\r\n", b"HELLO\r\n"]
    assert up.discarded == len(b"INJECTED\r\n")
    line = next(ln for ln in captured_log.getvalue().splitlines() if "starttls.pipelined_discarded" in ln)
    assert "warning net" in line and "octets=10" in line


async def test_nothing_pipelined_is_nothing_discarded(
        serve, contexts: tuple[ssl.SSLContext, ssl.SSLContext], captured_log: io.StringIO) -> None:
    server_ctx, client_ctx = contexts
    up = Upgrader(server_ctx, discard=True)
    r, w = await asyncio.open_connection("127.0.0.1", await serve(up))
    w.write(b"STARTTLS\r\n")
    assert await r.readline() == b"+GO\r\n"
    await w.start_tls(client_ctx, server_hostname="localhost")
    w.write(b"HELLO\r\n")
    assert await asyncio.wait_for(r.readline(), 10) == b"+TLS HELLO\r\n"
    w.close()
    await asyncio.wait_for(up.outcome, 10)
    assert up.discarded == 0
    assert "pipelined_discarded" not in captured_log.getvalue()


async def test_starttls_without_discard_still_closes(
        serve, contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """A caller that did not discard gets the old safety net: a close, never the text as TLS commands."""
    up = Upgrader(contexts[0], discard=False)
    r, w = await asyncio.open_connection("127.0.0.1", await serve(up))
    w.write(b"STARTTLS\r\nINJECTED\r\n")
    assert await r.readline() == b"+GO\r\n"
    assert await asyncio.wait_for(r.read(), 10) == b""
    w.close()
    assert await asyncio.wait_for(up.outcome, 10) == "closed plain text after STARTTLS"
    assert up.seen == [b"STARTTLS\r\n"]
