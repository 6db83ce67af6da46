"""The POP3 session state machine (RFC 1939, RFC 2449 CAPA, RFC 2595 STLS, RFC 5034 AUTH); owns no socket.

The session talks to the client through a :class:`Channel` (write, drain,
read a SASL continuation line, start TLS) and to the rest of mailsrv through
:mod:`mailsrv.pop3.maildrop`. Handlers raise :class:`~mailsrv.pop3.grammar.Pop3Error`;
the connection loop (:mod:`mailsrv.pop3.server`) turns it into ``-ERR`` and
keeps the error budget.

Invariants:
- Messages marked with DELE are removed only in the UPDATE state, after QUIT
  (RFC 1939 §6); a session that ends any other way deletes nothing.
- The maildrop lock is held from a successful login until :meth:`Session.end`
  (which the connection loop always calls), so a second session on the
  same maildrop gets ``-ERR [IN-USE]`` in every worker.
- Message bodies are streamed in chunks with a drain after each (memory is
  bounded by the chunk size, not the message size).
- As Dovecot with ``pop3_no_flag_updates = no``: a message RETR sent (not TOP)
  that was not \\Seen at login is marked \\Seen when the session ends, at QUIT
  or on a lost connection (deletes only at QUIT); RSET forgets the marks.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import time
from typing import Any, Protocol

from mailsrv import log
from mailsrv.auth import Challenge, Success
from mailsrv.config import Pop3Config
from mailsrv.net.channel import SessionChannel
from mailsrv.pop3.grammar import (
    AUTH,
    IN_USE,
    LOGIN_DELAY,
    MAX_AUTH_LINE,
    SYS_TEMP,
    BodyEncoder,
    Command,
    Pop3Error,
    Pop3SyntaxError,
    err,
    ok,
    parse_command,
    parse_number,
    strip_eol,
)
from mailsrv.pop3.maildrop import READ_CHUNK as READ_CHUNK
from mailsrv.pop3.maildrop import (
    Authenticator,
    DropMessage,
    InUse,
    Maildrop,
    Maildrops,
    MaildropUnavailable,
    MessageGone,
)

logger = log.get("pop3")

#: RETR read-ahead: at most this many of the following messages are read while one is
#: sent (each read is a thread-pool round trip in the store, so several are kept in flight),
#: and at most READ_AHEAD_BYTES of them (the memory a session may hold for it). Half a window
#: is read per round trip: 32 and 256 KiB make it ~14 messages of 9 KB (a pool job's fixed cost
#: and its thread hand-offs spread over twice as many RETRs as with 16 and 128 KiB).
READ_AHEAD = 32
READ_AHEAD_BYTES = 256 * 1024
#: DESIGN.md "what bad input gets": commands a client may send before it logs in
#: (a real client needs CAPA, STLS, CAPA, USER, PASS and a few retries).
MAX_COMMANDS_BEFORE_AUTH = 50

IMPLEMENTATION = "mailsrv"


class State(enum.Enum):
    AUTHORIZATION = "authorization"  # RFC 1939 §4
    TRANSACTION = "transaction"  # RFC 1939 §5
    UPDATE = "update"  # RFC 1939 §6: after QUIT in TRANSACTION; the session ends


_AUTHZ = frozenset({State.AUTHORIZATION})
_TRANS = frozenset({State.TRANSACTION})
_BOTH = _AUTHZ | _TRANS
#: verb -> states in which it is legal (mox-style table, checked in one place: :meth:`Session.handle`)
COMMANDS: dict[str, frozenset[State]] = {
    "USER": _AUTHZ,
    "PASS": _AUTHZ,
    "APOP": _AUTHZ,
    "AUTH": _AUTHZ,
    "STLS": _AUTHZ,
    "CAPA": _BOTH,  # RFC 2449 §5: "valid in the AUTHORIZATION and TRANSACTION states"
    "QUIT": _BOTH,
    "STAT": _TRANS,
    "LIST": _TRANS,
    "RETR": _TRANS,
    "DELE": _TRANS,
    "NOOP": _TRANS,
    "RSET": _TRANS,
    "TOP": _TRANS,
    "UIDL": _TRANS,
}


class Channel(SessionChannel, Protocol):
    """The connection as the session needs it (the server adapts a :class:`~mailsrv.net.connection.Connection`)."""

    async def read_continuation(self) -> bytes:
        """Next line of a command in progress (SASL response); raises like ``Connection.readline_in_command``."""


class Session:
    """One POP3 conversation. Call :meth:`greeting`, then :meth:`handle` per line, and always :meth:`end`."""

    def __init__(self, channel: Channel, *, auth: Authenticator, maildrops: Maildrops,
                 config: Pop3Config, hostname: str) -> None:
        self.channel = channel
        self.auth = auth
        self.maildrops = maildrops
        self.config = config
        self.hostname = hostname
        self.state = State.AUTHORIZATION
        self.user: str | None = None  # USER given, waiting for PASS
        self.account: Any = None
        self.drop: Maildrop | None = None
        self.messages: list[DropMessage] = []
        self.deleted: set[int] = set()  # message numbers (1-based) marked by DELE
        self.retrieved: set[int] = set()  # message numbers sent by RETR (EXPIRE 0)
        self.to_mark_seen: set[int] = set()  # message numbers RETR sent that were not \Seen at login
        # read-ahead of the next message's first chunk while the client takes this one
        #: uid -> the read-ahead batch reading its first chunk (one task serves several uids)
        self._ahead: dict[int, asyncio.Future[dict[int, bytes]]] = {}
        #: the message number and window length of the last full read-ahead pass (see :meth:`_read_ahead`)
        self._ahead_at = 0
        self._ahead_window = 0
        self.auth_failures = 0
        self.commands_before_auth = 0
        self.closing = False  # set by QUIT: the loop closes after the reply

    # -- life ----------------------------------------------------------------

    def greeting(self) -> bytes:
        # deviation (RFC 1939 §7 APOP): no timestamp in the banner, since APOP needs the
        # clear-text password and the directory keeps only argon2id hashes and SCRAM verifiers.
        return ok(f"{self.hostname} {IMPLEMENTATION} POP3 ready")

    async def end(self) -> None:
        """The connection is gone or closing: write the pending \\Seen marks (a session ended without
        QUIT too, as Dovecot does), release the maildrop; deletes nothing."""
        self._drop_prefetch()
        drop, self.drop = self.drop, None
        if drop is None:
            return
        try:
            if self.to_mark_seen:
                await self._mark_seen(drop)
        except MaildropUnavailable as exc:
            logger.warning("seen.failed", error=str(exc), messages=len(self.to_mark_seen))
        finally:
            await drop.close()

    async def _mark_seen(self, drop: Maildrop) -> None:
        """Write the \\Seen marks of the messages RETR sent and DELE did not mark (MaildropUnavailable)."""
        marks, self.to_mark_seen = self.to_mark_seen - self.deleted, set()
        await drop.mark_seen([self.messages[n - 1].uid for n in sorted(marks)])

    async def handle(self, line: bytes) -> None:
        """Run one command line. Raises :class:`Pop3Error`; sets :attr:`closing` after QUIT."""
        if self.state is State.AUTHORIZATION:
            self.commands_before_auth += 1
            if self.commands_before_auth > MAX_COMMANDS_BEFORE_AUTH:
                raise Pop3Error("Too many commands before login", fatal=True)
        cmd = parse_command(line)
        states = COMMANDS.get(cmd.verb)
        if states is None:
            raise Pop3SyntaxError("Unknown command")
        if self.state not in states:
            if self.state is State.AUTHORIZATION:
                raise Pop3Error("Not logged in")
            raise Pop3Error("Command not valid in this state")
        await getattr(self, "cmd_" + cmd.verb.lower())(cmd)

    def _send(self, data: bytes) -> None:
        self.channel.write(data)

    # -- AUTHORIZATION ---------------------------------------------------------

    def _plaintext_ok(self) -> bool:
        return bool(self.auth.plaintext_allowed(tls=self.channel.tls_active, client_ip=self.channel.peer_host))

    def capabilities(self) -> list[str]:
        """RFC 2449 §6 capability lines for the current state."""
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self.state is State.AUTHORIZATION:
            if self._plaintext_ok():
                caps.append("USER")
            mechs = self._mechanisms()
            if mechs:
                caps.append("SASL " + " ".join(mechs))
            if self.channel.starttls_available and not self.channel.tls_active:
                caps.append("STLS")
        if self.config.expire:
            caps.append(f"EXPIRE {int(self.config.expire) if self.config.expire.isdigit() else 'NEVER'}")
        if self.config.login_delay:
            caps.append(f"LOGIN-DELAY {self.config.login_delay}")
        caps.append(f"IMPLEMENTATION {IMPLEMENTATION}")
        return caps

    def _mechanisms(self) -> list[str]:
        return list(self.auth.mechanisms(tls=self.channel.tls_active, client_ip=self.channel.peer_host,
                                         channel_binding=self.channel.channel_binding() is not None))

    async def cmd_capa(self, cmd: Command) -> None:
        # RFC 2449 §5
        self._send(ok("Capability list follows") + b"".join(c.encode() + b"\r\n" for c in self.capabilities())
                   + b".\r\n")

    async def cmd_stls(self, cmd: Command) -> None:
        # RFC 2595 §4: only in AUTHORIZATION, not after TLS is active.
        if self.channel.tls_active:
            raise Pop3Error("TLS already active")
        if not self.channel.starttls_available:
            raise Pop3Error("STLS not available")
        self._send(ok("Begin TLS negotiation"))
        await self.channel.drain()
        await self.channel.starttls()
        # RFC 2595 §4: the client must discard what it learned; we forget the pending USER.
        self.user = None

    async def cmd_user(self, cmd: Command) -> None:
        # RFC 1939 §7 USER name
        if not self._plaintext_ok():
            raise Pop3Error("Plaintext authentication disallowed on non-secure connection (use STLS)", AUTH)
        if len(cmd.args) != 1:
            raise Pop3SyntaxError("USER needs one argument")
        try:
            self.user = cmd.args[0].decode("utf-8")
        except UnicodeDecodeError:
            raise Pop3SyntaxError("User name is not UTF-8") from None
        self._send(ok())

    async def cmd_pass(self, cmd: Command) -> None:
        # RFC 1939 §7: PASS only right after a successful USER.
        user, self.user = self.user, None
        if user is None:
            raise Pop3Error("No user name given (USER first)")
        if not self._plaintext_ok():
            raise Pop3Error("Plaintext authentication disallowed on non-secure connection (use STLS)", AUTH)
        if not cmd.rest:
            raise Pop3SyntaxError("PASS needs an argument")
        try:
            password = cmd.rest.decode("utf-8")
        except UnicodeDecodeError:
            password = cmd.rest.decode("latin-1")
        result = await self.auth.login(user, password, protocol="pop3", client_ip=self.channel.peer_host,
                                       tls=self.channel.tls_active)
        if not result.ok:
            await self._auth_failed(getattr(result, "delay", 0.0))
        await self._login(result.account, "PASS")

    async def cmd_apop(self, cmd: Command) -> None:
        # RFC 1939 §7 APOP: off (see greeting).
        raise Pop3Error("APOP not available", AUTH)

    async def cmd_auth(self, cmd: Command) -> None:
        # RFC 5034
        mechs = self._mechanisms()
        if not cmd.args:
            # Not in RFC 5034; Outlook and Thunderbird send a bare AUTH to list the mechanisms.
            self._send(ok("Methods follow") + b"".join(m.encode() + b"\r\n" for m in mechs) + b".\r\n")
            return
        if len(cmd.args) > 2:
            raise Pop3SyntaxError("AUTH takes a mechanism and an optional initial response")
        mech = cmd.args[0].decode("ascii", "replace").upper()
        if mech not in mechs:
            raise Pop3Error("Unsupported authentication mechanism")
        initial: bytes | None = None
        if len(cmd.args) == 2:
            # RFC 5034 §4: "=" is an empty initial response.
            initial = b"" if cmd.args[1] == b"=" else self._b64(cmd.args[1])
        exchange = self.auth.sasl(mech, protocol="pop3", client_ip=self.channel.peer_host,
                                  tls=self.channel.tls_active, channel_binding=self.channel.channel_binding())
        step = await exchange.step(initial)
        while _is_challenge(step):
            self._send(b"+ " + base64.b64encode(step.data) + b"\r\n")
            await self.channel.drain()
            line = strip_eol(await self.channel.read_continuation())
            if len(line) > MAX_AUTH_LINE:
                exchange.abort()
                raise Pop3Error("SASL response too long", AUTH)
            if line == b"*":
                # RFC 5034 §4: the client cancels with "*"; the server answers -ERR.
                exchange.abort()
                raise Pop3Error("Authentication cancelled", AUTH)
            step = await exchange.step(self._b64(line, exchange))
        if not isinstance(step, Success):
            await self._auth_failed(getattr(step, "delay", 0.0))
        if getattr(step, "data", None):
            # RFC 5034 §6: additional data with success (SCRAM server-final) goes out as a
            # last challenge; the client answers with an empty line.
            self._send(b"+ " + base64.b64encode(step.data) + b"\r\n")
            await self.channel.drain()
            if strip_eol(await self.channel.read_continuation()) not in (b"", b"="):
                raise Pop3Error("Authentication cancelled", AUTH)
        await self._login(step.account, mech)

    @staticmethod
    def _b64(data: bytes, exchange: Any = None) -> bytes:
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            if exchange is not None:
                exchange.abort()
            raise Pop3Error("Invalid base64 data", AUTH) from None

    async def _auth_failed(self, delay: float) -> None:
        """Raise the neutral failure reply (after the authenticator's tarpit delay)."""
        self.auth_failures += 1
        if delay:
            await asyncio.sleep(delay)
        fatal = self.auth_failures >= self.config.max_auth_failures
        # RFC 3206 §4: [AUTH] = the credentials are wrong (never say which part).
        raise Pop3Error("Authentication failed", AUTH, fatal=fatal)

    async def _login(self, account: Any, mechanism: str) -> None:
        """Lock and open the maildrop, then enter TRANSACTION (RFC 1939 §4)."""
        try:
            drop = await self.maildrops.open(account)
        except InUse:
            logger.info("login.in_use", user=account.address)
            # RFC 2449 §8.1.1
            raise Pop3Error("Maildrop is in use by another session", IN_USE) from None
        except MaildropUnavailable as exc:
            logger.warning("login.unavailable", user=account.address, error=str(exc))
            raise Pop3Error("Maildrop not available, try again later", SYS_TEMP) from None
        delay = self.config.login_delay
        if delay and drop.last_login is not None and time.time() - drop.last_login < delay:
            await drop.close()
            # RFC 2449 §8.1.2
            raise Pop3Error(f"Wait {delay} seconds between logins", LOGIN_DELAY)
        if delay:
            await drop.record_login()
        self.drop = drop
        self.account = account
        self.messages = list(drop.messages)
        self.state = State.TRANSACTION
        log.bind(user=account.address)
        logger.info("login", mechanism=mechanism, messages=len(self.messages))
        count, size = self._stat()
        self._send(ok(f"Logged in, {count} messages ({size} octets)"))

    # -- TRANSACTION -------------------------------------------------------------

    def _stat(self) -> tuple[int, int]:
        live = [m for i, m in enumerate(self.messages, 1) if i not in self.deleted]
        return len(live), sum(m.size for m in live)

    def _message(self, arg: bytes) -> tuple[int, DropMessage]:
        """RFC 1939 §5: a message number that exists and is not marked deleted."""
        n = parse_number(arg)
        if n > len(self.messages):
            raise Pop3Error("No such message")
        if n in self.deleted:
            raise Pop3Error("Message already deleted")
        return n, self.messages[n - 1]

    async def cmd_stat(self, cmd: Command) -> None:
        if cmd.args:
            raise Pop3SyntaxError("STAT takes no argument")
        count, size = self._stat()
        self._send(ok(f"{count} {size}"))

    async def _listing(self, cmd: Command, field: str) -> None:
        """LIST and UIDL: one message, or the scan listing of all that are not deleted."""
        if len(cmd.args) > 1:
            raise Pop3SyntaxError(f"{cmd.verb} takes at most one argument")
        if cmd.args:
            n, msg = self._message(cmd.args[0])
            self._send(ok(f"{n} {getattr(msg, field)}"))
            return
        parts = [ok("Scan list follows" if field == "size" else "Unique-ID list follows")]
        parts += [f"{i} {getattr(m, field)}\r\n".encode()
                  for i, m in enumerate(self.messages, 1) if i not in self.deleted]
        parts.append(b".\r\n")
        self._send(b"".join(parts))

    async def cmd_list(self, cmd: Command) -> None:
        await self._listing(cmd, "size")

    async def cmd_uidl(self, cmd: Command) -> None:
        # RFC 1939 §7 UIDL
        await self._listing(cmd, "uidl")

    async def cmd_retr(self, cmd: Command) -> None:
        if len(cmd.args) != 1:
            raise Pop3SyntaxError("RETR needs a message number")
        n, msg = self._message(cmd.args[0])
        await self._send_message(msg, None, f"{msg.size} octets", n)
        self.retrieved.add(n)
        if not msg.seen and not self.config.no_flag_updates:
            self.to_mark_seen.add(n)

    async def cmd_top(self, cmd: Command) -> None:
        # RFC 1939 §7 TOP msg n: header, blank line, n body lines (n may be 0).
        if len(cmd.args) != 2:
            raise Pop3SyntaxError("TOP needs a message number and a line count")
        _, msg = self._message(cmd.args[0])
        lines = parse_number(cmd.args[1], "line count", minimum=0)
        await self._send_message(msg, lines, "Top of message follows")

    def _drop_prefetch(self, keep: frozenset[int] = frozenset()) -> None:
        """Forget read-ahead results, except for the uids in ``keep``."""
        kept = {id(t) for u, t in self._ahead.items() if u in keep}
        for uid in [u for u in self._ahead if u not in keep]:
            task = self._ahead.pop(uid)
            if id(task) in kept:
                continue
            if task.done():
                if not task.cancelled():
                    task.exception()  # retrieved: a failure nobody asked for is not an error
            else:
                task.cancel()

    async def _first_chunk(self, uid: int) -> bytes:
        """The message's first chunk: from the read-ahead when it guessed right."""
        assert self.drop is not None
        task = self._ahead.pop(uid, None)
        if task is not None:
            try:
                chunk = (await task).get(uid)
            except (MessageGone, MaildropUnavailable):
                chunk = None
            if chunk is not None:
                return chunk
        return await self.drop.read(uid, 0, READ_CHUNK)  # says why it is missing, or reads it

    def _read_ahead(self, n: int) -> None:
        """Clients RETR 1..N in order: keep the next few small live messages being read, in
        batches (one store round trip reads the missing half of the window at once).

        Bounded: at most READ_AHEAD messages, READ_AHEAD_BYTES octets together.
        """
        assert self.drop is not None
        if (n == self._ahead_at + 1 and len(self._ahead) * 2 > self._ahead_window and n < len(self.messages)
                and self.messages[n].uid in self._ahead):
            # the client goes on in order and more than half the window is being read already: the full
            # pass below would find nothing to do (its ~50 Python steps were a fifth of a RETR's loop time)
            self._ahead_at = n
            return
        window: list[int] = []
        budget = READ_AHEAD_BYTES
        for nxt in range(n + 1, min(n + 1 + READ_AHEAD, len(self.messages) + 1)):
            msg = self.messages[nxt - 1]
            if nxt in self.deleted:
                continue
            budget -= msg.size
            if budget < 0:
                break
            window.append(msg.uid)
        self._ahead_at, self._ahead_window = n, len(window)
        self._drop_prefetch(frozenset(window))
        todo = [uid for uid in window if uid not in self._ahead]
        if todo and (len(todo) * 2 >= len(window) or window[0] not in self._ahead):
            batch = asyncio.ensure_future(self.drop.read_first(todo, READ_CHUNK))
            for uid in todo:
                self._ahead[uid] = batch

    async def _send_message(self, msg: DropMessage, body_lines: int | None, text: str,
                            n: int | None = None) -> None:
        assert self.drop is not None
        try:
            chunk = await self._first_chunk(msg.uid)
        except MessageGone:
            # RFC 2449 §8.1.2: a transient condition of the maildrop; RSET/QUIT still work.
            raise Pop3Error("Message was deleted by another session", SYS_TEMP) from None
        except MaildropUnavailable as exc:
            logger.warning("retr.unreadable", uid=msg.uid, error=str(exc))
            raise Pop3Error("Message cannot be read now, try again later", SYS_TEMP) from None
        encoder = BodyEncoder(body_lines, crlf=msg.crlf)
        # One write per chunk: the status line rides with the first chunk and the final
        # "." with the last (a small message is one send() and one segment, not three).
        status = ok(text)
        offset = 0
        while chunk:
            offset += len(chunk)
            body = encoder.feed(chunk)
            if encoder.done or len(chunk) < READ_CHUNK:
                break
            self._send(status + body if status else body)
            status = b""
            await self.channel.drain()
            try:
                chunk = await self.drop.read(msg.uid, offset, READ_CHUNK)
            except (MessageGone, MaildropUnavailable):
                # Half a message is out; the only honest end is to drop the connection.
                raise Pop3Error("Message cannot be read any more", SYS_TEMP, fatal=True) from None
        else:
            body = b""
        self._send(b"".join((status, body, encoder.finish())))  # one copy of the message, not two
        if n is not None:
            # after the reply went out: the batch's pool job runs while the client reads it, not
            # between the command and its reply
            self._read_ahead(n)

    async def cmd_dele(self, cmd: Command) -> None:
        # RFC 1939 §7 DELE: only marks; removal happens in UPDATE.
        if len(cmd.args) != 1:
            raise Pop3SyntaxError("DELE needs a message number")
        n, _ = self._message(cmd.args[0])
        self.deleted.add(n)
        self._send(ok(f"Message {n} deleted"))

    async def cmd_noop(self, cmd: Command) -> None:
        self._send(ok())

    async def cmd_rset(self, cmd: Command) -> None:
        # RFC 1939 §7 RSET: unmark every message marked as deleted.
        self.deleted.clear()
        self.retrieved.clear()
        self.to_mark_seen.clear()  # as Dovecot's RSET
        count, size = self._stat()
        self._send(ok(f"Maildrop has {count} messages ({size} octets)"))

    async def cmd_quit(self, cmd: Command) -> None:
        self.closing = True
        if self.state is State.AUTHORIZATION:
            self._send(ok(f"{self.hostname} POP3 server signing off"))
            return
        # RFC 1939 §6 UPDATE: remove the marked messages, release the lock, then answer.
        self.state = State.UPDATE
        marked = set(self.deleted)
        days = int(self.config.expire) if self.config.expire.isdigit() else None
        if days == 0:
            marked |= self.retrieved  # RFC 2449 §6.7: EXPIRE 0 = retrieved messages are not kept
        uids = [self.messages[n - 1].uid for n in sorted(marked)]
        assert self.drop is not None
        try:
            await self.drop.expunge(uids)
            if self.to_mark_seen:
                await self._mark_seen(self.drop)
            if days:
                # EXPIRE n: the clock of each retrieved message starts at its first retrieval
                await self.drop.note_retrieved([self.messages[n - 1].uid for n in sorted(self.retrieved - marked)])
        except MaildropUnavailable as exc:
            logger.warning("update.failed", error=str(exc), messages=len(uids))
            await self.end()
            # RFC 1939 §6: "-ERR some deleted messages not removed"
            raise Pop3Error("Some deleted messages not removed", SYS_TEMP, fatal=True) from None
        await self.end()
        logger.info("logout", expunged=len(uids))
        self._send(ok(f"{self.hostname} POP3 server signing off ({len(uids)} messages deleted)"))


def _is_challenge(step: Any) -> bool:
    """``mailsrv.auth`` steps: Challenge(data) | Success(account, authzid, data) | Failure(reason)."""
    return isinstance(step, Challenge)


__all__ = ["COMMANDS", "Channel", "Session", "State", "err"]
