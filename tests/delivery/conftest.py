"""End-to-end harness: real directory (SQLite), real store (maildir), real SMTP listener on 127.0.0.1:0."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import trustme
from support.loopthread import LoopThread

from mailsrv.auth import Authenticator
from mailsrv.auth.passwords import Hasher
from mailsrv.config import AuthConfig, Config, LimitsConfig, ListenerConfig, ServerConfig
from mailsrv.directory import open_directory, open_sync
from mailsrv.net.listener import Listener
from mailsrv.net.service import ServiceContext
from mailsrv.smtp.server import SmtpService
from mailsrv.smtp.wiring import DirectoryBackend
from mailsrv.store import Store


@dataclass
class Site:
    cfg: Config
    data_dir: Path
    ports: dict[str, int]
    store: Store
    directory: Any
    loop: LoopThread
    client_ctx: ssl.SSLContext

    def inbox(self, address: str) -> list[bytes]:
        """Raw messages in a user's INBOX, read through the store API."""
        async def read() -> list[bytes]:
            acct = self.directory_sync.user_info(address)
            sacct = await self.store.account(str(acct["id"]), self.data_dir / acct["store"])
            view = await sacct.open_mailbox("INBOX")
            return [await sacct.read_message("INBOX", m.uid) for m in view.messages]

        return self.loop.run(read())  # type: ignore[no-any-return]

    directory_sync: Any = None


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    auth_cfg = AuthConfig(argon2_time_cost=1, argon2_memory_kib=8, allow_plaintext_loopback=False)
    cfg = replace(Config(server=ServerConfig(data_dir=data_dir, hostname="mx.example.test"),
                         limits=LimitsConfig(idle_timeout=30)), auth=auth_cfg)
    sd = open_sync(cfg.directory, data_dir)
    hasher = Hasher(auth_cfg)
    sd.add_domain("example.test")
    h, s = hasher.make("secret")
    sd.add_user("alice@example.test", password_hash=h, scram=s)
    sd.add_user("bob@example.test", password_hash=h, scram=s, may_send_outside=False)
    sd.add_user("full@example.test", quota_bytes=100)
    sd.add_alias("sales@example.test", "alice@example.test")
    sd.add_group("team@example.test")
    sd.add_member("team@example.test", "alice@example.test")
    sd.add_member("team@example.test", "bob@example.test")
    sd.add_member("team@example.test", "partner@remote.test")
    ca = trustme.CA()
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(sctx)
    cctx = ssl.create_default_context()
    ca.configure_trust(cctx)
    lt = LoopThread(timeout=120)

    async def setup() -> tuple[Any, Store, list[Listener], dict[str, int]]:
        directory = open_directory(cfg.directory, data_dir)
        store = Store(cfg.store, data_dir, hostname="mx.example.test")
        auth = Authenticator(directory, auth_cfg)
        backend = DirectoryBackend(directory, store, data_dir)
        listeners, ports = [], {}
        for name, proto, tls in (("mta", "smtp", "starttls"), ("sub", "submission", "starttls")):
            lcfg = ListenerConfig(protocol=proto, bind=("127.0.0.1:0",), tls=tls)  # type: ignore[arg-type]
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen(100)
            sock.setblocking(False)
            ports[name] = sock.getsockname()[1]
            ctx = ServiceContext(config=cfg, name=name, listener=lcfg, ssl_context=sctx)
            lst = Listener(name, lcfg, cfg.limits, [sock], SmtpService(ctx, backend=backend, sasl=auth), sctx)
            await lst.start()
            listeners.append(lst)
        return directory, store, listeners, ports

    directory, store, listeners, ports = lt.run(setup())
    site = Site(cfg, data_dir, ports, store, directory, lt, cctx, directory_sync=sd)
    yield site

    async def teardown() -> None:
        for lst in listeners:
            await lst.drain(2)
        await store.close()
        await directory.close()

    lt.run(teardown())
    lt.stop()
