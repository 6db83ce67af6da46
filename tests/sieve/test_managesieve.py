"""ManageSieve (RFC 5804) end to end: a real ``mailsrv serve``, real sockets, sievelib and our raw client."""

from __future__ import annotations

import base64
import imaplib
import os
import shutil
import smtplib
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import scramp
from sievelib.managesieve import Client
from support.server import ServerProcess, init_setup

from mailsrv import config as config_mod
from mailsrv.auth.passwords import Hasher
from mailsrv.directory import open_sync
from mailsrv.sieve import scripts
from mailsrv.store import account_root

RULES = 'require ["fileinto"];\r\nif header :contains "subject" "report" {\r\n  fileinto "Reports";\r\n}\r\n'


@dataclass
class Setup:
    directory: Path
    cfg: config_mod.Config
    server: ServerProcess
    accounts: dict[str, object]

    @property
    def cert(self) -> Path:
        return self.directory / "tls" / "cert.pem"

    @property
    def port(self) -> int:
        return self.server.ports["managesieve"]

    def add_user(self, local: str) -> str:
        address = f"{local}@example.test"
        d = open_sync(self.cfg.directory, self.cfg.server.data_dir)
        try:
            if not d.is_local_domain("example.test"):
                d.add_domain("example.test")
            h, s = Hasher(self.cfg.auth).make(password(address))
            self.accounts[address] = d.add_user(address, password_hash=h, scram=s)
        finally:
            d.close()
        return address

    def root(self, address: str) -> Path:
        acct = self.accounts[address]
        return account_root(self.cfg.server.data_dir, acct.id, acct.store)  # type: ignore[attr-defined]

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


def password(address: str) -> str:
    return f"pw-{address.split('@')[0]}-Secret1"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp("managesieve")
    cfg_path = init_setup(directory, workers=1)
    # no tarpit for the failures these tests make on purpose; [sieve] limits small enough to hit
    with cfg_path.open("a") as f:
        f.write("\n[auth]\nthrottle_delay = 0\nip_block_failures = 1000\nip_throttle_failures = 1000\n"
                "\n[sieve]\nmax_scripts = 4\nmax_script_size = 4096\n")
    cfg = config_mod.load(cfg_path)
    server = ServerProcess(cfg_path)
    try:
        server.wait_ready()
        yield Setup(directory, cfg, server, {})
    finally:
        server.stop()


@pytest.fixture
def sievelib_tls(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    # sievelib verifies with ssl.create_default_context(): trust the setup's certificate
    monkeypatch.setenv("SSL_CERT_FILE", str(setup.cert))


def sievelib_client(setup: Setup, address: str) -> Client:
    c = Client("127.0.0.1", setup.port)
    assert c.connect(address, password(address), starttls=True, authmech="PLAIN"), c.errmsg
    return c


class Raw:
    """A minimal line client for what library clients do not send (garbage, literals, SCRAM)."""

    def __init__(self, setup: Setup, *, tls: bool = True) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(("127.0.0.1", setup.port), timeout=20)
        self.f = self.sock.makefile("rb")
        self.greeting = self.until_done()
        if tls:
            self.send(b"STARTTLS")
            assert self.line().startswith(b"OK")
            self.f.close()
            self.sock = setup.tls().wrap_socket(self.sock, server_hostname="127.0.0.1")
            self.f = self.sock.makefile("rb")
            self.greeting = self.until_done()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data + b"\r\n")

    def line(self) -> bytes:
        line = self.f.readline()
        if not line:
            raise ConnectionError("closed")
        return line

    def until_done(self) -> list[bytes]:
        """Lines up to and including the OK/NO/BYE that ends a response."""
        out = []
        while True:
            line = self.line()
            out.append(line)
            if line[:2] in (b"OK", b"NO") or line[:3] == b"BYE":
                return out

    def cmd(self, data: bytes) -> list[bytes]:
        self.send(data)
        return self.until_done()

    def login(self, address: str) -> None:
        creds = base64.b64encode(b"\0" + address.encode() + b"\0" + password(address).encode())
        assert self.cmd(b'AUTHENTICATE "PLAIN" "' + creds + b'"')[-1].startswith(b"OK")

    def close(self) -> None:
        self.f.close()
        self.sock.close()


def test_capabilities_before_and_after_starttls(setup: Setup) -> None:
    r = Raw(setup, tls=False)
    try:
        caps = b"".join(r.greeting)
        assert b'"IMPLEMENTATION" "mailsrv"' in caps
        assert b'"STARTTLS"' in caps and b'"VERSION" "1.0"' in caps
        assert b'"SIEVE" "' in caps and b"fileinto" in caps and b"vacation" in caps
        assert b" regex " in caps and b" editheader " in caps and b'"NOTIFY" "mailto"' in caps
        assert b'"MAXREDIRECTS" "4"' in caps
        # no password mechanism on a plain connection; SCRAM never shows the password
        sasl = next(line for line in r.greeting if line.startswith(b'"SASL"'))
        assert b"PLAIN" not in sasl and b"SCRAM-SHA-256" in sasl
        assert r.cmd(b'AUTHENTICATE "PLAIN" "AGEAYg=="')[-1].startswith(b"NO (ENCRYPT-NEEDED)")
        assert r.cmd(b"LISTSCRIPTS")[-1].startswith(b"NO")  # not before login
        r.send(b"STARTTLS")
        assert r.line().startswith(b"OK")
        r.f.close()
        tls = setup.tls().wrap_socket(r.sock, server_hostname="127.0.0.1")
        f = tls.makefile("rb")
        lines = []
        while not (lines and lines[-1].startswith(b"OK")):
            lines.append(f.readline())
        caps = b"".join(lines)  # RFC 5804 §2.2: re-issued after the handshake
        assert b'"STARTTLS"' not in caps and b"PLAIN" in caps
        f.close()
        tls.close()
    finally:
        r.close()


def test_sievelib_full_cycle(setup: Setup, sievelib_tls: None) -> None:
    addr = setup.add_user("lib")
    c = sievelib_client(setup, addr)
    try:
        assert c.get_implementation() == "mailsrv"
        assert "fileinto" in c.get_sieve_capabilities()
        assert c.listscripts() == (None, [])
        assert c.havespace("rules", len(RULES))
        assert c.putscript("rules", RULES)
        assert c.putscript("other", "keep;\n")
        assert c.checkscript(RULES)
        assert c.setactive("rules")
        active, others = c.listscripts()
        assert active == "rules" and others == ["other"]
        assert c.getscript("rules").splitlines() == RULES.splitlines()  # sievelib rejoins lines with LF
        # what delivery reads
        assert scripts.active_script(setup.root(addr)) == ("rules", RULES)
        assert c.renamescript("rules", "main")
        assert scripts.active_script(setup.root(addr)) == ("main", RULES)
        assert not c.deletescript("main")  # RFC 5804 §2.10: the active script stays
        assert c.errcode == b"ACTIVE"
        assert c.setactive("")
        assert scripts.active_script(setup.root(addr)) is None
        assert c.deletescript("main")
        assert not c.getscript("main")
        assert c.errcode == b"NONEXISTENT"
        c.logout()
    finally:
        if c.sock is not None:
            c.sock.close()
            c.sock = None


def test_compile_error_is_no_with_the_line(setup: Setup, sievelib_tls: None) -> None:
    addr = setup.add_user("syntax")
    c = sievelib_client(setup, addr)
    try:
        assert not c.putscript("bad", 'require "fileinto";\r\nif true {\r\n  frobnicate;\r\n}\r\n')
        assert c.errmsg.startswith(b"line 3: ")
        assert not c.checkscript('fileinto "x";\r\n')
        assert c.errmsg.startswith(b"line 1: ")
        assert c.listscripts() == (None, [])
        c.logout()
    finally:
        c.sock.close()
        c.sock = None


def test_limits_and_response_codes(setup: Setup) -> None:
    addr = setup.add_user("limits")
    r = Raw(setup)
    try:
        r.login(addr)
        big = setup.cfg.sieve.max_script_size + 1
        assert r.cmd(b'HAVESPACE "x" %d' % big)[-1].startswith(b"NO (QUOTA/MAXSIZE)")
        # an oversized literal is refused and read past: the next command is understood
        r.sock.sendall(b'PUTSCRIPT "big" {%d+}\r\n' % big + b"#" * big + b"\r\n")
        assert r.until_done()[-1].startswith(b"NO (QUOTA/MAXSIZE)")
        assert r.cmd(b"NOOP")[-1].startswith(b"OK")
        for i in range(setup.cfg.sieve.max_scripts):
            assert r.cmd(b'PUTSCRIPT "s%d" {6+}\r\nkeep;\n' % i)[-1].startswith(b"OK")
        assert r.cmd(b'PUTSCRIPT "s9" "keep;"')[-1].startswith(b"NO (QUOTA/MAXSCRIPTS)")
        assert r.cmd(b'HAVESPACE "s9" 10')[-1].startswith(b"NO (QUOTA/MAXSCRIPTS)")
        assert r.cmd(b'HAVESPACE "s1" 10')[-1].startswith(b"OK")
        assert r.cmd(b'RENAMESCRIPT "s0" "s1"')[-1].startswith(b"NO (ALREADYEXISTS)")
        assert r.cmd(b'SETACTIVE "nope"')[-1].startswith(b"NO (NONEXISTENT)")
        assert r.cmd(b'SETACTIVE "s0"')[-1].startswith(b"OK")
        assert r.cmd(b'DELETESCRIPT "s0"')[-1].startswith(b"NO (ACTIVE)")
        assert r.cmd(b'NOOP "tag-1"')[-1] == b'OK (TAG "tag-1") "Done"\r\n'
        listing = r.cmd(b"LISTSCRIPTS")
        assert listing[0] == b'"s0" ACTIVE\r\n' and len(listing) == setup.cfg.sieve.max_scripts + 1
        got = r.cmd(b'GETSCRIPT "s0"')
        assert got == [b"{6}\r\n", b"keep;\n", b"\r\n", b'OK "Getscript completed"\r\n']
        assert r.cmd(b'PUTSCRIPT "bad/name" "keep;"')[-1].startswith(b"NO")
        assert r.cmd(b"LOGOUT")[-1].startswith(b"OK")
        assert r.f.readline() == b""  # closed after LOGOUT
    finally:
        r.close()


def test_scram_sha_256_with_server_final_in_sasl_code(setup: Setup) -> None:
    addr = setup.add_user("scram")
    r = Raw(setup)
    try:
        client = scramp.ScramClient(["SCRAM-SHA-256"], addr, password(addr))
        first = base64.b64encode(client.get_client_first().encode())
        r.send(b'AUTHENTICATE "SCRAM-SHA-256" "' + first + b'"')
        challenge = r.line().strip()
        assert challenge.startswith(b'"') and challenge.endswith(b'"')
        client.set_server_first(base64.b64decode(challenge[1:-1]).decode())
        final = base64.b64encode(client.get_client_final().encode())
        # the response as a literal this time (clients may use either)
        r.sock.sendall(b"{%d+}\r\n" % len(final) + final + b"\r\n")
        done = r.line()
        assert done.startswith(b'OK (SASL "'), done
        server_final = done.split(b'"')[1]
        client.set_server_final(base64.b64decode(server_final).decode())  # raises if forged
        assert r.cmd(b"LISTSCRIPTS") == [b'OK "Listscripts completed"\r\n']
        assert r.cmd(b"UNAUTHENTICATE")[-1].startswith(b"OK")
        assert r.cmd(b"LISTSCRIPTS")[-1].startswith(b"NO")
    finally:
        r.close()


def test_cancel_and_bad_password_then_lockout(setup: Setup) -> None:
    addr = setup.add_user("locked")
    r = Raw(setup)
    try:
        r.send(b'AUTHENTICATE "PLAIN"')
        assert r.line() == b'""\r\n'  # an empty challenge
        r.send(b'"*"')
        assert r.line().startswith(b"NO")
    finally:
        r.close()
    failures = setup.cfg.auth.account_failures
    wrong = base64.b64encode(b"\0" + addr.encode() + b"\0wrong")
    done = 0
    while done < failures:  # a session ends (BYE) after its third failure: reconnect until locked
        r = Raw(setup)
        try:
            for _ in range(3):
                if done >= failures:
                    break
                reply = r.cmd(b'AUTHENTICATE "PLAIN" "' + wrong + b'"')[-1]
                assert reply.startswith(b"NO") or reply.startswith(b"BYE")
                done += 1
        finally:
            r.close()
    r = Raw(setup)
    try:
        creds = base64.b64encode(b"\0" + addr.encode() + b"\0" + password(addr).encode())
        # the right password is refused too, with the same neutral answer
        assert r.cmd(b'AUTHENTICATE "PLAIN" "' + creds + b'"')[-1] == b'NO "Authentication failed"\r\n'
    finally:
        r.close()
    setup.server.wait_for(r'auth\.fail .*protocol=managesieve .*user=locked@example\.test .*reason="account locked"')


def test_garbage_keeps_the_server_serving(setup: Setup) -> None:
    addr = setup.add_user("garbage")
    r = Raw(setup)
    try:
        r.login(addr)
        for junk in (b"\x00\xff\xfe", b'PUTSCRIPT "unterminated', b"{5}", b"FROB", b'GETSCRIPT x y z',
                     b'PUTSCRIPT "a" {3+}\r\nabc', b"HAVESPACE \"a\" 99999999999"):
            reply = r.cmd(junk)[-1]
            assert reply.startswith(b"NO"), (junk, reply)
        assert r.cmd(b"NOOP")[-1].startswith(b"OK")
    finally:
        r.close()
    # errors past the budget end the session with BYE, and the next client is served
    r = Raw(setup)
    try:
        last = b""
        for _ in range(setup.cfg.limits.max_errors):
            last = r.cmd(b"FROB")[-1]
        assert last.startswith(b"BYE")
        assert r.f.readline() == b""
    finally:
        r.close()
    r = Raw(setup)
    try:
        r.login(addr)
        assert r.cmd(b"NOOP")[-1].startswith(b"OK")
    finally:
        r.close()


def test_huge_literal_closes_cleanly(setup: Setup) -> None:
    r = Raw(setup)
    try:
        r.send(b'PUTSCRIPT "x" {999999999+}')
        assert r.until_done()[-1].startswith(b"BYE (QUOTA/MAXSIZE)")
        assert r.f.readline() == b""
    finally:
        r.close()


def sieve_connect(setup: Setup, address: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Debian's sieve-connect (Perl, its own ManageSieve client): STARTTLS verified against the setup's
    certificate, the password through a pipe as its manual recommends."""
    exe = shutil.which("sieve-connect")
    assert exe, "sieve-connect is not installed (tools/install-peers.sh)"
    rfd, wfd = os.pipe()
    os.write(wfd, password(address).encode() + b"\n")
    os.close(wfd)
    try:
        return subprocess.run(
            [exe, "--server", "127.0.0.1", "--port", str(setup.port), "--user", address, "--passwordfd", str(rfd),
             "--tlscafile", str(setup.cert), "--tlshostname", "localhost", "--authmech", "PLAIN", *args],
            pass_fds=(rfd,), capture_output=True, text=True, timeout=60)
    finally:
        os.close(rfd)


@pytest.mark.peer
def test_sieve_connect_upload_activate_download(setup: Setup, tmp_path: Path) -> None:
    addr = setup.add_user("peer")
    local = tmp_path / "vacation.sieve"
    local.write_text('require "vacation";\nvacation :days 3 "Away until Monday.";\n')
    p = sieve_connect(setup, addr, "--upload", "--localsieve", str(local), "--remotesieve", "away")
    assert p.returncode == 0, p.stdout + p.stderr
    p = sieve_connect(setup, addr, "--activate", "--remotesieve", "away")
    assert p.returncode == 0, p.stdout + p.stderr
    assert scripts.active_script(setup.root(addr)) == ("away", local.read_text())
    p = sieve_connect(setup, addr, "--list")
    assert p.returncode == 0 and "away" in p.stdout and "ACTIVE" in p.stdout.upper(), p.stdout + p.stderr
    out = tmp_path / "down.sieve"
    p = sieve_connect(setup, addr, "--download", "--remotesieve", "away", "--localsieve", str(out))
    assert p.returncode == 0, p.stdout + p.stderr
    assert out.read_text().splitlines() == local.read_text().splitlines()
    bad = tmp_path / "bad.sieve"
    bad.write_text("if true {\n  nosuchcommand;\n}\n")
    p = sieve_connect(setup, addr, "--upload", "--localsieve", str(bad), "--remotesieve", "bad")
    assert p.returncode != 0 and "line 2" in p.stdout + p.stderr
    assert [n for n, _ in scripts.list_scripts(setup.root(addr))] == ["away"]


def test_commands_sent_one_byte_at_a_time(setup: Setup) -> None:
    """Framing does not depend on how the client's bytes arrive (a literal split across packets)."""
    addr = setup.add_user("bytewise")
    r = Raw(setup)
    try:
        r.login(addr)
        r.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream = b'PUTSCRIPT "slow" {6+}\r\nkeep;\n\r\nSETACTIVE "slow"\r\nGETSCRIPT "slow"\r\n'
        for i in range(len(stream)):
            r.sock.sendall(stream[i:i + 1])
        assert r.until_done()[-1].startswith(b"OK")
        assert r.until_done()[-1].startswith(b"OK")
        assert r.until_done() == [b"{6}\r\n", b"keep;\n", b"\r\n", b'OK "Getscript completed"\r\n']
        assert scripts.active_script(setup.root(addr)) == ("slow", "keep;\n")
    finally:
        r.close()


def test_setactive_then_smtp_delivery_files_the_mail(setup: Setup, sievelib_tls: None) -> None:
    """A filter uploaded and activated over ManageSieve acts on the next message delivered over SMTP."""
    addr = setup.add_user("filtered")
    script = ('require ["fileinto", "imap4flags"];\r\nif header :contains "subject" "weekly report" {\r\n'
              '  fileinto :flags "\\\\Flagged" "Reports";\r\n}\r\n')
    c = sievelib_client(setup, addr)
    try:
        assert c.putscript("reports", script)
        # the first delivery to this user: no worker has looked at the scripts before (a change for an
        # account a worker has seen takes effect within delivery's check interval, one second)
        assert c.setactive("reports")
        c.logout()
    finally:
        c.sock.close()
        c.sock = None
    for subject in ("weekly report 49", "lunch?"):
        msg = f"From: bob@example.test\r\nTo: {addr}\r\nSubject: {subject}\r\n\r\nbody\r\n"
        with smtplib.SMTP("127.0.0.1", setup.server.ports["smtp"], timeout=30) as s:
            s.sendmail("bob@example.test", [addr], msg.encode())
    imap = imaplib.IMAP4_SSL("127.0.0.1", setup.server.ports["imaps"], ssl_context=setup.tls(), timeout=30)
    try:
        imap.login(addr, password(addr))

        def subjects(folder: str) -> list[tuple[bytes, bytes]]:
            assert imap.select(folder, readonly=True)[0] == "OK"
            typ, data = imap.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            assert typ == "OK"
            return [(d[0], d[1].strip()) for d in data if isinstance(d, tuple)]

        (flags, subject), = subjects("Reports")
        assert subject == b"Subject: weekly report 49" and b"\\Flagged" in flags
        assert [s for _, s in subjects("INBOX")] == [b"Subject: lunch?"]
    finally:
        imap.logout()
