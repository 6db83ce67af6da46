"""A message's 250 written from its delivery round's thread (mailsrv.smtp.early) over real sockets, a real
directory, a real store (its journal) and the real backend: the same bytes as the loop's reply, in order
with pipelined commands, only on plaintext sessions, only for a reply that cannot change once the copy is
durable, and never on a socket the session no longer owns."""

from __future__ import annotations

import re
import smtplib
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import trustme
import uvloop
from support.loopthread import LoopThread
from support.server import wait_until

from mailsrv import log
from mailsrv.config import Config, LimitsConfig, ListenerConfig, ServerConfig, SieveConfig
from mailsrv.directory import open_directory, open_sync
from mailsrv.net.listener import Listener
from mailsrv.net.service import ServiceContext
from mailsrv.sieve.scripts import put_script, set_active
from mailsrv.smtp import early, server
from mailsrv.smtp.server import SmtpService
from mailsrv.smtp.wiring import DirectoryBackend
from mailsrv.store import DeliveryResult, Store, account_root

from .test_inbound import MSG, Raw


@dataclass
class Site:
    port: int  # plaintext, STARTTLS offered
    tls_port: int  # implicit TLS (465)
    data_dir: Path
    store: Store
    listeners: list[Listener]
    loop: LoopThread
    client_ctx: ssl.SSLContext
    accts: dict[str, Any]
    warm: dict[str, int] = field(default_factory=dict)  # copies made before the test: not counted

    def root(self, user: str) -> Path:
        return account_root(self.data_dir, self.accts[user].id, self.accts[user].store)

    def copies(self, user: str) -> int:
        """Files of ``user``'s account in any new/ or cur/ (every folder)."""
        root = self.root(user)
        return sum(1 for d in ("new", "cur") for _ in root.rglob(f"{d}/*")) - self.warm.get(user, 0)


@pytest.fixture(params=["asyncio", "uvloop"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    cfg = Config(server=ServerConfig(data_dir=data_dir, hostname="mx.example.test"),
                 limits=LimitsConfig(idle_timeout=30))
    sd = open_sync(cfg.directory, data_dir)
    sd.add_domain("example.test")
    accts = {u: sd.add_user(f"{u}@example.test") for u in ("alice", "bob", "carol")}
    sd.add_group("team@example.test")
    sd.add_member("team@example.test", "alice@example.test")
    sd.add_member("team@example.test", "bob@example.test")
    root = account_root(data_dir, accts["carol"].id, accts["carol"].store)
    root.mkdir(parents=True, exist_ok=True)
    put_script(root, "main", 'require "fileinto"; fileinto "Lists";')
    set_active(root, "main")
    ca = trustme.CA()
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(sctx)
    cctx = ssl.create_default_context()
    ca.configure_trust(cctx)
    if request.param == "uvloop":  # the worker's loop: its transports and their sockets
        with mock.patch("asyncio.new_event_loop", uvloop.new_event_loop):
            lt = LoopThread(timeout=60)
    else:
        lt = LoopThread(timeout=60)

    async def setup() -> tuple[Any, Store, list[Listener], list[int]]:
        directory = open_directory(cfg.directory, data_dir)
        store = Store(cfg.store, data_dir, hostname="mx.example.test")
        await store.start()
        backend = DirectoryBackend(directory, store, data_dir, sieve=SieveConfig())
        listeners, ports = [], []
        for name, tls in (("mta", "starttls"), ("smtps", "implicit")):
            # trusted: may relay (a remote recipient goes to the queue)
            lcfg = ListenerConfig(protocol="smtp", bind=("127.0.0.1:0",), tls=tls,  # type: ignore[arg-type]
                                  trusted_networks=("127.0.0.0/8",))
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen(100)
            sock.setblocking(False)
            ports.append(sock.getsockname()[1])
            ctx = ServiceContext(config=cfg, name=name, listener=lcfg, ssl_context=sctx)
            lst = Listener(name, lcfg, cfg.limits, [sock], SmtpService(ctx, backend=backend), sctx)
            await lst.start()
            listeners.append(lst)
        return directory, store, listeners, ports

    directory, store, listeners, ports = lt.run(setup())
    site = Site(ports[0], ports[1], data_dir, store, listeners, lt, cctx, accts)
    # the filter looks at a recipient's Sieve state at its first message (which is the loop's to
    # answer): looked at here, so that the tests' messages see the plain keep
    _session(site.port, rcpts=("alice@example.test", "bob@example.test"))
    wait_until(lambda: site.copies("alice") == 1 and site.copies("bob") == 1)
    site.warm = {"alice": 1, "bob": 1}
    yield site

    async def teardown() -> None:
        for lst in listeners:
            await lst.drain(2)
        await store.close()
        await directory.close()

    lt.run(teardown())
    lt.stop()


def _delta(before: dict[str, int]) -> dict[str, int]:
    return {k: v - before[k] for k, v in early.stats.items()}


class Recorder:
    """Every byte a Raw client receives, kept (Raw keeps only what it has not parsed yet)."""

    def __init__(self, port: int) -> None:
        self.c = Raw(port)
        self.seen = b""

    def reply(self) -> tuple[int, list[str]]:
        code, lines = self.c.reply()
        self.seen += "".join(line + "\r\n" for line in lines).encode()
        return code, lines

    def send(self, data: bytes) -> None:
        self.c.send(data)

    def close(self) -> None:
        self.c.close()


def _session(port: int, msgs: int = 1, rcpts: tuple[str, ...] = ("alice@example.test",)) -> bytes:
    """A raw session sending ``msgs`` messages one command at a time; every byte received."""
    r = Recorder(port)
    try:
        assert r.reply()[0] == 220
        r.send(b"EHLO client.test\r\n")
        assert r.reply()[0] == 250
        for _ in range(msgs):
            r.send(b"MAIL FROM:<a@remote.test>\r\n")
            assert r.reply()[0] == 250
            for rc in rcpts:
                r.send(f"RCPT TO:<{rc}>\r\n".encode())
                assert r.reply()[0] == 250
            r.send(b"DATA\r\n")
            assert r.reply()[0] == 354
            r.send(MSG + b".\r\n")
            r.reply()
        r.send(b"QUIT\r\n")
        assert r.reply()[0] == 221
    finally:
        r.close()
    return r.seen


def _sid_free(wire: bytes) -> bytes:
    return re.sub(rb"id=[0-9a-f]+", b"id=SID", wire)


def test_the_early_250_is_the_loops_reply_byte_for_byte(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    before = dict(early.stats)
    with_early = _session(site.port, msgs=2)
    assert _delta(before) == {"offered": 2, "early": 2, "partial": 0, "late": 0}
    assert re.search(rb"\r\n250 2\.0\.0 OK id=[0-9a-f]+\r\n354 ", with_early) is None  # (one command at a time)
    monkeypatch.setattr(server, "EarlyReply", lambda transport: None)  # every reply from the loop
    before = dict(early.stats)
    without = _session(site.port, msgs=2)
    assert _delta(before) == {"offered": 0, "early": 0, "partial": 0, "late": 0}
    assert _sid_free(with_early) == _sid_free(without)
    assert with_early.count(b"250 2.0.0 OK id=") == 2
    wait_until(lambda: site.copies("alice") == 4)


def test_pipelined_commands_after_the_dot_are_answered_after_the_250(site: Site) -> None:
    before = dict(early.stats)
    r = Recorder(site.port)
    try:
        assert r.reply()[0] == 220
        r.send(b"EHLO client.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        assert [r.reply()[0] for _ in range(4)] == [250, 250, 250, 354]
        # RFC 2920 §3.1: the next transaction sent with the message's end
        r.send(MSG + b".\r\nMAIL FROM:<b@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        replies = [r.reply() for _ in range(4)]
        assert [code for code, _ in replies] == [250, 250, 250, 354]
        assert replies[0][1][0].startswith("250 2.0.0 OK id=") and replies[1][1] == ["250 2.1.0 Sender OK"]
        r.send(MSG + b".\r\nQUIT\r\n")
        code, lines = r.reply()
        assert code == 250 and lines[0].startswith("250 2.0.0 OK id=")
        assert r.reply()[0] == 221
    finally:
        r.close()
    assert _delta(before) == {"offered": 2, "early": 2, "partial": 0, "late": 0}
    wait_until(lambda: site.copies("alice") == 2)


def test_tls_sessions_take_the_loops_path(site: Site) -> None:
    before = dict(early.stats)
    with smtplib.SMTP("127.0.0.1", site.port, timeout=20) as c:
        c.starttls(context=site.client_ctx)
        c.ehlo("client.test")
        assert c.sendmail("a@remote.test", ["alice@example.test"], MSG) == {}
        assert c.noop()[0] == 250
    with smtplib.SMTP_SSL("127.0.0.1", site.tls_port, timeout=20, context=site.client_ctx) as c:
        c.ehlo("client.test")
        assert c.sendmail("a@remote.test", ["alice@example.test"], MSG) == {}
    # a plaintext message before STARTTLS is answered early; none after it
    with smtplib.SMTP("127.0.0.1", site.port, timeout=20) as c:
        assert c.sendmail("a@remote.test", ["alice@example.test"], MSG) == {}
        c.starttls(context=site.client_ctx)
        c.ehlo("client.test")
        assert c.sendmail("a@remote.test", ["alice@example.test"], MSG) == {}
    assert _delta(before) == {"offered": 1, "early": 1, "partial": 0, "late": 0}
    wait_until(lambda: site.copies("alice") == 4)


@pytest.mark.parametrize("rcpts, user, copies, armed", [
    (("alice@example.test", "bob@example.test"), "bob", 1, False),  # two recipients
    (("team@example.test",), "bob", 1, False),  # a group
    (("carol@example.test",), "carol", 1, True),  # a Sieve fileinto: armed, dropped by local delivery
    (("alice@example.test", "x@remote.test"), "alice", 1, False),  # a remote recipient (queued)
])
def test_other_messages_take_the_loops_path(site: Site, rcpts: tuple[str, ...], user: str, copies: int,
                                            armed: bool) -> None:
    before = dict(early.stats)
    wire = _session(site.port, rcpts=rcpts)
    assert _delta(before) == {"offered": 1, "early": 0, "partial": 0, "late": int(armed)}
    assert re.search(rb"\r\n250 2\.0\.0 OK id=[0-9a-f]+( queued as \w+)?\r\n221 ", wire), wire
    wait_until(lambda: site.copies(user) == copies)
    if user == "carol":
        assert list(site.root("carol").rglob("*Lists*/new/*"))


def test_a_failed_sync_gets_the_loops_451_and_no_250(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise OSError(5, "Input/output error")

    jr = site.store.journal
    assert jr is not None  # the worker's path: the journal's fdatasync is the round's sync
    monkeypatch.setattr(jr, "sync", broken)
    before = dict(early.stats)
    wire = _session(site.port)
    assert _delta(before) == {"offered": 1, "early": 0, "partial": 0, "late": 1}
    assert b"\r\n451 4.3.0 " in wire and b"OK id=" not in wire


def test_a_failed_copy_gets_the_loops_451_and_no_250(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    def job(spool: Path, targets: list[Any], *args: Any) -> Any:
        return [DeliveryResult(t, "tempfail", None, "test: no copy") for t in targets], [], []

    monkeypatch.setattr(site.store, "_deliver_job", job)
    before = dict(early.stats)
    wire = _session(site.port)
    assert _delta(before) == {"offered": 1, "early": 0, "partial": 0, "late": 1}
    assert b"\r\n451 4.3.0 " in wire and b"OK id=" not in wire


def _hold_rounds(site: Site, monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Delivery jobs wait (in the round's thread) until the first event is set; the second is set once a
    job waits."""
    release, waiting = threading.Event(), threading.Event()
    job = site.store._deliver_job

    def held(*args: Any) -> Any:
        waiting.set()
        assert release.wait(30)
        return job(*args)

    monkeypatch.setattr(site.store, "_deliver_job", held)
    return release, waiting


def _logged(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The events the server logs from now on."""
    events: list[str] = []
    emit = log.Logger._emit

    def recording(self: log.Logger, level: str, event: str, fields: dict[str, Any]) -> None:
        events.append(event)
        emit(self, level, event, fields)

    monkeypatch.setattr(log.Logger, "_emit", recording)
    return events


def _sent_with_round_held(site: Site, waiting: threading.Event) -> Raw:
    """A raw client that sent a message to alice (pipelined envelope), once its round's job waits."""
    c = Raw(site.port)
    assert c.reply()[0] == 220
    c.send(b"EHLO client.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    assert [c.reply()[0] for _ in range(4)] == [250, 250, 250, 354]
    c.send(MSG + b".\r\n")
    assert waiting.wait(10)
    return c


def _connections(site: Site) -> int:
    return len(site.listeners[0].connections)


def test_a_client_gone_after_the_dot_costs_nothing(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    release, waiting = _hold_rounds(site, monkeypatch)
    c = _sent_with_round_held(site, waiting)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # a reset, not a FIN
    c.close()
    release.set()
    wait_until(lambda: _connections(site) == 0)
    wait_until(lambda: site.copies("alice") == 1)  # durable, so delivered: the sender may retry, a duplicate
    monkeypatch.undo()
    assert _session(site.port).count(b"250 2.0.0 OK id=") == 1  # the server goes on


def test_a_session_cut_during_its_round_writes_nothing_afterwards(site: Site,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The session ends (the worker's drain cuts it) while its round runs: its hook finds the session's
    socket closed and sends nothing, neither to that client nor to a connection accepted since (which the
    kernel may give the cut one's descriptor number)."""
    events = _logged(monkeypatch)
    release, waiting = _hold_rounds(site, monkeypatch)
    a = _sent_with_round_held(site, waiting)

    async def cut() -> None:
        for conn in list(site.listeners[0].connections):
            assert conn.task is not None
            conn.task.cancel()

    site.loop.run(cut())
    wait_until(lambda: _connections(site) == 0)
    a.sock.settimeout(10)
    assert a.sock.recv(4096) == b""  # closed, no 250 (a 250 from the loop would need the round's answer)
    a.close()
    b = Recorder(site.port)  # accepted while a's round still waits
    try:
        assert b.reply()[0] == 220
        b.send(b"EHLO client.test\r\n")
        assert b.reply()[0] == 250
        wait_until(lambda: _connections(site) == 1)
        release.set()
        wait_until(lambda: site.copies("alice") == 1)  # a's message: its work was done, so it is delivered
        b.send(b"NOOP\r\n")
        assert b.reply() == (250, ["250 2.0.0 OK"])
        b.send(b"QUIT\r\n")
        assert b.reply()[0] == 221
        b.c.sock.settimeout(10)
        assert b.c.buf == b"" and b.c.sock.recv(4096) == b""  # nothing else, nothing foreign
    finally:
        b.close()
    assert b"OK id=" not in b.seen
    assert "session.crash" not in events and "smtp.early_reply_mismatch" not in events


class _Sock:
    """A socket stand-in for EarlyReply's dup: ``send`` answers from ``answers`` (a count or an error)."""

    def __init__(self, *answers: int | OSError) -> None:
        self.answers = list(answers)
        self.sent: list[bytes] = []
        self.closed = False

    def send(self, data: bytes, flags: int) -> int:
        assert flags & socket.MSG_DONTWAIT and flags & socket.MSG_NOSIGNAL
        a = self.answers.pop(0)
        if isinstance(a, OSError):
            raise a
        self.sent.append(data[:a])
        return a

    def close(self) -> None:
        self.closed = True


class _Ok:
    status = "ok"


class _Failed:
    status = "tempfail"


def _armed(sock: _Sock) -> tuple[early.EarlyReply, Any]:
    e = early.EarlyReply(None)
    e._sock = sock  # type: ignore[assignment]
    return e, e.arm(250, "2.0.0", "OK id=abc")


REPLY = b"250 2.0.0 OK id=abc\r\n"


def test_a_short_send_leaves_exactly_the_rest_to_the_loop() -> None:
    before = dict(early.stats)
    e, hook = _armed(_Sock(7))
    hook([_Ok()], None)
    assert e.take(REPLY) == REPLY[7:]
    assert _delta(before) == {"offered": 1, "early": 0, "partial": 1, "late": 0}


@pytest.mark.parametrize("results, err, answer", [
    ([_Ok()], None, BlockingIOError(11, "EAGAIN")),  # the socket's buffer is full
    ([_Ok()], None, BrokenPipeError(32, "EPIPE")),  # the peer is gone
    ([_Ok(), _Failed()], None, len(REPLY)),  # a copy failed: the loop's reply (its 250 or 451)
    ([_Ok()], OSError(5, "EIO"), len(REPLY)),  # the sync failed
    ([], None, len(REPLY)),
])
def test_no_send_or_a_failed_one_leaves_the_whole_reply_to_the_loop(results: list[Any], err: OSError | None,
                                                                     answer: int | OSError) -> None:
    sock = _Sock(answer)
    e, hook = _armed(sock)
    hook(results, err)
    assert e.take(b"451 4.3.0 later\r\n") == b"451 4.3.0 later\r\n"
    assert sock.sent == [] and e.take(REPLY) == REPLY  # disarmed: a late hook changes nothing either


def test_the_hook_of_a_closed_session_sends_nothing() -> None:
    sock = _Sock(len(REPLY))
    e, hook = _armed(sock)
    e.close()
    hook([_Ok()], None)
    assert sock.closed and sock.sent == [] and sock.answers == [len(REPLY)]
    assert e.take(REPLY) == REPLY


def test_a_reply_other_than_the_one_sent_is_logged_not_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    logged = _logged(monkeypatch)
    e, hook = _armed(_Sock(len(REPLY)))
    hook([_Ok()], None)
    assert e.take(b"451 4.3.0 Queue not available\r\n") == b""
    assert "smtp.early_reply_mismatch" in logged
