"""Inbound SMTP over real loopback sockets with smtplib: reply codes, limits, DATA, BDAT, PIPELINING."""

from __future__ import annotations

import smtplib
import socket
from pathlib import Path

import pytest
from support.spool import no_spool_left

from mailsrv.config import LimitsConfig, SmtpConfig

MSG = b"From: a@remote.test\r\nTo: alice@example.test\r\nSubject: hi\r\n\r\nHello\r\n.dot line\r\n"


class Raw:
    """A minimal line client for exact wire checks (pipelining, smuggling)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> tuple[int, list[str]]:
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise EOFError(lines)
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line.decode())
            if line[3:4] != b"-":
                return int(line[:3]), lines

    def close(self) -> None:
        self.sock.close()


def test_basic_delivery(make_server) -> None:
    srv = make_server()
    with smtplib.SMTP("127.0.0.1", srv.port) as c:
        code, ehlo = c.ehlo("client.test")
        assert code == 250
        for ext in (b"PIPELINING", b"SIZE 52428800", b"8BITMIME", b"SMTPUTF8", b"ENHANCEDSTATUSCODES",
                    b"DSN", b"CHUNKING", b"STARTTLS"):
            assert ext in ehlo
        assert b"AUTH" not in ehlo  # never on the MTA port, never in plain text
        c.sendmail("a@remote.test", ["alice@example.test", "team@example.test"], MSG)
    [d] = srv.backend.delivered
    assert d.sender == "a@remote.test" and d.rcpts == ["alice@example.test", "team@example.test"]
    assert d.data.startswith(b"Return-Path: <a@remote.test>\r\nReceived: from client.test ([127.0.0.1])")
    assert d.data.endswith(MSG)
    assert b"with ESMTP id" in d.data
    # spool file removed after delivery (the unlink runs in a thread: poll with a deadline)
    no_spool_left(srv.backend.spool_dir)


def test_rcpt_reply_codes(make_server) -> None:
    srv = make_server()
    c = smtplib.SMTP("127.0.0.1", srv.port)
    try:
        c.ehlo("client.test")
        assert c.mail("a@remote.test")[0] == 250
        assert c.rcpt("nobody@example.test")[:1] == (550,)
        assert b"5.1.1" in c.rcpt("nobody@example.test")[1]
        code, msg = c.rcpt("x@elsewhere.test")
        assert (code, msg[:5]) == (554, b"5.7.1")
        code, msg = c.rcpt("full@example.test")
        assert (code, msg[:5]) == (452, b"4.2.2")
        assert c.rcpt("<Postmaster>")[0] == 250
        assert c.docmd("DATA")[0] == 354
    finally:
        c.close()  # dropped inside DATA: nothing is delivered
    assert srv.backend.delivered == []


def test_sequence_errors(make_server) -> None:
    srv = make_server()
    r = Raw(srv.port)
    assert r.reply()[0] == 220
    r.send(b"MAIL FROM:<a@remote.test>\r\n")
    assert r.reply()[0] == 503
    r.send(b"EHLO c.test\r\n")
    assert r.reply()[0] == 250
    r.send(b"RCPT TO:<alice@example.test>\r\n")
    code, lines = r.reply()
    assert code == 503 and "5.5.1" in lines[0]
    r.send(b"DATA\r\n")
    assert r.reply()[0] == 503
    r.send(b"MAIL FROM:<a@remote.test> FOO=BAR\r\n")
    assert r.reply()[0] == 555
    r.send(b"MAIL FROM:<a@remote.test> SIZE=999999999999\r\n")
    code, lines = r.reply()
    assert code == 552 and "5.3.4" in lines[0]
    r.send(b"BOGUS\r\n")
    assert r.reply()[0] == 500
    r.send(b"VRFY alice\r\n")
    assert r.reply()[0] == 252
    r.send(b"QUIT\r\n")
    assert r.reply()[0] == 221
    r.close()


def test_pipelining_and_smuggling(make_server) -> None:
    srv = make_server()
    r = Raw(srv.port)
    r.reply()
    r.send(b"EHLO c.test\r\n")
    r.reply()
    # RFC 2920: whole transaction in one write, then a second transaction after the dot
    r.send(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
    assert [r.reply()[0] for _ in range(4)] == [250, 250, 250, 354]
    r.send(b"Subject: one\r\n\r\nbody\r\n.\r\nMAIL FROM:<b@remote.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
    assert [r.reply()[0] for _ in range(4)] == [250, 250, 250, 354]
    # smuggling attempt: LF.LF then commands; the server reads to CRLF.CRLF and rejects
    r.send(b"Subject: two\r\n\r\nx\n.\nMAIL FROM:<evil@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n\r\nsmuggled\r\n.\r\n")
    code, lines = r.reply()
    assert code == 550 and "bare" in lines[0]
    r.send(b"QUIT\r\n")
    assert r.reply()[0] == 221
    r.close()
    assert [d.sender for d in srv.backend.delivered] == ["a@remote.test"]
    assert srv.backend.delivered[0].data.endswith(b"Subject: one\r\n\r\nbody\r\n")


def test_bdat(make_server) -> None:
    srv = make_server()
    r = Raw(srv.port)
    r.reply()
    r.send(b"EHLO c.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\n")
    assert [r.reply()[0] for _ in range(3)] == [250, 250, 250]
    part1 = b"Subject: bdat\r\n\r\n.leading dot kept\r\n"
    part2 = b"\r\n.\r\nnot an end\r\n"
    r.send(b"BDAT %d\r\n" % len(part1) + part1 + b"BDAT %d LAST\r\n" % len(part2) + part2)
    assert r.reply()[0] == 250
    assert r.reply()[0] == 250
    # BDAT without a transaction: the chunk is read and discarded, the session stays in sync
    r.send(b"BDAT 6 LAST\r\nNOOP\r\nNOOP\r\n")
    assert r.reply()[0] == 503
    assert r.reply()[0] == 250
    r.send(b"QUIT\r\n")
    assert r.reply()[0] == 221
    r.close()
    [d] = srv.backend.delivered
    assert d.data.endswith(part1 + part2)


def test_size_limit_enforced_while_reading(make_server) -> None:
    srv = make_server(smtp=SmtpConfig(max_message_size=1000))
    with smtplib.SMTP("127.0.0.1", srv.port) as c:
        c.ehlo("c.test")
        # announced SIZE over the limit: refused at MAIL (RFC 1870)
        with pytest.raises(smtplib.SMTPSenderRefused) as e1:
            c.sendmail("a@remote.test", ["alice@example.test"], b"Subject: big\r\n\r\n" + b"x" * 2000 + b"\r\n")
        assert e1.value.smtp_code == 552
    # no SIZE announced: enforced while reading DATA, then the session goes on
    r = Raw(srv.port)
    r.reply()
    r.send(b"EHLO c.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    assert [r.reply()[0] for _ in range(4)] == [250, 250, 250, 354]
    r.send(b"Subject: big\r\n\r\n" + (b"x" * 98 + b"\r\n") * 30 + b".\r\nNOOP\r\n")
    code, lines = r.reply()
    assert code == 552 and "5.3.4" in lines[0]
    assert r.reply()[0] == 250
    r.close()
    assert srv.backend.delivered == []


def test_max_recipients_and_error_budget(make_server) -> None:
    srv = make_server(smtp=SmtpConfig(max_recipients=2), limits=LimitsConfig(max_errors=3))
    r = Raw(srv.port)
    r.reply()
    r.send(b"EHLO c.test\r\nMAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\n"
           b"RCPT TO:<team@example.test>\r\n")
    codes = [r.reply()[0] for _ in range(5)]
    assert codes == [250, 250, 250, 250, 452]
    r.send(b"BAD\r\nBAD\r\n")
    assert r.reply()[0] == 500
    assert r.reply()[0] == 500  # third error: the reply, then 421 and close
    code, lines = r.reply()
    assert code == 421 and "too many errors" in lines[0]
    with pytest.raises(EOFError):
        r.reply()
    r.close()


def test_line_too_long(make_server) -> None:
    srv = make_server(limits=LimitsConfig(max_line_length=100))
    r = Raw(srv.port)
    r.reply()
    r.send(b"NOOP " + b"x" * 500 + b"\r\nNOOP\r\n")
    code, lines = r.reply()
    assert code == 500 and "5.5.2" in lines[0]
    assert r.reply()[0] == 250
    r.close()


def test_smtputf8(make_server) -> None:
    srv = make_server()
    rcpt = "\u7528\u6237@example.test"
    with smtplib.SMTP("127.0.0.1", srv.port) as c:
        c.ehlo("c.test")
        msg = "From: j@remote.test\r\nSubject: \u4f60\u597d\r\n\r\n\u4f60\u597d\r\n".encode()
        c.sendmail("jos\u00e9@remote.test", [rcpt], msg, mail_options=["SMTPUTF8", "BODY=8BITMIME"])
        # without SMTPUTF8 a non-ASCII address is refused with 553 5.6.7
        code, text = c.docmd("MAIL FROM:<jos\u00e9@remote.test>".encode().decode("latin-1"))
        assert code == 553 and text.startswith(b"5.6.7")
    [d] = srv.backend.delivered
    assert d.sender == "jos\u00e9@remote.test" and d.rcpts == [rcpt] and d.tx.smtputf8
    assert b"with UTF8SMTP id" in d.data


def test_dsn_parameters(make_server) -> None:
    srv = make_server()
    with smtplib.SMTP("127.0.0.1", srv.port) as c:
        c.ehlo("c.test")
        c.sendmail("a@remote.test", ["alice@example.test"], MSG,
                   mail_options=["RET=HDRS", "ENVID=abc+2B1"],
                   rcpt_options=["NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;alice+2Bx@example.test"])
        code, _ = c.docmd("MAIL FROM:<a@remote.test>")
        assert code == 250
        code, _ = c.docmd("RCPT TO:<alice@example.test> NOTIFY=NEVER,SUCCESS")
        assert code == 501
    [d] = srv.backend.delivered
    assert (d.tx.ret, d.tx.envid) == ("HDRS", "abc+1")
    assert d.tx.rcpts[0].notify == {"SUCCESS", "DELAY"}
    assert d.tx.rcpts[0].orcpt == "rfc822;alice+x@example.test"


def test_large_message_streams(make_server, tmp_path: Path) -> None:
    """25 MB through DATA: streamed to the spool, delivered intact."""
    srv = make_server()
    line = b"0123456789" * 9 + b"abcdefgh\r\n"  # 100 bytes
    body = b"Subject: big\r\n\r\n" + line * (25 * 1024 * 1024 // 100)
    with smtplib.SMTP("127.0.0.1", srv.port) as c:
        c.ehlo("c.test")
        c.sendmail("a@remote.test", ["alice@example.test"], body)
    [d] = srv.backend.delivered
    assert d.data.endswith(body) and len(d.data) > 25 * 1024 * 1024


def test_deliver_failure_is_reported(make_server) -> None:
    from mailsrv.smtp.backend import Verdict

    srv = make_server()
    srv.backend.fail_next = Verdict(451, "4.3.0", "Temporary local problem")
    with smtplib.SMTP("127.0.0.1", srv.port) as c:
        c.ehlo("c.test")
        with pytest.raises(smtplib.SMTPDataError) as e:
            c.sendmail("a@remote.test", ["alice@example.test"], MSG)
        assert e.value.smtp_code == 451


def test_idle_timeout(make_server) -> None:
    srv = make_server(limits=LimitsConfig(idle_timeout=0.3))
    r = Raw(srv.port)
    r.reply()
    code, lines = r.reply()  # nothing sent: the server gives up
    assert code == 421 and "4.4.2" in lines[0]
    r.close()


def test_connections_per_ip_limit(make_server) -> None:
    srv = make_server(limits=LimitsConfig(max_connections_per_ip=1, idle_timeout=20))
    first = Raw(srv.port)
    assert first.reply()[0] == 220
    second = Raw(srv.port)
    code, lines = second.reply()
    assert code == 421 and "4.7.0" in lines[0]
    second.close()
    first.close()


def test_drain_says_goodbye(make_server) -> None:
    srv = make_server()
    r = Raw(srv.port)
    r.reply()
    r.send(b"EHLO c.test\r\n")
    r.reply()
    import asyncio

    drained = asyncio.run_coroutine_threadsafe(srv.listener.drain(5), srv.loop.loop)
    code, lines = r.reply()
    assert code == 421 and "4.3.2" in lines[0]
    r.close()
    drained.result(10)


def test_command_line_limit_is_smtp_sized(make_server) -> None:
    srv = make_server()  # listener allows 64 KiB lines; SMTP commands stop at 512 + 2000
    r = Raw(srv.port)
    r.reply()
    r.send(b"NOOP " + b"x" * 3000 + b"\r\nNOOP " + b"x" * 2000 + b"\r\n")
    code, lines = r.reply()
    assert code == 500 and "5.5.2" in lines[0]
    assert r.reply()[0] == 250
    r.close()
