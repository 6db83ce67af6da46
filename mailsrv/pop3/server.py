"""POP3 listener service: the connection loop around :class:`~mailsrv.pop3.session.Session`.

Serves 110/2110 (STLS offered when the listener says ``tls = "starttls"``)
and 995/2995 (implicit TLS). This is the one place where
:class:`~mailsrv.pop3.grammar.Pop3Error` becomes ``-ERR``, where the error
budget is kept, and where the session's maildrop is released whatever way
the connection ends (a dropped connection deletes nothing).
"""

from __future__ import annotations

from pathlib import Path

from mailsrv import log
from mailsrv.auth import ChannelBinding
from mailsrv.config import Pop3Config
from mailsrv.net.channel import StreamChannel, listener_binding
from mailsrv.net.connection import (
    Connection,
    ConnectionClosed,
    IdleTimeout,
    LineTooLong,
    ServerShutdown,
)
from mailsrv.net.service import ServiceContext
from mailsrv.pop3.grammar import SYS_TEMP, Pop3Error, err
from mailsrv.pop3.maildrop import Authenticator, Maildrops, StoreMaildrops
from mailsrv.pop3.session import Session

logger = log.get("pop3")


class ConnChannel(StreamChannel):
    """A :class:`Connection` as the session's :class:`~mailsrv.pop3.session.Channel`."""

    __slots__ = ()

    async def read_continuation(self) -> bytes:
        return await self.conn.readline_in_command()


class Pop3Service:
    """The :class:`~mailsrv.net.listener.StreamService` of a POP3 listener."""

    def __init__(self, ctx: ServiceContext, *, auth: Authenticator | None = None,
                 maildrops: Maildrops | None = None, config: Pop3Config | None = None) -> None:
        self.ctx = ctx
        self.config = config if config is not None else ctx.config.pop3
        self._auth = auth
        self._maildrops = maildrops
        self.max_errors = ctx.config.limits.max_errors
        self.binding: ChannelBinding | None = listener_binding(ctx, logger, "pop3.no_channel_binding")

    # The worker may fill ``resources`` after the services are made: look them up per session.
    @property
    def auth(self) -> Authenticator | None:
        return self._auth if self._auth is not None else self.ctx.resources.get("auth")

    @property
    def maildrops(self) -> Maildrops | None:
        if self._maildrops is not None:
            return self._maildrops
        drops = self.ctx.resources.get("pop3.maildrops")
        if drops is None and self.ctx.resources.get("store") is not None:
            expire = self.config.expire
            drops = StoreMaildrops(self.ctx.resources["store"], Path(self.ctx.config.server.data_dir),
                                   expire_days=int(expire) if expire.isdigit() else None,
                                   drop_recent=not self.config.no_flag_updates)
            self.ctx.resources["pop3.maildrops"] = drops
        return drops

    async def refuse(self, conn: Connection, reason: str) -> None:
        # RFC 2449 §8.1.2: [SYS/TEMP] marks a transient system problem.
        await conn.send(err(reason.capitalize(), SYS_TEMP))

    async def handle(self, conn: Connection) -> None:
        auth, maildrops = self.auth, self.maildrops
        if auth is None or maildrops is None:
            logger.error("pop3.unconfigured", missing="auth" if auth is None else "store")
            await conn.send(err("Service not available", SYS_TEMP))
            return
        session = Session(ConnChannel(conn, self.ctx.starttls_context, self.binding), auth=auth, maildrops=maildrops,
                          config=self.config, hostname=self.ctx.hostname)
        try:
            await conn.send(session.greeting())
            await self._loop(conn, session)
        except (ConnectionClosed, IdleTimeout):
            pass
        finally:
            # Always: a session that ends without QUIT releases the lock and deletes nothing.
            await session.end()

    async def _loop(self, conn: Connection, session: Session) -> None:
        errors = 0
        while not session.closing:
            try:
                line = await conn.readline()
            except LineTooLong:
                conn.write(err("Line too long"))
                errors += 1
                if errors >= self.max_errors:
                    conn.write(err("Too many errors, closing connection"))
                    await conn.drain()
                    return
                await conn.drain()
                continue
            except ServerShutdown:
                await conn.send(err("Server shutting down", SYS_TEMP))
                return
            except IdleTimeout:
                # RFC 1939 §3: an idle session is closed without entering UPDATE.
                conn.write(err("Idle timeout, closing connection"))
                await conn.drain()
                return
            try:
                await session.handle(line)
            except (ConnectionClosed, IdleTimeout):
                raise
            except Pop3Error as exc:
                conn.write(exc.reply())
                errors += 1
                if exc.fatal or errors >= self.max_errors:
                    if not exc.fatal:
                        conn.write(err("Too many errors, closing connection"))
                    logger.info("session.closed", reason="errors" if not exc.fatal else exc.text)
                    await conn.drain()
                    return
            except Exception as exc:  # a bug or an unexpected store/directory failure: never a crash
                logger.exception("session.error", exc)
                conn.write(err("Internal error, try again later", SYS_TEMP))
                await conn.drain()
                return
            # Back-pressure after every command, pipelined or not (RFC 2449 §6.6 PIPELINING
            # works because commands are read from the buffered stream one after the other);
            # nothing to wait for when the reply went out whole (no coroutine then).
            if conn.backlogged():
                await conn.drain()


def make_service(ctx: ServiceContext) -> Pop3Service:
    return Pop3Service(ctx)
