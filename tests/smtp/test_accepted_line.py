"""A message's ``message.accepted`` line is written after its 250 (off the reply's path) but before the
session's next command, and never lost (a session that ends first writes it); the backend's 250 of a
message without a queue entry is made once per session and names that session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mailsrv import log
from mailsrv.config import SmtpConfig
from mailsrv.net.connection import Connection
from mailsrv.smtp import wiring
from mailsrv.smtp.backend import SessionInfo
from mailsrv.smtp.session import Session

from .conftest import FakeBackend
from .test_inbound import MSG, Raw


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """The server's writes (``("write", bytes)``) and log events (``("log", event)``), in order."""
    seen: list[tuple[str, Any]] = []
    write, emit = Connection.write, log.Logger._emit

    def recording_write(self: Connection, data: bytes) -> None:
        seen.append(("write", bytes(data)))
        write(self, data)

    def recording_emit(self: log.Logger, level: str, event: str, fields: dict[str, Any]) -> None:
        seen.append(("log", (event, dict(fields))))
        emit(self, level, event, fields)

    monkeypatch.setattr(Connection, "write", recording_write)
    monkeypatch.setattr(log.Logger, "_emit", recording_emit)
    return seen


def _accepted(seen: list[tuple[str, Any]]) -> list[int]:
    return [i for i, (kind, what) in enumerate(seen) if kind == "log" and what[0] == "message.accepted"]


def _write_with(seen: list[tuple[str, Any]], text: bytes) -> int:
    return next(i for i, (kind, what) in enumerate(seen) if kind == "write" and text in what)


def test_the_line_follows_the_250_and_precedes_the_next_command(make_server: Any,
                                                                events: list[tuple[str, Any]]) -> None:
    srv = make_server()
    c = Raw(srv.port)
    try:
        assert c.reply()[0] == 220
        c.send(b"EHLO client.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        assert [c.reply()[0] for _ in range(4)] == [250, 250, 250, 354]
        c.send(MSG + b".\r\n")
        code, lines = c.reply()
        assert code == 250
        c.send(b"NOOP\r\n")  # the next command: the line was written before it
        assert c.reply()[0] == 250
        first = _accepted(events)
        assert len(first) == 1
        assert _write_with(events, lines[0].encode()) < first[0] < _write_with(events, b"250 2.0.0 OK\r\n")
        fields = events[first[0]][1][1]
        assert fields["sender"] == "a@remote.test" and fields["to"] == "alice@example.test"
        assert fields["rcpts"] == 1 and fields["size"] == len(srv.backend.delivered[0].data)
        # a second message pipelined with QUIT: its 250 is held behind QUIT, its line written before
        # QUIT runs (the 221 goes out with the 250, after the line)
        c.send(b"MAIL FROM:<b@remote.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        assert [c.reply()[0] for _ in range(3)] == [250, 250, 354]
        c.send(MSG + b".\r\nQUIT\r\n")
        assert [c.reply()[0] for _ in range(2)] == [250, 221]
    finally:
        c.close()
    lines_at = _accepted(events)
    assert len(lines_at) == 2 and events[lines_at[1]][1][1]["sender"] == "b@remote.test"
    assert lines_at[1] < _write_with(events, b"221 ")


async def test_a_session_that_ends_writes_the_line_it_holds(tmp_path: Path,
                                                           events: list[tuple[str, Any]]) -> None:
    """Driven without a connection loop: each accepted message's line is written, the last one when
    the session ends (abort), an earlier one at the latest when the next message is accepted."""
    backend = FakeBackend(tmp_path)
    session = Session(SessionInfo(sid="s1", hostname="mx.example.test", listener="smtp", peer_ip="192.0.2.7"),
                      SmtpConfig(), backend)
    await session.command(b"EHLO one.test\r\n")
    for sender in (b"a@remote.test", b"b@remote.test"):
        await session.command(b"MAIL FROM:<" + sender + b">\r\n")
        await session.command(b"RCPT TO:<alice@example.test>\r\n")
        await session.command(b"DATA\r\n")
        assert session.spool is not None
        await session.spool.write(b"Subject: x\r\n\r\nbody\r\n")
        assert (await session.data_end(bare_newline=False, too_big=False)).reply.startswith(b"250")
    assert [events[i][1][1]["sender"] for i in _accepted(events)] == ["a@remote.test"]
    session.abort()
    assert [events[i][1][1]["sender"] for i in _accepted(events)] == ["a@remote.test", "b@remote.test"]
    session.abort()  # written once
    assert len(_accepted(events)) == 2


def test_the_backends_250_names_its_session() -> None:
    one, two = wiring._accepted("sid-one", 1), wiring._accepted("sid-two", 1)
    assert one.text == "OK id=sid-one" and two.text == "OK id=sid-two"
    assert (one.code, one.enh) == (250, "2.0.0") and one.log == {"local": 1, "queued": 0, "qid": None}
    assert wiring._accepted("sid-one", 3).log["local"] == 3
