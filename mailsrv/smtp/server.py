"""SMTP listener service: the connection loop around :class:`~mailsrv.smtp.session.Session`.

The loop reads command lines, turns :class:`SmtpError` into replies and keeps
the error budget (STYLE.md §3), streams DATA through the bulk
:class:`~mailsrv.smtp.dotstuff.DotDecoder` and BDAT chunks into the spool
file (a message is never held whole in memory), and performs STARTTLS.

Invariants: nothing is written to the peer between a session's ``data_end``
call and its return, so ``250`` always follows durability (on a plaintext
session the store's round may write that ``250`` itself, from its thread, once
the copies are durable: :mod:`mailsrv.smtp.early`; the loop then writes only
what it did not send). Replies are held
only while a whole command (or the rest of a BDAT chunk) already waits in the
input buffer (RFC 2920 §3.1), so the loop never waits for the client while
holding the replies the client may be waiting for.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

from mailsrv import log
from mailsrv.config import SmtpConfig
from mailsrv.net.connection import (
    Connection,
    ConnectionClosed,
    IdleTimeout,
    LineTooLong,
    ServerShutdown,
)
from mailsrv.net.service import ServiceContext
from mailsrv.policy.pipeline import Policy
from mailsrv.smtp.backend import MailBackend, SaslProvider, SessionInfo, Spool
from mailsrv.smtp.dotstuff import DotDecoder
from mailsrv.smtp.early import EarlyReply
from mailsrv.smtp.grammar import SmtpError, reply
from mailsrv.smtp.session import MAX_AUTH_LINE, Session, Step
from mailsrv.util import timeline

logger = log.get("smtp")

# Bulk read size for DATA and BDAT (bytes per read from the transport).
READ_CHUNK = 256 * 1024
# Replies held for pipelined commands before they are written anyway (RFC 2920 §3.1 lets the
# server hold them while commands remain; this bounds what a flood of NOOPs can make us hold).
MAX_HELD_REPLIES = 64
# Client addresses whose trusted_networks membership is remembered (then forgotten all at once).
MAX_KNOWN_IPS = 4096


def _unread(conn: Connection, data: bytes) -> None:
    """Give back bytes read past the end of DATA (pipelined commands, RFC 2920)."""
    if data:
        buf = conn.reader._buffer  # type: ignore[attr-defined]  # StreamReader has no unread()
        buf[0:0] = data


class SmtpService:
    """``StreamService`` for the smtp (MTA) and submission listeners."""

    def __init__(self, ctx: ServiceContext, backend: MailBackend | None = None,
                 sasl: SaslProvider | None = None) -> None:
        self.ctx = ctx
        self.cfg: SmtpConfig = getattr(ctx.config, "smtp", SmtpConfig())
        self.kind = ctx.listener.protocol  # "smtp" or "submission"
        self.backend = backend if backend is not None else _default_backend(ctx)
        self.sasl = sasl if sasl is not None else ctx.resources.get("auth")
        self.max_errors = ctx.config.limits.max_errors
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in ctx.listener.trusted_networks]
        #: client address -> in ``trusted`` (ipaddress parses in Python: once per address, not per connection)
        self._trusted_ips: dict[str, bool] = {}
        self.policy = _default_policy(ctx)

    async def refuse(self, conn: Connection, reason: str) -> None:
        # RFC 5321 §3.1: 421 at connection time when the service is not available.
        await conn.send(reply(421, "4.7.0", f"{self.ctx.hostname} {reason}, try again later"))

    def _is_trusted(self, ip: str) -> bool:
        known = self._trusted_ips.get(ip)
        if known is not None:
            return known
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if len(self._trusted_ips) >= MAX_KNOWN_IPS:
            self._trusted_ips.clear()
        known = self._trusted_ips[ip] = any(addr in net for net in self.trusted)
        return known

    def _plaintext_ok(self, ip: str) -> bool:
        check: Any = getattr(self.sasl, "plaintext_allowed", None)
        if check is None:
            return False
        return bool(check(tls=False, client_ip=ip))

    def new_session(self, conn: Connection) -> Session:
        info = SessionInfo(
            sid=conn.sid,
            hostname=self.ctx.hostname,
            listener=self.kind,
            peer_ip=conn.peer_host,
            tls=conn.tls_info() if conn.tls_active else {},
            trusted=self._is_trusted(conn.peer_host),
        )
        policy = None
        if self.policy is not None:
            policy = self.policy.session(client_ip=conn.peer_host, listener=self.kind, trusted=info.trusted)
        return Session(
            info,
            self.cfg,
            self.backend,
            self.sasl,
            starttls_available=self.ctx.starttls_context is not None,
            plaintext_auth_ok=self._plaintext_ok(conn.peer_host),
            policy=policy,
        )

    async def _policy_greeting(self, conn: Connection, session: Session) -> bool:
        """issue 12: connection-time policy and early-talker detection; False: refused and closed."""
        ps = session.policy
        if ps is None:
            return True
        decision = await ps.connect()
        pause = self.policy.cfg.greet_pause if self.policy is not None and not ps.outbound and self.kind == "smtp" \
            else 0.0  # users' clients on submission are not made to wait
        if decision.ok and pause > 0:
            # RFC 5321 §4.3.1: the client must wait for the greeting; one that talks first is a bot
            try:
                early = await asyncio.wait_for(conn.reader.read(1), pause)
            except TimeoutError:
                early = b""
            if early:
                decision = ps.early_talker()
        if decision.ok:
            return True
        await self._bye(conn, [reply(decision.code, decision.enh, f"{self.ctx.hostname} {decision.text}")])
        return False

    async def handle(self, conn: Connection) -> None:
        session = self.new_session(conn)
        # RFC 2920 §3.1: replies to pipelined commands are held while more commands wait in the
        # input buffer and go out in one write once the client must wait for them.
        out: list[bytes] = []
        # a message's 250 from its delivery round's thread: plaintext only (an SSL transport cannot be
        # written from another thread)
        early = None if conn.tls_active else EarlyReply(conn.writer.transport)
        try:
            if not await self._policy_greeting(conn, session):
                return
            await conn.send(session.greeting())
            try:  # here, not in a coroutine of its own: every wake-up of the session passes each level
                await self._commands(conn, session, out, early)
            except BaseException:
                # a bug, a failing lookup or a cancelled task ends the session: the replies it owes still
                # go out before the close (above all a held 250 for a delivered message, lest it be sent
                # twice)
                if out:
                    conn.write(b"".join(out))
                raise
        except ConnectionClosed:
            logger.debug("conn.lost")
        except IdleTimeout:
            await self._bye(conn, [reply(421, "4.4.2", f"{self.ctx.hostname} idle timeout")])
        finally:
            if early is not None:
                early.close()  # before the listener closes the connection (the dup keeps its socket open)
            session.abort()

    async def _commands(self, conn: Connection, session: Session, out: list[bytes],
                        early: EarlyReply | None = None) -> None:
        errors = 0
        host = self.ctx.hostname
        auth_pending = False
        buffered = conn.reader._buffer  # type: ignore[attr-defined]
        while True:
            if out and (len(out) >= MAX_HELD_REPLIES or b"\n" not in buffered):
                # _flush inline: no coroutine when the write went out whole (most replies)
                conn.write(out[0] if len(out) == 1 else b"".join(out))
                out.clear()
                if timeline.on:
                    timeline.finish("written")
                if conn.backlogged():
                    await conn.drain()
            if session.accepted is not None:  # its line after its 250 (off the reply's path), before what follows
                session.log_accepted()
            try:
                line = None if auth_pending else conn.buffered_command()  # pipelined: no coroutine
                if line is None:
                    line = await (conn.readline_in_command() if auth_pending else conn.readline())
            except LineTooLong:
                # RFC 5321 §4.5.3.1.4 / RFC 4954 §4
                out.append(reply(500, "5.5.2", "Line too long"))
                auth_pending = False
                errors += 1
                if errors >= self.max_errors:
                    out.append(reply(421, "4.7.0", f"{host} too many errors"))
                    await self._bye(conn, out)
                    return
                continue
            except ServerShutdown:
                out.append(reply(421, "4.3.2", f"{host} service shutting down"))
                await self._bye(conn, out)
                return
            step: Step | None = None
            try:
                if auth_pending:
                    auth_pending = False
                    if len(line) > MAX_AUTH_LINE + 2:
                        raise SmtpError("Line too long", 500, "5.5.6")
                    step = await session.auth_response(line)
                else:
                    step = await session.command(line)
                    if log.enabled("trace"):
                        verb = line.split(b" ", 1)[0][:12]
                        logger.trace("smtp.cmd", verb=verb.decode("ascii", "replace"))
            except SmtpError as exc:
                out.append(exc.reply())
                if exc.code == 421:
                    await self._flush(conn, out)
                    return
                errors += 1
                if errors >= self.max_errors:
                    # DESIGN.md "What bad input gets": a hostile client is disconnected and logged.
                    logger.warning("session.too_many_errors", errors=errors)
                    out.append(reply(421, "4.7.0", f"{host} too many errors, closing"))
                    await self._bye(conn, out)
                    return
                continue
            if step.reply:
                out.append(step.reply)
            if step.then == "reply":
                continue
            if step.then == "bdat":  # the chunk follows at once: its reply may join later ones
                if out and len(buffered) < step.size:  # never wait for the client holding its replies
                    await self._flush(conn, out)
                if not await self._read_bdat(conn, session, out, step.size, step.last, early):
                    return
                continue
            # _flush inline: no coroutine when the write went out whole (the 354 of every message)
            conn.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
            if conn.backlogged():
                await conn.drain()
            if step.then == "close":
                return
            elif step.then == "auth":
                auth_pending = True
            elif step.then == "starttls":
                ctx = self.ctx.starttls_context
                assert ctx is not None
                # RFC 3207 §4.2, RFC 2920 §3.1 (STARTTLS ends a group; CVE-2011-0411): plain text pipelined after
                # STARTTLS is discarded and logged, then the handshake goes on (as Postfix)
                conn.discard_pipelined()
                if early is not None:  # TLS from here on: every reply from the loop
                    early.close()
                    early = None
                await conn.starttls(ctx)
                session.tls_started(conn.tls_info())
                logger.debug("tls.started", **conn.tls_info())
            elif step.then == "data":
                if not await self._read_data(conn, session, out, early):
                    return

    @staticmethod
    async def _flush(conn: Connection, out: list[bytes]) -> None:
        """Write the held replies in one write."""
        conn.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()
        await conn.drain()

    async def _bye(self, conn: Connection, out: list[bytes]) -> None:
        try:
            await self._flush(conn, out)
        except (ConnectionClosed, IdleTimeout):
            pass

    async def _read_data(self, conn: Connection, session: Session, out: list[bytes],
                         early: EarlyReply | None = None) -> bool:
        """RFC 5321 §4.1.1.4: read the dot-stuffed stream into the spool, in bulk."""
        decoder = DotDecoder()
        spool = session.spool
        assert spool is not None
        limit = self.cfg.max_message_size
        too_big = False
        keep = True
        while not decoder.done:
            chunk = await conn.read_some(READ_CHUNK)
            if not chunk:
                raise ConnectionClosed("EOF in DATA")
            payload, used = decoder.feed(chunk)
            if payload and not too_big:
                if decoder.size > limit:
                    too_big = True  # keep reading to the end, keep nothing (RFC 1870 §6.3)
                elif keep and not spool.buffer(payload):  # buffered at once: no coroutine
                    keep = await _write(session, spool, payload)
            if decoder.done:
                _unread(conn, chunk[used:])
        offered = _offer(conn, out, early)
        try:
            r = (await session.data_end(bare_newline=decoder.bare_newline, too_big=too_big, early=offered)).reply
        except SmtpError as exc:
            r = exc.reply()
        _answer(out, offered, r)
        return True

    async def _read_bdat(self, conn: Connection, session: Session, out: list[bytes], size: int, last: bool,
                         early: EarlyReply | None = None) -> bool:
        """RFC 3030 §2: exactly ``size`` octets follow the BDAT line; no transparency."""
        keep = session.bdat_chunk_ok(size)
        spool = session.spool
        left = size
        while left:
            chunk = await conn.read_some(min(left, READ_CHUNK))
            if not chunk:
                raise ConnectionClosed("EOF in BDAT")
            if len(chunk) > left:  # cannot happen with read(n) but keep the invariant explicit
                _unread(conn, chunk[left:])
                chunk = chunk[:left]
            left -= len(chunk)
            if keep and spool is not None and not spool.buffer(chunk):
                keep = await _write(session, spool, chunk)
        offered = _offer(conn, out, early) if last else None
        try:
            r = (await session.bdat_end(last, early=offered)).reply
        except SmtpError as exc:
            r = exc.reply()
        _answer(out, offered, r)
        return True


def _offer(conn: Connection, out: list[bytes], early: EarlyReply | None) -> EarlyReply | None:
    """At a message's end: ``early`` when its 250 may be written from its delivery round's thread
    (nothing held in ``out`` nor waiting in the transport, so nothing can be written before it or
    beside it), else None."""
    if early is None or out or conn.backlogged() or not early.open():
        return None
    return early


def _answer(out: list[bytes], offered: EarlyReply | None, r: bytes) -> None:
    """Hold the reply ``r`` to a message's end, less what its round's thread sent of it (``offered``)."""
    if offered is not None:
        r = offered.take(r)
        if not r:  # sent whole by the round's thread (its time is the timeline's "written")
            if timeline.on:
                timeline.finish("written")
            return
    out.append(r)


async def _write(session: Session, spool: Spool, data: bytes) -> bool:
    """Stream ``data`` into the spool; False when the write failed (the rest of the message is read and
    dropped, its end answered 451: see :meth:`Session.spool_write_failed`)."""
    try:
        await spool.write(data)
    except OSError as exc:  # ENOSPC, EIO: never a dropped connection, nothing was acknowledged
        session.spool_write_failed(exc)
        return False
    return True


def _default_backend(ctx: ServiceContext) -> MailBackend:
    """The worker's backend from resources, or one built from the directory and store."""
    backend = ctx.resources.get("smtp_backend")
    if backend is not None:
        return backend
    from mailsrv.smtp.wiring import build_backend

    backend = build_backend(ctx)
    ctx.resources["smtp_backend"] = backend
    return backend


def _default_policy(ctx: ServiceContext) -> Policy | None:
    """The worker's policy (issue 12): from resources, or built over the directory once per worker."""
    if "policy" in ctx.resources:
        return ctx.resources["policy"]
    directory = ctx.resources.get("directory")
    cfg = getattr(ctx.config, "policy", None)
    if directory is None or cfg is None or not cfg.enabled:
        return None  # services built without a worker (tests with fake backends) run without policy
    policy = Policy.from_config(cfg, hostname=ctx.hostname, data_dir=ctx.config.server.data_dir,
                                lists=directory, is_local_domain=directory.is_local_domain)
    ctx.resources["policy"] = policy
    return policy


def make_service(ctx: ServiceContext) -> SmtpService:
    return SmtpService(ctx)
