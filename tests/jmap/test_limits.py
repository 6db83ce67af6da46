"""The listener's connection limits over real HTTP: max connections, per IP, idle timeout (503 problem details)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from jmaptest import Client, Server, basic

from mailsrv.config import Config, ListenerConfig
from mailsrv.jmap.limits import ConnLimits
from mailsrv.jmap.server import JmapService
from mailsrv.net.service import ServiceContext

DEADLINE = 10.0


async def until(cond: Callable[[], bool]) -> None:
    """Poll a condition of the server's own state until it holds (fails after DEADLINE)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE
    while not cond():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.005)


def request(path: str = "/jmap/session", keep_alive: bool = True) -> bytes:
    auth = basic()["Authorization"]
    conn = "keep-alive" if keep_alive else "close"
    return f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nConnection: {conn}\r\n\r\n".encode()


async def response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE)
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), DEADLINE)
    return status, headers, body


async def connect(server: Server, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port, local_addr=(source, 0))


@pytest.fixture
async def limited(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Server]:
    s = Server(tmp_path, limits=request.param)
    await s.start()
    yield s
    await s.stop()


@pytest.mark.parametrize("limited", [ConnLimits(max_connections=2, max_connections_per_ip=10, idle_timeout=60)],
                         indirect=True)
async def test_over_max_connections_is_503_problem_then_room_again(limited: Server) -> None:
    lim = limited.limiter
    assert lim is not None
    held = [await connect(limited) for _ in range(2)]
    for r, w in held:  # both are served, and stay open (keep-alive)
        w.write(request())
        assert (await response(r))[0] == 200
    assert lim.count == 2
    r3, w3 = await connect(limited)
    w3.write(request())
    status, headers, body = await response(r3)
    assert status == 503 and headers["content-type"].startswith("application/problem+json")
    assert headers["retry-after"] == "5" and headers.get("connection", "").lower() == "close"
    problem = json.loads(body)
    assert problem["status"] == 503 and problem["detail"] == "too many connections"
    assert await asyncio.wait_for(r3.read(), DEADLINE) == b""  # closed after the answer
    w3.close()
    assert lim.count == 2  # a refused connection is never counted
    # one held connection goes away: there is room again
    held[0][1].close()
    await until(lambda: lim.count == 1)
    r4, w4 = await connect(limited)
    w4.write(request())
    assert (await response(r4))[0] == 200
    for _, w in (held[1], (r4, w4)):
        w.close()
    await until(lambda: lim.count == 0 and not lim.per_ip)


@pytest.mark.parametrize("limited", [ConnLimits(max_connections=100, max_connections_per_ip=1, idle_timeout=60)],
                         indirect=True)
async def test_per_ip_limit_counts_each_address(limited: Server) -> None:
    r1, w1 = await connect(limited, "127.0.0.1")
    w1.write(request())
    assert (await response(r1))[0] == 200
    # a browser's second connection from the same address, with CORS: the 503 is readable by the page
    async with aiohttp.ClientSession() as http:
        async with http.get(limited.url + "/jmap/session", headers={**basic(), "Origin": "https://web.example"}) as r:
            assert r.status == 503 and (await r.json(content_type=None))["detail"] == "too many connections from your address"
            assert r.headers["Access-Control-Allow-Origin"] == "*"
    # another address is not affected by 127.0.0.1's connection
    r2, w2 = await connect(limited, "127.0.0.2")
    w2.write(request())
    assert (await response(r2))[0] == 200
    assert limited.limiter is not None and dict(limited.limiter.per_ip) == {"127.0.0.1": 1, "127.0.0.2": 1}
    w1.close()
    w2.close()


@pytest.mark.parametrize("limited", [ConnLimits(max_connections=100, max_connections_per_ip=100, idle_timeout=0.3)],
                         indirect=True)
async def test_idle_connections_are_closed_but_push_streams_are_not(limited: Server) -> None:
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http:
        client = Client(limited, http)
        # a push stream: the server talks, the client is silent by design
        es = await http.get(limited.url + "/jmap/eventsource?types=*&closeafter=no&ping=0", headers=client.headers)
        assert es.status == 200
        first = await asyncio.wait_for(es.content.readuntil(b"\n\n"), DEADLINE)
        assert b"event: state" in first

        async def silent_victim(data: bytes, answer: int | None = None) -> float:
            t0 = loop.time()
            r, w = await connect(limited)
            w.write(data)
            if answer is not None:
                assert (await response(r))[0] == answer
            assert await asyncio.wait_for(r.read(), DEADLINE) == b""  # closed by the server
            w.close()
            return loop.time() - t0

        # silent before a request, inside a header (slowloris), inside a body, between requests
        waits = await asyncio.gather(
            silent_victim(b""),
            silent_victim(b"GET /jmap/session HTTP/1.1\r\nHost: x\r\n"),
            silent_victim(f"POST /jmap/api HTTP/1.1\r\nHost: x\r\nAuthorization: {basic()['Authorization']}\r\n"
                          "Content-Length: 1000\r\n\r\n{\"using\":".encode()),
            # answered 401 at once, then the unread rest of its body never comes
            silent_victim(b"POST /jmap/api HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{", 401),
            silent_victim(request(), 200),
        )
        assert all(w >= 0.25 for w in waits), waits
        # the push stream outlived all of them and still delivers
        await limited.backends["1"].import_email(b"Subject: x\r\n\r\nx\r\n", frozenset({next(iter(
            limited.backends["1"].boxes))}), frozenset(), None)
        event = await asyncio.wait_for(es.content.readuntil(b"\n\n"), DEADLINE)
        assert b"event: state" in event and b"Email" in event
        es.close()


async def test_jmap_service_applies_the_listener_limits(tmp_path: Path) -> None:
    # the worker's service: limits from [[listener]] over [limits] (no store here: the app answers 503 itself)
    cfg = Config()
    lcfg = ListenerConfig(protocol="jmap", bind=("127.0.0.1:0",), max_connections=1, idle_timeout=30.0)
    svc = JmapService(ServiceContext(config=cfg, name="jmap-test", listener=lcfg, ssl_context=None))
    assert svc.limiter.limits == ConnLimits(1, cfg.limits.max_connections_per_ip, 30.0)
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    await svc.start([sock], None)
    try:
        r1, w1 = await asyncio.open_connection("127.0.0.1", port)
        w1.write(request())
        _, _, body1 = await response(r1)
        assert "not configured" in json.loads(body1)["detail"]
        r2, w2 = await asyncio.open_connection("127.0.0.1", port)
        w2.write(request())
        status, _, body2 = await response(r2)
        assert status == 503 and json.loads(body2)["detail"] == "too many connections"
        w1.close()
        w2.close()
    finally:
        await svc.stop(1.0)


@pytest.mark.parametrize("limited", [ConnLimits(max_connections=4, max_connections_per_ip=4, idle_timeout=5)],
                         indirect=True)
async def test_uploads_and_file_downloads_through_the_limited_site(limited: Server) -> None:
    # uploads stream in, downloads go out with sendfile (FileResponse): both through the tracked protocol
    data = bytes(range(256)) * 16384  # 4 MiB
    async with aiohttp.ClientSession() as http:
        client = Client(limited, http)
        up = await client.upload(data, "application/octet-stream")
        url = f"{limited.url}/jmap/download/a1/{up['blobId']}/d.bin"
        async with http.get(url, headers=client.headers) as r:
            assert r.status == 200 and await r.read() == data
        async with http.get(url, headers={**client.headers, "Range": "bytes=1000-1999"}) as r:
            assert r.status == 206 and await r.read() == data[1000:2000]
        assert limited.limiter is not None and limited.limiter.count == 1  # one keep-alive connection
