"""The trace fields a session writes (RFC 5321 §4.4): built once per session state, never stale when
the state changes between messages (HELO/EHLO, SMTPUTF8, STARTTLS, AUTH)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mailsrv.config import SmtpConfig
from mailsrv.smtp.backend import SessionInfo
from mailsrv.smtp.session import Session

from .conftest import FakeBackend


@dataclass
class Account:
    address: str
    aliases: tuple[str, ...] = ()
    may_send_outside: bool = True


async def _received(session: Session, backend: FakeBackend, mail: bytes = b"MAIL FROM:<a@remote.test>") -> bytes:
    """One message through ``session``: its Return-Path and Received fields as delivered."""
    await session.command(mail + b"\r\n")
    await session.command(b"RCPT TO:<alice@example.test>\r\n")
    assert (await session.command(b"DATA\r\n")).then == "data"
    assert session.spool is not None
    await session.spool.write(b"Subject: x\r\n\r\nbody\r\n")
    step = await session.data_end(bare_newline=False, too_big=False)
    assert step.reply.startswith(b"250")
    data = backend.delivered[-1].data
    return data[: data.index(b"Subject: x")]


async def test_trace_fields_follow_the_session_state(tmp_path: Path) -> None:
    backend = FakeBackend(tmp_path)
    info = SessionInfo(sid="s1", hostname="mx.example.test", listener="smtp", peer_ip="192.0.2.7")
    session = Session(info, SmtpConfig(), backend)
    await session.command(b"HELO one.test\r\n")
    first = await _received(session, backend)
    assert first.startswith(b"Return-Path: <a@remote.test>\r\nReceived: from one.test ([192.0.2.7])\r\n")
    assert b"\tby mx.example.test (mailsrv) with SMTP id s1\r\n\tfor <alice@example.test>;\r\n\t" in first
    await session.command(b"EHLO two.test\r\n")
    second = await _received(session, backend, b"MAIL FROM:<b@remote.test>")
    assert second.startswith(b"Return-Path: <b@remote.test>\r\nReceived: from two.test ([192.0.2.7])\r\n")
    assert b" with ESMTP id s1\r\n" in second
    assert b" with UTF8SMTP id s1\r\n" in await _received(session, backend, b"MAIL FROM:<b@remote.test> SMTPUTF8")
    assert b" with ESMTP id s1\r\n" in await _received(session, backend)  # the next message without it
    # after STARTTLS (RFC 3207 §4.2: everything learned before is forgotten) and a new EHLO
    session.tls_started({"tls": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"})
    await session.command(b"EHLO three.test\r\n")
    tls = await _received(session, backend)
    assert b"Received: from three.test ([192.0.2.7])\r\n\tby mx.example.test (mailsrv) with ESMTPS id s1\r\n" \
           b"\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)\r\n\tfor <alice@example.test>;" in tls
    info.account = Account("a@remote.test")  # what AUTH sets
    assert b" with ESMTPSA id s1\r\n" in await _received(session, backend)
