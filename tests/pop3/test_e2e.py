"""POP3 end to end: a real master with two workers, poplib over STLS and implicit TLS, raw sockets."""

from __future__ import annotations

import asyncio
import imaplib
import poplib
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from pop3e2e import Setup, start
from support.server import wait_until

from mailsrv.pop3.grammar import wire_size

MSGS = [
    b"From: a@example.test\r\nSubject: one\r\n\r\nfirst body\r\n.starts with a dot\r\n",
    b"From: b@example.test\nSubject: two (bare LF)\n\nline 1\nline 2\nline 3\n",
    b"From: c@example.test\r\nSubject: three\r\n\r\n" + b"x" * 76 + b"\r\n" * 4000,
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    s = start(tmp_path_factory.mktemp("pop3e2e"))
    try:
        yield s
    finally:
        assert s.server.stop() == 0
        # an unexpected exception in a session is answered SYS/TEMP and logged: none may happen here
        assert not [ln for ln in s.server.lines if "session.error" in ln or "session.crash" in ln]


def lines_of(msg: bytes) -> list[bytes]:
    text = msg.replace(b"\r\n", b"\n")
    return (text[:-1] if text.endswith(b"\n") else text).split(b"\n")


def test_stls_retr_top_uidl_and_delete(setup: Setup) -> None:
    addr = setup.add_user("stls", MSGS)
    c = setup.pop3(addr)
    caps = c.capa()
    assert "STLS" not in caps and "UIDL" in caps and "TOP" in caps and "RESP-CODES" in caps
    count, size = c.stat()
    assert count == 3 and size == sum(wire_size(m) for m in MSGS)
    listing = c.list()[1]
    assert listing == [f"{i} {wire_size(m)}".encode() for i, m in enumerate(MSGS, 1)]
    for i, m in enumerate(MSGS, 1):
        resp, lines, octets = c.retr(i)
        assert resp == f"+OK {wire_size(m)} octets".encode()
        assert lines == lines_of(m)
    resp, lines, _ = c.top(2, 1)
    assert lines == [b"From: b@example.test", b"Subject: two (bare LF)", b"", b"line 1"]
    assert c.top(1, 0)[1] == [b"From: a@example.test", b"Subject: one", b""]
    uidls = c.uidl()[1]
    c.dele(1)
    c.dele(3)
    assert c.quit().startswith(b"+OK")
    c = setup.pop3(addr)
    assert c.stat()[0] == 1
    assert c.uidl()[1] == [b"1 " + uidls[1].split()[1]]  # stable across sessions
    c.quit()


def test_implicit_tls(setup: Setup) -> None:
    addr = setup.add_user("implicit", MSGS[:2])
    c = setup.pop3(addr, implicit=True)
    assert "STLS" not in c.capa()
    assert c.stat()[0] == 2
    assert c.retr(2)[1] == lines_of(MSGS[1])
    c.quit()


def test_plaintext_refused_before_stls(setup: Setup) -> None:
    addr = setup.add_user("plain")
    c = poplib.POP3("127.0.0.1", setup.port("pop3"), timeout=20)
    caps = c.capa()
    assert "STLS" in caps and "USER" not in caps
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        c.user(addr)
    c.quit()


def test_bad_password_is_auth_error(setup: Setup) -> None:
    addr = setup.add_user("badpw")
    c = poplib.POP3_SSL("127.0.0.1", setup.port("pop3s"), context=setup.tls_context(), timeout=20)
    c.user(addr)
    with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\] Authentication failed"):
        c.pass_("wrong")
    c.quit()


def test_in_use_across_workers_and_released_on_quit(setup: Setup) -> None:
    addr = setup.add_user("inuse", MSGS[:1])
    first = setup.pop3(addr)
    # several connections so that the second worker serves some of them too
    for _ in range(4):
        other = poplib.POP3_SSL("127.0.0.1", setup.port("pop3s"), context=setup.tls_context(), timeout=20)
        other.user(addr)
        with pytest.raises(poplib.error_proto, match=r"-ERR \[IN-USE\]"):
            other.pass_(setup.passwords[addr])
        other.quit()
    first.quit()
    setup.pop3(addr).quit()


def test_dropped_connection_deletes_nothing(setup: Setup) -> None:
    addr = setup.add_user("dropped", MSGS[:2])
    c = setup.pop3(addr)
    c.dele(1)
    c.dele(2)
    c.sock.shutdown(socket.SHUT_RDWR)
    c.sock.close()

    def relogin() -> bool:
        try:
            setup.pop3(addr).quit()
        except poplib.error_proto as exc:
            assert b"IN-USE" in exc.args[0]
            return False
        return True

    wait_until(relogin, timeout=10)  # the server notices the drop and releases the lock
    assert len(asyncio.run(setup.inbox_uids(addr))) == 2


def test_delete_is_seen_by_concurrent_imap_session(setup: Setup) -> None:
    addr = setup.add_user("imapview", MSGS[:2])
    imap = imaplib.IMAP4("127.0.0.1", setup.port("imap"), timeout=20)
    imap.starttls(setup.tls_context())
    imap.login(addr, setup.passwords[addr])
    assert imap.select("INBOX")[1] == [b"2"]
    c = setup.pop3(addr)
    c.dele(1)
    imap.noop()
    assert imap.search(None, "ALL")[1] == [b"1 2"]  # DELE alone removes nothing
    c.quit()

    def gone() -> bool:
        typ, data = imap.noop()
        return imap.search(None, "ALL")[1] == [b"1"]

    wait_until(gone, timeout=10)
    assert imap.fetch("1", "(BODY.PEEK[HEADER.FIELDS (Subject)])")[1][0][1].startswith(b"Subject: two")
    imap.logout()


def raw_session(setup: Setup) -> tuple[ssl.SSLSocket, object]:
    sock = socket.create_connection(("127.0.0.1", setup.port("pop3s")), timeout=20)
    tls = setup.tls_context().wrap_socket(sock, server_hostname="127.0.0.1")
    f = tls.makefile("rb")
    assert f.readline().startswith(b"+OK")
    return tls, f


def test_bad_input_and_pipelining(setup: Setup) -> None:
    addr = setup.add_user("raw", MSGS[:2])
    tls, f = raw_session(setup)
    tls.sendall(b"STAT\r\nXYZZY\r\nUSER " + b"a" * 70000 + b"\r\nPASS x\r\n")
    assert f.readline() == b"-ERR Not logged in\r\n"  # type: ignore[attr-defined]
    assert f.readline() == b"-ERR Unknown command\r\n"  # type: ignore[attr-defined]
    assert f.readline() == b"-ERR Line too long\r\n"  # type: ignore[attr-defined]
    assert f.readline() == b"-ERR No user name given (USER first)\r\n"  # type: ignore[attr-defined]
    # RFC 2449 PIPELINING: a whole batch in one write, answers in order
    pw = setup.passwords[addr].encode()
    tls.sendall(b"USER " + addr.encode() + b"\r\nPASS " + pw + b"\r\nSTAT\r\nLIST 2\r\nDELE 2\r\nQUIT\r\n")
    replies = [f.readline() for _ in range(6)]  # type: ignore[attr-defined]
    assert replies[0] == b"+OK\r\n" and replies[1].startswith(b"+OK Logged in, 2 messages")
    assert replies[2] == f"+OK 2 {wire_size(MSGS[0]) + wire_size(MSGS[1])}\r\n".encode()
    assert replies[3] == f"+OK 2 {wire_size(MSGS[1])}\r\n".encode()
    assert replies[4] == b"+OK Message 2 deleted\r\n" and replies[5].startswith(b"+OK")
    assert f.read() == b""  # type: ignore[attr-defined]
    tls.close()
    assert len(asyncio.run(setup.inbox_uids(addr))) == 1


def test_error_budget_disconnects(setup: Setup) -> None:
    tls, f = raw_session(setup)
    tls.sendall(b"BOGUS\r\n" * 25)
    replies = f.read().split(b"\r\n")  # type: ignore[attr-defined]
    assert replies.count(b"-ERR Unknown command") == 20
    assert b"-ERR Too many errors, closing connection" in replies
    tls.close()


def test_file_permissions_of_lock_dir(setup: Setup) -> None:
    lock_dir = Path(setup.cfg.server.data_dir) / "locks" / "pop3"
    assert lock_dir.is_dir() and (lock_dir.stat().st_mode & 0o077) == 0


def _line(f: object) -> bytes:
    return f.readline()  # type: ignore[attr-defined,no-any-return]


@pytest.mark.parametrize("mech", ["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"])
def test_auth_scram_sha_256(setup: Setup, mech: str) -> None:
    import base64

    from scramp import ScramClient

    addr = setup.add_user("scram-" + mech[-4:].lower(), MSGS[:1])
    tls, f = raw_session(setup)
    tls.sendall(b"CAPA\r\n")
    caps = []
    while (line := _line(f)) != b".\r\n":
        caps.append(line)
    # on TLS the channel binding (RFC 5929 tls-server-end-point) makes -PLUS available
    assert b"SASL SCRAM-SHA-256-PLUS SCRAM-SHA-256" in b"".join(caps)
    binding = ("tls-server-end-point", tls) if mech.endswith("PLUS") else None
    client = ScramClient([mech], addr, setup.passwords[addr], channel_binding=binding)
    tls.sendall(f"AUTH {mech} ".encode() + base64.b64encode(client.get_client_first().encode()) + b"\r\n")
    challenge = _line(f)
    assert challenge.startswith(b"+ ")
    client.set_server_first(base64.b64decode(challenge[2:].strip()).decode())
    tls.sendall(base64.b64encode(client.get_client_final().encode()) + b"\r\n")
    final = _line(f)
    assert final.startswith(b"+ ")
    client.set_server_final(base64.b64decode(final[2:].strip()).decode())  # verifies the server
    tls.sendall(b"\r\n")
    assert _line(f).startswith(b"+OK Logged in, 1 messages")
    tls.sendall(b"QUIT\r\n")
    assert _line(f).startswith(b"+OK")
    tls.close()


def test_auth_plain_and_cancel(setup: Setup) -> None:
    import base64

    addr = setup.add_user("saslplain", MSGS[:1])
    tls, f = raw_session(setup)
    tls.sendall(b"AUTH PLAIN\r\n")
    assert _line(f) == b"+ \r\n"
    tls.sendall(b"*\r\n")
    assert _line(f) == b"-ERR [AUTH] Authentication cancelled\r\n"
    creds = base64.b64encode(b"\0" + addr.encode() + b"\0" + setup.passwords[addr].encode())
    tls.sendall(b"AUTH PLAIN " + creds + b"\r\n")
    assert _line(f).startswith(b"+OK Logged in")
    tls.close()


def test_lockout_after_repeated_failures(setup: Setup) -> None:
    addr = setup.add_user("locked", MSGS[:1])
    failures = setup.cfg.auth.account_failures
    done = 0
    while done < failures:  # a session is cut after max_auth_failures; reconnect until locked
        c = poplib.POP3_SSL("127.0.0.1", setup.port("pop3s"), context=setup.tls_context(), timeout=20)
        try:
            for _ in range(setup.cfg.pop3.max_auth_failures):
                if done >= failures:
                    break
                c.user(addr)
                with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
                    c.pass_("wrong")
                done += 1
        finally:
            c.close()
    c = poplib.POP3_SSL("127.0.0.1", setup.port("pop3s"), context=setup.tls_context(), timeout=20)
    c.user(addr)
    # the right password is refused too, with the same neutral answer
    with pytest.raises(poplib.error_proto, match=r"^b'-ERR \[AUTH\] Authentication failed'$"):
        c.pass_(setup.passwords[addr])
    c.close()
