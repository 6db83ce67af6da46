"""MAIL FROM's SIZE parameter from a hostile client (found while fixing what fuzz/ found: str.isdigit()
is true for "²"): with SMTPUTF8 a non-ASCII digit is a 501, and the session goes on."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mailsrv.config import SmtpConfig
from mailsrv.smtp.backend import SessionInfo
from mailsrv.smtp.grammar import SmtpError
from mailsrv.smtp.session import Session

from .conftest import FakeBackend, FakeSasl


async def _replies(cmds: list[bytes], spool: Path) -> list[bytes]:
    info = SessionInfo(sid="s1", hostname="mx.test", listener="smtp", peer_ip="127.0.0.1", tls={})
    s = Session(info, SmtpConfig(), FakeBackend(spool), FakeSasl(), starttls_available=False)
    out = []
    for line in cmds:
        try:
            out.append((await s.command(line)).reply)
        except SmtpError as exc:
            out.append(exc.reply())
    s.abort()
    return out


def test_a_superscript_digit_in_size_is_a_syntax_error(tmp_path: Path) -> None:
    replies = asyncio.run(_replies([b"EHLO c.test\r\n", "MAIL FROM:<a@remote.test> SMTPUTF8 SIZE=\u00b2\r\n".encode(),
                                    b"MAIL FROM:<a@remote.test> SMTPUTF8 SIZE=10\r\n"], tmp_path))
    assert replies[1].startswith(b"501 5.5.4 Invalid SIZE value")
    assert replies[2].startswith(b"250 ")
