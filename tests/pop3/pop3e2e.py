"""End-to-end helpers: a real ``mailsrv serve`` with users and mail seeded through the directory and store APIs."""

from __future__ import annotations

import asyncio
import poplib
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from support.server import ServerProcess, init_setup

from mailsrv import config as config_mod
from mailsrv.auth.passwords import Hasher
from mailsrv.directory import open_sync
from mailsrv.store import Store


@dataclass
class Setup:
    directory: Path
    cfg: config_mod.Config
    server: ServerProcess
    passwords: dict[str, str] = field(default_factory=dict)
    accounts: dict[str, object] = field(default_factory=dict)

    @property
    def cert(self) -> Path:
        return self.directory / "tls" / "cert.pem"

    def tls_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.cert))
        return ctx

    def port(self, name: str) -> int:
        return self.server.ports[name]

    def add_user(self, local: str, messages: list[bytes] = ()) -> str:  # type: ignore[assignment]
        """A fresh user of example.test with ``messages`` in INBOX; returns the address."""
        address = f"{local}@example.test"
        password = f"pw-{local}-Secret1"
        d = open_sync(self.cfg.directory, self.cfg.server.data_dir)
        try:
            if not d.is_local_domain("example.test"):
                d.add_domain("example.test")
            h, s = Hasher(self.cfg.auth).make(password)
            acct = d.add_user(address, password_hash=h, scram=s)
        finally:
            d.close()
        self.passwords[address] = password
        self.accounts[address] = acct
        if messages:
            asyncio.run(self.append(address, messages))
        return address

    async def append(self, address: str, messages: list[bytes]) -> list[int]:
        acct = self.accounts[address]
        store = Store(self.cfg.store, self.cfg.server.data_dir)
        try:
            sacct = await store.account(str(acct.id), self.cfg.server.data_dir / acct.store)  # type: ignore[attr-defined]
            return [await sacct.append("INBOX", m) for m in messages]
        finally:
            await store.close()

    async def inbox_uids(self, address: str) -> list[int]:
        acct = self.accounts[address]
        store = Store(self.cfg.store, self.cfg.server.data_dir)
        try:
            sacct = await store.account(str(acct.id), self.cfg.server.data_dir / acct.store)  # type: ignore[attr-defined]
            view = await sacct.open_mailbox("INBOX")
            return [m.uid for m in view.messages]
        finally:
            await store.close()

    def pop3(self, address: str, *, implicit: bool = False) -> poplib.POP3:
        """A logged-in poplib client: STLS on the plain listener, or implicit TLS."""
        if implicit:
            c: poplib.POP3 = poplib.POP3_SSL("127.0.0.1", self.port("pop3s"), context=self.tls_context(), timeout=20)
        else:
            c = poplib.POP3("127.0.0.1", self.port("pop3"), timeout=20)
            c.stls(self.tls_context())
        c.user(address)
        c.pass_(self.passwords[address])
        return c


#: listeners these tests use; the others are dropped from the generated setup so that a
#: protocol still being wired elsewhere (SMTP, JMAP) cannot stop the workers from starting
KEEP = ("pop3", "pop3s", "imap")


def keep_listeners(cfg_path: Path, keep: tuple[str, ...] = KEEP) -> None:
    out, skipping = [], False
    for line in cfg_path.read_text().splitlines():
        m = re.match(r"\[listener\.([^\]]+)\]", line)
        if m:
            skipping = m.group(1) not in keep
        elif line.startswith("["):
            skipping = False
        if not skipping:
            out.append(line)
    cfg_path.write_text("\n".join(out) + "\n")


def start(directory: Path, workers: int = 2) -> Setup:
    cfg_path = init_setup(directory, workers=workers)
    keep_listeners(cfg_path)
    cfg = config_mod.load(cfg_path)
    server = ServerProcess(cfg_path)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return Setup(directory, cfg, server)
