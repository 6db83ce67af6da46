"""ManageSieve listener service: reading commands with their literals, and the connection loop.

Serves 4190 (RFC 5804 §1.8; STARTTLS when the listener says ``tls = "starttls"``).
This is the one place where :class:`~mailsrv.managesieve.grammar.SieveProtocolError`
becomes ``NO``/``BYE``, where the error budget is kept, and where literal sizes are
bounded: a literal over ``[sieve] max_script_size`` is read and dropped (the
command's framing is kept) and answered ``NO (QUOTA/MAXSIZE)``; one over
:data:`MAX_DISCARD` gets ``BYE`` and the connection is closed.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from mailsrv import log
from mailsrv.auth import ChannelBinding
from mailsrv.managesieve.grammar import (
    TRYLATER,
    Atom,
    Command,
    SieveProtocolError,
    SieveSyntaxError,
    literal_marker,
    parse_line,
    response,
)
from mailsrv.managesieve.session import Authenticator, Session
from mailsrv.managesieve.storage import AccountScripts, Scripts, ScriptsUnavailable, pool_runner
from mailsrv.net.channel import StreamChannel, listener_binding
from mailsrv.net.connection import (
    Connection,
    ConnectionClosed,
    IdleTimeout,
    LineTooLong,
    ServerShutdown,
)
from mailsrv.net.service import ServiceContext
from mailsrv.sieve import EXTENSIONS

logger = log.get("managesieve")

#: octets of refused literals one command may make us read and drop before we give up and close
#: (a client sending a 1 MB script to a 64 KB limit gets NO and goes on; 100 MB is not read)
MAX_DISCARD = 4 * 1024 * 1024
_CHUNK = 65536


def _strip(line: bytes) -> bytes:
    if line.endswith(b"\r\n"):
        return line[:-2]
    return line[:-1] if line.endswith(b"\n") else line


async def read_command(conn: Connection, first: bytes, max_literal: int, *, verb: bool = True) -> Command:
    """The whole command starting with line ``first``: its literals read, the following lines too.

    ``verb``: a command, which starts with its name (not a SASL response, which is one string); a
    line that does not is refused before any literal it announces is read. Raises :class:`SieveProtocolError` after dropping the rest of a refused command (syntax error,
    literal too big), so the next read starts at the next command; ``ConnectionClosed`` etc.
    """
    cmd = Command()
    line, continued = first, False
    while True:
        body = _strip(line)
        try:
            lit = parse_line(body, cmd, continued=continued)
        except SieveProtocolError:
            if cmd.tokens and isinstance(cmd.tokens[0], Atom):  # a command's literal follows: skip it
                await _drop_rest(conn, body)
            raise
        if lit is None:
            return cmd
        if verb and not (cmd.tokens and isinstance(cmd.tokens[0], Atom)):
            raise SieveSyntaxError("Expected a command name")
        size, _sync = lit
        if size > max_literal:
            await _drop_rest(conn, body)
            raise SieveProtocolError(f"Literal larger than {max_literal} octets", "QUOTA/MAXSIZE")
        cmd.add_literal(await conn.readexactly(size) if size else b"")
        line, continued = await conn.readline_in_command(), True


async def _drop_rest(conn: Connection, body: bytes) -> None:
    """Read and drop the literals (and their following lines) of a refused command."""
    budget = MAX_DISCARD
    while (lit := literal_marker(body)) is not None:
        size = lit[0]
        if size > budget:
            raise SieveProtocolError("Literal too large, closing connection", "QUOTA/MAXSIZE", bye=True)
        budget -= size
        while size:
            size -= len(await conn.readexactly(min(size, _CHUNK)))
        body = _strip(await conn.readline_in_command())


class ConnChannel(StreamChannel):
    """A :class:`Connection` as the session's :class:`~mailsrv.managesieve.session.Channel`."""

    __slots__ = ("_max_literal",)

    def __init__(self, conn: Connection, tls_context: ssl.SSLContext | None,
                 binding: ChannelBinding | None, max_literal: int) -> None:
        super().__init__(conn, tls_context, binding)
        self._max_literal = max_literal

    async def read_response(self) -> Command:
        return await read_command(self.conn, await self.conn.readline_in_command(), self._max_literal, verb=False)


class ManageSieveService:
    """The :class:`~mailsrv.net.listener.StreamService` of a ManageSieve listener."""

    def __init__(self, ctx: ServiceContext, *, auth: Authenticator | None = None,
                 open_scripts: Callable[[Any], Awaitable[Scripts]] | None = None) -> None:
        self.ctx = ctx
        self.config = ctx.config.sieve
        self._auth = auth
        self._open_scripts = open_scripts
        self.max_errors = ctx.config.limits.max_errors
        self.binding = listener_binding(ctx, logger, "managesieve.no_channel_binding")

    # The worker may fill ``resources`` after the services are made: look them up per session.
    @property
    def auth(self) -> Authenticator | None:
        return self._auth if self._auth is not None else self.ctx.resources.get("auth")

    async def open_scripts(self, account: Any) -> Scripts:
        """The account's scripts under its maildir root, run in the store's I/O pool."""
        if self._open_scripts is not None:
            return await self._open_scripts(account)
        from mailsrv.store import account_root

        store = self.ctx.resources.get("store")
        if store is None:
            raise ScriptsUnavailable("no store in this worker")
        root = account_root(Path(self.ctx.config.server.data_dir), account.id, getattr(account, "store", None))
        return AccountScripts(root, self.config, pool_runner(store.io.run))

    async def refuse(self, conn: Connection, reason: str) -> None:
        await conn.send(response("BYE", TRYLATER, reason.capitalize()))

    async def handle(self, conn: Connection) -> None:
        auth = self.auth
        if auth is None:
            logger.error("managesieve.unconfigured", missing="auth")
            await conn.send(response("BYE", TRYLATER, "Service not available"))
            return
        channel = ConnChannel(conn, self.ctx.starttls_context, self.binding, self.config.max_script_size)
        session = Session(channel, auth=auth, open_scripts=self.open_scripts, extensions=tuple(EXTENSIONS),
                          max_redirects=self.config.max_redirects, max_script_size=self.config.max_script_size)
        try:
            await conn.send(session.greeting())
            await self._loop(conn, session)
        except (ConnectionClosed, IdleTimeout):
            pass

    async def _loop(self, conn: Connection, session: Session) -> None:
        errors = 0
        while not session.closing:
            try:
                line = await conn.readline()
            except LineTooLong:
                errors += 1
                conn.write(response("NO", "", "Line too long"))
                if errors >= self.max_errors:
                    conn.write(response("BYE", "", "Too many errors"))
                    await conn.drain()
                    return
                await conn.drain()
                continue
            except ServerShutdown:
                await conn.send(response("BYE", TRYLATER, "Server shutting down"))
                return
            except IdleTimeout:
                conn.write(response("BYE", "", "Idle timeout, closing connection"))
                await conn.drain()
                return
            try:
                cmd = await read_command(conn, line, self.config.max_script_size)
                await session.handle(cmd)
            except (ConnectionClosed, IdleTimeout):
                raise
            except LineTooLong:  # a line after a literal, or a SASL response
                errors += 1
                conn.write(response("NO", "", "Line too long"))
            except SieveProtocolError as exc:
                errors += 1
                if not exc.fatal and errors >= self.max_errors:
                    exc = SieveProtocolError("Too many errors", bye=True)
                conn.write(exc.reply())
                if exc.fatal:
                    logger.info("session.closed", reason=exc.text)
                    await conn.drain()
                    return
            except Exception as exc:  # a bug or an unexpected failure: never a crash
                logger.exception("session.error", exc)
                conn.write(response("BYE", TRYLATER, "Internal error, try again later"))
                await conn.drain()
                return
            await conn.drain()


def make_service(ctx: ServiceContext) -> ManageSieveService:
    return ManageSieveService(ctx)
