"""PROXY protocol under a real ``mailsrv serve``: a real HAProxy (send-proxy, send-proxy-v2, mode tcp) in front of
SMTP, IMAP over implicit TLS, POP3 and JMAP over HTTP and HTTPS, and crafted headers straight to the listeners (the lockout counts the
client's address, an untrusted proxy is refused). Clients connect from 127.0.0.2, HAProxy from 127.0.0.3, so
each address the server reports says who it saw."""

from __future__ import annotations

import base64
import http.client
import imaplib
import poplib
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.server import ServerProcess, mailsrv_cmd

from mailsrv.net.proxy import V2_SIGNATURE

CLIENT = "127.0.0.2"  # the client's own address, as HAProxy reports it
PROXY = "127.0.0.3"  # where HAProxy connects from (its `source`): the only trusted proxy besides 127.0.0.1
PROXIED = ("smtp", "imap", "imaps", "pop3", "jmap", "jmaps")


@dataclass
class Setup:
    server: ServerProcess
    config: Path
    password: str
    tls: ssl.SSLContext


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    d = tmp_path_factory.mktemp("proxy") / "s"
    p = subprocess.run(mailsrv_cmd("init", "--dir", str(d), "--any-port", "--workers", "1", "--hostname",
                                   "mail.example.test", "--demo"), capture_output=True, text=True, check=True)
    m = re.search(r"demo user alice@example.test password (\S+)", p.stdout + p.stderr)
    assert m is not None
    config = d / "mailsrv.toml"
    text = config.read_text()
    for name in PROXIED:
        text = text.replace(f"[listener.{name}]\n", f'[listener.{name}]\nproxy_protocol = true\n'
                            f'proxy_trusted_networks = ["{PROXY}/32", "127.0.0.1/32"]\n')
    # policy off: a spoofed 192.0.2.7 must not send SPF/DNSBL lookups to real DNS. The IP block after 3 failures,
    # the account's own lock far away (the lockout test locks an address, not alice).
    text += ("\n[policy]\nenabled = false\n\n[auth]\nallow_plaintext_loopback = true\nip_throttle_failures = 3\n"
             "ip_block_failures = 3\nthrottle_delay = 0\naccount_failures = 1000\n")
    config.write_text(text)
    tls = ssl.create_default_context(cafile=str(d / "tls" / "cert.pem"))
    tls.check_hostname = False
    server = ServerProcess(config).wait_ready()
    try:
        yield Setup(server, config, m.group(1), tls)
    finally:
        assert server.stop() == 0


@dataclass
class HAProxy:
    proc: subprocess.Popen[str]
    ports: dict[str, int]


@pytest.fixture(scope="module")
def haproxy(served: Setup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HAProxy]:
    exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
    assert Path(exe).exists(), "haproxy is not installed (tools/install-peers.sh installs it)"
    backends = {"smtp": ("smtp", "send-proxy"), "imaps": ("imaps", "send-proxy-v2"), "pop3": ("pop3", "send-proxy-v2"),
                "jmap": ("jmap", "send-proxy"), "jmaps": ("jmaps", "send-proxy-v2")}
    socks = {}
    lines = ["global", "  maxconn 64", "defaults", "  mode tcp", "  timeout connect 10s", "  timeout client 60s",
             "  timeout server 60s"]
    for front, (listener, send) in backends.items():
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(16)  # listening before haproxy runs: a client's connect waits in the backlog, no readiness race
        socks[front] = s
        lines += [f"frontend f_{front}", f"  bind fd@{s.fileno()}", f"  default_backend b_{front}",
                  f"backend b_{front}",
                  f"  server s 127.0.0.1:{served.server.ports[listener]} {send} source {PROXY}"]
    cfg = tmp_path_factory.mktemp("haproxy") / "haproxy.cfg"
    cfg.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen([exe, "-db", "-f", str(cfg)], pass_fds=[s.fileno() for s in socks.values()],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ports = {k: s.getsockname()[1] for k, s in socks.items()}
    for s in socks.values():
        s.close()  # haproxy holds its copies
    try:
        yield HAProxy(proc, ports)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.stderr.close()
        assert "ALERT" not in err, err


def delivered(config: Path, needle: bytes) -> bytes:
    for f in (config.parent / "data").rglob("*"):
        if f.is_file() and f.parent.name in ("new", "cur") and needle in (data := f.read_bytes()):
            return data
    raise AssertionError(f"no delivered message holds {needle!r}")


def test_smtp_through_haproxy_send_proxy_v1(served: Setup, haproxy: HAProxy) -> None:
    mark = served.server.mark()
    with smtplib.SMTP("127.0.0.1", haproxy.ports["smtp"], timeout=30, source_address=(CLIENT, 0)) as c:
        c.ehlo("client.example")
        c.sendmail("someone@remote.test", ["alice@example.test"],
                   b"Subject: via haproxy\r\nMessage-ID: <haproxy-v1@remote.test>\r\n\r\nhello\r\n")
    data = delivered(served.config, b"<haproxy-v1@remote.test>")
    received = data.split(b"\r\nReceived: ", 1)[1].split(b";", 1)[0]
    assert f"[{CLIENT}]".encode() in received and PROXY.encode() not in received, received
    served.server.wait_for(rf"peer={re.escape(CLIENT)}:\d+ proxy={re.escape(PROXY)}:\d+", start=mark)


class ProxiedIMAP(imaplib.IMAP4_SSL):
    """IMAP4_SSL from a chosen source address, optionally writing a PROXY header before the TLS handshake."""

    def __init__(self, port: int, ctx: ssl.SSLContext, *, source: str = CLIENT, header: bytes = b"") -> None:
        self._source, self._header = source, header
        super().__init__("127.0.0.1", port, ssl_context=ctx, timeout=30)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout, source_address=(self._source, 0))
        sock.sendall(self._header)
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[union-attr]


def test_imap_implicit_tls_through_haproxy_send_proxy_v2(served: Setup, haproxy: HAProxy) -> None:
    mark = served.server.mark()
    c = ProxiedIMAP(haproxy.ports["imaps"], served.tls)
    try:
        assert c.login("alice@example.test", served.password)[0] == "OK"
        assert c.select("INBOX")[0] == "OK"
    finally:
        c.logout()
    served.server.wait_for(rf"auth\.ok .*proto=imap peer={re.escape(CLIENT)}:\d+ proxy={re.escape(PROXY)}:\d+"
                           rf" protocol=imap ip={re.escape(CLIENT)} ", start=mark)


class ProxiedPOP3(poplib.POP3):
    def _create_socket(self, timeout: float) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout, source_address=(CLIENT, 0))


def test_pop3_through_haproxy_send_proxy_v2(served: Setup, haproxy: HAProxy) -> None:
    mark = served.server.mark()
    c = ProxiedPOP3("127.0.0.1", haproxy.ports["pop3"], timeout=30)
    try:
        # plain USER/PASS is allowed from loopback only: it works because the client's 127.0.0.2 is what counts
        assert c.user("alice@example.test").startswith(b"+OK")
        assert c.pass_(served.password).startswith(b"+OK")
        c.stat()
    finally:
        c.quit()
    served.server.wait_for(rf"auth\.ok .*protocol=pop3 ip={re.escape(CLIENT)} ", start=mark)


def v1(src: str) -> bytes:
    return f"PROXY TCP4 {src} 198.51.100.1 40000 993\r\n".encode()


def v2_ipv6(src: str) -> bytes:
    import ipaddress
    import struct

    block = ipaddress.ip_address(src).packed + ipaddress.ip_address("2001:db8::1").packed + struct.pack("!HH", 40001, 993)
    return V2_SIGNATURE + b"\x21\x21" + struct.pack("!H", len(block)) + block


def test_lockout_counts_the_proxied_address(served: Setup) -> None:
    """Three failed logins from a spoofed 192.0.2.7 block that address, even with the right password;
    2001:db8::7 behind the same proxy still logs in."""
    port = served.server.ports["imaps"]
    mark = served.server.mark()
    for _ in range(3):
        c = ProxiedIMAP(port, served.tls, source="127.0.0.1", header=v1("192.0.2.7"))
        try:
            with pytest.raises(imaplib.IMAP4.error):
                c.login("alice@example.test", "wrong password")
        finally:
            c.shutdown()
    served.server.wait_for(r"auth\.fail .*protocol=imap ip=192\.0\.2\.7 ", start=mark, count=3)
    c = ProxiedIMAP(port, served.tls, source="127.0.0.1", header=v1("192.0.2.7"))
    try:
        with pytest.raises(imaplib.IMAP4.error):
            c.login("alice@example.test", served.password)  # blocked address: the right password is refused too
    finally:
        c.shutdown()
    served.server.wait_for(r"auth\.fail .*ip=192\.0\.2\.7 .*reason=\"client address blocked\"", start=mark)
    c = ProxiedIMAP(port, served.tls, source="127.0.0.1", header=v2_ipv6("2001:db8::7"))
    try:
        assert c.login("alice@example.test", served.password)[0] == "OK"
    finally:
        c.logout()
    served.server.wait_for(r"auth\.ok .*protocol=imap ip=2001:db8::7 ", start=mark)


def test_untrusted_source_and_missing_header_are_closed_unanswered(served: Setup) -> None:
    mark = served.server.mark()
    for source, data in (("127.0.0.4", v1("192.0.2.9")), ("127.0.0.1", b"EHLO direct.example\r\n")):
        with socket.create_connection(("127.0.0.1", served.server.ports["smtp"]), 30, source_address=(source, 0)) as s:
            s.sendall(data)
            try:
                assert s.recv(100) == b""  # no greeting, no reply: closed
            except ConnectionResetError:
                pass
    served.server.wait_for(r"proxy\.untrusted .*peer=127\.0\.0\.4:", start=mark)
    served.server.wait_for(r"proxy\.refused .*peer=127\.0\.0\.1:.*reason=", start=mark)


def jmap_session(served: Setup, port: int, password: str, *, tls: bool, source: str = CLIENT,
                 header: bytes = b"") -> http.client.HTTPResponse:
    """GET /jmap/session with HTTP Basic from ``source``, ``header`` (a PROXY header) written first."""
    sock = socket.create_connection(("127.0.0.1", port), 30, source_address=(source, 0))
    sock.sendall(header)
    if tls:  # implicit TLS: the handshake after the header, as HAProxy forwards it
        sock = served.tls.wrap_socket(sock, server_hostname="127.0.0.1")
    cred = base64.b64encode(f"alice@example.test:{password}".encode()).decode()
    sock.sendall(f"GET /jmap/session HTTP/1.1\r\nHost: mail.example.test\r\nAuthorization: Basic {cred}\r\n"
                 "Connection: close\r\n\r\n".encode())
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    resp.read()
    sock.close()
    return resp


@pytest.mark.parametrize(("front", "tls"), [("jmap", False), ("jmaps", True)])
def test_jmap_through_haproxy(served: Setup, haproxy: HAProxy, front: str, tls: bool) -> None:
    """send-proxy (v1) in front of JMAP over HTTP, send-proxy-v2 in front of HTTPS (TLS forwarded untouched):
    the login is the client's (127.0.0.2, plain Basic allowed from loopback), not the proxy's."""
    mark = served.server.mark()
    resp = jmap_session(served, haproxy.ports[front], served.password, tls=tls)
    assert resp.status == 200
    served.server.wait_for(rf"auth\.ok .*protocol=jmap ip={re.escape(CLIENT)} ", start=mark)


def test_jmap_lockout_and_plaintext_rule_count_the_proxied_address(served: Setup) -> None:
    """Over HTTPS, three failed logins from a spoofed 192.0.2.8 block that address; 2001:db8::8 behind the same
    proxy still logs in. Over plain HTTP, Basic is allowed from a loopback client only: a proxied 192.0.2.8 is
    asked for a bearer token, a proxied 127.0.0.5 logs in."""
    port = served.server.ports["jmaps"]
    mark = served.server.mark()
    for _ in range(3):
        assert jmap_session(served, port, "wrong password", tls=True, source="127.0.0.1",
                            header=v1("192.0.2.8")).status == 401
    served.server.wait_for(r"auth\.fail .*protocol=jmap ip=192\.0\.2\.8 ", start=mark, count=3)
    assert jmap_session(served, port, served.password, tls=True, source="127.0.0.1",
                        header=v1("192.0.2.8")).status == 401  # blocked: the right password is refused too
    served.server.wait_for(r"auth\.fail .*ip=192\.0\.2\.8 .*reason=\"client address blocked\"", start=mark)
    assert jmap_session(served, port, served.password, tls=True, source="127.0.0.1",
                        header=v2_ipv6("2001:db8::8")).status == 200
    served.server.wait_for(r"auth\.ok .*protocol=jmap ip=2001:db8::8 ", start=mark)
    plain = served.server.ports["jmap"]
    outside = jmap_session(served, plain, served.password, tls=False, source="127.0.0.1", header=v1("192.0.2.9"))
    assert outside.status == 401 and "Basic" not in outside.getheader("WWW-Authenticate", "")
    assert jmap_session(served, plain, served.password, tls=False, source="127.0.0.1",
                        header=v1("127.0.0.5")).status == 200
    served.server.wait_for(r"auth\.ok .*protocol=jmap ip=127\.0\.0\.5 ", start=mark)
