"""IMAP test helpers: a real listener on 127.0.0.1 port 0 served by a loop in a thread, a raw line client."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailsrv.config import Config, ImapConfig, LimitsConfig, ListenerConfig, ServerConfig, TlsConfig
from mailsrv.imap.memory import MemoryAuth, MemoryStore
from mailsrv.imap.server import ImapService
from mailsrv.imap.session import SessionConfig
from mailsrv.net.listener import Listener
from mailsrv.net.service import ServiceContext

USERS = {"alice": "wonderland", "bob": "builder"}


@dataclass
class ServerHandle:
    host: str
    port: int
    loop: asyncio.AbstractEventLoop
    store: Any
    service: ImapService
    extra: dict[str, Any] = field(default_factory=dict)

    def call(self, coro: Any, timeout: float = 10.0) -> Any:
        """Run a coroutine on the server's loop (e.g. a delivery into the store) and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


def start_server(*, tls: str = "none", ssl_context: ssl.SSLContext | None = None,
                 session_config: SessionConfig | None = None, limits: LimitsConfig | None = None,
                 max_line_length: int | None = None, setup: Any = None,
                 teardown: Any = None, data_dir: Path | None = None,
                 tls_files: tuple[Path, Path] | None = None,
                 imap: ImapConfig | None = None) -> tuple[ServerHandle, Any]:
    """Serve IMAP on 127.0.0.1:0 (``imap``: the ``[imap]`` section, default values without it). ``setup()`` (a coroutine function run on the server loop)
    returns ``(auth, store)`` or ``(auth, store, search)`` to use instead of the in-memory ones; ``teardown(store)`` closes them."""
    loop = asyncio.new_event_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    host, port = sock.getsockname()
    lcfg = ListenerConfig(protocol="imap", bind=(f"127.0.0.1:{port}",), tls=tls,  # type: ignore[arg-type]
                          max_line_length=max_line_length)
    limits = limits or LimitsConfig()
    server_cfg = ServerConfig(data_dir=data_dir or Path("/nonexistent/mailsrv-test"))
    tls_cfg = TlsConfig(cert=tls_files[0], key=tls_files[1]) if tls_files else TlsConfig()
    cfg = Config(server=server_cfg, tls=tls_cfg, limits=limits, listener={"imap": lcfg}, imap=imap or ImapConfig())
    ctx = ServiceContext(config=cfg, name="imap", listener=lcfg, ssl_context=ssl_context)
    started = threading.Event()
    holder: dict[str, Any] = {}

    async def begin() -> None:
        objs = (await setup()) if setup is not None else (MemoryAuth(USERS), MemoryStore())
        auth, store, *more = objs
        service = ImapService(ctx, auth=auth, store=store, search=more[0] if more else None,
                              session_config=session_config)
        listener = Listener("imap", lcfg, limits, [sock], service, ssl_context)
        holder.update(store=store, service=service, listener=listener)
        await listener.start()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(begin())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    handle = ServerHandle(host, port, loop, holder["store"], holder["service"])

    def stop() -> None:
        asyncio.run_coroutine_threadsafe(holder["listener"].drain(0.2), loop).result(15)
        if teardown is not None:
            asyncio.run_coroutine_threadsafe(teardown(holder["store"]), loop).result(15)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        sock.close()

    return handle, stop


class Raw:
    """A tiny line client for wire-exact assertions."""

    #: clients not yet closed; the conftest closes what a failed test left open
    opened: weakref.WeakSet[Raw] = weakref.WeakSet()

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.f = self.sock.makefile("rb")
        Raw.opened.add(self)
        self.greeting = self.f.readline()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        return self.f.readline()

    def read(self, n: int) -> bytes:
        return self.f.read(n)

    def cmd(self, line: bytes) -> list[bytes]:
        """Send ``line`` (tag first) and read up to and including its tagged completion."""
        tag = line.split(b" ", 1)[0]
        self.send(line + b"\r\n")
        return self.until(tag)

    def until(self, tag: bytes) -> list[bytes]:
        out = []
        while True:
            ln = self.f.readline()
            if not ln:
                raise ConnectionError(f"closed; got {out!r}")
            out.append(ln)
            if ln.startswith(tag + b" "):
                return out

    def close(self) -> None:
        Raw.opened.discard(self)
        self.f.close()
        self.sock.close()


def login(srv: ServerHandle, user: str, password: str = "wonderland") -> Raw:
    """A :class:`Raw` client logged in as ``user`` (closed by the conftest if the test fails)."""
    c = Raw(srv.host, srv.port)
    out = c.cmd(b"l LOGIN " + user.encode() + b" " + password.encode())
    assert out[-1].startswith(b"l OK"), out
    return c


def ok(c: Raw, line: bytes) -> list[bytes]:
    """Send a command line; its responses, asserting a tagged OK."""
    out = c.cmd(line)
    assert out[-1].split(b" ")[1] == b"OK", out
    return out


@contextmanager
def serve_real_store(tmp_path: Path, jobs: list[Any] | None = None, *, store_config: Any = None,
                     quota_bytes: int | None = None, users: tuple[str, ...] = ("alice@example.test",),
                     domain_storage: int | None = None, **server: Any) -> Iterator[ServerHandle]:
    """IMAP over a real directory and maildir store in ``tmp_path``: ``users`` of example.test with
    password wonderland (and ``quota_bytes``), the domain's storage limit ``domain_storage`` wired
    as the worker does; every store pool job's function is appended to ``jobs`` (when given).
    ``server``: more :func:`start_server` arguments (TLS)."""
    from mailsrv.auth import Authenticator
    from mailsrv.auth.passwords import Hasher
    from mailsrv.config import AuthConfig, DirectoryConfig
    from mailsrv.directory import open_directory, open_sync
    from mailsrv.store import Store

    auth_cfg = AuthConfig(allow_plaintext_loopback=True, argon2_time_cost=1, argon2_memory_kib=256)
    dcfg = DirectoryConfig()
    sd = open_sync(dcfg, tmp_path)
    sd.add_domain("example.test")
    pw, scram = Hasher(auth_cfg).make("wonderland")
    for user in users:
        sd.add_user(user, password_hash=pw, scram=scram, quota_bytes=quota_bytes)
    if domain_storage is not None:
        # may be overbooked on purpose (the directory refuses that for new users; an operator may lower it later)
        sd.set_domain("example.test", max_storage=domain_storage)
    sd.close()
    objects: dict[str, Any] = {}

    async def setup() -> tuple[Any, Any]:
        d = objects["directory"] = open_directory(dcfg, tmp_path)
        store = Store(store_config, tmp_path)
        if domain_storage is not None:
            store.set_domain_quota_source(d.domain_quota)  # as the worker wires it
        if jobs is not None:
            run = store.io.run

            async def counting(fn: Any, *args: Any) -> Any:
                jobs.append(fn)
                return await run(fn, *args)

            store.io.run = counting  # type: ignore[method-assign]
        return Authenticator(d, auth_cfg), store

    async def teardown(store: Store) -> None:
        await store.close()
        await objects["directory"].close()

    handle, stop = start_server(setup=setup, teardown=teardown, data_dir=tmp_path, **server)
    try:
        yield handle
    finally:
        stop()
