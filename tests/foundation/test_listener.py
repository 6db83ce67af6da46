"""The listener framework in one process: limits, long lines, idle timeout, STARTTLS, drain."""

from __future__ import annotations

import asyncio
import io
import socket
import ssl
import warnings
from pathlib import Path

import pytest
import trustme
from support.server import unverified_tls

from mailsrv import log
from mailsrv.config import LimitsConfig, ListenerConfig, TlsConfig
from mailsrv.net.connection import (
    Connection,
    ConnectionClosed,
    IdleTimeout,
    LineTooLong,
    ServerShutdown,
)
from mailsrv.net.listener import Listener
from mailsrv.net.tls import TlsSetupError, server_context


class Echo:
    """A tiny line protocol: '+' banner, echoes lines, STARTTLS, QUIT."""

    def __init__(self, ctx: ssl.SSLContext | None = None) -> None:
        self.ctx = ctx
        self.refused: list[str] = []

    async def refuse(self, conn: Connection, reason: str) -> None:
        self.refused.append(reason)
        await conn.send(f"-BUSY {reason}\r\n".encode())

    async def handle(self, conn: Connection) -> None:
        await conn.send(b"+HELLO\r\n")
        while True:
            try:
                line = await conn.readline()
            except LineTooLong:
                await conn.send(b"-TOOLONG\r\n")
                continue
            except IdleTimeout:
                await conn.send(b"-IDLE\r\n")
                return
            except ServerShutdown:
                await conn.send(b"-SHUTDOWN\r\n")
                return
            except ConnectionClosed:
                return
            cmd = line.strip()
            if cmd == b"QUIT":
                await conn.send(b"+BYE\r\n")
                return
            if cmd == b"STARTTLS" and self.ctx is not None:
                await conn.send(b"+GO\r\n")
                try:
                    await conn.starttls(self.ctx)
                except ConnectionClosed:
                    return
                continue
            if cmd == b"TLS?":
                await conn.send(b"+TLS " + str(conn.tls_active).encode() + b"\r\n")
                continue
            await conn.send(b"+" + cmd + b"\r\n")


def listen() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(100)
    s.setblocking(False)
    return s


async def start(service: Echo, tls: str = "none", ssl_ctx: ssl.SSLContext | None = None, **limits: object):
    sock = listen()
    lcfg = ListenerConfig(protocol="pop3", bind=("127.0.0.1:0",), tls=tls)  # type: ignore[arg-type]
    lim = LimitsConfig(**limits)  # type: ignore[arg-type]
    lst = Listener("test", lcfg, lim, [sock], service, ssl_ctx)
    await lst.start()
    return lst, sock.getsockname()[1]


async def client(port: int, ssl_ctx: ssl.SSLContext | None = None):
    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ssl_ctx,
                                         server_hostname="localhost" if ssl_ctx else None)
    return r, w


@pytest.fixture
def quiet_log():
    buf = io.StringIO()
    log.configure("debug", buf)
    yield buf
    log.configure("info", __import__("sys").stderr)


async def test_per_ip_limit_refuses_with_protocol_reply(quiet_log: io.StringIO) -> None:
    svc = Echo()
    lst, port = await start(svc, max_connections_per_ip=2)
    a = await client(port)
    b = await client(port)
    assert await a[0].readline() == b"+HELLO\r\n"
    assert await b[0].readline() == b"+HELLO\r\n"
    c = await client(port)
    assert await c[0].readline() == b"-BUSY too many connections from your address\r\n"
    assert await c[0].read() == b""  # closed by the server
    a[1].write(b"QUIT\r\n")
    assert await a[0].readline() == b"+BYE\r\n"
    assert await a[0].read() == b""
    # once one is gone (the server counts it out before it closes), the address may connect again
    assert lst.per_ip["127.0.0.1"] == 1
    d = await client(port)
    assert await d[0].readline() == b"+HELLO\r\n"
    for _, w in (a, b, c, d):
        w.close()
    await lst.drain(1)
    assert "conn.refused" in quiet_log.getvalue()


async def test_total_limit(quiet_log: io.StringIO) -> None:
    lst, port = await start(Echo(), max_connections=1)
    a = await client(port)
    assert await a[0].readline() == b"+HELLO\r\n"
    b = await client(port)
    assert await b[0].readline() == b"-BUSY too many connections\r\n"
    a[1].close()
    b[1].close()
    await lst.drain(1)


async def test_long_line_is_consumed_and_session_goes_on(quiet_log: io.StringIO) -> None:
    lst, port = await start(Echo(), max_line_length=100)
    r, w = await client(port)
    await r.readline()
    w.write(b"x" * 100_000 + b"\r\nPING\r\n" + b"y" * 101 + b"\r\n" + b"z" * 90 + b"\r\n")
    assert await r.readline() == b"-TOOLONG\r\n"
    assert await r.readline() == b"+PING\r\n"
    assert await r.readline() == b"-TOOLONG\r\n"
    assert await r.readline() == b"+" + b"z" * 90 + b"\r\n"
    w.close()
    await lst.drain(1)


async def test_long_line_split_across_many_writes(quiet_log: io.StringIO) -> None:
    lst, port = await start(Echo(), max_line_length=100)
    r, w = await client(port)
    await r.readline()
    for _ in range(50):
        w.write(b"a" * 1000)
        await w.drain()
    w.write(b"\r\nOK\r\n")
    assert await r.readline() == b"-TOOLONG\r\n"
    assert await r.readline() == b"+OK\r\n"
    w.close()
    await lst.drain(1)


async def test_idle_timeout(quiet_log: io.StringIO) -> None:
    lst, port = await start(Echo(), idle_timeout=0.2)
    r, w = await client(port)
    assert await r.readline() == b"+HELLO\r\n"
    assert await asyncio.wait_for(r.readline(), 5) == b"-IDLE\r\n"
    assert await r.read() == b""
    w.close()
    await lst.drain(1)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_pair(ca: trustme.CA, tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "both.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    server = server_context(TlsConfig(cert=tmp_path / "both.pem", key=tmp_path / "key.pem"))
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server, client_ctx


async def test_implicit_tls_and_minimum_version(quiet_log: io.StringIO, tls_pair) -> None:
    server, client_ctx = tls_pair
    lst, port = await start(Echo(), tls="implicit", ssl_ctx=server)
    r, w = await client(port, client_ctx)
    assert await r.readline() == b"+HELLO\r\n"
    w.write(b"TLS?\r\n")
    assert await r.readline() == b"+TLS True\r\n"
    w.close()
    old = unverified_tls()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # that is the point: an old client
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.minimum_version = ssl.TLSVersion.TLSv1
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await client(port, old)
    await lst.drain(1)


async def test_starttls_upgrade_and_injection_refused(quiet_log: io.StringIO, tls_pair) -> None:
    server, client_ctx = tls_pair
    svc = Echo(server)
    lst, port = await start(svc, tls="starttls", ssl_ctx=server)
    r, w = await client(port)
    assert await r.readline() == b"+HELLO\r\n"
    w.write(b"STARTTLS\r\n")
    assert await r.readline() == b"+GO\r\n"
    await w.start_tls(client_ctx, server_hostname="localhost")
    w.write(b"TLS?\r\n")
    assert await r.readline() == b"+TLS True\r\n"
    w.close()
    # RFC 3207 §4: plain text pipelined after STARTTLS must not be executed after the upgrade.
    r2, w2 = await client(port)
    await r2.readline()
    w2.write(b"STARTTLS\r\nINJECTED\r\n")
    assert await r2.readline() == b"+GO\r\n"
    assert await r2.read() == b""
    w2.close()
    await lst.drain(1)


def test_tls_errors_are_readable(tmp_path: Path) -> None:
    with pytest.raises(TlsSetupError, match="file not found"):
        server_context(TlsConfig(cert=tmp_path / "no.pem", key=tmp_path / "no.key"))
    (tmp_path / "bad.pem").write_text("junk")
    with pytest.raises(TlsSetupError, match="cannot load"):
        server_context(TlsConfig(cert=tmp_path / "bad.pem", key=tmp_path / "bad.pem"))


async def test_drain_waits_for_busy_then_says_goodbye(quiet_log: io.StringIO) -> None:
    lst, port = await start(Echo())
    r, w = await client(port)
    assert await r.readline() == b"+HELLO\r\n"
    drain = asyncio.create_task(lst.drain(0.3))
    w.write(b"STILL HERE\r\n")
    assert await r.readline() == b"+STILL HERE\r\n"
    assert await asyncio.wait_for(r.readline(), 5) == b"-SHUTDOWN\r\n"
    await asyncio.wait_for(drain, 10)
    assert not lst.connections
    with pytest.raises(OSError):
        await client(port)
    w.close()


async def test_crashing_session_does_not_stop_the_listener(quiet_log: io.StringIO) -> None:
    class Crash(Echo):
        async def handle(self, conn: Connection) -> None:
            await conn.send(b"+HELLO\r\n")
            raise RuntimeError("bug")

    lst, port = await start(Crash())
    for _ in range(3):
        r, w = await client(port)
        assert await r.readline() == b"+HELLO\r\n"
        assert await r.read() == b""
        w.close()
    assert quiet_log.getvalue().count("session.crash") == 3
    assert "RuntimeError: bug" in quiet_log.getvalue()
    await lst.drain(1)
