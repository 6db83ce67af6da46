"""Uploads (PUT /files/NAME, POST /files?name=) and public downloads (/f/TOKEN/NAME) over real HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from filetest import LinkServer, basic, put, serving
from support.server import wait_until_async

from mailsrv.config import FilesConfig

DATA = bytes(range(256)) * 40  # 10 240 octets


async def test_put_answers_201_with_the_link_and_the_file_downloads(server: LinkServer,
                                                                      http: aiohttp.ClientSession) -> None:
    status, body, headers = await put(http, server, "report%202026.pdf", DATA,
                                      {**basic(), "Content-Type": "application/pdf"})
    assert status == 201, body
    assert body["name"] == "report 2026.pdf" and body["size"] == len(DATA) and body["type"] == "application/pdf"
    assert body["sha256"] == hashlib.sha256(DATA).hexdigest()
    assert body["id"].startswith("F") and headers["Location"] == body["url"]
    assert body["url"].startswith(server.url + "/f/") and body["url"].endswith("/report%202026.pdf")
    token = body["url"].split("/")[-2]
    assert len(token) == 22
    # only a hash of the token is kept on disk
    assert token.encode() not in (server.files_root / "links.db").read_bytes()
    expires = time.mktime(time.strptime(body["expires"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert abs(expires - (time.time() + 30 * 86400)) < 120
    async with aiohttp.ClientSession() as anonymous, anonymous.get(body["url"]) as r:  # no login
        assert r.status == 200 and await r.read() == DATA
        assert r.headers["Content-Type"] == "application/octet-stream"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Content-Security-Policy"] == "sandbox"
        assert r.headers["Content-Disposition"] == (
            "attachment; filename=\"report 2026.pdf\"; filename*=UTF-8''report%202026.pdf")
        assert r.headers["ETag"] == f'"{body["sha256"][:32]}"' and r.headers["Accept-Ranges"] == "bytes"
    assert server.links.store.get(body["id"]).downloads == 1  # type: ignore[union-attr]


async def test_post_with_a_name_and_a_streamed_body(server: LinkServer, http: aiohttp.ClientSession) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(10):
            yield DATA[i * 1024:(i + 1) * 1024]

    async with http.post(f"{server.url}/files", params={"name": "../../etc/年报.xlsx"}, data=chunks(),
                         headers=basic()) as r:
        assert r.status == 201
        body = await r.json()
    assert body["name"] == "年报.xlsx" and body["size"] == len(DATA)
    async with http.get(body["url"]) as r:
        assert await r.read() == DATA
        assert r.headers["Content-Disposition"].endswith("filename*=UTF-8''%E5%B9%B4%E6%8A%A5.xlsx")
    async with http.post(f"{server.url}/files", data=b"x", headers=basic()) as r:
        assert r.status == 400  # no name


async def test_range_head_and_conditional_requests(server: LinkServer, http: aiohttp.ClientSession) -> None:
    _, body, _ = await put(http, server, "a.bin", DATA)
    url = body["url"]
    etag = f'"{body["sha256"][:32]}"'
    async with http.get(url, headers={"Range": "bytes=100-199"}) as r:
        assert r.status == 206 and await r.read() == DATA[100:200]
        assert r.headers["Content-Range"] == f"bytes 100-199/{len(DATA)}"
    async with http.get(url, headers={"Range": "bytes=-10"}) as r:
        assert r.status == 206 and await r.read() == DATA[-10:]
    async with http.get(url, headers={"Range": "bytes=10000-"}) as r:
        assert r.status == 206 and await r.read() == DATA[10000:]
    async with http.get(url, headers={"Range": f"bytes={len(DATA)}-"}) as r:
        assert r.status == 416 and r.headers["Content-Range"] == f"bytes */{len(DATA)}"
    async with http.get(url, headers={"Range": "bytes=0-1,5-6"}) as r:  # several ranges: the whole file
        assert r.status == 200 and await r.read() == DATA
    async with http.get(url, headers={"Range": "bytes=5-9", "If-Range": '"stale"'}) as r:
        assert r.status == 200 and await r.read() == DATA
    async with http.get(url, headers={"Range": "bytes=5-9", "If-Range": etag}) as r:
        assert r.status == 206 and await r.read() == DATA[5:10]
    async with http.get(url, headers={"If-None-Match": etag}) as r:
        assert r.status == 304 and await r.read() == b""
    async with http.head(url) as r:
        assert r.status == 200 and r.headers["Content-Length"] == str(len(DATA))
        assert r.headers["Content-Security-Policy"] == "sandbox" and await r.read() == b""
    # ranges from further on (resumed downloads), 416, 304 and HEAD are not downloads: the two whole ones are
    assert server.links.store.get(body["id"]).downloads == 2  # type: ignore[union-attr]


async def test_unknown_malformed_and_expired_tokens(server: LinkServer, http: aiohttp.ClientSession) -> None:
    _, body, _ = await put(http, server, "a.bin", DATA)
    token = body["url"].split("/")[-2]
    other = ("A" if token[0] != "A" else "B") + token[1:]
    for bad in (other, token[:-1], token + "A", "x" * 200, "%00" * 22, "<script>" + "a" * 14, "é" * 22):
        async with http.get(f"{server.url}/f/{bad}/a.bin") as r:
            assert r.status == 404, bad
            assert (await r.json(content_type=None))["status"] == 404
    async with http.get(f"{server.url}/f/{token}") as r:  # the name is decoration
        assert r.status == 200
    with server.links.store._lock:
        server.links.store._conn().execute("UPDATE links SET expires = ?", (time.time() - 1,))
    async with http.get(body["url"]) as r:
        assert r.status == 410
    async with http.head(body["url"]) as r:
        assert r.status == 410


async def test_uploads_need_authentication(server: LinkServer, http: aiohttp.ClientSession) -> None:
    for headers in ({}, basic("alice@example.test", "wrong"), {"Authorization": "Bearer nope"}):
        status, body, h = await put(http, server, "a.bin", DATA, headers)
        assert status == 401, headers
        assert "WWW-Authenticate" in h
    status, body, _ = await put(http, server, "a.bin", DATA, {"Authorization": "Bearer tok-admin"})
    assert status == 403  # a token without the mail scope
    status, body, _ = await put(http, server, "a.bin", DATA, {"Authorization": "Bearer tok-alice"})
    assert status == 201
    assert not [r for r in server.rows() if r.owner != "1"]


async def test_basic_is_refused_on_plain_http(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    s = LinkServer(tmp_path)
    s.auth.plaintext_allowed = lambda *, tls, client_ip: tls  # type: ignore[method-assign]  # no loopback trust
    await s.start()
    try:
        status, body, h = await put(http, s, "a.bin", DATA)
        assert status == 401 and "Basic" not in h.get("WWW-Authenticate", "")
        assert "TLS" in body["detail"]
        assert s.auth.logins == 0 and not s.rows()
    finally:
        await s.stop()


async def test_max_size_by_content_length_and_while_streaming(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with serving(tmp_path, FilesConfig(max_size=5000)) as s:
        status, body, _ = await put(http, s, "a.bin", DATA)  # Content-Length: refused before the body
        assert status == 413 and "5000" in body["detail"]

        async def chunks() -> AsyncIterator[bytes]:  # chunked, no Content-Length: refused while streaming
            for i in range(10):
                yield DATA[i * 1024:(i + 1) * 1024]

        status, body, _ = await put(http, s, "a.bin", chunks())
        assert status == 413
        status, body, _ = await put(http, s, "a.bin", DATA[:5000])
        assert status == 201
        assert len(s.rows()) == 1 and len(s.leftovers()) == 1


async def test_quota_counts_live_links_and_is_freed_by_delete(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with serving(tmp_path, FilesConfig(quota=25_000)) as s:
        assert (await put(http, s, "1.bin", DATA))[0] == 201
        assert (await put(http, s, "2.bin", DATA))[0] == 201
        status, body, _ = await put(http, s, "3.bin", DATA)
        assert status == 507 and "quota" in body["detail"]

        async def chunks() -> AsyncIterator[bytes]:
            yield DATA

        assert (await put(http, s, "3.bin", chunks()))[0] == 507  # no Content-Length: while streaming
        # another user has a quota of their own
        assert (await put(http, s, "b.bin", DATA, basic("bob@example.test", "hunter2")))[0] == 201
        first = s.rows()[0]
        assert s.links.store.delete(first.id, owner="2") is None  # not bob's
        assert s.links.store.delete(first.id, owner="1") is not None
        assert (await put(http, s, "3.bin", DATA))[0] == 201
        assert not s.links.store.data_path(first.id).exists()
        assert len(s.leftovers()) == 3


async def test_concurrent_uploads_cannot_both_pass_the_quota(tmp_path: Path) -> None:
    async with serving(tmp_path, FilesConfig(quota=15_000)) as s:
        gate = asyncio.Event()

        async def one(name: str) -> int:
            async with aiohttp.ClientSession() as h:
                async def chunks() -> AsyncIterator[bytes]:
                    yield DATA[:5000]
                    await gate.wait()
                    yield DATA[5000:]

                return (await put(h, s, name, chunks()))[0]

        both = asyncio.gather(one("a"), one("b"))
        # both uploads past the quota check and writing their first part before either goes on
        await wait_until_async(lambda: len(_writing(s.files_root / "tmp")) == 2)
        gate.set()
        statuses = sorted(await both)
        assert statuses == [201, 507]
        assert len(s.rows()) == 1 and len(s.leftovers()) == 1


async def test_a_client_gone_mid_upload_leaves_no_file_and_no_link(server: LinkServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    auth = basic()["Authorization"]
    writer.write(f"PUT /files/big.bin HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
                 f"Content-Length: 10000000\r\n\r\n".encode() + b"x" * 3_000_000)
    await writer.drain()
    tmp = server.files_root / "tmp"
    await wait_until_async(lambda: bool(_writing(tmp)))  # the upload is under way
    writer.transport.abort()  # reset, mid-body
    await wait_until_async(lambda: not any(tmp.iterdir()))
    assert not server.rows() and not server.leftovers()
    # the server goes on serving
    async with aiohttp.ClientSession() as h:
        assert (await put(h, server, "a.bin", DATA))[0] == 201


async def test_cors_preflight_allows_put(server: LinkServer, http: aiohttp.ClientSession) -> None:
    async with http.options(f"{server.url}/files/a.bin", headers={"Origin": "https://webmail.example.test",
                                                                  "Access-Control-Request-Method": "PUT"}) as r:
        assert r.status == 204 and "PUT" in r.headers["Access-Control-Allow-Methods"]


@pytest.mark.parametrize("name", ["<b>.html", 'a"b.txt', "con\u202eexe.txt"])
async def test_names_are_served_as_attachments(server: LinkServer, http: aiohttp.ClientSession, name: str) -> None:
    status, body, _ = await put(http, server, "x", b"<script>alert(1)</script>")  # placeholder name
    assert status == 201
    async with http.post(f"{server.url}/files", params={"name": name}, data=b"<html><script>1</script>",
                         headers={**basic(), "Content-Type": "text/html"}) as r:
        body = json.loads(await r.read())
    async with http.get(body["url"]) as r:
        assert r.headers["Content-Type"] == "application/octet-stream"
        cd = r.headers["Content-Disposition"]
        assert cd.startswith("attachment; ") and "\u202e" not in cd and cd.count('"') == 2


async def test_concurrent_uploads_of_one_user_are_bounded(tmp_path: Path) -> None:
    from mailsrv.config import JmapConfig

    async with serving(tmp_path, jmap=JmapConfig(max_concurrent_upload=1)) as s:
        gate = asyncio.Event()

        async def slow() -> AsyncIterator[bytes]:
            yield DATA[:100]
            await gate.wait()
            yield DATA[100:]

        async with aiohttp.ClientSession() as h1, aiohttp.ClientSession() as h2:
            first = asyncio.ensure_future(put(h1, s, "a.bin", slow()))
            tmp = s.files_root / "tmp"
            await wait_until_async(lambda: tmp.is_dir() and any(tmp.iterdir()))  # the first one is under way
            status, body, _ = await put(h2, s, "b.bin", DATA)
            assert status == 429 and "1 upload" in body["detail"]
            assert (await put(h2, s, "b.bin", DATA, basic("bob@example.test", "hunter2")))[0] == 201  # another user
            gate.set()
            assert (await first)[0] == 201
            assert (await put(h2, s, "c.bin", DATA))[0] == 201  # the slot is free again


async def test_a_shorter_life_on_request(server: LinkServer, http: aiohttp.ClientSession) -> None:
    status, body, _ = await put(http, server, "a.bin?days=2", DATA)
    assert status == 201
    (link,) = server.rows()
    assert abs(link.expires - link.created - 2 * 86400) < 1
    for bad in ("0", "31", "-1", "x", "²", "9" * 5000):  # 5000 digits: past int()'s 4300-digit limit
        status, body, _ = await put(http, server, f"a.bin?days={bad}", DATA)
        assert status == 400 and "1 to 30" in body["detail"], bad
    assert len(server.rows()) == 1


async def test_a_client_gone_mid_download_releases_the_file(server: LinkServer, http: aiohttp.ClientSession) -> None:
    import io
    import os

    big = os.urandom(8 * 1024 * 1024)
    _, body, _ = await put(http, server, "big.bin", io.BytesIO(big))
    data = str(server.links.store.data_path(body["id"]))

    def open_on_data() -> bool:
        fds = Path("/proc/self/fd")
        out = False
        for fd in fds.iterdir():
            try:
                out = out or os.readlink(fd) == data
            except OSError:
                pass
        return out

    path = body["url"].split("/", 3)[3]
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(f"GET /{path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    await reader.readexactly(1024 * 1024)  # headers and the first megabyte; the server is now writing
    assert open_on_data()
    writer.transport.abort()
    await wait_until_async(lambda: not open_on_data())
    async with http.get(body["url"], headers={"Range": "bytes=-4"}) as r:  # the server goes on serving
        assert r.status == 206 and await r.read() == big[-4:]


def _writing(tmp: Path) -> list[Path]:
    """The uploads' temporary files that hold data so far."""
    return [p for p in tmp.iterdir() if p.stat().st_size > 0] if tmp.is_dir() else []
