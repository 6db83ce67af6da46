"""IMAP listener service: the connection loop that frames commands, parses them and runs the session.

This is the one place where errors become replies (STYLE.md §3): parse errors
are tagged BAD, limits are BAD/NO with [TOOBIG] / [LIMIT], and the bad-command
budget ends a hostile session with BYE. Nothing the peer sends raises out of
:meth:`ImapService.handle`.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from mailsrv import log
from mailsrv.imap.commands import parse_command, parse_tag
from mailsrv.imap.compress import DeflateWriter, Inflater
from mailsrv.imap.grammar import (
    NeedLiteral,
    NeedMore,
    ParseError,
    literal_marker,
)
from mailsrv.imap.session import Bye, Session, SessionConfig, State
from mailsrv.imap.sharing import Shares
from mailsrv.imap.spool import STREAM_AT
from mailsrv.net.connection import (
    Connection,
    ConnectionClosed,
    IdleTimeout,
    LineTooLong,
    ServerShutdown,
)
from mailsrv.net.service import ServiceContext

logger = log.get("imap")

# Limits (literal sizes, commands before login) come from ``[imap]`` (mailsrv.config.ImapConfig).
#: A non-synchronising literal larger than this is not even read: the connection is closed.
HARD_LITERAL_CAP = 1 << 31


class TooBig(Exception):
    """A literal over the limit; ``tag`` for the reply, ``drained`` when its bytes were consumed."""

    def __init__(self, tag: bytes | None, is_append: bool) -> None:
        super().__init__("literal too big")
        self.tag = tag
        self.is_append = is_append


class ConnChannel:
    """:class:`mailsrv.imap.session.Channel` over a :class:`Connection`."""

    def __init__(self, conn: Connection, tls_context: ssl.SSLContext | None, binding: Any = None) -> None:
        self.conn = conn
        self.tls_context = tls_context
        self._binding = binding
        self.peer_host = conn.peer_host
        self.inflater: Inflater | None = None

    @property
    def tls_active(self) -> bool:
        return self.conn.tls_active

    @property
    def channel_binding(self) -> Any:
        # RFC 5929 tls-server-end-point: the same for every TLS connection of this server
        return self._binding if self.conn.tls_active else None

    def write(self, data: bytes) -> None:
        self.conn.write(data)

    async def flush(self) -> None:
        await self.conn.drain()

    async def read_continuation(self) -> bytes:
        """A line that continues the command in progress (AUTHENTICATE responses)."""
        return await self.conn.readline_in_command()

    async def read_idle(self, limit: float) -> bytes:
        saved = self.conn.idle_timeout
        self.conn.idle_timeout = limit
        try:
            return await self.conn.readline()
        finally:
            self.conn.idle_timeout = saved

    async def starttls(self) -> None:
        assert self.tls_context is not None
        self.conn.discard_pipelined()  # RFC 9051 §6.2.1: pipelined plain text is dropped, the handshake goes on
        await self.conn.starttls(self.tls_context)

    def start_compress(self, max_literal: int) -> None:
        """RFC 4978 §3: from the byte after the tagged OK on, both directions are deflated."""
        conn = self.conn
        self.inflater = Inflater(conn.reader, conn.max_line_length + 2, max_literal + 2 * conn.max_line_length + 65536)
        conn.reader = self.inflater.reader
        conn.writer = DeflateWriter(conn.writer)  # type: ignore[assignment]

    def close(self) -> None:
        if self.inflater is not None:
            self.inflater.close()


class ImapService:
    """One IMAP listener. ``auth`` and ``store`` default to the worker's resources."""

    def __init__(self, ctx: ServiceContext, *, auth: Any = None, store: Any = None, search: Any = None,
                 session_config: SessionConfig | None = None) -> None:
        self.ctx = ctx
        self.auth = auth if auth is not None else ctx.resources.get("auth")
        self.store = store if store is not None else ctx.resources.get("store")
        self.search = search if search is not None else ctx.resources.get("search")
        # shared mailboxes (sharing.py): the worker's directory, or the one the authenticator uses
        directory = ctx.resources.get("directory") or getattr(self.auth, "directory", None)
        self.shares = (Shares(directory, anyone=ctx.config.imap.acl_anyone)
                       if directory is not None and hasattr(directory, "grants_for") else None)
        icfg = ctx.config.imap
        self.session_config = session_config or SessionConfig(
            hostname=ctx.hostname,
            starttls_available=ctx.starttls_context is not None,
            data_dir=ctx.config.server.data_dir,
            append_limit=icfg.append_limit,
            idle_limit=icfg.idle_timeout,
            max_auth_failures=icfg.max_auth_failures,
            metadata_max_value=icfg.metadata_max_value,
            metadata_max_entries=icfg.metadata_max_entries,
            shared_private_seen=icfg.shared_private_seen,
        )
        self.max_errors = ctx.config.limits.max_errors
        self.binding = self._channel_binding(ctx)
        self.max_literal = icfg.max_literal
        self.max_unauth_commands = icfg.max_unauth_commands

    @staticmethod
    def _channel_binding(ctx: ServiceContext) -> Any:
        """SCRAM-SHA-256-PLUS needs our certificate's hash; computed once (a small file, at start)."""
        if ctx.ssl_context is None:
            return None
        try:
            from mailsrv.auth import endpoint_binding_from_file

            return endpoint_binding_from_file(ctx.config.tls.cert)
        except (OSError, ValueError) as exc:
            logger.warning("imap.no_channel_binding", error=str(exc)[:200])
            return None

    async def refuse(self, conn: Connection, reason: str) -> None:
        # RFC 9051 §7.1.5: BYE as the greeting rejects the connection.
        await conn.send(f"* BYE [UNAVAILABLE] {reason}\r\n".encode())

    async def handle(self, conn: Connection) -> None:
        if self.auth is None or self.store is None:
            await conn.send(b"* BYE [UNAVAILABLE] Mail store not configured\r\n")
            return
        channel = ConnChannel(conn, self.ctx.starttls_context, self.binding)
        session = Session(channel, self.auth, self.store, self.session_config, self.search,
                          policy_source=lambda: self.ctx.resources.get("policy"), shares=self.shares)
        try:
            await self._serve(conn, session)
        except (ConnectionClosed, IdleTimeout, LineTooLong):
            pass  # the peer went away or stopped reading while we answered: nothing left to say
        finally:
            channel.close()
            session.end()
            await session.spool.cleanup()

    async def _serve(self, conn: Connection, session: Session) -> None:
        await conn.send(session.greeting())
        errors = 0
        unauth_commands = 0
        while True:
            # Spool files of a command that never ran (refused, malformed) go now.
            await session.spool.cleanup()
            try:
                raw = await self._read_command(conn, session)
            except LineTooLong:
                # RFC 9051 §7.1: untagged BAD, the line was discarded
                errors += 1
                await conn.send(b"* BAD [TOOBIG] Line too long\r\n")
                if errors + session.bad_commands >= self.max_errors:
                    await conn.send(b"* BYE [LIMIT] Too many errors\r\n")
                    return
                continue
            except TooBig as exc:
                errors += 1
                status = b"NO" if exc.is_append else b"BAD"
                await conn.send((exc.tag or b"*") + b" " + status + b" [TOOBIG] Literal too large\r\n")
                continue
            except ServerShutdown:
                await conn.send(b"* BYE [UNAVAILABLE] Server shutting down\r\n")
                return
            except IdleTimeout:
                await conn.send(b"* BYE Autologout; idle for too long\r\n")
                return
            except ConnectionClosed:
                return
            if raw is None:
                return
            if session.state is State.NOT_AUTHENTICATED:
                unauth_commands += 1
                if unauth_commands > self.max_unauth_commands:
                    await conn.send(b"* BYE [LIMIT] Too many commands before authentication\r\n")
                    return
            try:
                cmd = parse_command(raw, utf8=True)
            except ParseError as exc:
                errors += 1
                code = f"[{exc.code}] " if exc.code else ""
                tag = exc.tag or parse_tag(raw) or b"*"
                await conn.send(tag + f" BAD {code}{exc.message}\r\n".encode())
                if errors + session.bad_commands >= self.max_errors:
                    await conn.send(b"* BYE [LIMIT] Too many errors\r\n")
                    return
                continue
            except (NeedMore, NeedLiteral):
                # Framing read a whole command; a parser that still wants more saw a truncated line.
                errors += 1
                tag = parse_tag(raw) or b"*"
                await conn.send(tag + b" BAD Incomplete command\r\n")
                continue
            try:
                go_on = await self._run(session, cmd)
            except Bye as exc:
                code = f"[{exc.code}] " if exc.code else ""
                await session.flush()
                await conn.send(f"* BYE {code}{exc.text}\r\n".encode())
                return
            except ServerShutdown:
                await self._bye(conn, session, b"* BYE [UNAVAILABLE] Server shutting down\r\n")
                return
            except IdleTimeout:
                await self._bye(conn, session, b"* BYE Autologout; idle for too long\r\n")
                return
            except LineTooLong:
                await self._bye(conn, session, b"* BYE [TOOBIG] Line too long\r\n")
                return
            except ConnectionClosed:
                return
            try:
                await session.flush()
            except (ConnectionClosed, IdleTimeout):
                return
            if not go_on:
                return
            if errors + session.bad_commands >= self.max_errors:
                # DESIGN.md: a client that keeps sending bad commands is disconnected
                await conn.send(b"* BYE [LIMIT] Too many errors\r\n")
                return

    async def _run(self, session: Session, cmd: Any) -> bool:
        try:
            return await session.execute(cmd)
        finally:
            await session.spool.cleanup()

    async def _bye(self, conn: Connection, session: Session, line: bytes) -> None:
        try:
            await session.flush()
            await conn.send(line)
        except (ConnectionClosed, IdleTimeout):
            pass

    async def _read_command(self, conn: Connection, session: Session) -> bytes | None:
        """One command with its literals (RFC 9051 §4.3, RFC 7888), or None at EOF."""
        line = await conn.readline()
        buf = bytearray(line)
        head = line[:64].split(b" ", 3)
        # APPEND and REPLACE / UID REPLACE (RFC 8508) carry a message: its limit, spooled to a file
        verb = head[2] if len(head) > 2 and head[1].upper() == b"UID" else head[1] if len(head) > 1 else b""
        is_append = verb.upper().startswith((b"APPEND", b"REPLACE"))
        limit = session.cfg.append_limit if is_append else self.max_literal
        # A whole command is bounded too (many small literals): MULTIAPPEND may carry a few
        # messages, any other command a few literals' worth.
        total_cap = (session.cfg.append_limit * 4 if is_append else self.max_literal * 16) + conn.max_line_length
        while True:
            marker = literal_marker(line)
            if marker is None:
                return bytes(buf)
            size, nonsync = marker
            if size > limit or len(buf) + size > total_cap:
                tag = parse_tag(bytes(buf))
                if nonsync:
                    if size > HARD_LITERAL_CAP:
                        raise ConnectionClosed("literal beyond the hard cap")
                    # RFC 7888 §4: a non-synchronising literal is on its way; consume it.
                    remaining = size
                    while remaining:
                        chunk = await conn.readexactly(min(remaining, 65536))
                        remaining -= len(chunk)
                    await self._discard_rest(conn)
                raise TooBig(tag, is_append)
            if not nonsync:
                await conn.send(b"+ Ready for literal data\r\n")
            spool_dir = self._spool_dir(session) if is_append and size > STREAM_AT else None
            if spool_dir is not None:
                # DESIGN.md: a message body is streamed to disk, never held whole in memory
                token = await session.spool.take(conn.readexactly, size, spool_dir)
                del buf[-len(line):]
                buf += line[: line.rindex(b"{")] + b"{%d}\r\n" % len(token) + token
            else:
                buf += await conn.readexactly(size)
            line = await conn.readline_in_command()
            buf += line

    def _spool_dir(self, session: Session) -> Path | None:
        """The account's maildir tmp/ (same file system as its mail), when the store has one."""
        root = getattr(session.acct, "root", None)
        if root is None:
            return None
        tmp = Path(root) / "tmp"
        return tmp if tmp.is_dir() else None

    async def _discard_rest(self, conn: Connection) -> None:
        """Drop the rest of a command whose literal was refused (its further literals too)."""
        while True:
            line = await conn.readline_in_command()
            marker = literal_marker(line)
            if marker is None:
                return
            size, nonsync = marker
            if not nonsync:
                return
            remaining = size
            while remaining:
                chunk = await conn.readexactly(min(remaining, 65536))
                remaining -= len(chunk)


def make_service(ctx: ServiceContext) -> ImapService:
    return ImapService(ctx)
