"""Connection.buffered_command: a pipelined command already in the buffer is taken without a wait; a
line not yet whole, a line too long, or a draining worker leave the decision to readline (over real
loopback sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from support.loopback import connection_pair
from support.server import wait_until_async

from mailsrv.net.connection import Connection, LineTooLong, ServerShutdown

MAX_LINE = 100


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Connection, asyncio.StreamWriter]]:
    async with connection_pair(max_line_length=MAX_LINE, idle_timeout=10.0, limit=MAX_LINE + 2) as (conn, _, writer):
        yield conn, writer


async def _arrived(conn: Connection, n: int) -> None:
    await wait_until_async(lambda: len(conn.reader._buffer) >= n, 10)  # type: ignore[attr-defined]


async def test_pipelined_lines_are_taken_from_the_buffer(pair: tuple[Connection, asyncio.StreamWriter]) -> None:
    conn, client = pair
    assert conn.buffered_command() is None  # nothing sent yet
    client.write(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDA")
    await _arrived(conn, 34)
    assert conn.buffered_command() == b"MAIL FROM:<a@b>\r\n"
    assert conn.buffered_command() == b"RCPT TO:<c@d>\r\n"
    assert conn.buffered_command() is None  # half a line: readline waits for the rest
    client.write(b"TA\r\n")
    assert await asyncio.wait_for(conn.readline(), 10) == b"DATA\r\n"


async def test_a_long_line_is_left_to_readline(pair: tuple[Connection, asyncio.StreamWriter]) -> None:
    conn, client = pair
    client.write(b"X" * (MAX_LINE + 10) + b"\r\nNOOP\r\n")
    await _arrived(conn, MAX_LINE + 2)
    assert conn.buffered_command() is None
    with pytest.raises(LineTooLong):
        await asyncio.wait_for(conn.readline(), 10)
    assert conn.buffered_command() == b"NOOP\r\n"


async def test_a_draining_worker_takes_no_buffered_command(pair: tuple[Connection, asyncio.StreamWriter]) -> None:
    conn, client = pair
    client.write(b"NOOP\r\nNOOP\r\n")
    await _arrived(conn, 12)
    conn.request_shutdown()
    assert conn.buffered_command() is None  # the session goes to readline, which says goodbye
    with pytest.raises(ServerShutdown):
        await conn.readline()
