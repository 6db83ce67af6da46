"""SMTP test harness: a real Listener on 127.0.0.1:0 in a background loop, in-memory backend fakes."""

from __future__ import annotations

import base64
import errno
import os
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import trustme
from support.loopthread import LoopThread

from mailsrv.config import Config, LimitsConfig, ListenerConfig, SmtpConfig
from mailsrv.delivery.spool import FileSpool
from mailsrv.net.listener import Listener
from mailsrv.net.service import ServiceContext
from mailsrv.smtp.backend import SessionInfo, Spool, Transaction, Verdict
from mailsrv.smtp.server import SmtpService


@dataclass
class FakeAccount:
    address: str
    may_send_outside: bool = True
    aliases: tuple[str, ...] = ()


@dataclass
class Delivered:
    sender: str
    rcpts: list[str]
    data: bytes
    tx: Transaction


@dataclass
class FakeBackend:
    """example.test: alice, bob, full (over quota), group team = alice+bob."""

    spool_dir: Path
    delivered: list[Delivered] = field(default_factory=list)
    fail_next: Verdict | None = None

    async def check_sender(self, info: SessionInfo, sender: str) -> Verdict:
        acct = info.account
        if acct is not None and sender and sender.lower() not in (acct.address, *acct.aliases):
            return Verdict(553, "5.7.1", f"Sender address rejected: not owned by {acct.address}")
        return Verdict(250, "2.1.0", "OK")

    async def check_recipient(self, info: SessionInfo, tx: Transaction, address: str) -> Verdict:
        local, _, domain = address.rpartition("@")
        if domain.lower() != "example.test" and address != "postmaster":
            if info.account is None:
                return Verdict(554, "5.7.1", "Relay access denied")
            if not info.account.may_send_outside:
                return Verdict(550, "5.7.1", "You may not send outside the organisation")
            return Verdict(250, "2.1.5", "OK", route=("relay", address))
        if local == "full":
            return Verdict(452, "4.2.2", "Mailbox full")
        if local not in ("alice", "bob", "team", "\u7528\u6237") and address != "postmaster":
            return Verdict(550, "5.1.1", "No such user")
        return Verdict(250, "2.1.5", "OK", route=("local", local))

    def open_spool(self) -> Spool:
        return FileSpool(self.spool_dir)

    async def deliver(self, info: SessionInfo, tx: Transaction, spool: Spool) -> Verdict:
        if self.fail_next is not None:
            v, self.fail_next = self.fail_next, None
            return v
        self.delivered.append(Delivered(tx.sender, [r.address for r in tx.rcpts], spool.path.read_bytes(), tx))
        return Verdict(250, "2.0.0", f"OK queued as {info.sid}")


class FakeExchange:
    def __init__(self, accounts: dict[str, tuple[str, FakeAccount]]) -> None:
        self.accounts = accounts
        self.aborted = False

    async def step(self, data: bytes | None) -> Any:
        @dataclass
        class Challenge:
            data: bytes

        @dataclass
        class Success:
            account: Any

        @dataclass
        class Failure:
            reason: str

        if data is None:
            return Challenge(b"")
        parts = data.split(b"\0")
        if len(parts) != 3:
            return Failure("malformed")
        user, pw = parts[1].decode(), parts[2].decode()
        entry = self.accounts.get(user)
        if entry is None or entry[0] != pw:
            return Failure("bad password")
        return Success(entry[1])

    def abort(self) -> None:
        self.aborted = True


class FakeSasl:
    def __init__(self) -> None:
        self.accounts = {
            "alice@example.test": ("secret", FakeAccount("alice@example.test", aliases=("sales@example.test",))),
            "bob@example.test": ("hunter2", FakeAccount("bob@example.test", may_send_outside=False)),
        }

    def mechanisms(self, *, tls: bool, client_ip: str, channel_binding: bool = False) -> list[str]:
        return ["PLAIN", "LOGIN"]

    def sasl(self, mechanism: str, *, protocol: str, client_ip: str, tls: bool, channel_binding: Any = None) -> FakeExchange:
        assert mechanism == "PLAIN"
        return FakeExchange(self.accounts)


@dataclass
class RunningServer:
    port: int
    listener: Listener
    backend: FakeBackend
    client_ctx: ssl.SSLContext
    loop: LoopThread


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.stop()


@pytest.fixture
def make_server(tmp_path: Path, ca: trustme.CA, loop_thread: LoopThread) -> Iterator[Any]:
    started: list[Listener] = []

    def make(protocol: str = "smtp", tls: str = "starttls", smtp: SmtpConfig | None = None,
             limits: LimitsConfig | None = None, backend: FakeBackend | None = None,
             trusted: tuple[str, ...] = ()) -> RunningServer:
        sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert("localhost", "127.0.0.1").configure_cert(sctx)
        cctx = ssl.create_default_context()
        ca.configure_trust(cctx)
        lcfg = ListenerConfig(protocol=protocol, bind=("127.0.0.1:0",), tls=tls, trusted_networks=trusted)  # type: ignore[arg-type]
        cfg = Config(limits=limits or LimitsConfig(idle_timeout=20), listener={"l": lcfg})
        cfg = replace(cfg, smtp=smtp or SmtpConfig())
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(100)
        sock.setblocking(False)
        spool = tmp_path / "spool"
        spool.mkdir(exist_ok=True)
        be = backend or FakeBackend(spool)
        ctx = ServiceContext(config=cfg, name="l", listener=lcfg, ssl_context=sctx)
        service = SmtpService(ctx, backend=be, sasl=FakeSasl())
        lst = Listener("l", lcfg, cfg.limits, [sock], service, sctx)
        loop_thread.run(lst.start())
        started.append(lst)
        return RunningServer(sock.getsockname()[1], lst, be, cctx, loop_thread)

    yield make
    for lst in started:
        loop_thread.run(lst.drain(2))


def plain(user: str, pw: str) -> str:
    return base64.b64encode(f"\0{user}\0{pw}".encode()).decode()


@pytest.fixture
def disk_full(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """While ``full[0]``, every spool write creates its file and then fails with ENOSPC."""
    full = [True]
    original = FileSpool._write_sync

    def write(self: FileSpool, data: bytes, close: bool) -> None:
        if not full[0]:
            return original(self, data, close)
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(FileSpool, "_write_sync", write)
    return full
