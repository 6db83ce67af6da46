"""Connection's idle timeout: one timer per connection, re-armed lazily (not one per read), over real
loopback sockets. Each wait gets the whole idle period from its own start, a shorter limit after a
longer one still applies, a cancellation from elsewhere stays a cancellation, close stops the timer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from support.loopback import connection_pair
from support.server import wait_until_async

from mailsrv.net.connection import Connection, IdleTimeout


@dataclass
class Pair:
    conn: Connection  # the server side, read from the test's task
    reader: asyncio.StreamReader  # the client side
    writer: asyncio.StreamWriter


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    async with connection_pair(max_line_length=1000, idle_timeout=1.0) as (conn, reader, writer):
        yield Pair(conn, reader, writer)


async def test_each_wait_gets_the_whole_idle_period(pair: Pair) -> None:
    # the client is silent 0.6 s before each line; the idle limit is 1 s: a timer that still counted
    # from the first wait would fire during the second one (1.2 s after the first wait began)
    conn = pair.conn
    for n in range(3):
        reading = asyncio.ensure_future(conn.readline())
        await asyncio.sleep(0.6)  # the client's silence (the behaviour under test), not a synchronisation
        pair.writer.write(b"line %d\r\n" % n)
        assert await asyncio.wait_for(reading, 10) == b"line %d\r\n" % n
    started = time.monotonic()
    with pytest.raises(IdleTimeout):
        await asyncio.wait_for(conn.readline(), 10)
    assert 0.9 <= time.monotonic() - started < 5


async def test_every_kind_of_read_times_out(pair: Pair) -> None:
    conn = pair.conn
    conn.idle_timeout = 0.2
    for read in (conn.readline, conn.readline_in_command, lambda: conn.readexactly(10), lambda: conn.read_some(10)):
        with pytest.raises(IdleTimeout):
            await asyncio.wait_for(read(), 10)
    # and the connection still works after them
    pair.writer.write(b"after\r\n")
    assert await asyncio.wait_for(conn.readline(), 10) == b"after\r\n"


async def test_a_shorter_limit_after_a_longer_one(pair: Pair) -> None:
    # IMAP IDLE reads with its own (longer) limit, then the session goes back to the idle timeout
    conn = pair.conn
    conn.idle_timeout = 60.0
    reading = asyncio.ensure_future(conn.readline())
    await wait_until_async(lambda: conn._watch is not None)  # the long wait has started its timer
    assert conn._watch is not None and conn._watch_at > asyncio.get_running_loop().time() + 30
    pair.writer.write(b"DONE\r\n")
    assert await asyncio.wait_for(reading, 10) == b"DONE\r\n"
    conn.idle_timeout = 0.2
    started = time.monotonic()
    with pytest.raises(IdleTimeout):
        await asyncio.wait_for(conn.readline(), 10)  # not after the 60 s timer still pending
    assert time.monotonic() - started < 5


async def test_a_cancel_from_elsewhere_is_not_a_timeout(pair: Pair) -> None:
    conn = pair.conn
    reading = asyncio.ensure_future(conn.readline())
    await wait_until_async(lambda: conn._watch is not None)  # the wait has begun
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    # the timer of that wait does not cancel a later, innocent wait
    pair.writer.write(b"next\r\n")
    assert await asyncio.wait_for(conn.readline(), 10) == b"next\r\n"


async def test_close_stops_the_timer(pair: Pair) -> None:
    conn = pair.conn
    reading = asyncio.ensure_future(conn.readline())
    await wait_until_async(lambda: conn._watch is not None)  # one timer for the connection while it waits
    pair.writer.write(b"x\r\n")
    await asyncio.wait_for(reading, 10)
    await conn.close()
    assert conn._watch is None  # a closed connection keeps no timer (nor itself alive through one)
