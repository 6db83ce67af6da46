"""The connection loop on a real loopback socket (in-process listener, fake auth and maildrops)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trustme
from pop3fakes import ALICE, FakeAuth, MemoryBox, MemoryDrops

from mailsrv.config import Config, LimitsConfig, ListenerConfig
from mailsrv.net.listener import Listener
from mailsrv.net.service import ServiceContext
from mailsrv.pop3.server import Pop3Service


class Exploding(FakeAuth):
    async def login(self, username: str, password: str, **kw: Any) -> Any:
        raise RuntimeError("directory on fire")


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


async def serve(ca: trustme.CA, auth: FakeAuth, drops: MemoryDrops, *, limits: LimitsConfig | None = None,
                tls: str = "starttls") -> tuple[Listener, int]:
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.setblocking(False)
    port = sock.getsockname()[1]
    lcfg = ListenerConfig(protocol="pop3", bind=(f"127.0.0.1:{port}",), tls=tls)  # type: ignore[arg-type]
    cfg = Config(limits=limits or LimitsConfig(), listener={"pop3": lcfg})
    ctx = ServiceContext(config=cfg, name="pop3", listener=lcfg, ssl_context=server_ctx)
    service = Pop3Service(ctx, auth=auth, maildrops=drops)
    lst = Listener("pop3", lcfg, cfg.limits, [sock], service, server_ctx)
    await lst.start()
    return lst, port


@pytest.fixture
async def plain(ca: trustme.CA) -> AsyncIterator[tuple[int, MemoryDrops]]:
    drops = MemoryDrops()
    drops.boxes[ALICE.id] = MemoryBox()
    drops.boxes[ALICE.id].add(b"Subject: x\r\n\r\nhello\r\n")
    auth = FakeAuth({"alice@example.test": ("secret", ALICE)}, loopback_plain=True)
    lst, port = await serve(ca, auth, drops,
                            limits=LimitsConfig(max_line_length=1000, max_errors=5))
    yield port, drops
    await lst.drain(1)


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    assert (await r.readline()).startswith(b"+OK ")
    return r, w


async def test_stls_with_pipelined_plaintext_is_discarded(plain: tuple[int, MemoryDrops], ca: trustme.CA) -> None:
    """RFC 2595 §3.1 (CVE-2011-0411 class): commands pipelined after STLS are injected text: dropped, never
    run, and the handshake goes on (a close would make an opportunistic client retry in plain text)."""
    r, w = await connect(plain[0])
    w.write(b"STLS\r\nUSER alice@example.test\r\nPASS secret\r\nDELE 1\r\n")
    assert await r.readline() == b"+OK Begin TLS negotiation\r\n"
    await w.start_tls(tls_client(ca), server_hostname="127.0.0.1")
    w.write(b"STAT\r\n")
    assert (await r.readline()).startswith(b"-ERR")  # still AUTHORIZATION: the injected login did not run
    w.write(b"PASS secret\r\n")
    assert (await r.readline()).startswith(b"-ERR")  # and no USER is pending from the plain text
    w.write(b"USER alice@example.test\r\nPASS secret\r\nSTAT\r\nQUIT\r\n")
    data = await r.read()
    assert b"+OK Logged in, 1 messages" in data and b"+OK 1 " in data  # nothing was deleted
    assert data.endswith(b"(0 messages deleted)\r\n")
    w.close()


def tls_client(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


async def test_stls_then_login(plain: tuple[int, MemoryDrops], ca: trustme.CA) -> None:
    r, w = await connect(plain[0])
    w.write(b"STLS\r\n")
    assert await r.readline() == b"+OK Begin TLS negotiation\r\n"
    await w.start_tls(tls_client(ca), server_hostname="127.0.0.1")
    w.write(b"CAPA\r\n")
    caps = []
    while (line := await r.readline()) != b".\r\n":
        caps.append(line)
    assert b"STLS\r\n" not in caps and b"USER\r\n" in caps
    w.write(b"USER alice@example.test\r\nPASS secret\r\nRETR 1\r\nQUIT\r\n")
    data = await r.read()
    assert b"+OK Logged in, 1 messages" in data and b"\r\nhello\r\n.\r\n" in data
    assert data.endswith(b"(0 messages deleted)\r\n")
    w.close()


async def test_line_too_long_and_error_budget(plain: tuple[int, MemoryDrops]) -> None:
    r, w = await connect(plain[0])
    w.write(b"NOOP " + b"x" * 5000 + b"\r\nCAPA\r\n")
    assert await r.readline() == b"-ERR Line too long\r\n"
    assert await r.readline() == b"+OK Capability list follows\r\n"
    while await r.readline() != b".\r\n":
        pass
    w.write(b"FOO\r\n" * 10)
    data = await r.read()
    assert data.count(b"-ERR Unknown command\r\n") == 4  # the 5th error (with the long line) ends it
    assert data.endswith(b"-ERR Too many errors, closing connection\r\n")
    w.close()


async def test_drop_releases_the_lock(plain: tuple[int, MemoryDrops]) -> None:
    port, drops = plain
    r, w = await connect(port)
    # pipelined login: the session holds the lock when the reply arrives
    w.write(b"USER alice@example.test\r\nPASS secret\r\nDELE 1\r\n")
    assert await r.readline() == b"+OK\r\n"
    assert (await r.readline()).startswith(b"+OK Logged in")
    assert await r.readline() == b"+OK Message 1 deleted\r\n"
    assert drops.locked == {ALICE.id}
    drops.released = asyncio.Event()
    w.transport.abort()
    async with asyncio.timeout(5):
        await drops.released.wait()
    assert drops.locked == set() and list(drops.boxes[ALICE.id].messages) == [1]


async def test_unexpected_error_is_sys_temp_not_a_crash(ca: trustme.CA) -> None:
    drops = MemoryDrops()
    lst, port = await serve(ca, Exploding({}), drops, tls="implicit")
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="127.0.0.1")
    assert (await r.readline()).startswith(b"+OK")
    w.write(b"CAPA\r\n")
    caps = []
    while (line := await r.readline()) != b".\r\n":
        caps.append(line)
    assert b"STLS\r\n" not in caps  # implicit TLS: nothing to upgrade
    w.write(b"USER a@example.test\r\nPASS b\r\n")
    assert await r.readline() == b"+OK\r\n"
    assert await r.readline() == b"-ERR [SYS/TEMP] Internal error, try again later\r\n"
    assert await r.read() == b""
    w.close()
    await lst.drain(1)


async def test_missing_resources_refuse_politely(ca: trustme.CA) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.setblocking(False)
    port = sock.getsockname()[1]
    lcfg = ListenerConfig(protocol="pop3", bind=(f"127.0.0.1:{port}",))
    cfg = Config(listener={"pop3": lcfg})
    service = Pop3Service(ServiceContext(config=cfg, name="pop3", listener=lcfg, ssl_context=None))
    lst = Listener("pop3", lcfg, cfg.limits, [sock], service, None)
    await lst.start()
    r, w = await asyncio.open_connection("127.0.0.1", port)
    assert await r.readline() == b"-ERR [SYS/TEMP] Service not available\r\n"
    assert await r.read() == b""
    w.close()
    await lst.drain(1)


async def test_drain_says_goodbye_and_deletes_nothing(ca: trustme.CA) -> None:
    drops = MemoryDrops()
    drops.boxes[ALICE.id] = MemoryBox()
    drops.boxes[ALICE.id].add(b"Subject: x\r\n\r\nhello\r\n")
    auth = FakeAuth({"alice@example.test": ("secret", ALICE)}, loopback_plain=True)
    lst, port = await serve(ca, auth, drops)
    r, w = await connect(port)
    w.write(b"USER alice@example.test\r\nPASS secret\r\nDELE 1\r\n")
    for _ in range(3):
        assert (await r.readline()).startswith(b"+OK")
    await lst.drain(0)  # grace over at once: idle sessions are asked to end
    assert await r.readline() == b"-ERR [SYS/TEMP] Server shutting down\r\n"
    assert await r.read() == b""
    w.close()
    assert drops.locked == set() and list(drops.boxes[ALICE.id].messages) == [1]
