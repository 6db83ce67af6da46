"""Policy test harness: a local authoritative DNS server, a real clamd, and SMTP with the policy wired in.

Nothing reaches real DNS: every resolver here points at :class:`DnsServer` on
127.0.0.1, which answers NXDOMAIN for anything it does not hold.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from support.loopthread import LoopThread
from support.server import wait_until

from mailsrv.config import Config, LimitsConfig, ListenerConfig, PolicyConfig
from mailsrv.delivery.spool import FileSpool
from mailsrv.net.dns import Resolver
from mailsrv.net.listener import Listener
from mailsrv.net.service import ServiceContext
from mailsrv.policy.clamd import Clamd
from mailsrv.policy.pipeline import Policy
from mailsrv.policy.state import PolicyState
from mailsrv.smtp.backend import SessionInfo, Spool, Transaction, Verdict
from mailsrv.smtp.server import SmtpService

# The EICAR test file (eicar.org): every scanner reports it, it harms nothing.
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
#: A second test pattern of our own, for the .ndb body signature.
TEST_PATTERN = b"MAILSRV-POLICY-TEST-VIRUS-PATTERN-7b1f"


def txt_rdata(text: str) -> str:
    """A TXT value split into <=255-octet character-strings, quoted for dnspython."""
    raw = text.encode()
    parts = [raw[i:i + 255] for i in range(0, len(raw), 255)] or [b""]
    return " ".join('"' + p.decode().replace("\\", "\\\\").replace('"', '\\"') + '"' for p in parts)


class DnsServer:
    """Authoritative answers from ``records`` over UDP and TCP on 127.0.0.1, in two threads.

    A name in ``servfail`` answers SERVFAIL; one in ``drop`` is never answered
    (the client times out). Unknown names are NXDOMAIN; known names without
    the asked type are NOERROR with no data. UDP answers over 512 octets are
    truncated (TC) so the client retries over TCP.
    """

    def __init__(self) -> None:
        self.records: dict[str, list[tuple[str, str]]] = defaultdict(list)
        self.servfail: set[str] = set()
        self.drop: set[str] = set()
        self.queries: list[tuple[str, str]] = []
        for _ in range(50):  # the kernel's free UDP port may be taken for TCP: try another
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.bind(("127.0.0.1", 0))
            self.port = self.udp.getsockname()[1]
            self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                self.tcp.bind(("127.0.0.1", self.port))
                break
            except OSError:
                self.udp.close()
                self.tcp.close()
        self.tcp.listen(16)
        for s in (self.udp, self.tcp):
            s.settimeout(0.1)  # lets the threads see close() promptly
        self._stop = False
        self._threads = [threading.Thread(target=self._serve_udp, daemon=True),
                         threading.Thread(target=self._serve_tcp, daemon=True)]
        for t in self._threads:
            t.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add(self, name: str, rdtype: str, value: str) -> None:
        if rdtype == "TXT":
            value = txt_rdata(value)
        self.records[name.lower().rstrip(".")].append((rdtype, value))

    def answer(self, wire: bytes) -> bytes | None:
        q = dns.message.from_wire(wire)
        resp = dns.message.make_response(q)
        resp.flags |= dns.flags.AA
        question = q.question[0]
        name = question.name.to_text().rstrip(".").lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rdtype))
        if name in self.drop:
            return None
        if name in self.servfail:
            resp.set_rcode(dns.rcode.SERVFAIL)
            return resp.to_wire()
        if name not in self.records:
            resp.set_rcode(dns.rcode.NXDOMAIN)
            return resp.to_wire()
        values = [v for t, v in self.records[name] if t == rdtype]
        if values:
            resp.answer.append(dns.rrset.from_text_list(question.name, 60, "IN", rdtype, values))
        return resp.to_wire()

    def _serve_udp(self) -> None:
        while not self._stop:
            try:
                data, peer = self.udp.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                out = self.answer(data)
            except Exception:  # a malformed query gets no answer
                continue
            if out is not None:
                if len(out) > 512:
                    msg = dns.message.from_wire(out)
                    msg.flags |= dns.flags.TC
                    msg.answer.clear()
                    out = msg.to_wire()
                self.udp.sendto(out, peer)

    def _serve_tcp(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.tcp.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(5)
            with conn:
                try:
                    head = conn.recv(2, socket.MSG_WAITALL)
                    (n,) = struct.unpack("!H", head)
                    out = self.answer(conn.recv(n, socket.MSG_WAITALL))
                    if out is not None:
                        conn.sendall(struct.pack("!H", len(out)) + out)
                except (OSError, struct.error):
                    pass

    def close(self) -> None:
        self._stop = True
        for t in self._threads:
            t.join(timeout=5)
        self.udp.close()
        self.tcp.close()


@pytest.fixture
def dnsserver() -> Iterator[DnsServer]:
    srv = DnsServer()
    yield srv
    srv.close()


@pytest.fixture
def resolver(dnsserver: DnsServer) -> Resolver:
    return Resolver([dnsserver.address], timeout=1.0)


# -- clamd ---------------------------------------------------------------------------------


@dataclass
class ClamdProcess:
    socket: Path
    proc: subprocess.Popen[bytes]


def clamd_binary() -> str | None:
    for cand in (shutil.which("clamd"), "/usr/sbin/clamd"):
        if cand and Path(cand).exists():
            return cand
    return None


def _missing_peer(message: str) -> None:
    """A missing Debian peer fails in CI (make test installs it); elsewhere the test may skip."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClamdProcess]:
    """A real clamd on a temporary unix socket with a signature database of our own (no freshclam)."""
    binary = clamd_binary()
    if binary is None:
        _missing_peer("clamd not installed: apt-get install clamav-daemon (tools/install-peers.sh does it as root)")
    d = tmp_path_factory.mktemp("clamd")
    db = d / "db"
    db.mkdir()
    (db / "mailsrv-test.hdb").write_text(f"{hashlib.md5(EICAR).hexdigest()}:{len(EICAR)}:Mailsrv.Test.EICAR\n")
    (db / "mailsrv-test.ndb").write_text(
        f"Mailsrv.Test.EICAR-Body:0:*:{b'EICAR-STANDARD-ANTIVIRUS-TEST-FILE'.hex()}\n"
        f"Mailsrv.Test.Pattern:0:*:{TEST_PATTERN.hex()}\n")
    sock = d / "clamd.sock"
    conf = d / "clamd.conf"
    conf.write_text(f"Foreground yes\nLocalSocket {sock}\nDatabaseDirectory {db}\nLogFile {d / 'clamd.log'}\n"
                    f"TemporaryDirectory {d}\nStreamMaxLength 30M\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    client = Clamd(str(sock), timeout=5)
    try:  # each ping fails fast until clamd listens
        _wait_peer(lambda: proc.poll() is not None or asyncio.run(client.ping()), deadline, d / "clamd.log",
                   lambda: "clamd did not start")
        if proc.poll() is not None:
            pytest.fail(f"clamd exited at start (log {d / 'clamd.log'})")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    yield ClamdProcess(sock, proc)
    proc.terminate()
    proc.wait(10)


# -- SMTP with the policy --------------------------------------------------------------------


@dataclass
class Delivered:
    sender: str
    rcpts: list[str]
    data: bytes
    junk: bool


@dataclass
class RecordingBackend:
    """Recipients in example.test (local) or anywhere else (outside, for authenticated users)."""

    spool_dir: Path
    delivered: list[Delivered] = field(default_factory=list)

    async def check_sender(self, info: SessionInfo, sender: str) -> Verdict:
        return Verdict(250, "2.1.0", "OK")

    async def check_recipient(self, info: SessionInfo, tx: Transaction, address: str) -> Verdict:
        if not address.lower().endswith("@example.test") and info.account is None and not info.trusted:
            return Verdict(554, "5.7.1", "Relay access denied")
        return Verdict(250, "2.1.5", "OK")

    def open_spool(self) -> Spool:
        return FileSpool(self.spool_dir)

    async def deliver(self, info: SessionInfo, tx: Transaction, spool: Spool) -> Verdict:
        self.delivered.append(Delivered(tx.sender, [r.address for r in tx.rcpts], spool.path.read_bytes(), tx.junk))
        return Verdict(250, "2.0.0", f"OK id={info.sid}")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class MemoryLists:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str]] = []

    async def policy_lists(self, scopes: Any) -> list[tuple[str, str, str]]:
        return [r for r in self.rows if r[0] in scopes]


@dataclass
class PolicyServer:
    port: int
    backend: RecordingBackend
    policy: Policy
    clock: FakeClock
    lists: MemoryLists
    loop: LoopThread


class FakeAccount:
    def __init__(self, address: str) -> None:
        self.address = address
        self.may_send_outside = True


class OneUserSasl:
    """PLAIN for user@example.test / pw (the SMTP tests' SASL fake, reduced)."""

    def mechanisms(self, *, tls: bool, client_ip: str, channel_binding: bool = False) -> list[str]:
        return ["PLAIN"]

    def plaintext_allowed(self, *, tls: bool, client_ip: str) -> bool:
        return True

    def sasl(self, mechanism: str, *, protocol: str, client_ip: str, tls: bool, channel_binding: Any = None) -> Any:
        class Ex:
            async def step(self, data: bytes | None) -> Any:
                @dataclass
                class Ok:
                    account: Any

                @dataclass
                class Bad:
                    reason: str

                @dataclass
                class Challenge:
                    data: bytes

                if data is None:
                    return Challenge(b"")
                _, user, pw = data.split(b"\0")
                if pw != b"pw":
                    return Bad("bad password")
                return Ok(FakeAccount(user.decode()))

            def abort(self) -> None:
                pass

        return Ex()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.stop()


@pytest.fixture
def policy_server(tmp_path: Path, dnsserver: DnsServer, loop_thread: LoopThread) -> Iterator[Any]:
    """``make(protocol="smtp", **PolicyConfig overrides)`` -> a running SMTP listener with the policy."""
    started: list[tuple[Listener, Policy]] = []

    def make(protocol: str = "smtp", **overrides: Any) -> PolicyServer:
        pcfg = PolicyConfig(**{"nameservers": (dnsserver.address,), "dns_timeout": 1.0, "skip_networks": (),
                               **overrides})
        lcfg = ListenerConfig(protocol=protocol, bind=("127.0.0.1:0",), tls="none")  # type: ignore[arg-type]
        cfg = replace(Config(limits=LimitsConfig(idle_timeout=20), listener={"l": lcfg}), policy=pcfg)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(50)
        sock.setblocking(False)
        spool = tmp_path / f"spool{len(started)}"
        spool.mkdir()
        backend = RecordingBackend(spool)
        clock = FakeClock()
        lists = MemoryLists()

        async def build() -> Policy:
            state = PolicyState(tmp_path / f"policy{len(started)}.db", clock=clock)
            return Policy(pcfg, hostname="mx.example.test", resolver=Resolver(pcfg.nameservers, timeout=1.0),
                          state=state, lists=lists,
                          is_local_domain=_is_local)

        policy = loop_thread.run(build())
        ctx = ServiceContext(config=cfg, name="l", listener=lcfg, ssl_context=None,
                             resources={"policy": policy})
        service = SmtpService(ctx, backend=backend, sasl=OneUserSasl())
        lst = Listener("l", lcfg, cfg.limits, [sock], service, None)
        loop_thread.run(lst.start())
        started.append((lst, policy))
        return PolicyServer(sock.getsockname()[1], backend, policy, clock, lists, loop_thread)

    yield make
    for lst, policy in started:
        loop_thread.run(lst.drain(2))
        policy.close()


async def _is_local(domain: str) -> bool:
    return domain == "example.test"




# -- DKIM keys and signing --------------------------------------------------------------------


@dataclass(frozen=True)
class DkimKey:
    private_pem: bytes
    txt: str  # the DNS TXT record publishing the public key


@pytest.fixture(scope="session")
def dkim_key() -> DkimKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    import base64

    return DkimKey(pem, "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode())


@pytest.fixture
def sign(dkim_key: DkimKey) -> Any:
    """``sign(message, domain, selector="sel")`` -> the message with a DKIM-Signature on top."""
    import dkim

    def do(message: bytes, domain: str, selector: str = "sel") -> bytes:
        sig = dkim.sign(message, selector.encode(), domain.encode(), dkim_key.private_pem,
                        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
        return sig + message

    return do


def make_message(from_addr: str = "alice@sender.test", to: str = "bob@example.test", subject: str = "Hello",
                 body: str = "Hi Bob,\r\n\r\nlunch at noon?\r\n\r\nAlice\r\n", extra: str = "") -> bytes:
    return (f"From: Alice <{from_addr}>\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\nMessage-ID: <m1@sender.test>\r\n{extra}"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}").encode()


@pytest.fixture
def message() -> Any:
    return make_message


# -- rspamd ----------------------------------------------------------------------------------

RSPAMD_RULES = """
rspamd_config:register_symbol({
  name = 'MAILSRV_TEST_SPAM',
  score = 7.5,
  callback = function(task)
    for _, p in ipairs(task:get_text_parts() or {}) do
      local c = p:get_content()
      if c and tostring(c):find('MAILSRV%-RSPAMD%-SPAM') then return true end
    end
    return false
  end
})
"""


#: The test controller's password (rspamd refuses its shipped defaults q1/q2 for remote access).
RSPAMD_PASSWORD = "mailsrv-test-password"


@dataclass(frozen=True)
class Rspamd:
    url: str  # the normal worker (/checkv2)
    controller: str  # the controller (/learnspam, /learnham, /stat)
    password: str


@pytest.fixture(scope="session")
def rspamd(rspamd_instance: Rspamd) -> str:
    return rspamd_instance.url


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _await_rspamd_learning(controller: str, deadline: float, d: Path) -> bool:
    """The controller answers /ping before its statfile backends can learn (under load a first learn
    failed with "cannot find statfile backend"): learn a warm-up ham and a warm-up spam, polling with
    a deadline. False when a statfile backend is missing for good: the controller and the normal
    worker created the same SQLite file at once and the controller's open failed ("Cannot initialize
    prepared sql"; it happened under make test); the caller restarts rspamd, which then opens the
    files that exist."""
    import urllib.error
    import urllib.request

    last = [""]
    broken = [False]

    def learned(label: str) -> bool:
        body = (f"From: warm@rspamd-learn.test\r\nMessage-ID: <warm-{label}@rspamd-learn.test>\r\n"
                f"Subject: warm up\r\n\r\nwarm up the classifier's {label}\r\n").encode()
        req = urllib.request.Request(controller + "/learn" + label, data=body,
                                     headers={"Password": RSPAMD_PASSWORD}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status == 200
        except urllib.error.HTTPError as exc:
            last[0] = exc.read().decode(errors="replace")
            if "already learned" in last[0]:  # a session fixture reused by a rerun in the same directory
                return True
        except OSError as exc:
            last[0] = str(exc)
        broken[0] = "cannot find statfile backend" in last[0] and "cannot init backend" in _log_text(d)
        return broken[0]

    for label in ("ham", "spam"):
        _wait_peer(lambda label=label: learned(label), deadline, d / "rspamd.log", lambda: f"rspamd never learned: {last[0]}")
        if broken[0]:
            return False
    return True


def _wait_peer(pred: Any, deadline: float, log: Path, what: Any) -> None:
    """:func:`support.server.wait_until` ``pred`` until ``deadline`` (a peer daemon starting); else the
    test fails with ``what()`` and the tail of the daemon's ``log``."""
    try:
        wait_until(pred, timeout=max(deadline - time.monotonic(), 0.0), interval=0.05)
    except AssertionError:
        text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        pytest.fail(f"{what()}; {text or 'no log'}")


def _log_text(d: Path) -> str:
    log = d / "rspamd.log"
    return log.read_text(errors="replace") if log.exists() else ""


@pytest.fixture(scope="session")
def rspamd_instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rspamd]:
    """A real rspamd (Debian's) with a minimal configuration of our own: one normal worker and one
    controller on free loopback ports, one Lua rule, no plugins (so nothing is looked up outside),
    DNS to 127.0.0.1:1, and a Bayes classifier in SQLite files (its default min_learns of 200 keeps
    it from scoring the other tests' messages)."""
    binary = shutil.which("rspamd")
    if binary is None:
        _missing_peer("rspamd not installed: apt-get install rspamd (tools/install-peers.sh does it as root)")
    import os
    import urllib.request

    d = tmp_path_factory.mktemp("rspamd")
    port, cport = _free_port(), _free_port()
    (d / "rules.lua").write_text(RSPAMD_RULES)
    conf = d / "rspamd.conf"
    conf.write_text(f"""options {{ pidfile = "{d}/rspamd.pid"; dns {{ nameserver = ["127.0.0.1:1"]; timeout = 1s; }} }}
logging {{ type = "file"; filename = "{d}/rspamd.log"; level = "info"; }}
actions {{ reject = 15; "add header" = 6; greylist = 4; }}
worker "normal" {{ bind_socket = "127.0.0.1:{port}"; count = 1; }}
worker "controller" {{ bind_socket = "127.0.0.1:{cport}"; count = 1; password = "{RSPAMD_PASSWORD}"; }}
classifier "bayes" {{
  backend = "sqlite3"; tokenizer {{ name = "osb"; }}
  cache {{ path = "{d}/learn_cache.sqlite"; }}  # (the default lives in the system's /var/lib/rspamd)
  statfile {{ symbol = "BAYES_HAM"; spam = false; path = "{d}/bayes.ham.sqlite"; }}
  statfile {{ symbol = "BAYES_SPAM"; spam = true; path = "{d}/bayes.spam.sqlite"; }}
}}
lua = "{d}/rules.lua";
""")
    cmd = [binary, "-f", "-c", str(conf), f"--var=DBDIR={d}", f"--var=RUNDIR={d}", f"--var=LOGDIR={d}"]
    if os.geteuid() == 0:
        cmd += ["-u", "root", "-g", "root"]
    url, controller = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{cport}"
    deadline = time.monotonic() + 60
    for _attempt in range(3):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pending = [url, controller]

        def up(proc: subprocess.Popen[bytes] = proc, pending: list[str] = pending) -> bool:
            while pending and proc.poll() is None:  # each listener answers /ping, or rspamd exited
                try:
                    with urllib.request.urlopen(pending[0] + "/ping", timeout=2) as r:
                        if r.read().strip() != b"pong":
                            return False
                except OSError:
                    return False
                pending.pop(0)
            return True

        try:
            _wait_peer(up, deadline, d / "rspamd.log", lambda: "rspamd did not start")
            if proc.poll() is not None:
                pytest.fail(f"rspamd exited at start: {_log_text(d)[-2000:] or 'no log'}")
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if _await_rspamd_learning(controller, deadline, d):
            break
        proc.terminate()  # a statfile's SQLite open lost the creation race: the files exist now
        proc.wait(15)
        (d / "rspamd.log").rename(d / f"rspamd.log.{_attempt}")
    else:
        pytest.fail("rspamd's controller could not open its statfiles in three starts")
    yield Rspamd(url, controller, RSPAMD_PASSWORD)
    proc.terminate()
    proc.wait(15)
