"""The per-message cost of the connection loop: replies to a pipelined group go out in one write
(RFC 2920 §3.1), buffered lines are taken without a wait, spool files are removed in batches, and a
message costs one log line that says what an operator needs."""

from __future__ import annotations

import asyncio
import io
import re
import smtplib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.server import wait_until
from support.spool import no_spool_left

from mailsrv import log
from mailsrv.delivery import spool as spool_mod
from mailsrv.delivery.spool import FileSpool
from mailsrv.net.connection import Connection, LineTooLong
from mailsrv.smtp.server import MAX_HELD_REPLIES

from .test_inbound import MSG, Raw


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every Connection.write of the server, in order."""
    seen: list[bytes] = []
    original = Connection.write

    def recording(self: Connection, data: bytes) -> None:
        seen.append(bytes(data))
        original(self, data)

    monkeypatch.setattr(Connection, "write", recording)
    return seen


def _greeted(port: int) -> Raw:
    """A raw connection past the greeting and EHLO."""
    c = Raw(port)
    assert c.reply()[0] == 220
    c.send(b"EHLO client.test\r\n")
    assert c.reply()[0] == 250
    return c


def test_pipelined_group_is_answered_in_one_write(make_server: Any, writes: list[bytes]) -> None:
    srv = make_server()
    c = _greeted(srv.port)
    try:
        del writes[:]
        c.send(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\n"
               b"DATA\r\n")
        assert [c.reply()[0] for _ in range(4)] == [250, 250, 250, 354]
        assert len(writes) == 1 and writes[0].count(b"\r\n") == 4, writes
        c.send(MSG + b".\r\nQUIT\r\n")
        assert c.reply()[0] == 250
        assert c.reply()[0] == 221
    finally:
        c.close()
    assert len(srv.backend.delivered) == 1 and srv.backend.delivered[0].rcpts == ["alice@example.test",
                                                                                  "bob@example.test"]


def test_commands_one_at_a_time_get_a_reply_each(make_server: Any, writes: list[bytes]) -> None:
    srv = make_server()
    with smtplib.SMTP("127.0.0.1", srv.port, timeout=10) as c:  # a reply held for nothing: a timeout
        c.ehlo("client.test")
        del writes[:]
        assert c.noop()[0] == 250
        assert c.mail("a@remote.test")[0] == 250
        assert c.rcpt("nobody@example.test")[0] == 550  # an error reply is held and sent the same way
        assert c.rcpt("alice@example.test")[0] == 250
        assert c.rset()[0] == 250
    assert [w.count(b"\r\n") for w in writes] == [1] * 6, writes  # one write per reply (QUIT too), none joined


def test_a_flood_of_pipelined_commands_is_answered_in_bounded_writes(make_server: Any,
                                                                      writes: list[bytes]) -> None:
    srv = make_server()
    c = Raw(srv.port)
    n = 3 * MAX_HELD_REPLIES + 5
    try:
        assert c.reply()[0] == 220
        del writes[:]
        c.send(b"NOOP\r\n" * n)
        assert [c.reply()[0] for _ in range(n)] == [250] * n
    finally:
        c.close()
    assert all(w.count(b"\r\n") <= MAX_HELD_REPLIES for w in writes)
    assert sum(w.count(b"\r\n") for w in writes) == n


def test_errors_in_a_pipelined_group_keep_their_order(make_server: Any) -> None:
    srv = make_server()
    c = Raw(srv.port)
    try:
        assert c.reply()[0] == 220
        c.send(b"EHLO client.test\r\nRCPT TO:<alice@example.test>\r\nMAIL FROM:<a@remote.test>\r\n"
               b"RCPT TO:<nobody@example.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        assert [c.reply()[0] for _ in range(6)] == [250, 503, 250, 550, 250, 354]
        c.send(MSG + b".\r\n")
        assert c.reply()[0] == 250
    finally:
        c.close()


def test_replies_are_sent_before_waiting_for_a_bdat_chunk(make_server: Any) -> None:
    """A client may wait for the replies to MAIL and RCPT before it sends the chunk it announced."""
    srv = make_server()
    c = _greeted(srv.port)
    try:
        c.send(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nBDAT %d LAST\r\n" % len(MSG))
        assert [c.reply()[0] for _ in range(2)] == [250, 250]
        c.send(MSG)
        assert c.reply()[0] == 250
    finally:
        c.close()
    assert srv.backend.delivered[0].data.endswith(MSG)


# -- reads that need no wait ----------------------------------------------------------------------


class _Writer:
    """Enough of a StreamWriter for Connection's constructor."""

    def get_extra_info(self, name: str) -> Any:
        return None


def _conn(data: bytes, max_line: int, limit: int = 2**16) -> tuple[Connection, asyncio.StreamReader]:
    reader = asyncio.StreamReader(limit=limit)
    reader.feed_data(data)
    reader.feed_eof()
    return Connection(reader, _Writer(), listener="t", max_line_length=max_line,  # type: ignore[arg-type]
                      idle_timeout=5), reader


async def _lines(conn: Connection) -> list[bytes | str]:
    out: list[bytes | str] = []
    while True:
        try:
            out.append(await conn.readline())
        except LineTooLong:
            out.append("too long")
        except Exception as exc:  # the end of the stream, compared by type name
            out.append(type(exc).__name__)
            return out


async def _lines_slow(data: bytes, max_line: int, limit: int) -> list[bytes | str]:
    """The same stream read one byte per feed: the fast path never finds a whole line waiting."""
    reader = asyncio.StreamReader(limit=limit)
    conn = Connection(reader, _Writer(), listener="t", max_line_length=max_line,  # type: ignore[arg-type]
                      idle_timeout=5)

    async def feed() -> None:
        for i in range(len(data)):
            reader.feed_data(data[i:i + 1])
            await asyncio.sleep(0)
        reader.feed_eof()

    feeder = asyncio.ensure_future(feed())
    try:
        return await _lines(conn)
    finally:
        await feeder


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")).map(lambda b: b + b"\n")
                | st.binary(max_size=12), max_size=12), st.integers(4, 30), st.integers(8, 40))
def test_buffered_lines_read_as_lines_that_arrive_slowly(parts: list[bytes], max_line: int, limit: int) -> None:
    data = b"".join(parts)

    async def both() -> tuple[list[bytes | str], list[bytes | str]]:
        conn, _ = _conn(data, max_line, limit)
        return await _lines(conn), await _lines_slow(data, max_line, limit)

    fast, slow = asyncio.run(both())
    assert fast == slow


def test_read_some_takes_what_is_buffered_then_waits() -> None:
    async def go() -> tuple[bytes, bytes, bytes]:
        conn, reader = _conn(b"abcdef", 100)
        return await conn.read_some(4), await conn.read_some(100), await conn.read_some(100)

    assert asyncio.run(go()) == (b"abcd", b"ef", b"")


# -- spool removal in batches ------------------------------------------------------------------------


def test_discarded_spools_are_removed_in_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = []
    original = spool_mod._Remover._run

    def counting(self: Any) -> None:
        jobs.append(1)
        original(self)

    monkeypatch.setattr(spool_mod._Remover, "_run", counting)

    async def go() -> None:
        spools = []
        for i in range(50):
            sp = FileSpool(tmp_path)
            await sp.write(b"message %d\r\n" % i)
            await sp.commit()
            spools.append(sp)
        assert all(sp.path.exists() for sp in spools)
        for sp in spools:
            sp.discard()

    asyncio.run(go())  # the loop's end waits for its executor: every file is gone
    assert list(tmp_path.iterdir()) == []
    assert 1 <= len(jobs) < 50


def test_a_spool_discarded_while_its_write_runs_is_removed_after_it(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    release = threading.Event()
    entered = threading.Event()
    original = FileSpool._write_sync

    def held(self: FileSpool, data: bytes, close: bool) -> None:
        entered.set()
        assert release.wait(10)
        original(self, data, close)

    monkeypatch.setattr(FileSpool, "_write_sync", held)

    async def go() -> None:
        sp = FileSpool(tmp_path)
        await sp.write(b"x" * 10)
        task = asyncio.ensure_future(sp.commit())
        assert await asyncio.get_running_loop().run_in_executor(None, entered.wait, 10)
        sp.discard()  # the write is still running in its thread (it waits for release)
        assert not task.done()
        release.set()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(go())
    no_spool_left(tmp_path)


# -- the message's log line ----------------------------------------------------------------------------


def test_one_info_line_per_message_with_from_to_size_and_delay(make_server: Any,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.StringIO()
    monkeypatch.setattr(log, "_stream", buf)
    srv = make_server()
    rcpts = [f"{u}@example.test" for u in ("alice", "bob", "team", "alice", "bob", "team")]
    with smtplib.SMTP("127.0.0.1", srv.port) as c:
        c.ehlo("client.test")
        c.sendmail("a@remote.test", rcpts[:1], MSG)
        c.sendmail("a@remote.test", rcpts, MSG)

    async def accepted() -> list[str]:  # on the loop thread, which writes the log buffer
        log.flush()
        return [ln for ln in buf.getvalue().splitlines() if " info " in ln and " smtp " in ln]

    # the line is logged on the server's loop after the 250 went out: poll with a deadline
    wait_until(lambda: len(srv.loop.run(accepted())) >= 2)
    lines = srv.loop.run(accepted())
    assert len(lines) == 2, lines
    first, second = (dict(re.findall(r" (\w+)=(\S+)", ln)) for ln in lines)
    assert first["sender"] == "a@remote.test" and first["to"] == "alice@example.test" and first["rcpts"] == "1"
    assert int(first["size"]) == len(srv.backend.delivered[0].data)
    assert float(first["ms"]) >= 0 and "sid" in first
    assert second["rcpts"] == "6" and second["to"] == ",".join(rcpts[:5]) + ",..."


# -- held replies at STARTTLS, errors and shutdown ------------------------------------------------------


def test_replies_held_before_starttls_go_out_before_the_handshake(make_server: Any) -> None:
    """RFC 3207 §4 / RFC 2920 §3.1: EHLO and STARTTLS pipelined (STARTTLS last in the group) get both
    replies in order in plain text, then the handshake; the session starts over under TLS."""
    import ssl

    srv = make_server()
    c = Raw(srv.port)
    try:
        assert c.reply()[0] == 220
        c.send(b"EHLO client.test\r\nSTARTTLS\r\n")
        code, ehlo = c.reply()
        assert code == 250 and any("STARTTLS" in x for x in ehlo)
        assert c.reply()[0] == 220
        assert c.buf == b""
        c.sock = srv.client_ctx.wrap_socket(c.sock, server_hostname="localhost")
        assert isinstance(c.sock, ssl.SSLSocket)
        c.send(b"EHLO client.test\r\nMAIL FROM:<a@remote.test>\r\n")
        code, ehlo = c.reply()
        assert code == 250 and not any("STARTTLS" in x for x in ehlo)
        assert c.reply()[0] == 250
    finally:
        c.close()


def test_too_many_errors_in_a_pipelined_group_keeps_every_reply_in_order(make_server: Any) -> None:
    from mailsrv.config import LimitsConfig

    srv = make_server(limits=LimitsConfig(idle_timeout=20, max_errors=3))
    c = Raw(srv.port)
    try:
        assert c.reply()[0] == 220
        c.send(b"NOOP\r\nBOGUS\r\nNOOP\r\nBOGUS\r\nBOGUS\r\nNOOP\r\n")
        assert [c.reply()[0] for _ in range(6)] == [250, 500, 250, 500, 500, 421]
        with pytest.raises(EOFError):  # closed after the 421; the last NOOP is not answered
            c.reply()
    finally:
        c.close()



# -- a spool write that fails while the message streams ------------------------------------------------


BIG = b"Subject: big\r\n\r\n" + b"x" * 998 + b"\r\n" + (b"y" * 998 + b"\r\n") * (2 * spool_mod.FLUSH_AT // 1000)


def test_a_spool_write_error_during_data_is_451_and_the_session_goes_on(make_server: Any,
                                                                         disk_full: list[bool]) -> None:
    """ENOSPC while a large message streams to the spool: the rest is read, the end of DATA gets 451 4.3.0
    (never a dropped connection), nothing is delivered or left, and the next message goes through."""
    srv = make_server()
    c = _greeted(srv.port)
    try:
        c.send(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        assert [c.reply()[0] for _ in range(3)] == [250, 250, 354]
        c.send(BIG + b".\r\nNOOP\r\n")
        code, lines = c.reply()
        assert (code, lines[-1][4:9]) == (451, "4.3.0")
        assert c.reply()[0] == 250  # the NOOP pipelined after the message: read as a command
        assert srv.backend.delivered == []
        no_spool_left(srv.backend.spool_dir)
        disk_full[0] = False
        c.send(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        assert [c.reply()[0] for _ in range(3)] == [250, 250, 354]
        c.send(BIG + b".\r\n")
        assert c.reply()[0] == 250
    finally:
        c.close()
    assert len(srv.backend.delivered) == 1 and srv.backend.delivered[0].data.endswith(BIG)


def test_a_spool_write_error_during_bdat_fails_each_chunk_up_to_last(make_server: Any,
                                                                       disk_full: list[bool]) -> None:
    srv = make_server()
    c = _greeted(srv.port)
    half = len(BIG) // 2
    try:
        c.send(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\n")
        assert [c.reply()[0] for _ in range(2)] == [250, 250]
        c.send(b"BDAT %d\r\n" % half + BIG[:half])
        assert c.reply()[0] == 451
        c.send(b"BDAT %d LAST\r\n" % (len(BIG) - half) + BIG[half:] + b"RSET\r\n")
        assert c.reply()[0] == 451
        assert c.reply()[0] == 250
        assert srv.backend.delivered == []
        no_spool_left(srv.backend.spool_dir)
        disk_full[0] = False
        c.send(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nBDAT %d LAST\r\n" % len(BIG) + BIG)
        assert [c.reply()[0] for _ in range(3)] == [250, 250, 250]
    finally:
        c.close()
    assert len(srv.backend.delivered) == 1 and srv.backend.delivered[0].data.endswith(BIG)


def test_a_session_that_fails_still_sends_the_250_it_holds(make_server: Any, tmp_path: Path) -> None:
    """The end of DATA's 250 held while the next pipelined commands run (RFC 2920): a command that then
    fails unexpectedly (a lookup error, a bug) ends the session, but the 250 for the delivered message
    still goes out before the close, so the client does not send the message twice."""
    from mailsrv.smtp.backend import SessionInfo, Transaction, Verdict

    from .conftest import FakeBackend

    class Failing(FakeBackend):
        async def check_recipient(self, info: SessionInfo, tx: Transaction, address: str) -> Verdict:
            if address.startswith("crash@"):
                raise RuntimeError("the directory is gone")
            return await super().check_recipient(info, tx, address)

    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(exist_ok=True)
    srv = make_server(backend=Failing(spool_dir))
    c = _greeted(srv.port)
    try:
        c.send(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        assert [c.reply()[0] for _ in range(3)] == [250, 250, 354]
        c.send(MSG + b".\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<crash@example.test>\r\n")
        assert [c.reply()[0] for _ in range(2)] == [250, 250]  # the message's 250, then MAIL's
        with pytest.raises(EOFError):
            c.reply()
    finally:
        c.close()
    assert len(srv.backend.delivered) == 1
