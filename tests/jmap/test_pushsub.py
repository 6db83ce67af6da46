"""PushSubscription (RFC 8620 §7.2): verification code flow and StateChange POSTs to an https URL on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from jmaptest import Client, FakeAccount, FakeGrant, Server, basic


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[Client, Server, str, asyncio.Queue[Any]]]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(sctx)
    cctx = ssl.create_default_context()
    ca.configure_trust(cctx)
    got: asyncio.Queue[Any] = asyncio.Queue()

    async def receive(request: web.Request) -> web.Response:
        await got.put((request.headers.get("Content-Type"), json.loads(await request.read())))
        return web.Response(status=201)

    app = web.Application()
    app.router.add_post("/push/{token}", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=sctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server = Server(tmp_path, push_ssl=cctx)
    await server.start()
    async with aiohttp.ClientSession() as http:
        yield Client(server, http), server, f"https://127.0.0.1:{port}/push/abc", got
    await server.stop()
    await runner.cleanup()


async def test_verification_then_state_changes(setup: tuple[Client, Server, str, asyncio.Queue[Any]]) -> None:
    client, _, url, got = setup
    (r,) = await client.call(["PushSubscription/set", {"create": {"p": {
        "deviceClientId": "dev1", "url": url, "types": ["Email"]}}}, "0"], using=["urn:ietf:params:jmap:core"])
    sid = r[1]["created"]["p"]["id"]
    assert "expires" in r[1]["created"]["p"]
    async with asyncio.timeout(5):
        ctype, body = await got.get()
    assert ctype == "application/json"
    assert body["@type"] == "PushVerification" and body["pushSubscriptionId"] == sid
    # a wrong code is refused; the right one verifies
    (bad,) = await client.call(["PushSubscription/set", {"update": {sid: {"verificationCode": "nope"}}}, "1"],
                               using=["urn:ietf:params:jmap:core"])
    assert bad[1]["notUpdated"][sid]["type"] == "invalidProperties"
    (ok,) = await client.call(["PushSubscription/set", {"update": {sid: {
        "verificationCode": body["verificationCode"]}}}, "2"], using=["urn:ietf:params:jmap:core"])
    assert ok[1]["updated"] == {sid: None}
    (g,) = await client.call(["PushSubscription/get", {}, "3"], using=["urn:ietf:params:jmap:core"])
    assert g[1]["list"][0]["verificationCode"] == body["verificationCode"] and "url" not in g[1]["list"][0]
    await client.one("Mailbox/set", {"create": {"x": {"name": "only mailbox state"}}})  # not an Email change
    await client.import_message(b"Subject: push\r\n\r\nx\r\n")
    async with asyncio.timeout(5):
        _, change = await got.get()
    while "Email" not in change["changed"]["a1"]:  # a Mailbox-only wake-up is not pushed (types filter)
        async with asyncio.timeout(5):
            _, change = await got.get()
    assert change["@type"] == "StateChange" and set(change["changed"]["a1"]) == {"Email"}
    (d,) = await client.call(["PushSubscription/set", {"destroy": [sid]}, "4"], using=["urn:ietf:params:jmap:core"])
    assert d[1]["destroyed"] == [sid]


async def test_url_must_be_https(setup: tuple[Client, Server, str, asyncio.Queue[Any]]) -> None:
    client, _, url, _ = setup
    (r,) = await client.call(["PushSubscription/set", {"create": {
        "a": {"deviceClientId": "d", "url": url.replace("https", "http")},
        "b": {"deviceClientId": "d", "url": url, "verificationCode": "x"}}}, "0"],
        using=["urn:ietf:params:jmap:core"])
    assert r[1]["notCreated"]["a"]["properties"] == ["url"]
    assert r[1]["notCreated"]["b"]["type"] == "invalidProperties"


async def test_state_changes_of_a_shared_account(setup: tuple[Client, Server, str, asyncio.Queue[Any]]) -> None:
    client, server, url, got = setup
    server.shared["1"] = [FakeGrant(FakeAccount(2, "bob@example.test"))]  # bob shares his mail with alice
    core = ["urn:ietf:params:jmap:core"]
    (r,) = await client.call(["PushSubscription/set", {"create": {"p": {
        "deviceClientId": "dev2", "url": url, "types": ["Email"]}}}, "0"], using=core)
    sid = r[1]["created"]["p"]["id"]
    async with asyncio.timeout(5):
        _, body = await got.get()
    (ok,) = await client.call(["PushSubscription/set", {"update": {sid: {
        "verificationCode": body["verificationCode"]}}}, "1"], using=core)
    assert ok[1]["updated"] == {sid: None}
    bob = Client(server, client.http, basic("bob@example.test", "hunter2"))
    bob.account_id = "a2"
    await bob.import_message(b"Subject: for bob\r\n\r\nx\r\n")
    async with asyncio.timeout(5):
        _, change = await got.get()
    while "a2" not in change["changed"]:  # bob's mailbox counts may come first
        async with asyncio.timeout(5):
            _, change = await got.get()
    assert set(change["changed"]["a2"]) == {"Email"} and "a1" not in change["changed"]
    # alice's own changes still arrive, named by her account
    await client.import_message(b"Subject: for alice\r\n\r\nx\r\n")
    async with asyncio.timeout(5):
        _, change = await got.get()
    while "a1" not in change["changed"]:
        async with asyncio.timeout(5):
            _, change = await got.get()
    assert set(change["changed"]["a1"]) == {"Email"}
