"""STARTTLS and implicit TLS with a real (trustme) certificate; capabilities before and after."""

from __future__ import annotations

import imaplib
import socket
import ssl
from collections.abc import Iterator

import pytest
import trustme
from imaptest import ServerHandle, start_server

from mailsrv.imap.memory import MemoryAuth, MemoryStore


class TlsOnlyAuth(MemoryAuth):
    """Plain-text passwords only under TLS (the production policy)."""

    def plaintext_allowed(self, *, tls: bool, client_ip: str) -> bool:
        return tls

    def mechanisms(self, *, tls: bool, client_ip: str, channel_binding: bool = False) -> list[str]:
        return ["PLAIN"] if tls else []


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _contexts(ca: trustme.CA) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx


async def _tls_only() -> tuple[TlsOnlyAuth, MemoryStore]:
    return TlsOnlyAuth({"alice": "wonderland"}), MemoryStore()


@pytest.fixture
def starttls_server(ca: trustme.CA) -> Iterator[tuple[ServerHandle, ssl.SSLContext]]:
    from mailsrv.imap.session import SessionConfig

    server_ctx, client_ctx = _contexts(ca)
    handle, stop = start_server(tls="starttls", ssl_context=server_ctx, setup=_tls_only,
                                session_config=SessionConfig(starttls_available=True))
    try:
        yield handle, client_ctx
    finally:
        stop()


def test_starttls_changes_capabilities(starttls_server: tuple[ServerHandle, ssl.SSLContext]) -> None:
    handle, client_ctx = starttls_server
    c = imaplib.IMAP4(handle.host, handle.port, timeout=10)
    caps = c.capabilities
    assert "STARTTLS" in caps and "LOGINDISABLED" in caps and "AUTH=PLAIN" not in caps
    typ, data = c._simple_command("LOGIN", "alice", "wonderland")  # type: ignore[attr-defined]
    assert typ == "NO" and b"[PRIVACYREQUIRED]" in data[-1]
    c.starttls(ssl_context=client_ctx)
    caps = c.capabilities
    assert "STARTTLS" not in caps and "LOGINDISABLED" not in caps and "AUTH=PLAIN" in caps
    typ, _ = c.login("alice", "wonderland")
    assert typ == "OK"
    c.logout()


def test_starttls_injection_is_discarded(starttls_server: tuple[ServerHandle, ssl.SSLContext]) -> None:
    """RFC 9051 §6.2.1 (CVE-2011-0411 class): plain text pipelined after STARTTLS never runs; it is dropped
    and the handshake goes on (a close would make an opportunistic client retry in plain text)."""
    handle, client_ctx = starttls_server
    with socket.create_connection((handle.host, handle.port), timeout=10) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"a STARTTLS\r\nb LOGIN alice wonderland\r\n")
        assert f.readline() == b"a OK Begin TLS negotiation now\r\n"
        f.close()
        with client_ctx.wrap_socket(s, server_hostname="localhost") as t:
            tf = t.makefile("rb")
            t.sendall(b"c CAPABILITY\r\n")
            first = tf.readline()
            assert first.startswith(b"* CAPABILITY ") and b"AUTH=PLAIN" in first, first  # no "b OK" first
            assert tf.readline().startswith(b"c OK")
            t.sendall(b"d SELECT INBOX\r\n")
            assert tf.readline().startswith(b"d BAD")  # not authenticated: the injected LOGIN did not run
            t.sendall(b"e LOGIN alice wonderland\r\n")
            assert tf.readline().startswith(b"e OK")
            t.sendall(b"f SELECT INBOX\r\n")
            while not (line := tf.readline()).startswith(b"f "):
                assert line.startswith(b"* "), line
            assert line.startswith(b"f OK")
            tf.close()


def test_implicit_tls(ca: trustme.CA) -> None:
    server_ctx, client_ctx = _contexts(ca)
    handle, stop = start_server(tls="implicit", ssl_context=server_ctx, setup=_tls_only)
    try:
        c = imaplib.IMAP4_SSL(handle.host, handle.port, ssl_context=client_ctx, timeout=10)
        assert "STARTTLS" not in c.capabilities and "AUTH=PLAIN" in c.capabilities
        assert c.login("alice", "wonderland")[0] == "OK"
        c.logout()
    finally:
        stop()
