"""The ManageSieve connection loop on a real loopback socket (in-process listener, a fake authenticator,
the real script storage in a temporary directory): timeouts, limits, LOGIN continuations, storage
failures, a draining worker."""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mailsrv.auth import Challenge, Failure, Success
from mailsrv.config import Config, LimitsConfig, ListenerConfig, SieveConfig
from mailsrv.managesieve.server import ManageSieveService
from mailsrv.managesieve.storage import AccountScripts, Scripts, pool_runner
from mailsrv.net.listener import Listener
from mailsrv.net.service import ServiceContext
from mailsrv.sieve import scripts


@dataclass(frozen=True)
class Acct:
    id: int
    address: str


ALICE = Acct(1, "alice@example.test")


class Exchange:
    """LOGIN as mailsrv.auth runs it: user name and password challenges, then the check."""

    def __init__(self, mech: str) -> None:
        self.mech = mech
        self.got: list[bytes] = []
        self.aborted = False

    async def step(self, data: bytes | None) -> Any:
        if self.mech == "PLAIN":
            assert data is not None
            ok = data == b"\0alice@example.test\0secret"
            return Success(ALICE, "") if ok else Failure("bad password")
        if data is not None:
            self.got.append(data)
        if len(self.got) == 0:
            return Challenge(b"Username:")
        if len(self.got) == 1:
            return Challenge(b"Password:")
        ok = self.got == [b"alice@example.test", b"secret"]
        return Success(ALICE, "") if ok else Failure("bad password")

    def abort(self) -> None:
        self.aborted = True


class FakeAuth:
    def plaintext_allowed(self, *, tls: bool, client_ip: str) -> bool:
        return True

    def mechanisms(self, *, tls: bool, client_ip: str, channel_binding: bool) -> list[str]:
        return ["PLAIN", "LOGIN"]

    def sasl(self, mechanism: str, **kw: Any) -> Exchange:
        return Exchange(mechanism)


@dataclass
class Served:
    port: int
    root: Path
    listener: Listener


async def serve(tmp_path: Path, *, limits: LimitsConfig, root: Path | None = None) -> Served:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.setblocking(False)
    port = sock.getsockname()[1]
    lcfg = ListenerConfig(protocol="managesieve", bind=(f"127.0.0.1:{port}",), tls="none")
    cfg = Config(limits=limits, listener={"managesieve": lcfg}, sieve=SieveConfig(max_script_size=100))
    ctx = ServiceContext(config=cfg, name="managesieve", listener=lcfg, ssl_context=None)
    where = root if root is not None else tmp_path / "acct"

    async def open_scripts(account: Any) -> Scripts:
        return AccountScripts(where, cfg.sieve, pool_runner())

    service = ManageSieveService(ctx, auth=FakeAuth(), open_scripts=open_scripts)  # type: ignore[arg-type]
    lst = Listener("managesieve", lcfg, cfg.limits, [sock], service, None)
    await lst.start()
    return Served(port, where, lst)


@pytest.fixture
async def srv(tmp_path: Path) -> AsyncIterator[Served]:
    s = await serve(tmp_path, limits=LimitsConfig(max_line_length=200, max_errors=5, idle_timeout=30))
    yield s
    await s.listener.drain(1)


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    while not (await r.readline()).startswith(b"OK"):
        pass
    return r, w


async def until_done(r: asyncio.StreamReader) -> list[bytes]:
    out = []
    while True:
        line = await asyncio.wait_for(r.readline(), 10)
        if not line:
            raise ConnectionError("closed")
        out.append(line)
        if line[:2] in (b"OK", b"NO") or line[:3] == b"BYE":
            return out


async def test_login_with_continuations_and_limits(srv: Served) -> None:
    r, w = await connect(srv.port)
    w.write(b'AUTHENTICATE "LOGIN"\r\n')
    assert await r.readline() == b'"' + base64.b64encode(b"Username:") + b'"\r\n'
    w.write(b'"' + base64.b64encode(b"alice@example.test") + b'"\r\n')
    assert await r.readline() == b'"' + base64.b64encode(b"Password:") + b'"\r\n'
    w.write(b"{8+}\r\n" + base64.b64encode(b"secret") + b"\r\n")  # a literal response
    assert (await until_done(r))[-1] == b'OK "Authentication successful"\r\n'
    # a line over max_line_length: NO, and the session goes on
    w.write(b"NOOP " + b"x" * 300 + b"\r\nNOOP\r\n")
    assert (await until_done(r))[-1] == b'NO "Line too long"\r\n'
    assert (await until_done(r))[-1].startswith(b"OK")
    # a literal over [sieve] max_script_size (100 here): read past, refused
    w.write(b'PUTSCRIPT "a" {150+}\r\n' + b"#" * 149 + b"\n\r\nPUTSCRIPT \"a\" {6+}\r\nkeep;\n\r\n")
    assert (await until_done(r))[-1].startswith(b"NO (QUOTA/MAXSIZE)")
    assert (await until_done(r))[-1] == b'OK "Script stored"\r\n'
    assert scripts.get_script(srv.root, "a") == "keep;\n"
    w.write(b"LOGOUT\r\n")
    assert (await until_done(r))[-1].startswith(b"OK")
    assert await r.read() == b""
    w.close()


async def test_bad_base64_and_cancel_abort_the_exchange(srv: Served) -> None:
    r, w = await connect(srv.port)
    w.write(b'AUTHENTICATE "PLAIN" "not base64!"\r\n')
    assert (await until_done(r))[-1].startswith(b"NO")
    w.write(b'AUTHENTICATE "LOGIN"\r\n')
    await r.readline()
    w.write(b'"*"\r\n')
    assert (await until_done(r))[-1] == b'NO "Authentication cancelled"\r\n'
    w.write(b'AUTHENTICATE "PLAIN" "' + base64.b64encode(b"\0alice@example.test\0wrong") + b'"\r\n')
    assert (await until_done(r))[-1] == b'NO "Authentication failed"\r\n'
    w.write(b'AUTHENTICATE "CRAM-MD5"\r\n')
    assert (await until_done(r))[-1].startswith(b"NO")
    w.close()


async def test_idle_timeout_says_bye(tmp_path: Path) -> None:
    s = await serve(tmp_path, limits=LimitsConfig(idle_timeout=0.3))
    try:
        r, w = await connect(s.port)
        line = await asyncio.wait_for(r.readline(), 10)
        assert line.startswith(b'BYE "Idle timeout')
        assert await r.read() == b""
        w.close()
    finally:
        await s.listener.drain(1)


async def test_storage_failure_is_trylater(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    s = await serve(tmp_path, limits=LimitsConfig(), root=blocker / "acct")
    try:
        r, w = await connect(s.port)
        w.write(b'AUTHENTICATE "PLAIN" "' + base64.b64encode(b"\0alice@example.test\0secret") + b'"\r\n')
        assert (await until_done(r))[-1].startswith(b"OK")
        w.write(b'PUTSCRIPT "a" "keep;"\r\nLISTSCRIPTS\r\n')
        assert (await until_done(r))[-1].startswith(b"NO (TRYLATER)")
        assert (await until_done(r))[-1].startswith(b"NO (TRYLATER)")
        w.write(b"NOOP\r\n")  # the session goes on
        assert (await until_done(r))[-1].startswith(b"OK")
        w.close()
    finally:
        await s.listener.drain(1)


async def test_draining_worker_says_bye_at_the_next_command(tmp_path: Path) -> None:
    s = await serve(tmp_path, limits=LimitsConfig())
    r, w = await connect(s.port)
    drain = asyncio.create_task(s.listener.drain(0.05))
    line = await asyncio.wait_for(r.readline(), 10)
    assert line == b'BYE (TRYLATER) "Server shutting down"\r\n'
    await drain
    w.close()


async def test_too_many_commands_before_login(srv: Served) -> None:
    from mailsrv.managesieve.session import MAX_COMMANDS_BEFORE_AUTH

    r, w = await connect(srv.port)
    w.write(b"NOOP\r\n" * MAX_COMMANDS_BEFORE_AUTH)
    for _ in range(MAX_COMMANDS_BEFORE_AUTH):
        assert (await until_done(r))[-1] == b'OK "Done"\r\n'
    w.write(b"NOOP\r\n")
    assert (await until_done(r))[-1] == b'BYE "Too many commands before login"\r\n'
    assert await r.read() == b""
    w.close()


async def test_random_garbage_never_breaks_the_server(srv: Served) -> None:
    """Random bytes (with line ends, quotes, braces) on several connections: each gets NO/BYE answers or
    is closed, and a new connection is still served."""
    import random

    rng = random.Random(5804)
    alphabet = b'\r\n{}+"\\ ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\x00\xff'
    for _ in range(5):
        r, w = await asyncio.open_connection("127.0.0.1", srv.port)
        junk = bytes(rng.choice(alphabet) for _ in range(3000))
        w.write(junk + b"\r\n")
        try:
            await w.drain()
        except ConnectionError:
            pass
        got = b""
        try:
            async with asyncio.timeout(10):
                # the server answers and closes at the error budget, or waits for the rest of a literal
                while chunk := await r.read(65536):
                    got += chunk
        except TimeoutError:
            assert b"{" in junk  # only a literal still being waited for keeps the connection open
        assert got.startswith(b'"IMPLEMENTATION"')
        assert b"NO" in got or b"BYE" in got
        w.close()
    r, w = await connect(srv.port)
    w.write(b'AUTHENTICATE "PLAIN" "' + base64.b64encode(b"\0alice@example.test\0secret") + b'"\r\nNOOP\r\n')
    assert (await until_done(r))[-1].startswith(b"OK")
    assert (await until_done(r))[-1].startswith(b"OK")
    w.close()
