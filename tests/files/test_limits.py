"""Limits on public downloads (docs/files.md "Limits"): requests per minute per address, concurrent
downloads per address and per link, 429 with Retry-After; the counters' memory is bounded."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from filetest import LinkServer, put, serving
from support.server import wait_until_async

from mailsrv.config import FilesConfig
from mailsrv.files.limits import DownloadLimits, client_key

BIG = 48 * 1024 * 1024  # more than loopback socket buffers hold (they grow to ~10 MB): an unread download stays in progress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_is_a_burst_then_one_per_interval_with_retry_after() -> None:
    clock = Clock()
    lim = DownloadLimits(rate=3, per_ip=0, per_link=0, clock=clock)
    assert [lim.request("a") for _ in range(3)] == [0, 0, 0]
    assert lim.request("a") == 20  # 3 a minute: the next token in 20 s
    assert lim.request("b") == 0  # another address has its own bucket
    clock.now += 19.5
    assert lim.request("a") == 1  # nearly there: at least 1 s
    clock.now += 1.0
    assert lim.request("a") == 0
    assert lim.request("a") > 0


def test_the_buckets_are_bounded_and_the_oldest_is_forgotten() -> None:
    lim = DownloadLimits(rate=1, per_ip=0, per_link=0, max_tracked=100, clock=Clock())
    for i in range(10_000):
        lim.request(f"10.0.{i // 256}.{i % 256}")
    assert lim.tracked() == 100
    assert lim.request("10.0.39.15") > 0  # among the last 100: still counted
    assert lim.request("10.0.0.1") == 0  # forgotten: a full bucket again


def test_concurrent_per_address_and_per_link() -> None:
    lim = DownloadLimits(rate=0, per_ip=2, per_link=2)
    assert lim.begin("a", "L1") is None and lim.begin("a", "L2") is None
    assert "from one address" in (lim.begin("a", "L3") or "")
    assert lim.begin("b", "L1") is None
    assert "of this link" in (lim.begin("c", "L1") or "")
    lim.end("a", "L1")
    assert lim.begin("c", "L1") is None and lim.begin("a", "L3") is None
    for k, link in (("a", "L2"), ("a", "L3"), ("b", "L1"), ("c", "L1")):
        lim.end(k, link)
    assert lim.tracked() == 0  # only downloads in progress are held


def test_octets_are_paced_per_address_never_refused() -> None:
    clock = Clock()
    lim = DownloadLimits(rate=0, per_ip=0, per_link=0, bytes_per_second=1000, clock=clock)
    assert lim.pace("a", 600) == 0.0  # within the first second's burst
    assert lim.pace("a", 600) == pytest.approx(0.2)  # 200 octets over: 0.2 s before the next block
    assert lim.pace("b", 1000) == 0.0  # another address: its own bucket
    clock.now += 0.2
    assert lim.pace("a", 2000) == pytest.approx(2.0)  # a block bigger than the burst: its time after it
    clock.now += 10.0
    assert lim.pace("a", 1000) == 0.0  # refilled to one second's worth, no more
    assert lim.pace("a", 1) > 0.0
    assert DownloadLimits(0, 0, 0).pace("a", 10**9) == 0.0  # off


def test_ipv6_counts_by_its_64() -> None:
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7" and client_key("192.0.2.7") == "192.0.2.7"
    assert client_key(None) == "?"


async def test_a_paced_download_arrives_whole(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)  # 4 blocks of the reader: past the 2 MiB burst, paced
    async with serving(tmp_path, FilesConfig(download_bytes_per_second_per_ip=2 * 1024 * 1024)) as server, \
            aiohttp.ClientSession() as http:
        _, body, _ = await put(http, server, "paced.bin", io.BytesIO(data))
        async with http.get(body["url"]) as r:
            assert r.status == 200 and await r.read() == data
        assert len(_limits(server)._bytes) == 1  # one address paced


async def test_requests_past_the_rate_get_429_with_retry_after(tmp_path: Path) -> None:
    async with serving(tmp_path, FilesConfig(download_rate_per_ip=3)) as server, aiohttp.ClientSession() as http:
        status, body, _ = await put(http, server, "a.bin", b"x" * 100)
        assert status == 201
        bad = f"{server.url}/f/{'A' * 22}/x"
        statuses = []
        for url in (body["url"], bad, body["url"]):  # a wrong token counts too (no lookups for free)
            async with http.get(url) as r:
                statuses.append(r.status)
        assert statuses == [200, 404, 200]
        async with http.get(body["url"]) as r:
            assert r.status == 429 and r.content_type == "application/problem+json"
            assert 1 <= int(r.headers["Retry-After"]) <= 20
            assert "3 a minute" in (await r.json())["detail"]
        async with http.head(body["url"]) as r:
            assert r.status == 429
        # uploads are not public downloads: the same address still uploads
        assert (await put(http, server, "b.bin", b"y"))[0] == 201


async def test_curl_sees_429_and_retry_after(tmp_path: Path) -> None:
    async with serving(tmp_path, FilesConfig(download_rate_per_ip=1)) as server, aiohttp.ClientSession() as http:
        _, body, _ = await put(http, server, "a.bin", b"z" * 10)

        def curl() -> str:
            out = subprocess.run(["curl", "-s", "-D", "-", "-o", "/dev/null", body["url"]], capture_output=True,
                                 text=True, timeout=30, check=True)
            return out.stdout

        first = await asyncio.to_thread(curl)
        second = await asyncio.to_thread(curl)
        assert first.startswith("HTTP/1.1 200")
        assert second.startswith("HTTP/1.1 429") and "retry-after: 60" in second.lower()


def _limits(server: LinkServer) -> DownloadLimits:
    """The download limits of the server's FileLinkHttp (the owner of the /f/ route's handler)."""
    for route in server.runner.app.router.routes():
        if route.method == "GET" and route.resource is not None and route.resource.canonical == "/f/{token}":
            return route.handler.__self__.limits  # type: ignore[union-attr]
    raise AssertionError("no download route")


async def _stalled_download(server: LinkServer, url: str) -> asyncio.StreamWriter:
    """A GET of ``url`` whose client reads the headers and a first megabyte, then stops reading."""
    path = url.split("/", 3)[3]
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(f"GET /{path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    await reader.readexactly(1024 * 1024)
    return writer


class Stalled:
    """A server with a big and a small link, and a download of the big one stalled until :meth:`release`."""

    def __init__(self, server: LinkServer, http: aiohttp.ClientSession, big: dict[str, Any],
                 small: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        self.server, self.http, self.big, self.small, self.writer = server, http, big, small, writer

    async def release(self) -> None:
        """The stalled client goes; returns once the server's limits hold nothing (no rate limit here)."""
        self.writer.transport.abort()
        await wait_until_async(lambda: _limits(self.server).tracked() == 0)


@contextlib.asynccontextmanager
async def stalled(tmp_path: Path, cfg: FilesConfig) -> AsyncIterator[Stalled]:
    async with serving(tmp_path, cfg) as server, aiohttp.ClientSession() as http:
        _, big, _ = await put(http, server, "big.bin", io.BytesIO(os.urandom(BIG)))
        _, small, _ = await put(http, server, "small.bin", b"s" * 10)
        st = Stalled(server, http, big, small, await _stalled_download(server, big["url"]))
        try:
            yield st
        finally:
            st.writer.transport.abort()


async def test_concurrent_downloads_per_address(tmp_path: Path) -> None:
    cfg = FilesConfig(download_rate_per_ip=0, download_concurrent_per_ip=1, download_concurrent_per_link=0)
    async with stalled(tmp_path, cfg) as st:
        async with st.http.get(st.small["url"]) as r:  # another link, the same address: its one download is busy
            assert r.status == 429 and r.headers["Retry-After"] == "5"
            assert "from one address" in (await r.json())["detail"]
        async with st.http.head(st.small["url"]) as r:  # no body, nothing held: HEAD goes through
            assert r.status == 200
        await st.release()
        async with st.http.get(st.small["url"]) as r:
            assert r.status == 200 and await r.read() == b"s" * 10


async def test_concurrent_downloads_per_link(tmp_path: Path) -> None:
    cfg = FilesConfig(download_rate_per_ip=0, download_concurrent_per_ip=0, download_concurrent_per_link=1)
    async with stalled(tmp_path, cfg) as st:
        async with st.http.get(st.big["url"], headers={"Range": "bytes=0-9"}) as r:
            assert r.status == 429 and "of this link" in (await r.json())["detail"]
        async with st.http.get(st.small["url"]) as r:  # another link from the same address
            assert r.status == 200 and await r.read() == b"s" * 10
        await st.release()
        async with st.http.get(st.big["url"], headers={"Range": "bytes=0-9"}) as r:
            assert r.status == 206
