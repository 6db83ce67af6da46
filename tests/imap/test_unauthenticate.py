"""UNAUTHENTICATE (RFC 8437) over a real socket: back to NOT AUTHENTICATED with nothing of the
first user left (selected mailbox, its watch and cache share, ENABLEd extensions), failed logins
still counted, the compression layer kept."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from imaptest import Raw, ServerHandle, ok, serve_real_store
from support.server import wait_until

from mailsrv.imap import shared

ALICE, BOB = "alice@example.test", "bob@example.test"
MSG = b"From: x@example.test\r\nSubject: %s\r\n\r\nbody\r\n"


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[ServerHandle]:
    with serve_real_store(tmp_path, users=(ALICE, BOB)) as handle:
        yield handle


def login(c: Raw, user: str) -> list[bytes]:
    out = c.cmd(b"l LOGIN " + user.encode() + b" wonderland")
    assert out[-1].startswith(b"l OK"), out
    return out


def append(c: Raw, subject: bytes) -> None:
    data = MSG % subject
    c.send(b"a APPEND INBOX {%d+}\r\n" % len(data) + data + b"\r\n")
    assert c.until(b"a")[-1].startswith(b"a OK")


def test_back_to_not_authenticated_then_another_user(srv: ServerHandle) -> None:
    other = Raw(srv.host, srv.port)
    login(other, ALICE)
    c = Raw(srv.host, srv.port)
    assert b"UNAUTHENTICATE" not in c.cmd(b"c CAPABILITY")[0].split()
    caps = login(c, ALICE)[-1]
    assert b" UNAUTHENTICATE " in caps
    ok(c, b"e ENABLE QRESYNC")
    append(other, b"one")
    tables = len(shared._TABLES)
    assert b"* 1 EXISTS\r\n" in ok(c, b"s SELECT INBOX")
    assert len(shared._TABLES) == tables + 1
    out = ok(c, b"u UNAUTHENTICATE")
    assert out == [b"u OK UNAUTHENTICATE completed\r\n"]
    assert len(shared._TABLES) == tables  # the selected mailbox's cache share released
    # RFC 8437 §3: the not authenticated state, as at connection start
    caps = ok(c, b"c CAPABILITY")[0].split()
    assert b"AUTH=PLAIN" in caps and b"UNAUTHENTICATE" not in caps and b"ACL" not in caps
    assert c.cmd(b"f FETCH 1 FLAGS")[-1] == b"f BAD Log in first\r\n"
    assert c.cmd(b"s SELECT INBOX")[-1] == b"s BAD Log in first\r\n"
    login(c, BOB)
    # bob's INBOX, empty; nothing of alice's session reaches bob's
    assert b"* 0 EXISTS\r\n" in ok(c, b"s SELECT INBOX")
    append(other, b"two")
    assert ok(c, b"n NOOP") == [b"n OK NOOP completed\r\n"]
    # ENABLE QRESYNC was alice's session's: bob must enable it again
    assert c.cmd(b"q SELECT INBOX (QRESYNC (1 1))")[-1].startswith(b"q BAD")
    ok(c, b"u UNAUTHENTICATE")
    login(c, ALICE)
    assert b"* 2 EXISTS\r\n" in ok(c, b"s SELECT INBOX")
    c.close()
    other.close()


def test_failed_logins_still_count(srv: ServerHandle) -> None:
    c = Raw(srv.host, srv.port)
    for _ in range(2):
        assert c.cmd(b"l LOGIN alice@example.test wrong")[-1].startswith(b"l NO [AUTHENTICATIONFAILED]")
    login(c, ALICE)
    ok(c, b"u UNAUTHENTICATE")
    # the third failure on this connection ends it, UNAUTHENTICATE or not
    c.send(b"l LOGIN alice@example.test wrong\r\n")
    first = c.line()
    assert first.startswith(b"* BYE"), first
    assert c.line() == b""  # closed
    c.close()


def test_compression_stays(srv: ServerHandle) -> None:
    c = Raw(srv.host, srv.port)
    login(c, ALICE)
    c.send(b"z COMPRESS DEFLATE\r\n")
    assert c.line() == b"z OK DEFLATE active\r\n"
    enc = zlib.compressobj(wbits=-15)
    dec = zlib.decompressobj(wbits=-15)
    got = bytearray()

    def cmd(line: bytes, tag: bytes) -> bytes:
        c.send(enc.compress(line + b"\r\n") + enc.flush(zlib.Z_SYNC_FLUSH))
        got.clear()

        def done() -> bool:
            got.extend(dec.decompress(c.sock.recv(65536)))
            return (b"\r\n" + tag + b" ") in b"\r\n" + bytes(got) and bytes(got).endswith(b"\r\n")

        wait_until(done, timeout=10)
        return bytes(got)

    assert b"u OK UNAUTHENTICATE completed" in cmd(b"u UNAUTHENTICATE", b"u")
    # still compressed: the CAPABILITY arrives through the same deflate stream, without COMPRESS=DEFLATE
    out = cmd(b"c CAPABILITY", b"c")
    assert b"AUTH=PLAIN" in out and b"COMPRESS" not in out
    assert b"l OK" in cmd(b"l LOGIN bob@example.test wonderland", b"l")
    assert b"COMPRESS=DEFLATE" not in cmd(b"c CAPABILITY", b"c")
    c.close()
