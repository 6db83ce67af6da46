"""STARTTLS, implicit TLS and AUTH over real sockets (trustme certificates, smtplib)."""

from __future__ import annotations

import smtplib
import socket

import pytest

from mailsrv.config import SmtpConfig

MSG = b"From: alice@example.test\r\nTo: x@remote.test\r\nSubject: out\r\n\r\nbody\r\n"


def test_mta_starttls(make_server) -> None:
    srv = make_server()
    with smtplib.SMTP("127.0.0.1", srv.port) as c:
        c.ehlo("c.test")
        assert c.starttls(context=srv.client_ctx)[0] == 220
        code, ehlo = c.ehlo("c.test")
        assert b"STARTTLS" not in ehlo  # RFC 3207 §4.2: not offered again
        c.sendmail("a@remote.test", ["alice@example.test"], MSG)
        assert c.docmd("STARTTLS")[0] == 503
    [d] = srv.backend.delivered
    assert b"with ESMTPS id" in d.data and b"(using TLSv1." in d.data


def test_starttls_injection_is_discarded(make_server) -> None:
    """RFC 3207 §4.2 (CVE-2011-0411): plain text pipelined after STARTTLS is never read as a command of the
    TLS session; the handshake still happens (a close would make an opportunistic client go plain)."""
    srv = make_server()
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"EHLO c.test\r\n")
    while f.readline()[3:4] == b"-":
        pass
    s.sendall(b"STARTTLS\r\nMAIL FROM:<evil@remote.test>\r\n")  # plain text pipelined after STARTTLS
    assert f.readline().startswith(b"220")
    f.close()
    t = srv.client_ctx.wrap_socket(s, server_hostname="localhost")
    tf = t.makefile("rb")
    t.sendall(b"EHLO c.test\r\n")
    first = tf.readline()
    assert first.startswith(b"250-"), first  # EHLO's reply comes first: nothing of the injection answered
    while tf.readline()[3:4] == b"-":
        pass
    t.sendall(b"MAIL FROM:<a@remote.test>\r\n")
    assert tf.readline().startswith(b"250 ")  # no transaction was started by the injected MAIL (503 nested)
    tf.close()
    t.close()


def test_submission_auth_only_after_starttls(make_server) -> None:
    srv = make_server(protocol="submission")
    with smtplib.SMTP("127.0.0.1", srv.port) as c:
        code, ehlo = c.ehlo("c.test")
        assert b"AUTH" not in ehlo
        code, text = c.docmd("AUTH", "PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABzZWNyZXQ=")
        assert (code, text[:5]) == (530, b"5.7.0")
        code, text = c.docmd("MAIL FROM:<alice@example.test>")
        assert (code, text[:5]) == (530, b"5.7.0")
        c.starttls(context=srv.client_ctx)
        code, ehlo = c.ehlo("c.test")
        assert b"AUTH PLAIN LOGIN" in ehlo
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            c.login("alice@example.test", "wrong")
        assert e.value.smtp_code == 535
        c.login("alice@example.test", "secret")
        # relay for authenticated users; MAIL FROM must be theirs (own address or alias)
        c.sendmail("alice@example.test", ["x@remote.test", "bob@example.test"], MSG)
        c.sendmail("sales@example.test", ["x@remote.test"], MSG)
        code, text = c.docmd("MAIL FROM:<bob@example.test>")
        assert (code, text[:5]) == (553, b"5.7.1")
    assert [d.sender for d in srv.backend.delivered] == ["alice@example.test", "sales@example.test"]
    assert b"with ESMTPSA id" in srv.backend.delivered[0].data


def test_auth_login_and_outside_policy(make_server) -> None:
    srv = make_server(protocol="submission")
    with smtplib.SMTP("127.0.0.1", srv.port) as c:
        c.starttls(context=srv.client_ctx)
        c.ehlo("c.test")
        c.user, c.password = "bob@example.test", "hunter2"
        assert c.auth("LOGIN", c.auth_login)[0] == 235
        assert c.docmd("AUTH PLAIN")[0] == 503  # already authenticated
        assert c.mail("bob@example.test")[0] == 250
        code, text = c.rcpt("x@remote.test")
        assert (code, text[:5]) == (550, b"5.7.1")  # may not send outside
        assert c.rcpt("alice@example.test")[0] == 250


def test_auth_cancel_and_bad_base64(make_server) -> None:
    srv = make_server(protocol="submission")
    with smtplib.SMTP("127.0.0.1", srv.port) as c:
        c.starttls(context=srv.client_ctx)
        c.ehlo("c.test")
        assert c.docmd("AUTH PLAIN")[0] == 334
        assert c.docmd("*")[0] == 501
        assert c.docmd("AUTH PLAIN !!!notbase64")[0] == 501
        assert c.docmd("AUTH CRAM-MD5")[0] == 504


def test_implicit_tls(make_server) -> None:
    srv = make_server(protocol="submission", tls="implicit")
    with smtplib.SMTP_SSL("127.0.0.1", srv.port, context=srv.client_ctx) as c:
        code, ehlo = c.ehlo("c.test")
        assert b"STARTTLS" not in ehlo and b"AUTH PLAIN LOGIN" in ehlo
        c.login("alice@example.test", "secret")
        c.sendmail("alice@example.test", ["bob@example.test"], MSG)
    assert len(srv.backend.delivered) == 1


def test_commands_before_auth_limited(make_server) -> None:
    srv = make_server(protocol="submission", smtp=SmtpConfig(max_commands_before_auth=3))
    with smtplib.SMTP("127.0.0.1", srv.port) as c:
        for _ in range(3):
            assert c.noop()[0] == 250
        code, text = c.noop()
        assert code == 421
