"""Push over EventSource (RFC 8620 §7.3) and JMAP over WebSocket (RFC 8887)."""

from __future__ import annotations

import asyncio
import errno
import json

import aiohttp
import pytest
from jmaptest import USING, Client

from mailsrv.jmap.push import watch_all


async def read_event(resp: aiohttp.ClientResponse) -> tuple[str, dict]:  # type: ignore[type-arg]
    event, data = "", ""
    while True:
        line = (await resp.content.readline()).decode()
        if line == "\n":
            return event, json.loads(data)
        if line.startswith("event: "):
            event = line[7:].strip()
        elif line.startswith("data: "):
            data = line[6:]
        elif not line:
            raise EOFError


async def test_eventsource_initial_state_change_and_ping(client: Client) -> None:
    url = client.server.url + "/jmap/eventsource?types=Email,Mailbox&closeafter=no&ping=1"
    async with client.http.get(url, headers=client.headers) as r:
        assert r.headers["Content-Type"] == "text/event-stream"
        async with asyncio.timeout(5):
            ev, data = await read_event(r)
            assert ev == "state" and set(data["changed"]["a1"]) == {"Email", "Mailbox"}
            await client.import_message(b"Subject: x\r\n\r\ny\r\n")
            ev, data = await read_event(r)
            assert ev == "state" and data["@type"] == "StateChange"
            email_state = (await client.one("Email/get", {"ids": []}))["state"]
            assert data["changed"]["a1"]["Email"] == email_state
            ev, data = await read_event(r)  # nothing changes: a ping after ~1 s
            assert ev == "ping" and data == {"interval": 1}


async def test_eventsource_bad_parameters(client: Client) -> None:
    async with client.http.get(client.server.url + "/jmap/eventsource?closeafter=maybe",
                               headers=client.headers) as r:
        assert r.status == 400


async def test_websocket_requests_errors_and_push(client: Client) -> None:
    async with client.http.ws_connect(client.server.url.replace("http", "ws") + "/jmap/ws", protocols=("jmap",),
                                      headers=client.headers) as ws:
        assert ws.protocol == "jmap"
        await ws.send_str(json.dumps({"@type": "Request", "id": "r1", "using": USING,
                                      "methodCalls": [["Core/echo", {"a": 1}, "c1"]]}))
        resp = json.loads((await ws.receive()).data)
        assert resp["@type"] == "Response" and resp["requestId"] == "r1"
        assert resp["methodResponses"] == [["Core/echo", {"a": 1}, "c1"]]
        await ws.send_str("{nope")
        err = json.loads((await ws.receive()).data)
        assert err["@type"] == "RequestError" and err["type"].endswith("notJSON")
        await ws.send_str(json.dumps({"@type": "Request", "id": "r2", "using": ["urn:x"], "methodCalls": []}))
        err = json.loads((await ws.receive()).data)
        assert err["requestId"] == "r2" and err["type"].endswith("unknownCapability")
        await ws.send_str(json.dumps({"@type": "WebSocketPushEnable", "dataTypes": ["Email"]}))
        await client.import_message(b"Subject: ws\r\n\r\nz\r\n")
        async with asyncio.timeout(5):
            push = json.loads((await ws.receive()).data)
        assert push["@type"] == "StateChange" and set(push["changed"]["a1"]) == {"Email"}
        await ws.send_str(json.dumps({"@type": "WebSocketPushDisable"}))
        await ws.send_str(json.dumps({"@type": "Request", "using": USING, "methodCalls": [["Core/echo", {}, "c"]]}))
        resp = json.loads((await ws.receive()).data)
        assert resp["@type"] == "Response" and "requestId" not in resp


async def test_websocket_needs_subprotocol_and_auth(client: Client) -> None:
    url = client.server.url.replace("http", "ws") + "/jmap/ws"
    async with client.http.ws_connect(url, headers=client.headers) as ws:
        msg = await ws.receive()
        assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1002
    async with aiohttp.ClientSession() as anon:
        try:
            await anon.ws_connect(url, protocols=("jmap",))
            raise AssertionError("connected without credentials")
        except aiohttp.WSServerHandshakeError as exc:
            assert exc.status == 401


async def test_a_watch_refused_midway_closes_the_watches_made_before_it() -> None:
    """No inotify watch left for the third account (ENOSPC): the two made already are closed, not leaked."""
    closed: list[str] = []

    class W:
        def __init__(self, name: str) -> None:
            self.name = name

        async def wait(self, seconds: float | None = None) -> bool:
            return False

        def close(self) -> None:
            closed.append(self.name)

    class Be:
        def __init__(self, name: str, full: bool = False) -> None:
            self.account_id, self.full = name, full

        def watch(self) -> W:
            if self.full:
                raise OSError(errno.ENOSPC, "inotify_add_watch: No space left on device")
            return W(self.account_id)

    with pytest.raises(OSError):
        watch_all([Be("a"), Be("b"), Be("c", full=True), Be("d")])  # type: ignore[list-item]
    assert closed == ["a", "b"]
    mw = watch_all([Be("a"), Be("b")])  # type: ignore[list-item]
    mw.close()
    assert closed == ["a", "b", "a", "b"]
