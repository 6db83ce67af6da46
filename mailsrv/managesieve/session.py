"""The ManageSieve session state machine (RFC 5804); owns no socket.

The session talks to the client through a :class:`Channel` (write, drain, read the
client's next SASL string, start TLS) and to the scripts through
:class:`~mailsrv.managesieve.storage.Scripts`. Handlers raise
:class:`~mailsrv.managesieve.grammar.SieveProtocolError`; the connection loop
(:mod:`mailsrv.managesieve.server`) turns it into ``NO``/``BYE`` and keeps the
error budget.

Invariants:
- Scripts are reached only after a successful AUTHENTICATE, and only the
  logged-in account's (the storage is opened for that account alone).
- ``OK`` after PUTSCRIPT, SETACTIVE, DELETESCRIPT and RENAMESCRIPT only once
  the change is durable (mailsrv.sieve.scripts fsyncs before returning).
- Password mechanisms are offered only where every protocol offers them
  (``Authenticator.plaintext_allowed``: TLS, or loopback when configured).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
from typing import Any, Protocol

from mailsrv import log
from mailsrv.auth import Success
from mailsrv.managesieve.grammar import (
    ENCRYPT_NEEDED,
    Atom,
    Command,
    SieveProtocolError,
    SieveSyntaxError,
    number_arg,
    response,
    string,
    string_arg,
    text_arg,
)
from mailsrv.managesieve.storage import Scripts, ScriptsUnavailable
from mailsrv.net.channel import SessionChannel
from mailsrv.sieve import scripts as S

logger = log.get("managesieve")

IMPLEMENTATION = "mailsrv"
#: DESIGN.md "what bad input gets": commands before AUTHENTICATE (a client needs CAPABILITY,
#: STARTTLS, AUTHENTICATE and a few retries)
MAX_COMMANDS_BEFORE_AUTH = 30
#: failed AUTHENTICATE attempts in one session before BYE (as IMAP's and POP3's default)
MAX_AUTH_FAILURES = 3


class State(enum.Enum):
    NONAUTH = "non-authenticated"  # RFC 5804 §1.4
    AUTH = "authenticated"


_N = frozenset({State.NONAUTH})
_A = frozenset({State.AUTH})
_BOTH = _N | _A
#: verb -> (states in which it is legal, argument count range); checked in :meth:`Session.handle`
COMMANDS: dict[str, tuple[frozenset[State], int, int]] = {
    "AUTHENTICATE": (_N, 1, 2),  # RFC 5804 §2.1
    "STARTTLS": (_N, 0, 0),  # §2.2
    "LOGOUT": (_BOTH, 0, 0),  # §2.3
    "CAPABILITY": (_BOTH, 0, 0),  # §2.4
    "HAVESPACE": (_A, 2, 2),  # §2.5
    "PUTSCRIPT": (_A, 2, 2),  # §2.6
    "LISTSCRIPTS": (_A, 0, 0),  # §2.7
    "SETACTIVE": (_A, 1, 1),  # §2.8
    "GETSCRIPT": (_A, 1, 1),  # §2.9
    "DELETESCRIPT": (_A, 1, 1),  # §2.10
    "RENAMESCRIPT": (_A, 2, 2),  # §2.11.1
    "CHECKSCRIPT": (_A, 1, 1),  # §2.12
    "NOOP": (_BOTH, 0, 1),  # §2.13
    "UNAUTHENTICATE": (_A, 0, 0),  # §2.14
}


class Channel(SessionChannel, Protocol):
    """The connection as the session needs it (the server adapts a :class:`~mailsrv.net.connection.Connection`)."""

    async def read_response(self) -> Command:
        """The client's next SASL response (a whole line with its literals), as a command's tokens."""


class Authenticator(Protocol):
    """The part of ``mailsrv.auth.Authenticator`` that ManageSieve uses."""

    def plaintext_allowed(self, *, tls: bool, client_ip: str) -> bool: ...

    def mechanisms(self, *, tls: bool, client_ip: str, channel_binding: bool) -> list[str]: ...

    def sasl(self, mechanism: str, *, protocol: str, client_ip: str, tls: bool,
             channel_binding: Any) -> Any: ...


class Opener(Protocol):
    async def __call__(self, account: Any) -> Scripts:
        """The logged-in ``account``'s scripts; raises :class:`ScriptsUnavailable`."""


class Session:
    """One ManageSieve conversation: :meth:`greeting`, then :meth:`handle` per command."""

    def __init__(self, channel: Channel, *, auth: Authenticator, open_scripts: Opener,
                 extensions: tuple[str, ...], max_redirects: int, max_script_size: int) -> None:
        self.channel = channel
        self.auth = auth
        self.open_scripts = open_scripts
        self.extensions = extensions
        self.max_redirects = max_redirects
        self.max_script_size = max_script_size
        self.state = State.NONAUTH
        self.account: Any = None
        self.scripts: Scripts | None = None
        self.auth_failures = 0
        self.commands_before_auth = 0
        self.closing = False  # set by LOGOUT: the loop closes after the reply

    # -- capabilities (RFC 5804 §1.7) ------------------------------------------------------

    def _mechanisms(self) -> list[str]:
        return list(self.auth.mechanisms(tls=self.channel.tls_active, client_ip=self.channel.peer_host,
                                         channel_binding=self.channel.channel_binding() is not None))

    def capabilities(self) -> bytes:
        """The capability lines and the closing ``OK`` (greeting, CAPABILITY, after STARTTLS)."""
        lines: list[tuple[bytes, str | None]] = [(b"IMPLEMENTATION", IMPLEMENTATION)]
        # RFC 5804 §1.7: SASL is sent even when empty; after login it is not required, we keep it.
        lines.append((b"SASL", " ".join(self._mechanisms()) if self.state is State.NONAUTH else ""))
        lines.append((b"SIEVE", " ".join(self.extensions)))
        if "enotify" in self.extensions:  # RFC 5804 §1.7: the notification methods (RFC 5435)
            lines.append((b"NOTIFY", "mailto"))
        if self.channel.starttls_available and not self.channel.tls_active and self.state is State.NONAUTH:
            lines.append((b"STARTTLS", None))
        lines.append((b"MAXREDIRECTS", str(self.max_redirects)))
        if self.account is not None:
            lines.append((b"OWNER", str(getattr(self.account, "address", self.account.id))))
        lines.append((b"VERSION", "1.0"))
        out = b"".join(b'"' + k + b'"' + (b" " + string(v) if v is not None else b"") + b"\r\n" for k, v in lines)
        return out + response("OK", text="ManageSieve ready" if self.state is State.NONAUTH else "Capability completed")

    def greeting(self) -> bytes:
        return self.capabilities()

    # -- dispatch ----------------------------------------------------------------------------

    async def handle(self, cmd: Command) -> None:
        """Run one parsed command. Raises :class:`SieveProtocolError`; sets :attr:`closing` after LOGOUT."""
        if self.state is State.NONAUTH:
            self.commands_before_auth += 1
            if self.commands_before_auth > MAX_COMMANDS_BEFORE_AUTH:
                raise SieveProtocolError("Too many commands before login", bye=True)
        verb = cmd.verb
        spec = COMMANDS.get(verb)
        if spec is None:
            raise SieveSyntaxError("Unknown command")
        states, least, most = spec
        if self.state not in states:
            raise SieveProtocolError("Authenticate first" if self.state is State.NONAUTH else
                                     "Command not valid after authentication")
        if not least <= len(cmd.args) <= most:
            raise SieveSyntaxError(f"Wrong number of arguments to {verb}")
        await getattr(self, "cmd_" + verb.lower())(cmd.args)

    def _send(self, data: bytes) -> None:
        self.channel.write(data)

    def _ok(self, text: str = "", code: str = "") -> None:
        self._send(response("OK", code, text))

    # -- non-authenticated -------------------------------------------------------------------

    async def cmd_capability(self, args: list[Atom | bytes]) -> None:
        self._send(self.capabilities())

    async def cmd_noop(self, args: list[Atom | bytes]) -> None:
        # RFC 5804 §2.13: a tag string is echoed in a TAG response code
        if args:
            self._send(response("OK", "TAG", "Done", code_arg=string_arg(args[0], "NOOP tag")))
        else:
            self._ok("Done")

    async def cmd_logout(self, args: list[Atom | bytes]) -> None:
        # RFC 5804 §2.3: OK, then the server closes the connection
        self.closing = True
        self._ok("Logout completed")

    async def cmd_starttls(self, args: list[Atom | bytes]) -> None:
        if self.channel.tls_active or not self.channel.starttls_available:
            raise SieveProtocolError("STARTTLS not available")
        self._ok("Begin TLS negotiation now")
        await self.channel.drain()
        await self.channel.starttls()
        # RFC 5804 §2.2: after the handshake the server re-issues its capabilities and OK.
        self._send(self.capabilities())

    async def cmd_authenticate(self, args: list[Atom | bytes]) -> None:
        mech = text_arg(args[0], "Mechanism").upper()
        mechs = self._mechanisms()
        if mech not in mechs:
            if mech in ("PLAIN", "LOGIN") and not self.channel.tls_active:
                raise SieveProtocolError("Use STARTTLS first", ENCRYPT_NEEDED)
            raise SieveProtocolError("Unsupported authentication mechanism")
        initial = self._b64(string_arg(args[1], "Initial response")) if len(args) == 2 else None
        exchange = self.auth.sasl(mech, protocol="managesieve", client_ip=self.channel.peer_host,
                                  tls=self.channel.tls_active, channel_binding=self.channel.channel_binding())
        step = await exchange.step(initial)
        while type(step).__name__ == "Challenge":
            # RFC 5804 §2.1: the challenge is a string; the client answers with a string, "*" cancels.
            self._send(string(base64.b64encode(step.data)) + b"\r\n")
            await self.channel.drain()
            try:
                answer = await self.channel.read_response()
                if len(answer.tokens) != 1:
                    raise SieveSyntaxError("Expected one string as the SASL response")
                data = string_arg(answer.tokens[0], "SASL response")
            except SieveProtocolError:
                exchange.abort()
                raise
            if data == b"*":
                exchange.abort()
                raise SieveProtocolError("Authentication cancelled")
            try:
                decoded = self._b64(data)
            except SieveProtocolError:
                exchange.abort()
                raise
            step = await exchange.step(decoded)
        if not isinstance(step, Success):
            await self._auth_failed(getattr(step, "delay", 0.0))
            return
        try:
            scripts = await self.open_scripts(step.account)
        except ScriptsUnavailable as exc:
            logger.warning("login.unavailable", user=step.account.address, error=str(exc))
            raise SieveProtocolError("Scripts not available, try again later", "TRYLATER") from None
        self.account, self.scripts, self.state = step.account, scripts, State.AUTH
        log.bind(user=step.account.address)
        logger.info("login", mechanism=mech)
        if step.data:
            # RFC 5804 §2.1: additional data with success goes in a SASL response code
            self._send(response("OK", "SASL", "Authentication successful",
                                code_arg=base64.b64encode(step.data)))
        else:
            self._ok("Authentication successful")

    @staticmethod
    def _b64(data: bytes) -> bytes:
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise SieveSyntaxError("Invalid base64 data") from None

    async def _auth_failed(self, delay: float) -> None:
        """Raise the neutral failure reply (after the authenticator's tarpit delay)."""
        self.auth_failures += 1
        if delay:
            await asyncio.sleep(delay)
        if self.auth_failures >= MAX_AUTH_FAILURES:
            raise SieveProtocolError("Too many authentication failures", bye=True)
        raise SieveProtocolError("Authentication failed")

    async def cmd_unauthenticate(self, args: list[Atom | bytes]) -> None:
        # RFC 5804 §2.14
        logger.info("logout", reason="unauthenticate")
        self.account, self.scripts, self.state = None, None, State.NONAUTH
        self.commands_before_auth = 0
        log.bind(user="")
        self._ok("Unauthenticate completed")

    # -- authenticated ------------------------------------------------------------------------

    def _store(self) -> Scripts:
        assert self.scripts is not None  # the state table admits these commands only after login
        return self.scripts

    def _script_text(self, token: Atom | bytes) -> str:
        data = string_arg(token, "Script")
        if len(data) > self.max_script_size:
            raise SieveProtocolError(f"Script larger than {self.max_script_size} bytes", "QUOTA/MAXSIZE")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise SieveProtocolError("Script is not UTF-8") from None

    async def _run(self, call: Any) -> Any:
        """Await a storage call, turning its refusals into NO with the RFC 5804 code."""
        try:
            return await call
        except S.InvalidScript as exc:
            # RFC 5804 §2.6: a script that does not compile is refused with a human-readable reason
            raise SieveProtocolError(str(exc)) from None
        except S.ScriptError as exc:
            raise SieveProtocolError(exc.message[:1].upper() + exc.message[1:], exc.code) from None
        except ScriptsUnavailable as exc:
            logger.warning("scripts.unavailable", error=str(exc))
            raise SieveProtocolError("Try again later", "TRYLATER") from None

    async def cmd_havespace(self, args: list[Atom | bytes]) -> None:
        name = text_arg(args[0], "Script name")
        size = number_arg(args[1], "Size")
        await self._run(self._store().check_space(name, size))
        self._ok("Putscript would succeed")

    async def cmd_putscript(self, args: list[Atom | bytes]) -> None:
        name = text_arg(args[0], "Script name")
        text = self._script_text(args[1])
        await self._run(self._store().put(name, text))
        logger.info("script.put", name=name, size=len(text.encode()))
        self._ok("Script stored")

    async def cmd_checkscript(self, args: list[Atom | bytes]) -> None:
        await self._run(self._store().check(self._script_text(args[0])))
        self._ok("Script is valid")

    async def cmd_listscripts(self, args: list[Atom | bytes]) -> None:
        listing = await self._run(self._store().list())
        self._send(b"".join(string(name) + (b" ACTIVE" if active else b"") + b"\r\n" for name, active in listing))
        self._ok("Listscripts completed")

    async def cmd_setactive(self, args: list[Atom | bytes]) -> None:
        # RFC 5804 §2.8: the empty name deactivates
        name = text_arg(args[0], "Script name")
        await self._run(self._store().set_active(name or None))
        logger.info("script.active", name=name)
        self._ok("Active script set" if name else "No script active")

    async def cmd_getscript(self, args: list[Atom | bytes]) -> None:
        text = await self._run(self._store().get(text_arg(args[0], "Script name")))
        data = text.encode("utf-8")
        # RFC 5804 §2.9: the script is a string (we always send a literal), then CRLF and OK
        self._send(b"{%d}\r\n" % len(data) + data + b"\r\n")
        self._ok("Getscript completed")

    async def cmd_deletescript(self, args: list[Atom | bytes]) -> None:
        name = text_arg(args[0], "Script name")
        await self._run(self._store().delete(name))
        logger.info("script.delete", name=name)
        self._ok("Script deleted")

    async def cmd_renamescript(self, args: list[Atom | bytes]) -> None:
        old, new = text_arg(args[0], "Old name"), text_arg(args[1], "New name")
        await self._run(self._store().rename(old, new))
        logger.info("script.rename", name=old, to=new)
        self._ok("Script renamed")



