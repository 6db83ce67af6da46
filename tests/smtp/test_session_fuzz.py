"""The session state machine driven directly (no network) by hypothesis: any command sequence gives
SMTP replies, never another exception, and 250 after DATA only through the backend."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from mailsrv.config import SmtpConfig
from mailsrv.smtp.backend import SessionInfo
from mailsrv.smtp.grammar import SmtpError
from mailsrv.smtp.session import Session, State

from .conftest import FakeBackend, FakeSasl

VERBS = [b"EHLO", b"HELO", b"MAIL", b"RCPT", b"DATA", b"BDAT", b"RSET", b"NOOP", b"QUIT", b"VRFY",
         b"HELP", b"STARTTLS", b"AUTH", b"XYZZY", b"mail", b""]
ARGS = [b"", b"client.test", b"FROM:<a@remote.test>", b"FROM:<>", b"TO:<alice@example.test>",
        b"TO:<nobody@example.test>", b"TO:<x@elsewhere.test>", b"FROM:<a@remote.test> SIZE=10",
        b"TO:<bob@example.test> NOTIFY=SUCCESS", b"10", b"0 LAST", b"PLAIN", b"LOGIN", b"PLAIN AGEAYg==",
        b"FROM:<a@remote.test> BODY=8BITMIME SMTPUTF8", b"TO:<\xe7\x94\xa8@example.test>"]

lines = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(VERBS), st.sampled_from(ARGS)).map(lambda t: t[0] + b" " + t[1] + b"\r\n"),
        st.binary(max_size=80).map(lambda b: b + b"\r\n"),
    ),
    max_size=25,
)


async def drive(cmds: list[bytes], spool_dir: Path, submission: bool) -> FakeBackend:
    backend = FakeBackend(spool_dir)
    info = SessionInfo(sid="s1", hostname="mx.test", listener="submission" if submission else "smtp",
                       peer_ip="127.0.0.1", tls={"tls": "TLSv1.3"} if submission else {})
    s = Session(info, SmtpConfig(max_recipients=5, max_message_size=10_000), backend, FakeSasl(),
                starttls_available=not submission)
    for line in cmds:
        try:
            step = await s.command(line)
            assert step.reply[:3].isdigit() or step.then == "bdat"
            if step.then == "data":
                assert s.spool is not None
                await s.spool.write(b"Subject: x\r\n\r\nbody\r\n")
                step = await s.data_end(bare_newline=False, too_big=False)
                assert step.reply.startswith(b"250 ")
            elif step.then == "bdat":
                if s.bdat_chunk_ok(step.size) and s.spool is not None:
                    await s.spool.write(b"x" * step.size)
                await s.bdat_end(step.last)
            elif step.then == "auth":
                await s.auth_response(b"AGFsaWNlQGV4YW1wbGUudGVzdABzZWNyZXQ=\r\n")
            elif step.then == "starttls":
                s.tls_started({"tls": "TLSv1.3", "cipher": "X"})
                assert s.state is State.GREETED
            elif step.then == "close":
                break
        except SmtpError as exc:
            assert 400 <= exc.code < 600 and exc.enh[0] in "45"
    s.abort()
    return backend


@settings(max_examples=200, deadline=None)
@given(lines, st.booleans())
def test_any_command_sequence(cmds: list[bytes], submission: bool) -> None:
    with tempfile.TemporaryDirectory() as d:
        backend = asyncio.run(drive(cmds, Path(d), submission))
        # every delivered transaction had a sender decision and at least one accepted recipient
        for m in backend.delivered:
            assert m.rcpts
        assert list(Path(d).iterdir()) == []  # no spool file left behind


def test_driver_delivers_a_valid_sequence(tmp_path: Path) -> None:
    cmds = [b"EHLO c.test\r\n", b"MAIL FROM:<a@remote.test>\r\n", b"RCPT TO:<alice@example.test>\r\n",
            b"DATA\r\n", b"MAIL FROM:<a@remote.test>\r\n", b"RCPT TO:<bob@example.test>\r\n", b"BDAT 3 LAST\r\n"]
    backend = asyncio.run(drive(cmds, tmp_path, False))
    assert [m.rcpts for m in backend.delivered] == [["alice@example.test"], ["bob@example.test"]]
    assert backend.delivered[1].data.endswith(b"xxx")
