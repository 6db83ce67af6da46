"""A client connection as the protocol sessions see it: bounded reads, TLS upgrade, shutdown.

Invariants:
- Every read is bounded: a line by ``max_line_length``, a wait by ``idle_timeout``.
  The wait is bounded by one timer per connection (:meth:`Connection._arm`), re-armed
  lazily, not by a timer made and cancelled for each read: a pipelining client's message
  takes two waits, and a timer costs more than the rest of the wait's bookkeeping.
- A line that is too long is consumed up to its end and reported as
  :class:`LineTooLong`, so the session can answer with its protocol's error
  and go on reading the next command.
- When the worker drains, a session that is waiting for its next command gets
  :class:`ServerShutdown` from :meth:`Connection.readline` and says goodbye in
  its protocol; a session in the middle of a command finishes it first.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import ssl
from typing import Any

from mailsrv import log
from mailsrv.net.tls import describe

logger = log.get("net")


class ConnectionClosed(Exception):
    """The peer closed the connection (EOF) or it broke."""


class LineTooLong(Exception):
    """A line exceeded the limit; it has been consumed and discarded."""


class IdleTimeout(Exception):
    """The peer stayed silent longer than the idle timeout."""


class ServerShutdown(Exception):
    """The worker is draining; the session should say goodbye and end."""


_counter = itertools.count(1)
_prefix = os.urandom(2).hex()


def new_session_id() -> str:
    """Short, unique within a worker's life, distinct across workers with high probability."""
    return f"{_prefix}{os.getpid() % 0x10000:04x}{next(_counter):06x}"


class Connection:
    """One accepted client connection.

    Owned by a single session task; not safe to use from two tasks at once.
    """

    __slots__ = (
        "reader",
        "writer",
        "sid",
        "listener",
        "peer_host",
        "peer_port",
        "local_host",
        "local_port",
        "max_line_length",
        "idle_timeout",
        "tls_active",
        "_waiting",
        "_shutdown",
        "task",
        "closed",
        "_deadline",
        "_watch",
        "_watch_at",
        "_waiter",
        "_expired",
        "_loop",
    )

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        listener: str,
        max_line_length: int,
        idle_timeout: float,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.sid = new_session_id()
        self.listener = listener
        peer = writer.get_extra_info("peername") or ("?", 0)
        local = writer.get_extra_info("sockname") or ("?", 0)
        self.peer_host: str = peer[0]
        self.peer_port: int = peer[1]
        self.local_host: str = local[0]
        self.local_port: int = local[1]
        self.max_line_length = max_line_length
        self.idle_timeout = idle_timeout
        self.tls_active = writer.get_extra_info("ssl_object") is not None
        self._waiting = False
        self._shutdown = False
        self.task: asyncio.Task[Any] | None = None
        self.closed = False
        self._deadline = 0.0  # loop time at which the wait in progress times out; 0: not waiting
        self._watch: asyncio.TimerHandle | None = None  # the connection's one idle timer
        self._watch_at = 0.0  # when it fires
        self._waiter: asyncio.Task[Any] | None = None  # the task that waits (cancelled when it expires)
        self._expired = False  # the watch cancelled the waiting task
        #: the loop serving this connection, taken at the first wait: asyncio.get_running_loop() costs a
        #: getpid(2) syscall on Python 3.11, and every wait asked it twice (with current_task)
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- reading -----------------------------------------------------------

    async def readline(self) -> bytes:
        """Read one line including its terminator (LF or CRLF).

        Waits for a *new command*: this is where a draining worker interrupts
        an idle session with :class:`ServerShutdown`. Raises
        :class:`LineTooLong`, :class:`IdleTimeout`, :class:`ConnectionClosed`.
        """
        if self._shutdown:
            raise ServerShutdown
        self._waiting = True
        try:
            return await self._readline()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._shutdown and task is not None and task.uncancel() == 0:
                raise ServerShutdown from None
            raise
        finally:
            self._waiting = False

    async def readline_in_command(self) -> bytes:
        """Read a line that belongs to a command in progress (continuation, DATA).

        Not interrupted by a drain.
        """
        return await self._readline()

    async def _readline(self) -> bytes:
        line = self._buffered_line()
        if line is not None:
            return line
        self._arm()
        try:
            try:
                line = await self.reader.readuntil(b"\n")
            except asyncio.LimitOverrunError as exc:
                await self._discard_long_line(exc.consumed)
                raise LineTooLong from None
        except asyncio.IncompleteReadError as exc:
            raise ConnectionClosed from exc
        except asyncio.CancelledError:
            self._timed_out()
            raise
        except (ConnectionError, ssl.SSLError) as exc:
            raise ConnectionClosed from exc
        finally:
            self._deadline = 0.0
        if len(line) > self.max_line_length:
            raise LineTooLong
        return line

    def buffered_command(self) -> bytes | None:
        """The next command line when it is already buffered (a pipelined command), taken without a
        coroutine, a wait or a timer; None when :meth:`readline` must be awaited (no whole line yet, a
        line too long, a broken stream, or a draining worker: readline raises ServerShutdown)."""
        if self._shutdown:
            return None
        return self._buffered_line()

    def _buffered_line(self) -> bytes | None:
        """A whole line already in the reader's buffer (pipelined commands), taken without a
        wait or a timer; None when the slow path must decide (no line yet, or too long)."""
        reader: Any = self.reader  # its attributes, not its methods: ~4 calls a message fewer
        if reader._exception is not None:  # as readuntil(): a broken stream raises before its data
            return None
        buf = reader._buffer
        end = buf.find(b"\n")
        if end < 0 or end >= self.max_line_length or end > reader._limit:
            return None
        line = bytes(buf[: end + 1])
        del buf[: end + 1]
        if reader._paused:
            reader._maybe_resume_transport()
        return line

    async def _discard_long_line(self, consumed: int) -> None:
        while True:
            if consumed:
                await self.reader.readexactly(consumed)
            try:
                await self.reader.readuntil(b"\n")
                return
            except asyncio.LimitOverrunError as exc:
                consumed = exc.consumed

    async def readexactly(self, n: int) -> bytes:
        """Read exactly ``n`` bytes (a literal, a BDAT chunk); bounded by the idle timeout."""
        self._arm()
        try:
            return await self.reader.readexactly(n)
        except asyncio.IncompleteReadError as exc:
            raise ConnectionClosed from exc
        except asyncio.CancelledError:
            self._timed_out()
            raise
        except (ConnectionError, ssl.SSLError) as exc:
            raise ConnectionClosed from exc
        finally:
            self._deadline = 0.0

    async def read_some(self, n: int) -> bytes:
        """Read up to ``n`` bytes that are available (for bulk readers); b"" at EOF."""
        reader: Any = self.reader
        buf = reader._buffer
        if buf and reader._exception is None:  # already here: no wait, so no timer
            data = bytes(buf[:n])
            del buf[:n]
            if reader._paused:
                reader._maybe_resume_transport()
            return data
        self._arm()
        try:
            return await self.reader.read(n)
        except asyncio.CancelledError:
            self._timed_out()
            raise
        except (ConnectionError, ssl.SSLError) as exc:
            raise ConnectionClosed from exc
        finally:
            self._deadline = 0.0

    # -- the idle timer -------------------------------------------------------

    def _arm(self) -> None:
        """A wait for the peer starts: it times out ``idle_timeout`` from now.

        The connection's one timer is started when none runs (or runs later: IMAP IDLE waits with a
        longer limit); one that fires early (armed for an earlier wait) sleeps on to the current
        deadline, and one that finds no wait stops.
        """
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        deadline = self._deadline = loop.time() + self.idle_timeout
        self._waiter = asyncio.current_task(loop)  # not always self.task: a read may run in a task of its own
        watch = self._watch
        if watch is None or self._watch_at > deadline:
            if watch is not None:
                watch.cancel()
            self._watch = loop.call_at(deadline, self._expire)
            self._watch_at = deadline

    def _expire(self) -> None:
        self._watch = None
        deadline = self._deadline
        if not deadline or self.closed:
            return  # no wait in progress: the next one starts the timer again
        loop = asyncio.get_running_loop()
        if loop.time() < deadline:
            self._watch = loop.call_at(deadline, self._expire)
            self._watch_at = deadline
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._expired = True
            waiter.cancel()

    def _timed_out(self) -> None:
        """In a wait's ``except CancelledError``: raise IdleTimeout when our timer cancelled it (and
        nothing else did), else return and let the cancellation go on."""
        if not self._expired:
            return
        self._expired = False
        task = asyncio.current_task()
        if task is not None and task.uncancel() == 0:
            raise IdleTimeout from None

    # -- writing -----------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.writer.write(data)

    def backlogged(self) -> bool:
        """Whether :meth:`drain` has anything to wait for (False: what was written went out whole, and
        a caller may skip the ``await``)."""
        transport = self.writer.transport
        return bool(transport.get_write_buffer_size()) or transport.is_closing()

    async def drain(self) -> None:
        transport = self.writer.transport
        if not transport.get_write_buffer_size() and not transport.is_closing():
            return  # everything went out at write(): nothing to wait for, so no timer
        try:
            async with asyncio.timeout(self.idle_timeout):
                await self.writer.drain()
        except TimeoutError:
            raise IdleTimeout from None
        except (ConnectionError, ssl.SSLError) as exc:
            raise ConnectionClosed from exc

    async def send(self, data: bytes) -> None:
        self.write(data)
        await self.drain()

    # -- TLS ---------------------------------------------------------------

    def discard_pipelined(self) -> int:
        """Drop plain text the client sent after its STARTTLS / STLS command; return its length.

        Call it after reading that command and before :meth:`starttls`.
        """
        buf = self.reader._buffer  # type: ignore[attr-defined]
        octets = len(buf)
        if octets:
            # RFC 3207 §4.2, RFC 2595 §3.1 (CVE-2011-0411): never read as commands of the TLS session.
            # Not a close, as Postfix: a client whose STARTTLS an attacker appended commands to still
            # gets its TLS instead of falling back to plain text.
            logger.warning("starttls.pipelined_discarded", octets=octets)
            buf.clear()
            self.reader._maybe_resume_transport()  # type: ignore[attr-defined]
        return octets

    async def starttls(self, context: ssl.SSLContext, handshake_timeout: float = 30.0) -> None:
        """Upgrade to TLS in place (STARTTLS, STLS).

        The caller must have sent its "go ahead" reply, and must discard any
        state learned before the handshake (RFC 3207 §4.2). Plain text still
        buffered closes the connection: a caller that would rather go on calls
        :meth:`discard_pipelined` first.
        """
        if self.reader._buffer:  # type: ignore[attr-defined]
            # RFC 3207 §4 / RFC 2595 §3.1: pipelined plain text after STARTTLS is an injection attempt.
            raise ConnectionClosed("plain text after STARTTLS")
        try:
            await self.writer.start_tls(context, ssl_handshake_timeout=handshake_timeout)
        except (ConnectionError, ssl.SSLError, TimeoutError, OSError) as exc:
            raise ConnectionClosed from exc
        self.tls_active = True

    def tls_info(self) -> dict[str, str]:
        return describe(self.writer.get_extra_info("ssl_object"))

    def peer_certificate(self) -> Any:
        obj = self.writer.get_extra_info("ssl_object")
        return obj.getpeercert(binary_form=True) if obj is not None else None

    # -- life --------------------------------------------------------------

    def request_shutdown(self) -> None:
        """Ask the session to end at its next command boundary."""
        self._shutdown = True
        if self._waiting and self.task is not None:
            self.task.cancel()

    @property
    def shutting_down(self) -> bool:
        return self._shutdown

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        try:
            self.writer.close()
            async with asyncio.timeout(5):
                await self.writer.wait_closed()
        except (ConnectionError, ssl.SSLError, TimeoutError, OSError):
            pass
