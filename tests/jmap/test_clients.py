"""Third-party JMAP clients from PyPI against the server over HTTPS (trustme certificate):
jmapc (requests, sync) and jmaplib (httpx, async, with RFC 8887 WebSocket)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trustme
from jmaptest import Server

MSG = (b"From: Bob <bob@x.test>\r\nTo: alice@example.test\r\nSubject: third party\r\n"
       b"Message-ID: <tp1@x.test>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n"
       b"--zz\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello from the test\r\n"
       b"--zz\r\nContent-Type: application/pdf; name=a.pdf\r\nContent-Disposition: attachment; filename=a.pdf\r\n"
       b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--zz--\r\n")


@pytest.fixture
async def tls_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Server, str]]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_file))  # jmapc speaks only https
    s = Server(tmp_path)
    await s.start(server_ctx)
    yield s, str(ca_file)
    await s.stop()


def _jmapc_session(host: str, msg_path: Path) -> dict[str, object]:
    from jmapc import Client, MailboxQueryFilterCondition, Ref
    from jmapc.methods import CoreEcho, EmailGet, EmailQuery, MailboxGet, MailboxQuery

    client = Client.create_with_password(host, "alice@example.test", "secret")
    out: dict[str, object] = {"account": client.account_id}
    echo = client.request(CoreEcho(data={"x": 1}))
    out["echo"] = echo.data  # type: ignore[union-attr]
    res = client.request([
        MailboxQuery(filter=MailboxQueryFilterCondition(role="inbox")),
        MailboxGet(ids=Ref("/ids")),
    ])
    inbox = res[1].response.data[0]  # type: ignore[union-attr]
    out["inbox"] = (inbox.id, inbox.name, inbox.role)
    blob = client.upload_blob(msg_path)
    out["blob"] = blob.id
    import requests  # jmapc has no Email/import model: that one call goes raw through its session

    sess = client.requests_session
    r = sess.post(client.jmap_session.api_url, json={
        "using": ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"],
        "methodCalls": [["Email/import", {"accountId": client.account_id, "emails": {
            "e": {"blobId": blob.id, "mailboxIds": {inbox.id: True}}}}, "i"]]}, timeout=30)
    assert isinstance(r, requests.Response) and r.status_code == 200
    res = client.request([EmailQuery(filter={"inMailbox": inbox.id}), EmailGet(ids=Ref("/ids"),
                          properties=["subject", "attachments", "from"])])
    emails = res[1].response.data  # type: ignore[union-attr]
    out["subjects"] = [e.subject for e in emails]
    out["attachments"] = [a.name for a in emails[0].attachments]
    out["download"] = client.download_attachment(emails[0].attachments[0], Path(msg_path.parent / "dl.pdf"))
    out["pdf"] = (msg_path.parent / "dl.pdf").read_bytes()
    return out


async def test_jmapc(tls_server: tuple[Server, str], tmp_path: Path) -> None:
    server, _ = tls_server
    path = tmp_path / "m.eml"
    path.write_bytes(MSG)
    got = await asyncio.to_thread(_jmapc_session, f"127.0.0.1:{server.port}", path)
    assert got["account"] == "a1" and got["echo"] == {"x": 1}
    assert got["inbox"] == (got["inbox"][0], "Inbox", "inbox")  # type: ignore[index]
    assert got["subjects"] == ["third party"] and got["attachments"] == ["a.pdf"]
    assert got["pdf"] == b"%PDF-1.4\n"


async def test_jmaplib_http_and_websocket_push(tls_server: tuple[Server, str]) -> None:
    from jmap.aio import AsyncJMAPClient
    from jmap.push.websocket_aio import AsyncWebSocketClient

    server, ca_file = tls_server
    ctx = ssl.create_default_context(cafile=ca_file)
    async with httpx.AsyncClient(verify=ctx, follow_redirects=True, timeout=30) as http:
        client = await AsyncJMAPClient.connect(server.url + "/.well-known/jmap",
                                               auth=httpx.BasicAuth("alice@example.test", "secret"), http=http)
        assert await client.echo(hello="world") == {"hello": "world"}
        up = await client.upload(MSG, content_type="message/rfc822")
        boxes = await client.call("Mailbox/get", {"ids": None})
        inbox = next(m for m in _items(boxes) if _field(m, "role") == "inbox")
        imp = await client.call("Email/import", {"emails": {"e": {"blobId": _field(up, "blob_id", "blobId"),
                                                                  "mailboxIds": {_field(inbox, "id"): True}}}})
        assert imp is not None
        q = await client.call("Email/query", {"filter": {"text": "third"}})
        ids = _field(q, "ids")
        assert len(ids) == 1
        raw = await client.download(_field(up, "blob_id", "blobId"), name="m.eml", content_type="message/rfc822")
        assert raw == MSG
        async with AsyncWebSocketClient(client) as ws:
            await ws.enable_push(["Email"])
            async with ws.batch() as b:  # a round trip on the same socket: the enable has been processed
                echo = b.add("Core/echo", {"sync": True})
            assert echo.result == {"sync": True}
            changes = ws.notifications()
            await server.backends["1"].import_email(b"Subject: pushed\r\n\r\nx\r\n",
                                                    frozenset({_field(inbox, "id")}), frozenset(), None)
            async with asyncio.timeout(5):
                change = await changes.__anext__()
            await changes.aclose()
            assert "a1" in str(change)
        # jmaplib 3.0.1 leaves its notification stream open after close(): close it for it
        stream = ws._changes
        if stream is not None:
            stream.close()


def _items(resp: object) -> list[object]:
    lst = _field(resp, "items", "list")
    return list(lst)


def _field(obj: object, *names: str) -> object:
    for n in names:
        if isinstance(obj, dict) and n in obj:
            return obj[n]
        if hasattr(obj, n):
            return getattr(obj, n)
    raise AssertionError(f"none of {names} in {obj!r}")
