"""The SMTP session state machine (RFC 5321 and its extensions); owns no socket.

Structure taken from aiosmtpd (``smtp_VERB`` handlers, named limits with their
RFC derivation) but not its protocol class: aiosmtpd's ``SMTP`` is an
``asyncio.StreamReaderProtocol`` that owns the transport and buffers DATA in
memory, so it cannot be hosted on mailsrv's :class:`~mailsrv.net.connection.Connection`
(listener limits, drain, session ids). Here a handler returns a :class:`Step`:
the reply and what the connection loop must do next (read DATA or a BDAT
chunk into the spool, upgrade to TLS, read a SASL response, close).
Handlers raise :class:`~mailsrv.smtp.grammar.SmtpError`; the connection loop
turns it into the reply and keeps the error budget.

Invariant: a transaction's ``250`` is produced only by :meth:`Session.data_end`
after the backend has made every copy durable.
"""

from __future__ import annotations

import base64
import binascii
import enum
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, Literal

from mailsrv import log
from mailsrv.config import SmtpConfig
from mailsrv.mime.hops import TOO_MANY_HOPS, read_head, too_many_hops
from mailsrv.policy.pipeline import Decision, PolicySession
from mailsrv.smtp.backend import (
    MailBackend,
    Recipient,
    SaslExchange,
    SaslProvider,
    SessionInfo,
    Spool,
    Transaction,
)
from mailsrv.smtp.early import EarlyReply
from mailsrv.smtp.grammar import (
    MAX_COMMAND_LINE,
    SmtpError,
    SmtpSyntaxError,
    parse_bdat,
    parse_domain,
    parse_mail,
    parse_rcpt,
    reply,
    split_command,
    xtext_decode,
)
from mailsrv.util import fsio, timeline

logger = log.get("smtp")

# RFC 4954 §4: a SASL response line is at most 12288 octets.
MAX_AUTH_LINE = 12288
# RFC 3461 §4.1: NOTIFY values.
NOTIFY_VALUES = frozenset({"SUCCESS", "FAILURE", "DELAY"})



#: (second, RFC 5322 date) of the last Received field: formatted once a second, not per message
_date_cache: tuple[int, str] = (-1, "")


def _received_date(now: float) -> str:
    """The date of a Received field (RFC 5322 §3.3, whole seconds, UTC) for time ``now``."""
    global _date_cache
    sec = int(now)
    if _date_cache[0] != sec:
        _date_cache = (sec, format_datetime(datetime.fromtimestamp(sec, UTC)))
    return _date_cache[1]


#: Recipients named in a message's log line; more are counted (``rcpts=``) and shown as ``...``.
LOGGED_RCPTS = 5


def _recipients(tx: Transaction) -> str:
    """The ``to=`` of a message's log line: its first :data:`LOGGED_RCPTS` recipients."""
    rcpts = tx.rcpts
    if len(rcpts) == 1:  # most mail: no generator
        return rcpts[0].address
    names = ",".join(r.address for r in rcpts[:LOGGED_RCPTS])
    return names + ",..." if len(rcpts) > LOGGED_RCPTS else names


class State(enum.Enum):
    GREETED = "greeted"  # banner sent, no EHLO yet
    READY = "ready"  # EHLO/HELO done, no transaction
    MAIL = "mail"  # MAIL accepted
    RCPT = "rcpt"  # at least one RCPT accepted (or tried)
    BDAT = "bdat"  # inside a BDAT sequence


Then = Literal["reply", "close", "starttls", "data", "bdat", "auth"]


@dataclass(frozen=True)
class Step:
    reply: bytes
    then: Then = "reply"
    size: int = 0  # BDAT chunk size
    last: bool = False  # BDAT LAST


_SENDER_OK = Step(reply(250, "2.1.0", "Sender OK"))

#: (code, enhanced code, text) -> its reply Step: an accepted RCPT's reply is one of a few, made once
_STEPS: dict[tuple[int, str, str], Step] = {}
#: Distinct replies kept in :data:`_STEPS` (a backend whose texts vary never grows it without bound).
MAX_STEPS = 64


#: (SIZE, STARTTLS offered, AUTH mechanisms) -> the EHLO reply's lines after the first
_EHLO_TAILS: dict[tuple[int, bool, tuple[str, ...]], bytes] = {}


def _step(code: int, enh: str, text: str) -> Step:
    key = (code, enh, text)
    step = _STEPS.get(key)
    if step is None:
        if len(_STEPS) >= MAX_STEPS:
            _STEPS.clear()
        step = _STEPS[key] = Step(reply(code, enh, text))
    return step
_GO_AHEAD = Step(reply(354, None, "End data with <CR><LF>.<CR><LF>"), "data")

_ANY = frozenset(State)
_IN_TX = frozenset({State.MAIL, State.RCPT})
#: verb -> states in which it is legal; others get 503 5.5.1 (mox-style state table).
LEGAL: dict[str, frozenset[State]] = {
    "EHLO": _ANY - {State.BDAT},
    "HELO": _ANY - {State.BDAT},
    "MAIL": frozenset({State.READY}),
    "RCPT": _IN_TX,
    "DATA": frozenset({State.RCPT}),
    "BDAT": frozenset({State.RCPT, State.BDAT}),
    "RSET": _ANY,
    "NOOP": _ANY,
    "QUIT": _ANY,
    "VRFY": _ANY - {State.BDAT},
    "HELP": _ANY - {State.BDAT},
    "STARTTLS": frozenset({State.GREETED, State.READY}),
    "AUTH": frozenset({State.READY}),
}


#: verb -> the name of its handler method (no name formatted per command)
_HANDLERS = {verb: f"smtp_{verb}" for verb in LEGAL}
#: state value -> the verbs legal in it: checked per command without hashing an Enum (a Python-level
#: ``__hash__``) or making a (verb, state) tuple
_LEGAL_VERBS = {state._value_: frozenset(verb for verb, states in LEGAL.items() if state in states) for state in State}


class Session:
    """One SMTP conversation. Not thread-safe; driven by one connection task."""

    def __init__(
        self,
        info: SessionInfo,
        cfg: SmtpConfig,
        backend: MailBackend,
        sasl: SaslProvider | None = None,
        *,
        starttls_available: bool = False,
        plaintext_auth_ok: bool = False,
        policy: PolicySession | None = None,
    ) -> None:
        self.info = info
        self.cfg = cfg
        self.backend = backend
        self.sasl = sasl
        self.starttls_available = starttls_available
        self.plaintext_auth_ok = plaintext_auth_ok
        self.policy = policy  # mailsrv.policy checks (issue 12); None: no policy
        self.submission = info.listener == "submission"  # the listener of a session never changes
        self.state = State.GREETED
        self.tx: Transaction | None = None
        self.commands = 0
        self._auth: SaslExchange | None = None
        self._auth_final: Any = None  # a Success whose server-final data is out, awaiting the client
        self._auth_mech = ""
        self._login_user: bytes | None = None
        self.spool: Spool | None = None
        self._bdat_failed: SmtpError | None = None
        self._bdat_size = 0
        self._write_failed: SmtpError | None = None  # a spool write failed while the message streamed
        #: (what it depends on, the Received field up to its "for" clause): built once per session state
        self._received: tuple[tuple[Any, ...], str] | None = None
        #: the fields of the last accepted message's ``message.accepted`` line, until :meth:`log_accepted`
        #: writes it (the connection loop, once the reply is written: the line is off the reply's path)
        self.accepted: dict[str, Any] | None = None

    @property
    def host(self) -> str:
        return self.info.hostname

    def greeting(self) -> bytes:
        return reply(220, None, f"{self.host} ESMTP mailsrv")

    # -- dispatch -------------------------------------------------------------

    def command(self, line: bytes) -> Coroutine[Any, Any, Step]:
        """Handle one command line: the handler's coroutine, to be awaited for the Step. Raises
        SmtpError for any failure reply (a failed check here at the call, the handler's at the await).
        Not a coroutine itself: each command (three per pipelined message) would make two."""
        self.commands += 1
        if len(line) > MAX_COMMAND_LINE + 2 and line[:5].upper() != b"AUTH ":
            # RFC 5321 §4.5.3.1.4 plus RFC 1869 parameter room; AUTH may carry an initial response
            raise SmtpError("Line too long", 500, "5.5.2")
        verb, arg = split_command(line)
        name = _HANDLERS.get(verb)
        if name is None:
            raise SmtpError("Command not recognized", 500, "5.5.2")
        if verb not in _LEGAL_VERBS[self.state._value_] and verb != "BDAT":  # BDAT must read its chunk first
            raise SmtpError(self._sequence_hint(verb), 503, "5.5.1")
        if (
            self.submission
            and self.info.account is None
            and self.commands > self.cfg.max_commands_before_auth
        ):
            raise SmtpError("Too many commands before authentication", 421, "4.7.0")
        handler: Callable[[bytes], Coroutine[Any, Any, Step]] = getattr(self, name)
        return handler(arg)

    def _sequence_hint(self, verb: str) -> str:
        if self.state is State.GREETED:
            return "Send EHLO first"
        if verb == "MAIL":
            return "Nested MAIL command" if self.state in _IN_TX else "Bad sequence of commands"
        if verb in ("RCPT", "DATA", "BDAT") and self.state is State.READY:
            return "Need MAIL command"
        if verb in ("DATA", "BDAT") and self.state is State.MAIL:
            return "Need RCPT command"
        if verb == "DATA" and self.state is State.BDAT:
            return "DATA not allowed inside BDAT"
        return "Bad sequence of commands"

    def _reset(self) -> None:
        if self.spool is not None:
            self.spool.discard()
            self.spool = None
        self.tx = None
        self._bdat_failed = None
        self._bdat_size = 0
        self._write_failed = None
        if self.state is not State.GREETED:
            self.state = State.READY

    # -- session verbs ----------------------------------------------------------

    @staticmethod
    def _enforce(decision: Decision) -> None:
        """A policy decision that is not OK becomes the reply (issue 12)."""
        if not decision.ok:
            raise SmtpError(decision.text, decision.code, decision.enh)

    async def smtp_EHLO(self, arg: bytes) -> Step:
        domain = self._helo_arg(arg)
        if self.policy is not None:
            self._enforce(await self.policy.helo(domain))
        self._reset()
        self.info.helo, self.info.esmtp = domain, True
        self.state = State.READY
        key = (self.cfg.max_message_size, self.starttls_available and not self.info.tls, tuple(self._mechanisms()))
        tail = _EHLO_TAILS.get(key)
        if tail is None:  # the extension lines after the greeting line: a few kinds per worker, made once
            size, starttls, mechs = key
            ext = ["", "PIPELINING", f"SIZE {size}", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "DSN", "CHUNKING"]
            if starttls:
                ext.append("STARTTLS")
            if mechs:
                ext.append("AUTH " + " ".join(mechs))
            if len(_EHLO_TAILS) >= MAX_STEPS:
                _EHLO_TAILS.clear()
            tail = _EHLO_TAILS[key] = reply(250, None, ext).split(b"\r\n", 1)[1]
        return Step(f"250-{self.host} Hello {domain}\r\n".encode() + tail)

    async def smtp_HELO(self, arg: bytes) -> Step:
        domain = self._helo_arg(arg)
        if self.policy is not None:
            self._enforce(await self.policy.helo(domain))
        self._reset()
        self.info.helo, self.info.esmtp = domain, False
        self.state = State.READY
        return Step(reply(250, None, f"{self.host} Hello {domain}"))

    def _helo_arg(self, arg: bytes) -> str:
        if not arg:
            raise SmtpSyntaxError("Syntax: EHLO hostname", 501, "5.5.4")
        try:
            return parse_domain(arg.split(b" ")[0], utf8=True)
        except SmtpError:
            raise SmtpSyntaxError("Invalid domain name", 501, "5.5.4") from None

    async def smtp_RSET(self, arg: bytes) -> Step:
        self._reset()
        return Step(reply(250, "2.0.0", "OK"))

    async def smtp_NOOP(self, arg: bytes) -> Step:
        return Step(reply(250, "2.0.0", "OK"))

    async def smtp_QUIT(self, arg: bytes) -> Step:
        self._reset()
        return Step(reply(221, "2.0.0", f"{self.host} closing connection"), "close")

    async def smtp_VRFY(self, arg: bytes) -> Step:
        # RFC 5321 §3.5.3: 252 when we will not verify (no address harvesting).
        return Step(reply(252, "2.5.2", "Cannot VRFY user, but will accept message and attempt delivery"))

    async def smtp_HELP(self, arg: bytes) -> Step:
        return Step(reply(214, "2.0.0", "See RFC 5321; commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT"))

    async def smtp_STARTTLS(self, arg: bytes) -> Step:
        # RFC 3207 §4
        if arg:
            raise SmtpSyntaxError("Syntax: STARTTLS", 501, "5.5.4")
        if not self.starttls_available or self.info.tls:
            raise SmtpError("STARTTLS not available", 502, "5.5.1") if not self.starttls_available else \
                SmtpError("TLS already active", 503, "5.5.1")
        return Step(reply(220, "2.0.0", "Ready to start TLS"), "starttls")

    def tls_started(self, tls: dict[str, str]) -> None:
        """RFC 3207 §4.2: after the handshake forget everything learned before it."""
        self._reset()
        self.state = State.GREETED
        self.info.helo, self.info.esmtp, self.info.tls = "", False, tls
        self.info.account = None

    # -- AUTH (RFC 4954) -----------------------------------------------------------

    def _mechanisms(self) -> list[str]:
        if self.sasl is None or not self.submission or self.info.account is not None:
            return []
        tls = bool(self.info.tls)
        if not tls and not self.plaintext_auth_ok:
            return []  # RFC 4954 §4 / issue: no AUTH over plain text
        return list(self.sasl.mechanisms(tls=tls, client_ip=self.info.peer_ip))

    async def smtp_AUTH(self, arg: bytes) -> Step:
        if self.info.account is not None:
            raise SmtpError("Already authenticated", 503, "5.5.1")
        mechs = self._mechanisms()
        if not mechs:
            if self.sasl is not None and self.submission and not self.info.tls:
                raise SmtpError("Must issue a STARTTLS command first", 530, "5.7.0")
            raise SmtpError("AUTH not available", 502, "5.5.1")
        parts = arg.split(b" ")
        mech = parts[0].decode("ascii", "replace").upper()
        if len(parts) > 2 or not mech:
            raise SmtpSyntaxError("Syntax: AUTH mechanism [initial-response]", 501, "5.5.4")
        if mech not in mechs:
            raise SmtpError("Unrecognized authentication type", 504, "5.5.4")
        assert self.sasl is not None
        initial: bytes | None = None
        if len(parts) == 2:
            initial = b"" if parts[1] == b"=" else self._b64(parts[1])
        self._auth_mech = mech
        if mech == "LOGIN":
            # LOGIN (draft-murchison-sasl-login) is not in every SASL library: drive it as PLAIN.
            self._login_user = initial
            if initial is None:
                return self._challenge(b"Username:", login=True)
            return self._challenge(b"Password:", login=True)
        self._auth = self.sasl.sasl(mech, protocol="smtp", client_ip=self.info.peer_ip,
                                    tls=bool(self.info.tls))
        return await self._auth_step(initial)

    def _challenge(self, data: bytes, login: bool = False) -> Step:
        return Step(reply(334, None, base64.b64encode(data).decode("ascii")), "auth")

    @staticmethod
    def _b64(data: bytes) -> bytes:
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise SmtpSyntaxError("Invalid base64 data", 501, "5.5.2") from None

    async def auth_response(self, line: bytes) -> Step:
        """A client line during AUTH (the connection loop reads it after a 334)."""
        data = line.rstrip(b"\r\n").strip()
        if data == b"*":  # RFC 4954 §4: client cancels
            if self._auth is not None:
                self._auth.abort()
            self._auth = None
            self._auth_final = None
            self._login_user = None
            raise SmtpError("Authentication cancelled", 501, "5.7.0")
        if self._auth_final is not None:
            result, self._auth_final = self._auth_final, None
            if data not in (b"", b"="):
                raise SmtpError("Authentication exchange failed", 535, "5.7.8")
            return self._authenticated(result)
        decoded = self._b64(data) if data != b"=" else b""
        if self._auth_mech == "LOGIN" and self._auth is None:
            if self._login_user is None:
                self._login_user = decoded
                return self._challenge(b"Password:", login=True)
            assert self.sasl is not None
            self._auth = self.sasl.sasl("PLAIN", protocol="smtp", client_ip=self.info.peer_ip,
                                        tls=bool(self.info.tls))
            user, self._login_user = self._login_user, None
            return await self._auth_step(b"\0" + user + b"\0" + decoded)
        return await self._auth_step(decoded)

    async def _auth_step(self, data: bytes | None) -> Step:
        assert self._auth is not None
        result: Any = await self._auth.step(data)
        if getattr(result, "account", None) is not None and getattr(result, "data", None):
            # RFC 4954 §4: server-final data (SCRAM) goes out as a last 334; the empty
            # client response that follows completes the exchange with 235
            self._auth_final = result
            self._auth = None
            return self._challenge(result.data)
        if getattr(result, "account", None) is not None:
            self._auth = None
            return self._authenticated(result)
        if hasattr(result, "reason"):
            self._auth = None
            raise SmtpError("Authentication credentials invalid", 535, "5.7.8")
        return self._challenge(getattr(result, "data", b"") or b"")

    def _authenticated(self, result: Any) -> Step:
        self.info.account = result.account
        log.bind(user=getattr(result.account, "address", str(result.account)))
        if self.policy is not None:
            self.policy.authenticated(getattr(result.account, "address", str(result.account)))
        return Step(reply(235, "2.7.0", "Authentication successful"))

    # -- transaction ----------------------------------------------------------------

    async def smtp_MAIL(self, arg: bytes) -> Step:
        if self.submission and self.info.account is None and not self.info.trusted:
            # RFC 4954 §6
            raise SmtpError("Authentication required", 530, "5.7.0")
        self._bdat_failed = None
        sender, params = parse_mail(arg, utf8_allowed=True)
        tx = Transaction(sender=sender)
        for key, value in params.items():
            if key == "SIZE":
                # RFC 1870 §6
                # isascii: with SMTPUTF8 the value may hold "²", a digit to isdigit() and not to int()
                if value is None or not value.isascii() or not value.isdigit() or len(value) > 20:
                    raise SmtpSyntaxError("Invalid SIZE value", 501, "5.5.4")
                tx.size_hint = int(value)
                if tx.size_hint > self.cfg.max_message_size:
                    raise SmtpError("Message size exceeds fixed maximum message size", 552, "5.3.4")
            elif key == "BODY":
                # RFC 6152; BINARYMIME is not offered
                if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                    raise SmtpError("Unsupported BODY value", 555, "5.5.4")
                tx.body = value.upper()
            elif key == "SMTPUTF8":
                # RFC 6531 §3.4
                if value is not None:
                    raise SmtpSyntaxError("SMTPUTF8 takes no value", 501, "5.5.4")
                tx.smtputf8 = True
            elif key == "RET":
                # RFC 3461 §4.3
                if value is None or value.upper() not in ("FULL", "HDRS"):
                    raise SmtpSyntaxError("Invalid RET value", 501, "5.5.4")
                tx.ret = value.upper()
            elif key == "ENVID":
                # RFC 3461 §4.4: at most 100 characters of xtext
                if value is None or len(value) > 100:
                    raise SmtpSyntaxError("Invalid ENVID value", 501, "5.5.4")
                tx.envid = xtext_decode(value)
            elif key == "AUTH":
                pass  # RFC 4954 §5: accepted and not propagated (we are not a trusting relay)
            else:
                raise SmtpError(f"Unsupported parameter {key}", 555, "5.5.4")
        verdict = await self.backend.check_sender(self.info, sender)
        if not verdict.ok:
            raise SmtpError(verdict.text, verdict.code, verdict.enh)
        if self.policy is not None and self.policy.envelope_checked:
            self._enforce(await self.policy.mail(sender))
        self.tx = tx
        self.state = State.MAIL
        return _SENDER_OK

    async def smtp_RCPT(self, arg: bytes) -> Step:
        tx = self.tx
        assert tx is not None
        address, params = parse_rcpt(arg, utf8=tx.smtputf8)
        if len(tx.rcpts) >= self.cfg.max_recipients:
            # RFC 5321 §4.5.3.1.10: 452 for too many recipients
            raise SmtpError("Too many recipients", 452, "4.5.3")
        rcpt = Recipient(address)
        for key, value in params.items():
            if key == "NOTIFY":
                # RFC 3461 §4.1
                items = frozenset((value or "").upper().split(","))
                if not (items == {"NEVER"} or (items and items <= NOTIFY_VALUES)):
                    raise SmtpSyntaxError("Invalid NOTIFY value", 501, "5.5.4")
                rcpt.notify = items
            elif key == "ORCPT":
                # RFC 3461 §4.2: addr-type ";" xtext
                atype, semi, raw = (value or "").partition(";")
                if not semi or not atype or not raw:
                    raise SmtpSyntaxError("Invalid ORCPT value", 501, "5.5.4")
                rcpt.orcpt = f"{atype.lower()};{xtext_decode(raw)}"
            else:
                raise SmtpError(f"Unsupported parameter {key}", 555, "5.5.4")
        tx.checking = rcpt
        verdict = await self.backend.check_recipient(self.info, tx, address)
        self.state = State.RCPT
        if not verdict.ok:
            raise SmtpError(verdict.text, verdict.code, verdict.enh)
        if self.policy is not None and self.policy.envelope_checked:
            self._enforce(await self.policy.rcpt(address))
        rcpt.route = verdict.route
        tx.rcpts.append(rcpt)
        return _step(verdict.code, verdict.enh, verdict.text)

    def _require_rcpts(self) -> None:
        if self.tx is None or not self.tx.rcpts:
            # RFC 5321 §3.3: no valid recipients
            raise SmtpError("No valid recipients", 554, "5.5.1")

    async def smtp_DATA(self, arg: bytes) -> Step:
        if arg:
            raise SmtpSyntaxError("Syntax: DATA", 501, "5.5.4")
        self._require_rcpts()
        spool, unwritten = self._open_spool()
        if unwritten:
            await spool.write(unwritten)
        self.spool = spool
        return _GO_AHEAD

    async def smtp_BDAT(self, arg: bytes) -> Step:
        size, last = parse_bdat(arg)  # a bad BDAT line cannot be skipped: the loop closes
        if self._bdat_failed is not None:
            pass  # keep failing until LAST (RFC 3030 §2)
        elif self.state not in LEGAL["BDAT"]:
            self._bdat_failed = SmtpError(self._sequence_hint("BDAT"), 503, "5.5.1")
        elif self.tx is None or not self.tx.rcpts:
            self._bdat_failed = SmtpError("No valid recipients", 554, "5.5.1")
        else:
            if self.spool is None:
                spool, unwritten = self._open_spool()
                if unwritten:
                    await spool.write(unwritten)
                self.spool = spool
            self.state = State.BDAT
        return Step(b"", "bdat", size=size, last=last)

    def _open_spool(self) -> tuple[Spool, bytes]:
        """A new spool holding the trace fields in memory (no coroutine, no pool job); or with the
        bytes the caller must still ``await spool.write`` (a spool that keeps nothing in memory)."""
        spool = self.backend.open_spool()
        trace = self._trace_headers()
        return spool, b"" if spool.buffer(trace) else trace

    def _trace_headers(self) -> bytes:
        """Return-Path and Received (RFC 5321 §4.4); the queue strips Return-Path when relaying."""
        tx = self.tx
        assert tx is not None
        info = self.info
        key = (info.helo, info.esmtp, tx.smtputf8, info.tls.get("tls"), info.tls.get("cipher"), info.account is None)
        cached = self._received
        if cached is None or cached[0] != key:
            # RFC 3848 / RFC 6531 §3.7.4 "with" protocol types
            proto = ("UTF8SMTP" if tx.smtputf8 else "ESMTP") if info.esmtp else "SMTP"
            if info.tls:
                proto += "S"
            if info.account is not None:
                proto += "A"
            tls = f"\r\n\t(using {info.tls.get('tls', '?')} with cipher {info.tls.get('cipher', '?')})" \
                if info.tls else ""
            cached = self._received = (key, f"Received: from {info.helo or 'unknown'} ([{info.peer_ip}])\r\n"
                                            f"\tby {self.host} (mailsrv) with {proto} id {info.sid}{tls}")
        rcpt = f"\r\n\tfor <{tx.rcpts[0].address}>" if len(tx.rcpts) == 1 else ""
        date = _received_date(time.time())
        return f"Return-Path: <{tx.sender}>\r\n{cached[1]}{rcpt};\r\n\t{date}\r\n".encode()

    def bdat_chunk_ok(self, nbytes: int) -> bool:
        """Account for a BDAT chunk; False means: read and discard it (size exceeded or failed)."""
        if self._bdat_failed is not None or self.spool is None:
            return False
        self._bdat_size += nbytes
        if self._bdat_size > self.cfg.max_message_size:
            self._bdat_failed = SmtpError("Message size exceeds fixed maximum message size", 552, "5.3.4")
            return False
        return True

    def spool_write_failed(self, exc: OSError) -> None:
        """A spool write failed while DATA or BDAT streamed (ENOSPC, EIO): the caller reads the rest of
        the message without keeping it, and its end (each BDAT chunk up to LAST) is answered 451 4.3.0;
        nothing was acknowledged (RFC 5321 §4.2.5, RFC 3030 §2), and the session goes on."""
        logger.exception("spool.failed", exc)
        self._write_failed = SmtpError("Local error in processing", 451, "4.3.0")
        if self.state is State.BDAT and self._bdat_failed is None:
            self._bdat_failed = self._write_failed  # the following chunks are read and dropped

    async def bdat_end(self, last: bool, early: EarlyReply | None = None) -> Step:
        """After a BDAT chunk was read into the spool (RFC 3030 §2); ``early``: as :meth:`data_end`'s."""
        if self._bdat_failed is not None:
            err = self._bdat_failed
            if last:
                self._reset()
            raise err
        if not last:
            return Step(reply(250, "2.0.0", f"{self._bdat_size} octets received"))
        return await self.data_end(bare_newline=False, too_big=False, early=early)

    async def data_end(self, *, bare_newline: bool, too_big: bool, early: EarlyReply | None = None) -> Step:
        """End of DATA (or BDAT LAST): deliver, then ``250`` only once durable.

        ``early``: the connection's channel for a 250 written from the delivery round's thread (the
        backend arms it when the message's reply cannot differ from "250 iff every copy is durable");
        the caller then writes only what :meth:`EarlyReply.take` leaves of the returned reply."""
        tx, spool = self.tx, self.spool
        assert tx is not None and spool is not None
        self.spool = None
        started = time.monotonic()
        if timeline.on:
            timeline.begin()
        try:
            if too_big:
                raise SmtpError("Message size exceeds fixed maximum message size", 552, "5.3.4")
            if bare_newline:
                # RFC 5321 §2.3.8; SMTP smuggling defence
                raise SmtpError("Message contains bare CR or LF", 550, "5.6.0")
            if self._write_failed is not None:  # logged where it happened
                raise self._write_failed
            # RFC 5321 §6.3: a mail loop ([smtp] max_hops; our Received, first in the spool, counts)
            head: bytes | None = spool.held() if hasattr(spool, "held") else None
            if head is None:  # a part was written out: the head is in the file
                head = await fsio.running_loop().run_in_executor(None, read_head, spool.path)
            if too_many_hops(head, self.cfg.max_hops):
                raise SmtpError(TOO_MANY_HOPS, 554, "5.4.6")
            # issue 12: every check finishes before the reply; the policy may add headers to the spool
            held = self._held(spool)
            if held is not None:
                # the whole message is still in memory: judged first, then written once as it will stay
                assert self.policy is not None
                decision, message = await self.policy.data_held(held)
                self._enforce(decision)
                spool.replace(message)  # type: ignore[attr-defined]  # a spool with held() has replace()
                seal = getattr(spool, "seal", None)  # a sealed spool is written by the delivery's own job
                if seal is None or not seal():
                    await spool.commit()
                tx.junk = decision.action == "junk"
            elif self.policy is None and getattr(spool, "seal", lambda: False)():
                pass  # nothing judges it: sealed in memory as above, the delivery's job writes it
            else:
                await spool.commit()
                if self.policy is not None:
                    decision = await self.policy.data(spool.path, getattr(spool, "content", None))
                    if getattr(spool, "content", None) is not None:
                        # the policy may have rewritten the file (its fields, a stripped virus): the copy
                        # in memory is stale then, even when its length is the file's
                        spool.content = None  # type: ignore[attr-defined]
                    self._enforce(decision)
                    tx.junk = decision.action == "junk"
            if timeline.on:
                timeline.mark("spool")
            tx.early = early
            verdict = await self.backend.deliver(self.info, tx, spool)
            if timeline.on:
                timeline.mark("verdict")
        except OSError as exc:
            logger.exception("spool.failed", exc)
            raise SmtpError("Local error in processing", 451, "4.3.0") from None
        finally:
            spool.discard()
            self._reset()
        if not verdict.ok:
            raise SmtpError(verdict.text, verdict.code, verdict.enh)
        # the one info line per message (the sid, in every line, is the id in the 250 text): what an
        # operator needs, as Postfix's from/to/size/delay/status lines (not formatted when not printed);
        # written by log_accepted, after the reply
        if log.enabled("info"):
            self.log_accepted()  # a former message's line not written yet (a caller without a loop)
            self.accepted = {"sender": tx.sender, "to": _recipients(tx), "rcpts": len(tx.rcpts),
                             "size": getattr(spool, "size", None),
                             "ms": f"{(time.monotonic() - started) * 1000:.1f}", **verdict.log}
        return Step(reply(verdict.code, verdict.enh, verdict.text))

    def log_accepted(self) -> None:
        """Write the ``message.accepted`` line of the message :meth:`data_end` accepted last, if not yet
        written. The connection loop calls it once the ``250`` is written (or held behind pipelined
        commands), before the next command; :meth:`abort` too."""
        fields = self.accepted
        if fields is not None:
            self.accepted = None
            logger.info_fields("message.accepted", fields)

    def _held(self, spool: Spool) -> bytes | None:
        """The message when the policy can judge it before the spool file is written, else None."""
        held = getattr(spool, "held", None)
        if self.policy is None or held is None:
            return None
        message: bytes | None = held()
        if message is None or not self.policy.judges_in_memory(len(message)):
            return None
        return message

    def abort(self) -> None:
        """The connection ended: drop the transaction and its spool file (an accepted message's line is
        written)."""
        self.log_accepted()
        if self._auth is not None:
            self._auth.abort()
            self._auth = None
        self._reset()
