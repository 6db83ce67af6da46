"""A JMAP server on a real 127.0.0.1 socket (port 0) over in-memory backends, and a small client."""

from __future__ import annotations

import asyncio
import base64
import io
import ipaddress
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from mailsrv.config import JmapConfig
from mailsrv.directory import LoginStamp
from mailsrv.jmap.blobs import UploadStore
from mailsrv.jmap.limits import ConnectionLimiter, ConnLimits, LimitedSockSite
from mailsrv.jmap.memory import MemoryBackend
from mailsrv.jmap.server import JmapApp, Principal
from mailsrv.util.fsio import FileIO

USING = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"]


@dataclass
class FakeAccount:
    id: int
    address: str


@dataclass
class LoginResult:
    ok: bool
    account: FakeAccount | None = None
    scopes: frozenset[str] = frozenset({"mail"})
    delay: float = 0.0


@dataclass
class FakeAuth:
    """The mailsrv.auth.Authenticator surface JMAP uses (docs/directory-api.md)."""

    users: dict[str, tuple[int, str]] = field(default_factory=dict)  # address -> (id, password)
    tokens: dict[str, tuple[str, frozenset[str]]] = field(default_factory=dict)  # token -> (address, scopes)
    logins: int = 0
    stamps: int = 0
    generations: dict[int, int] = field(default_factory=dict)  # account id -> credentials generation

    def plaintext_allowed(self, *, tls: bool, client_ip: str) -> bool:
        return tls or ipaddress.ip_address(client_ip).is_loopback

    async def login(self, username: str, password: str, *, protocol: str, client_ip: str, tls: bool) -> LoginResult:
        self.logins += 1
        u = self.users.get(username)
        if u is None or u[1] != password:
            return LoginResult(False)
        return LoginResult(True, FakeAccount(u[0], username))

    async def login_stamp(self, account_id: int) -> LoginStamp | None:
        self.stamps += 1
        return LoginStamp(self.generations.get(account_id, 0), True)

    async def bearer(self, token: str, *, protocol: str, client_ip: str) -> LoginResult:
        t = self.tokens.get(token)
        if t is None:
            return LoginResult(False)
        uid = self.users[t[0]][0]
        return LoginResult(True, FakeAccount(uid, t[0]), scopes=t[1])


@dataclass
class FakeSubmitter:
    """Records what would be sent (the real DirectorySubmitter is tested under mailsrv serve)."""

    sent: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    held: dict[str, tuple[float, str, list[str], bytes]] = field(default_factory=dict)  # delayed sends by queue id
    canceled: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def may_send_as(self, principal: Any, address: str) -> bool:
        return bool(address == "sales@example.test")

    async def submit(self, principal: Any, raw: bytes, mail_from: str, rcpts: list[str]) -> dict[str, tuple[str, str]]:
        self.sent.append((mail_from, rcpts, raw))
        self.changed.set()
        return {r: ("yes", "250 2.0.0 OK") for r in rcpts}

    async def submit_later(self, principal: Any, raw: bytes, mail_from: str, rcpts: list[str],
                           send_at: float) -> tuple[str | None, dict[str, tuple[str, str]]]:
        qid = f"q{len(self.held) + 1}"
        self.held[qid] = (send_at, mail_from, rcpts, raw)
        return qid, {r: ("queued", f"250 2.0.0 held as {qid}") for r in rcpts}

    async def cancel(self, queue_id: str) -> bool:
        held = self.held.get(queue_id)
        if held is None or held[0] - time.time() <= 2.0 or queue_id in self.canceled:
            return False
        self.canceled.append(queue_id)
        return True


@dataclass(frozen=True)
class FakeGrant:
    """The directory's Grant as JmapApp reads it: whose account, and whether read-only."""

    owner: FakeAccount
    read_only: bool = True


class Server:
    def __init__(self, tmp: Path, config: JmapConfig | None = None, factory: Any = None,
                 push_ssl: Any = None, limits: ConnLimits | None = None) -> None:
        self.config = config or JmapConfig()
        # with limits: served as JmapService serves a listener (limiter, keep-alive timeout, LimitedSockSite)
        self.limiter = ConnectionLimiter(limits) if limits is not None else None
        self.auth = FakeAuth({"alice@example.test": (1, "secret"), "bob@example.test": (2, "hunter2")},
                             {"tok-alice": ("alice@example.test", frozenset({"mail"})),
                              "tok-admin": ("alice@example.test", frozenset({"admin"}))})
        self.backends: dict[str, MemoryBackend] = {}
        self.io = FileIO(2, "jmap-test")
        self.uploads = UploadStore(tmp / "uploads", self.io)
        self.submitter = FakeSubmitter()
        #: principal id -> the accounts shared with it (tests fill it)
        self.shared: dict[str, list[FakeGrant]] = {}
        self.app = JmapApp(self.config, self.auth, factory or self.backend_for, self.uploads, b"k" * 32, tls=False,
                           submitter=self.submitter, push_ssl=push_ssl, limiter=self.limiter,
                           grants=self.grants_for)
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def grants_for(self, p: Principal) -> list[FakeGrant]:
        return list(self.shared.get(p.id, []))

    async def backend_for(self, p: Principal) -> MemoryBackend:
        be = self.backends.get(p.id)
        if be is None:
            be = self.backends[p.id] = MemoryBackend(f"a{p.id}", p.username)
        return be

    async def start(self, ssl_context: Any = None) -> None:
        extra: dict[str, Any] = {}
        if self.limiter is not None:
            extra["keepalive_timeout"] = self.limiter.limits.idle_timeout
        self.runner = web.AppRunner(self.app.make_app(), access_log=None, handler_cancellation=True, **extra)
        await self.runner.setup()
        if self.limiter is not None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            site: web.BaseSite = LimitedSockSite(self.runner, sock, self.limiter, ssl_context=ssl_context)
            port = sock.getsockname()[1]
            await site.start()
        else:
            site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=ssl_context)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.port = port
        self.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"

    async def stop(self) -> None:
        await self.app.push.close()
        await self.app.vacation.close()
        if self.runner is not None:
            await self.runner.cleanup()
        self.io.shutdown()


def basic(user: str = "alice@example.test", password: str = "secret") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


class Client:
    def __init__(self, server: Server, http: aiohttp.ClientSession, headers: dict[str, str] | None = None) -> None:
        self.server = server
        self.http = http
        self.headers = headers if headers is not None else basic()
        self.account_id = "a1"

    async def api_raw(self, body: Any) -> tuple[int, Any]:
        data = body if isinstance(body, bytes) else __import__("json").dumps(body).encode()
        async with self.http.post(self.server.url + "/jmap/api", data=io.BytesIO(data), headers={
            **self.headers, "Content-Type": "application/json"}) as r:
            return r.status, await r.json(content_type=None)

    async def call(self, *calls: list[Any], using: list[str] | None = None) -> list[list[Any]]:
        status, body = await self.api_raw({"using": using or USING, "methodCalls": list(calls)})
        assert status == 200, body
        return body["methodResponses"]

    async def one(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        args = {"accountId": self.account_id, **args}
        (resp,) = await self.call([name, args, "c0"])
        assert resp[0] == name, resp
        return resp[1]

    async def upload(self, data: bytes, ctype: str = "message/rfc822") -> dict[str, Any]:
        async with self.http.post(f"{self.server.url}/jmap/upload/{self.account_id}/", data=io.BytesIO(data),
                                  headers={**self.headers, "Content-Type": ctype}) as r:
            assert r.status == 201, await r.text()
            return await r.json()

    async def mailbox_id(self, role: str) -> str:
        got = await self.one("Mailbox/get", {"ids": None})
        return next(m["id"] for m in got["list"] if m["role"] == role)

    async def import_message(self, raw: bytes, role: str = "inbox", keywords: dict[str, bool] | None = None) -> str:
        blob = await self.upload(raw)
        mid = await self.mailbox_id(role)
        res = await self.one("Email/import", {"emails": {"k": {"blobId": blob["blobId"], "mailboxIds": {mid: True},
                                                               "keywords": keywords or {}}}})
        assert res["created"] is not None, res
        return str(res["created"]["k"]["id"])
