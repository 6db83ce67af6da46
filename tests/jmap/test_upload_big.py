"""A 1 GB upload streams to disk: the server's memory stays flat (RFC 8620 §6.1, issue 8)."""

from __future__ import annotations

import hashlib
import resource
from collections.abc import AsyncIterator

import pytest
from jmaptest import Client

GB = 1024**3
CHUNK = 1024 * 1024


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.slow
async def test_one_gigabyte_upload_with_flat_memory(client: Client) -> None:
    block = bytes(range(256)) * (CHUNK // 256)
    digest = hashlib.sha256()
    peak = [rss_kib()]
    start = peak[0]
    # the process's lifetime peak so far (an earlier test in this process may have set a higher one)
    maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    async def body() -> AsyncIterator[bytes]:
        for i in range(GB // CHUNK):
            if i % 64 == 0:
                peak[0] = max(peak[0], rss_kib())
            digest.update(block)
            yield block

    async with client.http.post(f"{client.server.url}/jmap/upload/a1/", data=body(),
                                headers={**client.headers, "Content-Type": "application/octet-stream"}) as r:
        assert r.status == 201, await r.text()
        up = await r.json()
    peak[0] = max(peak[0], rss_kib())
    assert up["size"] == GB
    # the blob id is content-addressed: the server hashed every octet it stored
    assert up["blobId"] == "G" + digest.hexdigest()[:40]
    path = await client.server.uploads.path("a1", up["blobId"])
    assert path is not None and path.stat().st_size == GB
    # client and server share this process: neither may have held the body
    assert peak[0] - start < 64 * 1024, f"RSS grew by {(peak[0] - start) // 1024} MiB"
    # between the samples: if the lifetime peak rose during the upload, it rose to under start + 256 MiB
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss <= max(maxrss0, start + 256 * 1024)
    # a range from the far end comes back without reading the whole file into memory
    async with client.http.get(f"{client.server.url}/jmap/download/a1/{up['blobId']}/big.bin",
                               headers={**client.headers, "Range": f"bytes={GB - 10}-"}) as r:
        assert r.status == 206 and await r.read() == block[-10:]
    path.unlink()


async def test_upload_over_the_limit_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import aiohttp
    from jmaptest import Server, basic

    from mailsrv.config import JmapConfig

    s = Server(tmp_path, JmapConfig(max_size_upload=1000))
    await s.start()
    try:
        async with aiohttp.ClientSession() as http:
            async def body() -> AsyncIterator[bytes]:  # no Content-Length: the limit is enforced while streaming
                for _ in range(10):
                    yield b"x" * 500

            async with http.post(f"{s.url}/jmap/upload/a1/", data=body(), headers=basic()) as r:
                assert r.status == 413
                assert (await r.json())["limit"] == "maxSizeUpload"
            async with http.post(f"{s.url}/jmap/upload/a1/", data=b"x" * 2000, headers=basic()) as r:
                assert r.status == 413
        assert not [p for p in (tmp_path / "uploads" / "a1").iterdir() if p.name.startswith(".tmp")]
    finally:
        await s.stop()


async def test_old_uploads_expire(client: Client) -> None:
    import os
    import time

    from mailsrv.jmap.server import expire_uploads

    old = await client.upload(b"old blob", "text/plain")
    new = await client.upload(b"new blob", "text/plain")
    d = client.server.uploads.root / "a1"
    past = time.time() - 7200
    os.utime(d / old["blobId"], (past, past))
    os.utime(d / f"{old['blobId']}.type", (past, past))
    assert expire_uploads(d, 3600) == 2
    assert await client.server.uploads.path("a1", old["blobId"]) is None
    assert await client.server.uploads.path("a1", new["blobId"]) is not None
