"""The IMAP session: a state machine over parsed commands (RFC 9051, RFC 3501 and extensions).

Invariants:
- A session owns no socket: it writes through a :class:`Channel` and reads
  continuation lines (AUTHENTICATE, IDLE's DONE) from it.
- Sequence numbers: the client's view is ``self.view.messages`` (index + 1). It
  changes only in :meth:`Session._send_updates`, which reports every change it
  applies (EXPUNGE / VANISHED, EXISTS, FETCH FLAGS), so numbers never go out
  of step with what the client was told.
- RFC 9051 §7.5.1 / §5.5: no EXPUNGE is sent after FETCH, STORE or SEARCH
  (they use sequence numbers); those commands do not refresh the view.
- Errors are raised as :class:`ImapError` and answered in one place
  (:meth:`Session.execute`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from mailsrv import log
from mailsrv.imap import acl, mutf7, shared
from mailsrv.imap import fetch as fetchmod
from mailsrv.imap import response as resp
from mailsrv.imap.errors import SYSTEM_FLAGS, Bye, ImapError, norm_flag, store_error_name
from mailsrv.imap.grammar import Command
from mailsrv.imap.messages import MessageCommands
from mailsrv.imap.metadata import MAX_VALUE as METADATA_MAX_VALUE
from mailsrv.imap.metadata import MetadataCommands
from mailsrv.imap.replace import ReplaceCommands
from mailsrv.imap.seqset import format_uids
from mailsrv.imap.sharing import Place, Shares, SharingCommands
from mailsrv.imap.spool import LiteralSpool
from mailsrv.net.connection import ConnectionClosed, IdleTimeout, LineTooLong, ServerShutdown
from mailsrv.store.metadata import MAX_ENTRIES as METADATA_MAX_ENTRIES

logger = log.get("imap")

try:  # the real store, when it has landed
    from mailsrv.store import QuotaLimits  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - until then, the in-memory store's twin
    from mailsrv.imap.memory import QuotaLimits  # type: ignore[assignment,unused-ignore]


#: Exceptions that end or interrupt the connection: never turned into a NO.
_PASS_THROUGH = (Bye, ConnectionClosed, IdleTimeout, LineTooLong, ServerShutdown, asyncio.CancelledError)


class State(enum.Enum):
    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


_ANY = frozenset({State.NOT_AUTHENTICATED, State.AUTHENTICATED, State.SELECTED})
_NOAUTH = frozenset({State.NOT_AUTHENTICATED})
_AUTH = frozenset({State.AUTHENTICATED, State.SELECTED})
_SEL = frozenset({State.SELECTED})

#: RFC 9051 §6: which verbs are legal in which state. UID verbs are "UID FETCH" etc.
VERBS: dict[str, frozenset[State]] = {
    "CAPABILITY": _ANY, "NOOP": _ANY, "LOGOUT": _ANY, "ID": _ANY,
    "STARTTLS": _NOAUTH, "AUTHENTICATE": _NOAUTH, "LOGIN": _NOAUTH,
    "ENABLE": _AUTH, "SELECT": _AUTH, "EXAMINE": _AUTH, "CREATE": _AUTH, "DELETE": _AUTH,
    "RENAME": _AUTH, "SUBSCRIBE": _AUTH, "UNSUBSCRIBE": _AUTH, "LIST": _AUTH, "LSUB": _AUTH,
    "NAMESPACE": _AUTH, "STATUS": _AUTH, "APPEND": _AUTH, "IDLE": _AUTH,
    "GETQUOTA": _AUTH, "GETQUOTAROOT": _AUTH, "SETQUOTA": _AUTH, "COMPRESS": _AUTH,
    "MYRIGHTS": _AUTH, "GETACL": _AUTH, "LISTRIGHTS": _AUTH, "SETACL": _AUTH, "DELETEACL": _AUTH,
    "UNAUTHENTICATE": _AUTH, "REPLACE": _SEL, "UID REPLACE": _SEL, "GETMETADATA": _AUTH, "SETMETADATA": _AUTH,
    "CHECK": _SEL, "CLOSE": _SEL, "UNSELECT": _SEL, "EXPUNGE": _SEL, "SEARCH": _SEL,
    "FETCH": _SEL, "STORE": _SEL, "COPY": _SEL, "MOVE": _SEL,
    "UID FETCH": _SEL, "UID STORE": _SEL, "UID COPY": _SEL, "UID MOVE": _SEL,
    "UID SEARCH": _SEL, "UID EXPUNGE": _SEL,
    "SORT": _SEL, "UID SORT": _SEL, "THREAD": _SEL, "UID THREAD": _SEL,
}

#: Commands after which pending mailbox changes may be reported, EXPUNGE included.
#: RFC 9051 §7.5.1: not after FETCH, STORE, SEARCH (non-UID) nor while they run.
_NO_EXPUNGE_AFTER = {"FETCH", "STORE", "SEARCH", "SORT", "THREAD"}

#: RFC 9051 §6.3.12 / RFC 7889: messages larger than this are refused with [TOOBIG].
DEFAULT_APPEND_LIMIT = 64 * 1024 * 1024
#: RFC 2177 §3: clients re-issue IDLE at least every 29 minutes; we end an IDLE after 30.
IDLE_LIMIT = 30 * 60.0
#: Failed LOGIN/AUTHENTICATE attempts before the connection is closed.
MAX_AUTH_FAILURES = 3
#: Flush the output buffer when it grows past this (FETCH 1:* of a big mailbox).
FLUSH_AT = 64 * 1024


class Channel(Protocol):
    """What the session needs from the connection."""

    peer_host: str

    @property
    def tls_active(self) -> bool: ...

    @property
    def channel_binding(self) -> Any:
        """``mailsrv.auth.ChannelBinding`` of this TLS connection (SCRAM -PLUS), or None."""
        ...

    def write(self, data: bytes) -> None: ...

    async def flush(self) -> None: ...

    async def read_continuation(self) -> bytes: ...

    async def read_idle(self, limit: float) -> bytes:
        """The line that ends an IDLE; interrupted by a drain (ServerShutdown), bounded by ``limit``."""
        ...

    async def starttls(self) -> None: ...

    def start_compress(self, max_literal: int) -> None: ...


@dataclass(frozen=True)
class SessionConfig:
    """What a session needs to know; built from ``[imap]`` (``mailsrv.config.ImapConfig``) by the server."""

    hostname: str = "localhost"
    starttls_available: bool = False
    append_limit: int = DEFAULT_APPEND_LIMIT
    data_dir: Path = Path(".")
    idle_limit: float = IDLE_LIMIT
    max_auth_failures: int = MAX_AUTH_FAILURES
    #: RFC 5464 limits (metadata.py)
    metadata_max_value: int = METADATA_MAX_VALUE
    metadata_max_entries: int = METADATA_MAX_ENTRIES
    #: a grantee's \Seen on shared folders is private (``[imap] shared_private_seen``, store/privateseen.py)
    shared_private_seen: bool = True




class Session(MessageCommands, SharingCommands, ReplaceCommands, MetadataCommands):
    """One client's IMAP conversation."""

    def __init__(self, channel: Channel, auth: Any, store: Any, config: SessionConfig, search: Any = None,
                 policy_source: Callable[[], Any] | None = None, shares: Shares | None = None) -> None:
        self.ch = channel
        #: the directory's grants (shared mailboxes, sharing.py); None: no "Other Users" folders
        self.shares = shares
        self.home: Any = None
        self.place: Place | None = None
        #: owner account id -> its store account (opened once per session)
        self._owners: dict[int, Any] = {}
        #: returns the worker's ``mailsrv.policy.Policy`` (or None): MOVE/COPY into or out of Junk trains it
        self.policy_source = policy_source
        #: ``mailsrv.search.SearchService`` (text keys); None: SEARCH scans the messages
        self.search = search
        self.auth = auth
        self.store = store
        self.cfg = config
        self.state = State.NOT_AUTHENTICATED
        self.user: Any = None
        self.acct: Any = None
        self.view: Any = None
        self.readonly = False
        self.rev2 = False
        self.utf8 = False
        self.condstore = False
        self.qresync = False
        self.auth_failures = 0
        #: APPEND literals the connection loop streamed to files (see spool.py)
        self.spool = LiteralSpool()
        #: BAD replies given (the connection loop keeps the error budget)
        self.bad_commands = 0
        self.compressed = False
        self.saved: list[int] = []
        #: RFC 3501 §2.3.2 \Recent for IMAP4rev1 clients: the uids this session claimed from the
        #: mailbox's durable recent mark (:meth:`_claim_recent`); no other session holds them.
        self.recent: set[int] = set()
        #: (uid, modseq) of flag changes this session already reported (STORE), not echoed again
        self._reported: dict[int, int] = {}
        self._structs: dict[tuple[int, int], Any] = {}
        self._out = bytearray()
        #: the selected mailbox's "may have changed" watch (see :meth:`_apply_updates`); None: always refresh
        self._fresh: Any = None
        #: a refresh failed: the next update refreshes whatever the watch says
        self._stale = False
        #: the selected mailbox's MessageInfo objects shared with the process's other sessions (imap/shared.py)
        self._shared: shared.SharedMessages | None = None

    # -- output ------------------------------------------------------------------

    def w(self, data: bytes) -> None:
        self._out += data

    async def flush(self) -> None:
        if self._out:
            self.ch.write(bytes(self._out))
            self._out.clear()
        await self.ch.flush()

    async def maybe_flush(self) -> None:
        if len(self._out) >= FLUSH_AT:
            await self.flush()

    async def send_now(self, data: bytes) -> None:
        """Write what is buffered and ``data`` (a batch of a long response) to the client at once,
        without copying ``data`` into the buffer, and wait while the transport is full."""
        if self._out:
            self.ch.write(bytes(self._out))
            self._out.clear()
        self.ch.write(data)
        await self.ch.flush()

    # -- capabilities ---------------------------------------------------------------

    def capabilities(self) -> list[str]:
        caps = ["IMAP4rev1", "IMAP4rev2", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE", "NAMESPACE", "UNSELECT"]
        if self.state is State.NOT_AUTHENTICATED:
            if self.cfg.starttls_available and not self.ch.tls_active:
                caps.append("STARTTLS")
            caps += ["AUTH=" + m for m in self._mechanisms()]
            if not self._plaintext_ok():
                caps.append("LOGINDISABLED")
            return caps
        caps += [
            "UIDPLUS", "MOVE", "CHILDREN", "SPECIAL-USE", "CREATE-SPECIAL-USE", "LIST-EXTENDED",
            "LIST-STATUS", "STATUS=SIZE", "CONDSTORE", "QRESYNC", "ESEARCH", "SEARCHRES",
            "QUOTA", "QUOTA=RES-STORAGE", "QUOTA=RES-MESSAGE", f"APPENDLIMIT={self.cfg.append_limit}",
            "MULTIAPPEND", "BINARY", "UTF8=ACCEPT", "OBJECTID", "SAVEDATE", "SORT", "SORT=DISPLAY", "ESORT",
            "THREAD=ORDEREDSUBJECT", "THREAD=REFERENCES", "PREVIEW", "WITHIN", "ACL", "RIGHTS=texk",
            "LIST-MYRIGHTS", "UNAUTHENTICATE", "REPLACE", "METADATA",
            *([] if self.compressed else ["COMPRESS=DEFLATE"]),
        ]
        return caps

    def _plaintext_ok(self) -> bool:
        return bool(self.auth.plaintext_allowed(tls=self.ch.tls_active, client_ip=self.ch.peer_host))

    def _mechanisms(self) -> list[str]:
        cb = self.ch.channel_binding
        mechs = self.auth.mechanisms(tls=self.ch.tls_active, client_ip=self.ch.peer_host,
                                     channel_binding=cb is not None)
        # LOGIN is an SMTP/POP3 habit; IMAP clients use PLAIN (RFC 9051 §6.2.2 names no LOGIN mechanism).
        return [m for m in mechs if m != "LOGIN" and (cb is not None or not m.endswith("-PLUS"))]

    def greeting(self) -> bytes:
        caps = " ".join(self.capabilities())
        return f"* OK [CAPABILITY {caps}] {self.cfg.hostname} mailsrv IMAP ready\r\n".encode()

    # -- mailbox names ------------------------------------------------------------------

    def _name_in(self, raw: bytes) -> str:
        """A mailbox name from the client: UTF-8 (rev2 / UTF8=ACCEPT) or modified UTF-7."""
        if raw.upper() == b"INBOX":
            return "INBOX"
        if self.utf8 or any(c >= 0x80 for c in raw):
            try:
                name = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ImapError("BAD", "Mailbox name is not UTF-8", "CLIENTBUG") from None
        else:
            try:
                name = mutf7.decode(raw)
            except mutf7.Mutf7Error:
                raise ImapError("NO", "Mailbox name is not valid modified UTF-7", "CANNOT") from None
        if name.upper().startswith("INBOX/"):
            name = "INBOX" + name[5:]
        return name

    def _name_out(self, name: str) -> bytes:
        return resp.mailbox(name, self.utf8)

    # -- the dispatcher ------------------------------------------------------------------

    async def execute(self, cmd: Command) -> bool:
        """Run one command and write its responses. Returns False when the session ends.

        Raises :class:`Bye` to end the session with an untagged BYE.
        """
        verb = ("UID " if cmd.uid else "") + cmd.name
        states = VERBS.get(verb)
        tag = cmd.tag
        if states is None:
            self.bad_commands += 1
            self.w(tag + b" BAD Unknown command\r\n")
            return True
        if self.state not in states:
            why = {
                State.NOT_AUTHENTICATED: "Log in first",
                State.AUTHENTICATED: "No mailbox selected" if State.SELECTED in states and State.AUTHENTICATED not in states else "Already logged in",
                State.SELECTED: "Already logged in",
            }[self.state]
            self.bad_commands += 1
            self.w(tag + b" BAD " + why.encode() + b"\r\n")
            return True
        handler = getattr(self, "cmd_" + verb.lower().replace(" ", "_"))
        try:
            if self.place is not None and self.place.owner is not None:
                await self._shared_gate(verb)
            text = await handler(cmd)
        except _PASS_THROUGH:
            raise
        except ImapError as exc:
            if exc.status == "BAD":
                self.bad_commands += 1
            code = f"[{exc.code}] " if exc.code else ""
            if self.state is State.SELECTED and exc.status == "NO":
                await self._send_updates(cmd.name not in _NO_EXPUNGE_AFTER or cmd.uid)
            self.w(tag + f" {exc.status} {code}{exc.text}\r\n".encode())
            return True
        except Exception as exc:
            # A bug or an unexpected store failure: this command fails, the session and worker go on.
            logger.exception("command.failed", exc, command=verb)
            self.w(tag + b" NO [SERVERBUG] Internal error, the command was not completed\r\n")
            return True
        if self.state is State.LOGOUT:
            self.w(b"* BYE Logging out\r\n" + tag + b" OK LOGOUT completed\r\n")
            return False
        if self.state is State.SELECTED and verb not in ("SELECT", "EXAMINE", "IDLE"):
            if len(self._out) >= FLUSH_AT // 4:
                # A long response (SEARCH of many messages) goes out before the refresh's store reads.
                self.ch.write(bytes(self._out))
                self._out.clear()
            await self._send_updates(cmd.name not in _NO_EXPUNGE_AFTER or cmd.uid)
        if isinstance(text, bytes):
            if text:  # b"": the handler already sent its tagged reply (STARTTLS)
                self.w(tag + b" " + text + b"\r\n")
        else:
            self.w(tag + b" OK " + (text or f"{verb} completed").encode() + b"\r\n")
        return True

    # -- updates from other sessions ----------------------------------------------------------

    async def _send_updates(self, expunge_allowed: bool = True) -> None:
        """Report changes since the last refresh (RFC 9051 §5.2, §7.4.1, RFC 7162 §3.2.10).

        A failing refresh is logged and retried at the next opportunity (the view is unchanged).
        """
        try:
            await self._apply_updates(expunge_allowed)
        except _PASS_THROUGH:
            raise
        except Exception as exc:
            logger.warning("refresh.failed", error=type(exc).__name__, detail=str(exc)[:200])

    async def _shared_gate(self, verb: str) -> None:
        """Before each command in a selected shared mailbox: the grant is read again; once revoked,
        the mailbox's commands are refused until another is selected (RFC 4314 §5.1.1 allows it)."""
        await self._recheck_share()
        if "r" not in self._selected_rights() and VERBS[verb] is _SEL and verb not in ("CLOSE", "UNSELECT"):
            raise ImapError("NO", "Access to this shared mailbox was revoked", "NOPERM")

    async def _apply_updates(self, expunge_allowed: bool) -> None:
        view = self.view
        if view is None or "r" not in self._selected_rights():
            return
        if not expunge_allowed and not self._reported:
            # after a FETCH, STORE, SEARCH, SORT or THREAD (not UID) that wrote nothing, the changes of
            # others wait for the next command that may report them all (no pool job per FETCH)
            return
        fresh = self._fresh
        if fresh is not None and not self._stale and not (expunge_allowed and view.held) and not fresh.changed():
            # Nothing was written to the account since the last refresh (by this session, this
            # process or another: the watch drains the kernel's queued events first, and every
            # store write notifies before its OK), so the refresh would find nothing: no pool job.
            self._reported.clear()
            return
        self._stale = True
        # after a FETCH (\Seen set) or STORE that wrote, not UID: no EXPUNGE (RFC 9051 §7.5.1), but the
        # view takes the flags and messages (this session's own changes included: its next FETCH FLAGS
        # and SEARCH read them); the expunged stay in it until a command after which they may be reported
        changes = await view.refresh(hold_expunged=not expunge_allowed)
        self._stale = False
        if self._shared is not None and changes:
            shared.after_refresh(self._shared, view, changes)
        messages = view.messages
        if changes.expunged:
            if self.qresync:
                self.w(b"* VANISHED " + format_uids(changes.expunged).encode() + b"\r\n")
            else:
                for uid in changes.expunged:
                    seq = bisect_left(messages, uid, key=lambda m: m.uid) + 1
                    self.w(b"* %d EXPUNGE\r\n" % seq)
            for uid in changes.expunged:
                self._reported.pop(uid, None)
        self.recent.difference_update(changes.expunged)
        if changes.added and not self.rev2:
            self.recent.update(await self._claim_recent(changes.added))
        if changes.added or changes.expunged:
            self.w(b"* %d EXISTS\r\n" % len(messages))
            # RFC 3501 §7.3.2: RECENT with EXISTS when messages arrive (as Dovecot does)
            if not self.rev2 and changes.added:
                self.w(b"* %d RECENT\r\n" % len(self.recent))
        for info in changes.flags:
            if self._reported.get(info.uid) == info.modseq:
                continue
            seq = bisect_left(messages, info.uid, key=lambda m: m.uid) + 1
            if seq <= len(messages) and messages[seq - 1].uid == info.uid:
                self.w(fetchmod.flags_response(seq, info, uid=self.qresync, modseq=self.condstore,
                                               recent=info.uid in self.recent))
        self._reported.clear()

    async def _claim_recent(self, messages: Sequence[Any]) -> set[int]:
        """The uids among ``messages`` (ascending, the newest of the view) that are \\Recent here.

        RFC 3501 §2.3.2: a message is recent in exactly one session, the first to be told of it.
        The store keeps a durable per-mailbox mark (the first UID no session has claimed) that
        SELECT and new-message announcements raise atomically across processes. EXAMINE only
        reads it, as Dovecot does: a read-only session does not take \\Recent from the next
        SELECT. IMAP4rev2 sessions (RFC 9051 §2.3.2 has no \\Recent) neither read nor claim.
        Never raises: a store failure leaves the messages not recent (and logged).
        """
        if not messages or self.rev2:
            return set()
        # a grantee reads the mark as EXAMINE does: the owner's \\Recent stays the owner's
        # (docs/shared-mailboxes.md; Dovecot keeps it private per user with INDEXPVT)
        shared = self.place is not None and self.place.owner is not None
        upto = None if self.readonly or shared else messages[-1].uid + 1
        try:
            first = await self.acct.claim_recent(self.view.name, upto)
        except _PASS_THROUGH:
            raise
        except Exception as exc:
            logger.warning("recent.claim_failed", error=type(exc).__name__, detail=str(exc)[:200])
            return set()
        i = bisect_left(messages, first, key=lambda m: m.uid)
        return {m.uid for m in messages[i:]}

    # -- any state ---------------------------------------------------------------------------

    async def cmd_capability(self, cmd: Command) -> None:
        self.w(b"* CAPABILITY " + " ".join(self.capabilities()).encode() + b"\r\n")

    async def cmd_noop(self, cmd: Command) -> None:
        return None

    async def cmd_logout(self, cmd: Command) -> None:
        self.state = State.LOGOUT

    async def cmd_unauthenticate(self, cmd: Command) -> None:
        """RFC 8437 §3: back to NOT AUTHENTICATED, as a new connection would be but for its TLS and
        COMPRESS layers (kept). The selected mailbox is closed without expunging, its watch and share
        of the process's message cache released, ENABLEd extensions and the owners' stores this
        session opened forgotten. Failed logins still count (``auth_failures``): UNAUTHENTICATE does
        not buy an attacker more guesses on this connection."""
        self._close_view()  # drops the watch and the shared cache too
        self.user = self.acct = self.home = None
        self._owners.clear()
        self.rev2 = self.utf8 = self.condstore = self.qresync = False
        self.state = State.NOT_AUTHENTICATED
        log.bind(user=None)

    async def cmd_id(self, cmd: Command) -> None:
        # RFC 2971 §3.3
        self.w(b'* ID ("name" "mailsrv" "vendor" "mailsrv")\r\n')

    # -- not authenticated ---------------------------------------------------------------------

    async def cmd_starttls(self, cmd: Command) -> bytes:
        if not self.cfg.starttls_available or self.ch.tls_active:
            raise ImapError("BAD", "STARTTLS not available", "CLIENTBUG")
        self.w(cmd.tag + b" OK Begin TLS negotiation now\r\n")
        await self.flush()
        await self.ch.starttls()
        return b""

    async def cmd_login(self, cmd: Command) -> str:
        if not self._plaintext_ok():
            # RFC 9051 §6.2.3: LOGINDISABLED
            raise ImapError("NO", "Use STARTTLS or TLS first", "PRIVACYREQUIRED")
        user = cmd.args["user"].decode("utf-8", "replace")
        password = cmd.args["password"].decode("utf-8", "replace")
        result = await self.auth.login(user, password, protocol="imap", client_ip=self.ch.peer_host,
                                       tls=self.ch.tls_active)
        if not result.ok:
            await self._auth_failed(getattr(result, "delay", 0.0))
        await self._logged_in(result.account)
        return self._ok_with_caps("LOGIN completed")

    def _ok_with_caps(self, text: str) -> str:
        # RFC 9051 §6.2.3: the tagged OK may carry the new CAPABILITY list.
        return f"[CAPABILITY {' '.join(self.capabilities())}] {text}"

    async def _auth_failed(self, delay: float) -> None:
        self.auth_failures += 1
        if delay:
            await asyncio.sleep(min(delay, 5.0))  # tarpit suggested by the directory
        if self.auth_failures >= self.cfg.max_auth_failures:
            raise Bye("Too many failed logins", "UNAVAILABLE")
        raise ImapError("NO", "Authentication failed", "AUTHENTICATIONFAILED")

    async def _logged_in(self, account: Any) -> None:
        try:
            self.acct = self.home = await self._account_store(account)
        except Exception as exc:
            logger.error("store.open_failed", error=store_error_name(exc))
            raise ImapError("NO", "Mailbox store unavailable, try later", "UNAVAILABLE") from None
        self.user = account
        self.state = State.AUTHENTICATED
        log.bind(user=getattr(account, "address", str(account.id)))

    async def cmd_authenticate(self, cmd: Command) -> str:
        mech = cmd.args["mechanism"]
        if mech not in self._mechanisms():
            if mech in ("PLAIN", "LOGIN") and not self._plaintext_ok():
                raise ImapError("NO", "Use STARTTLS or TLS first", "PRIVACYREQUIRED")
            raise ImapError("NO", "Unsupported authentication mechanism", "CANNOT")
        initial = cmd.args["initial"]
        # RFC 4959 §3: "=" is an empty initial response
        first = None if initial is None else self._b64(b"" if initial == b"=" else initial)
        if mech == "PLAIN" and not hasattr(self.auth, "sasl"):
            if first is None:
                first = await self._challenge(b"")
            parts = first.split(b"\x00")
            if len(parts) != 3:
                raise ImapError("BAD", "Malformed PLAIN response", "CLIENTBUG")
            authz, user, password = (p.decode("utf-8", "replace") for p in parts)
            result = await self.auth.login(user, password, protocol="imap", client_ip=self.ch.peer_host,
                                           tls=self.ch.tls_active)
            if not result.ok or (authz and authz != user and authz != getattr(result.account, "address", None)):
                await self._auth_failed(getattr(result, "delay", 0.0))
            await self._logged_in(result.account)
            return self._ok_with_caps("AUTHENTICATE completed")
        sasl = self.auth.sasl(mech, protocol="imap", client_ip=self.ch.peer_host, tls=self.ch.tls_active,
                              channel_binding=self.ch.channel_binding)
        step = await sasl.step(first)
        while type(step).__name__ == "Challenge":
            try:
                answer = await self._challenge(step.data)
            except ImapError:
                sasl.abort()
                raise
            step = await sasl.step(answer)
        if type(step).__name__ != "Success":
            await self._auth_failed(getattr(step, "delay", 0.0))
        if getattr(step, "data", None):
            await self._challenge(step.data)
        await self._logged_in(step.account)
        return self._ok_with_caps("AUTHENTICATE completed")

    def _b64(self, data: bytes) -> bytes:
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ImapError("BAD", "Invalid base64", "CLIENTBUG") from None

    async def _challenge(self, data: bytes) -> bytes:
        self.w(b"+ " + base64.b64encode(data) + b"\r\n")
        await self.flush()
        line = (await self.ch.read_continuation()).rstrip(b"\r\n")
        if line == b"*":
            # RFC 9051 §6.2.2: the client cancels
            raise ImapError("BAD", "Authentication cancelled")
        return self._b64(line)

    # -- authenticated -----------------------------------------------------------------------------

    async def cmd_enable(self, cmd: Command) -> None:
        enabled = []
        for cap in cmd.args["capabilities"]:
            if cap == "CONDSTORE" and not self.condstore:
                self.condstore = True
                enabled.append(cap)
            elif cap == "QRESYNC" and not self.qresync:
                # RFC 7162 §3.2.3: QRESYNC implies CONDSTORE
                self.qresync = self.condstore = True
                enabled.append(cap)
            elif cap == "IMAP4REV2" and not self.rev2:
                self.rev2 = self.utf8 = True
                self.recent = set()  # RFC 9051 has no \Recent (§2.3.2)
                enabled.append("IMAP4rev2")
            elif cap == "UTF8=ACCEPT" and not self.utf8:
                self.utf8 = True
                enabled.append(cap)
        # RFC 5161 §3.1: one untagged ENABLED, possibly empty.
        self.w(b"* ENABLED" + b"".join(b" " + c.encode() for c in enabled) + b"\r\n")

    async def cmd_namespace(self, cmd: Command) -> None:
        # RFC 2342 §5: the personal namespace, the "Other Users" one (shared folders), no shared one
        other = self._name_out(acl.OTHER_USERS + acl.DELIM)
        self.w(b'* NAMESPACE (("" "/")) ((' + other + b' "/")) NIL\r\n')

    def _close_view(self) -> None:
        self.view = None
        self.acct = self.home
        self.place = None
        self._drop_watch()
        self._unshare()
        self._structs.clear()
        self._reported.clear()
        self.saved = []
        self.recent = set()
        if self.state is State.SELECTED:
            self.state = State.AUTHENTICATED

    async def cmd_select(self, cmd: Command) -> bytes:
        return await self._select(cmd, readonly=cmd.name == "EXAMINE")

    cmd_examine = cmd_select

    async def _select(self, cmd: Command, readonly: bool) -> bytes:
        name = self._name_in(cmd.args["mailbox"])
        qresync = cmd.args["qresync"]
        if qresync is not None and not self.qresync:
            raise ImapError("BAD", "QRESYNC is not enabled", "CLIENTBUG")
        if self.state is State.SELECTED:
            self._close_view()
            # RFC 9051 §6.3.2 / RFC 7162 §3.2.11: the previous mailbox is closed.
            self.w(b"* OK [CLOSED] Previous mailbox closed\r\n")
        place = await self._place(name, "r")  # RFC 4314 §4: SELECT / EXAMINE need "r"
        self.acct = place.acct
        # the watch begins before the snapshot: a change after the snapshot is always signalled
        self._fresh = self._open_watch(place.name)
        try:
            view = await self.acct.open_mailbox(place.name)
        except Exception as exc:
            self._drop_watch()
            self.acct = self.home
            raise self._store_error(exc) from None
        if cmd.args["condstore"]:
            self.condstore = True
        self.view = view
        self.place = place
        # a grantee's private \Seen view (store/privateseen.py) shares only with that grantee's sessions
        self._shared = shared.acquire(view, getattr(self.acct, "share_key", None) or str(getattr(self.acct, "id", "")))
        # RFC 4314 §5.2: READ-ONLY without any of "i", "e" and the flag rights ("s" "w" "t")
        self.readonly = readonly or not acl.read_write(place.rights)
        if place.owner is not None:  # who opened whose mail: an operator's audit trail
            logger.info("imap.shared.selected", owner=place.owner.address, mailbox=place.name, rights=place.rights,
                        readonly=self.readonly)
        self.state = State.SELECTED
        messages = view.messages
        keywords: set[str] = set()
        for m in messages:
            for f in m.flags:
                if not f.startswith("\\"):
                    keywords.add(f)
        flags = list(SYSTEM_FLAGS) + sorted(keywords)
        self.recent = await self._claim_recent(messages)
        self.w(b"* %d EXISTS\r\n" % len(messages))
        if not self.rev2:
            self.w(b"* %d RECENT\r\n" % len(self.recent))
        self.w(b"* FLAGS " + resp.flag_list(flags) + b"\r\n")
        if self.readonly:
            self.w(b"* OK [PERMANENTFLAGS ()] Read-only mailbox\r\n")
        else:
            self.w(b"* OK [PERMANENTFLAGS " + resp.flag_list(flags + ["\\*"]) + b"] Flags permitted\r\n")
        if not self.rev2:
            for i, m in enumerate(messages):
                if "\\Seen" not in m.flags:
                    self.w(b"* OK [UNSEEN %d] First unseen\r\n" % (i + 1))
                    break
        self.w(b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % view.uidvalidity)
        self.w(b"* OK [UIDNEXT %d] Predicted next UID\r\n" % view.uidnext)
        if self.condstore:
            self.w(b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % view.highestmodseq)
        mailbox_id = getattr(view, "id", None)
        if mailbox_id:
            self.w(b"* OK [MAILBOXID (" + mailbox_id.encode() + b")] Ok\r\n")
        if self.rev2:
            self.w(b'* LIST () "/" ' + self._name_out(place.client) + b"\r\n")
        if qresync is not None:
            await self._qresync(qresync)
        state = b"READ-ONLY" if self.readonly else b"READ-WRITE"
        return b"OK [" + state + b"] " + cmd.name.encode() + b" completed"

    def _open_watch(self, name: str) -> Any:
        """A watch of what mailbox ``name``'s refresh looks at (the account's own writes, other
        programs' deliveries to its new/, their changes in its cur/ and uidlist; not the other
        folders: the session reports only this one); None: cannot watch."""
        try:
            return self.acct.watch(name)
        except Exception as exc:  # e.g. ENOSPC (fs.inotify.max_user_watches): refresh every time
            logger.warning("refresh.watch_failed", error=str(exc)[:200])
            return None

    def _drop_watch(self) -> None:
        if self._fresh is not None:
            self._fresh.close()
            self._fresh = None
        self._stale = False

    def _unshare(self) -> None:
        if self._shared is not None:
            shared.release(self._shared)
            self._shared = None

    def end(self) -> None:
        """The connection is gone: let go of what the session holds (its watch, its share of the mailbox)."""
        self._drop_watch()
        self._unshare()

    async def _qresync(self, args: tuple[Any, ...]) -> None:
        """RFC 7162 §3.2.5.2: VANISHED (EARLIER) and FETCH for changes since the client's modseq."""
        uidvalidity, modseq, known, _match = args
        view = self.view
        if uidvalidity != view.uidvalidity:
            return
        since = await self.acct.changes_since(view.name, modseq)
        gone = since.expunged
        if known is not None:
            gone = [u for u in gone if known.contains(u, view.uidnext)]
        if gone:
            self.w(b"* VANISHED (EARLIER) " + format_uids(gone).encode() + b"\r\n")
        for info in since.changed:
            seq = self._seq_of(info.uid)
            if seq:
                self.w(fetchmod.flags_response(seq, view.messages[seq - 1], uid=True, modseq=True))

    def _seq_of(self, uid: int) -> int:
        messages = self.view.messages
        i = bisect_left(messages, uid, key=lambda m: m.uid)
        if i < len(messages) and messages[i].uid == uid:
            return i + 1
        return 0

    def _store_error(self, exc: BaseException) -> ImapError:
        name = store_error_name(exc)
        if name == "MailboxNotFound":
            return ImapError("NO", "No such mailbox", "NONEXISTENT")
        if name == "MailboxExists":
            return ImapError("NO", "Mailbox already exists", "ALREADYEXISTS")
        if name == "OverQuota":
            return ImapError("NO", "Quota exceeded", "OVERQUOTA")
        if name == "MessageGone":
            return ImapError("NO", "Message was expunged", "EXPUNGEISSUED")
        if name == "BadMailboxName":
            return ImapError("NO", f"Invalid mailbox name: {str(exc)[:100]}", "CANNOT")
        if name == "TemporaryFailure":
            return ImapError("NO", "Temporary failure, try again", "UNAVAILABLE")
        if isinstance(exc, (OSError, RuntimeError, ValueError)) or name.endswith("Error"):
            logger.warning("store.error", error=name, detail=str(exc)[:200])
            return ImapError("NO", "Operation failed", "SERVERBUG" if not name.startswith("Store") else "CANNOT")
        raise exc

    @staticmethod
    def _check_new_name(name: str) -> None:
        """Names we create: no empty, "." or ".." hierarchy levels, no control characters.

        RFC 9051 §5.1 leaves names to the server; these would not survive Maildir++ (or a mutt
        user's eyes) and "." / ".." read like paths.
        """
        parts = name.split("/")
        if any(p in ("", ".", "..") for p in parts) or any(ord(c) < 0x20 or c == "\x7f" for c in name):
            raise ImapError("NO", "Invalid mailbox name", "CANNOT")

    async def cmd_create(self, cmd: Command) -> None:
        # RFC 4314 §4: CREATE needs "k" on the parent (one's own folders: every right; see _new_place)
        name = self._name_in(cmd.args["mailbox"]).rstrip("/")
        if not name or name == "INBOX":
            raise ImapError("NO", "Mailbox already exists", "ALREADYEXISTS")
        place = await self._new_place(name)
        self._check_new_name(place.name)
        use = [norm_flag(f) for f in cmd.args["use"]]
        known_uses = {"\\Sent", "\\Drafts", "\\Trash", "\\Junk", "\\Archive", "\\All", "\\Flagged"}
        for u in use:
            if u.title() not in {k.title() for k in known_uses}:
                raise ImapError("NO", "Unknown special use", "USEATTR")
        if use and place.owner is not None:
            raise ImapError("NO", "Special use is the owner's to set", "NOPERM")
        try:
            await place.acct.create_mailbox(place.name, use[0] if use else None)
        except Exception as exc:
            raise self._store_error(exc) from None
        # Dovecot's acl plugin: a new folder starts with its parent's ACL
        await self._acl_follows(place, "create", place.name.rpartition("/")[0])

    async def cmd_delete(self, cmd: Command) -> None:
        place = await self._place(self._name_in(cmd.args["mailbox"]), "x")  # RFC 4314 §4: DELETE needs "x"
        if place.name == "INBOX":
            raise ImapError("NO", "INBOX cannot be deleted", "CANNOT")
        try:
            await place.acct.delete_mailbox(place.name)  # its METADATA entries go with it (mailsrv.store.metadata)
        except Exception as exc:
            raise self._store_error(exc) from None
        await self._acl_follows(place, "delete")

    async def cmd_rename(self, cmd: Command) -> None:
        # RFC 4314 §4: RENAME needs "x" on the mailbox and "k" on the new name's parent
        old = await self._place(self._name_in(cmd.args["mailbox"]), "x")
        new = await self._new_place(self._name_in(cmd.args["new"]))
        self._check_new_name(new.name)
        if new.name == "INBOX":
            raise ImapError("NO", "Mailbox already exists", "ALREADYEXISTS")
        if new.acct is not old.acct:
            raise ImapError("NO", "Folders are renamed within one account", "CANNOT")
        try:
            await old.acct.rename_mailbox(old.name, new.name)
        except Exception as exc:
            raise self._store_error(exc) from None
        if old.name != "INBOX":  # RFC 9051 §6.3.6: renaming INBOX moves its messages; INBOX (and its ACL) stay
            await self._acl_follows(old, "rename", new.name)

    async def cmd_subscribe(self, cmd: Command) -> None:
        name = self._name_in(cmd.args["mailbox"])
        if acl.split_shared(name) is not None:
            await self._place(name)  # shared folders are listed as subscribed while the grant lasts
            return
        await self.home.subscribe(name, True)

    async def cmd_unsubscribe(self, cmd: Command) -> None:
        name = self._name_in(cmd.args["mailbox"])
        if acl.split_shared(name) is not None:
            raise ImapError("NO", "Shared folders stay subscribed while they are shared", "CANNOT")
        await self.home.subscribe(name, False)

    async def cmd_list(self, cmd: Command) -> None:
        from mailsrv.imap.listing import run_list

        await run_list(self, cmd)

    async def cmd_lsub(self, cmd: Command) -> None:
        from mailsrv.imap.listing import run_list

        await run_list(self, cmd, lsub=True)

    async def status_items(self, place: Place, items: Sequence[str]) -> bytes:
        """``(MESSAGES n ...)`` for STATUS and LIST-STATUS (RFC 9051 §6.3.11) of ``place`` (see _place)."""
        acct, name = place.acct, place.name
        try:
            info = await acct.mailbox_status(name)
        except Exception as exc:
            raise self._store_error(exc) from None
        out = []
        for item in items:
            if item == "MESSAGES":
                out.append(b"MESSAGES %d" % info.messages)
            elif item == "UIDNEXT":
                out.append(b"UIDNEXT %d" % info.uidnext)
            elif item == "UIDVALIDITY":
                out.append(b"UIDVALIDITY %d" % info.uidvalidity)
            elif item == "UNSEEN":
                out.append(b"UNSEEN %d" % info.unseen)
            elif item == "RECENT":
                # RFC 3501 §6.3.10: messages no session has seen as \Recent yet
                out.append(b"RECENT %d" % await acct.recent_count(name))
            elif item == "SIZE":
                out.append(b"SIZE %d" % info.size)
            elif item == "HIGHESTMODSEQ":
                out.append(b"HIGHESTMODSEQ %d" % info.highestmodseq)
            elif item == "MAILBOXID":
                out.append(b"MAILBOXID (" + info.id.encode() + b")")
            elif item == "DELETED":
                view = await acct.open_mailbox(name)
                out.append(b"DELETED %d" % sum(1 for m in view.messages if "\\Deleted" in m.flags))
            elif item == "APPENDLIMIT":
                out.append(b"APPENDLIMIT %d" % self.cfg.append_limit)
            else:
                raise ImapError("BAD", f"Unknown STATUS item {item}", "CLIENTBUG")
        return b"(" + b" ".join(out) + b")"

    async def cmd_status(self, cmd: Command) -> None:
        name = self._name_in(cmd.args["mailbox"])
        items = await self.status_items(await self._place(name, "r"), cmd.args["items"])
        self.w(b"* STATUS " + self._name_out(name) + b" " + items + b"\r\n")

    def _limits(self, owner: Any = None) -> Any:
        """The quota limits of the account a message goes into: the user's, or a shared mailbox's owner's."""
        user = owner if owner is not None else self.user
        return QuotaLimits(getattr(user, "quota_bytes", None), getattr(user, "quota_messages", None))

    async def cmd_append(self, cmd: Command) -> str:
        place, info = await self._append_target(cmd.args["mailbox"])
        uids = await self._append_messages(place, cmd.args["messages"])
        return f"[APPENDUID {info.uidvalidity} {format_uids(uids)}] APPEND completed"

    async def _append_target(self, mailbox: bytes) -> tuple[Place, Any]:
        """The place and status of an APPEND's (or REPLACE's) mailbox: "i" needed (RFC 4314 §4),
        NO [TRYCREATE] when it does not exist (RFC 9051 §6.3.12)."""
        place = await self._place(self._name_in(mailbox), "i")
        try:
            return place, await place.acct.mailbox_status(place.name)
        except Exception as exc:
            err = self._store_error(exc)
            if err.code == "NONEXISTENT":
                raise ImapError("NO", "No such mailbox", "TRYCREATE") from None
            raise err from None

    async def _append_messages(self, place: Place, messages: Sequence[tuple[list[bytes], Any, Any]],
                               credit: int = 0) -> list[int]:
        """Store ``messages`` (flags, date-time, literal or spool token) in ``place``; their UIDs.
        Each is durable when this returns (the store fsyncs before it answers). All or nothing
        (RFC 3502 §3): after a failure the ones stored are expunged again and the error raised.
        ``credit``: octets (and one message) about to be freed in ``place``'s account (REPLACE's old
        message), counted as free by the quota check of the account's and its domain's roots."""
        acct, name = place.acct, place.name
        limits, domain_limits = self._limits(place.owner), None
        if credit:
            limits = _credited(limits, credit)
            domain_limits = _credited(await acct.domain_limits(), credit)
        uids: list[int] = []
        try:
            for flags, when, data in messages:
                spooled = self.spool.path_of(data)
                if spooled is not None:
                    data = spooled  # the store hard-links the spool file
                elif len(data) > self.cfg.append_limit:
                    raise ImapError("NO", "Message too large", "TOOBIG")
                elif not data:
                    raise ImapError("NO", "Empty message", "CANNOT")
                fl = frozenset(norm_flag(f) for f in flags if f.lower() != b"\\recent")
                if place.owner is not None:
                    fl = acl.allowed_flags(fl, place.rights)  # RFC 4314 §4: dropped, not refused
                ts = when.timestamp() if isinstance(when, datetime) else None
                try:
                    uid = await acct.append(name, data, fl, ts, limits, domain_limits)
                except Exception as exc:
                    raise self._store_error(exc) from None
                uids.append(uid)
        except ImapError:
            if uids:
                await acct.expunge(name, uids, only_deleted=False)
            raise
        return uids

    async def cmd_idle(self, cmd: Command) -> None:
        """RFC 2177: report changes as they happen until the client sends DONE.

        The session task waits for DONE with the connection's *command* read, so a
        draining worker interrupts an IDLE (ServerShutdown -> BYE). A helper task
        reports changes; it holds ``lock`` while it refreshes and writes, and the
        session takes the lock before stopping it, so a refresh is never cut in the
        middle (sequence numbers stay in step).
        """
        # selected: the mailbox's watch (the paths _fresh holds already: no kernel call); else nothing is
        # reported, but a watch of the whole account keeps IDLE as it always was
        watch = self._open_watch(self.place.name) if self.place is not None else None
        if watch is None:
            watch = self.acct.watch()
        lock = asyncio.Lock()

        async def notifier() -> None:
            while True:
                await watch.wait()
                async with lock:
                    if self.state is State.SELECTED:
                        await self._recheck_share()  # a revoked share reports nothing more
                        await self._send_updates()
                    await self.flush()

        try:
            self.w(b"+ idling\r\n")
            if self.state is State.SELECTED:
                await self._send_updates()
            await self.flush()
            task = asyncio.ensure_future(notifier())
            try:
                line = await self.ch.read_idle(self.cfg.idle_limit)
            finally:
                async with lock:
                    task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                except Exception as exc:  # the peer went away while we wrote; the read says so too
                    logger.debug("idle.notifier_ended", error=type(exc).__name__)
        finally:
            watch.close()
        if line.rstrip(b"\r\n").upper() != b"DONE":
            raise ImapError("BAD", "Expected DONE", "CLIENTBUG")
        if self.state is State.SELECTED:
            await self._recheck_share()
            await self._send_updates()

    async def cmd_compress(self, cmd: Command) -> bytes:
        # RFC 4978 §3
        if cmd.args["mechanism"] != "DEFLATE":
            raise ImapError("BAD", "Unknown compression mechanism", "CLIENTBUG")
        if self.compressed:
            raise ImapError("NO", "Compression is already active", "COMPRESSIONACTIVE")
        self.w(cmd.tag + b" OK DEFLATE active\r\n")
        await self.flush()
        self.ch.start_compress(self.cfg.append_limit)
        self.compressed = True
        return b""

    async def cmd_getquotaroot(self, cmd: Command) -> None:
        name = self._name_in(cmd.args["mailbox"])
        place = await self._place(name)
        # RFC 9208 §4.2: every root the mailbox is in: the user's ("") and the domain's, when limited;
        # a shared mailbox is in its owner's roots (the owner's address, the owner's domain)
        root = b'""' if place.owner is None else resp.astring(place.owner.address.lower().encode())
        domain = await self._domain_root(place.acct)
        extra = b" " + domain[0].encode() if domain is not None else b""
        self.w(b"* QUOTAROOT " + self._name_out(name) + b" " + root + extra + b"\r\n")
        await self._quota(place.acct, place.owner or self.user, root)
        if domain is not None:
            self._domain_quota(*domain)

    async def cmd_getquota(self, cmd: Command) -> None:
        root = cmd.args["root"]
        if root == b"":
            await self._quota(self.home, self.user, b'""')
            return
        if b"@" in root:
            grant = await self._grant_of(root.decode("utf-8", "replace"))
            if grant is None:
                raise ImapError("NO", "No such quota root", "NONEXISTENT")
            await self._quota(await self._owner_store(grant.owner), grant.owner,
                              resp.astring(grant.owner.address.lower().encode()))
            return
        domain = await self._domain_root(self.home)
        if domain is None or root.lower() != domain[0].encode():
            raise ImapError("NO", "No such quota root", "NONEXISTENT")
        self._domain_quota(*domain)

    @staticmethod
    async def _domain_root(acct: Any) -> tuple[str, Any, Any] | None:
        """(domain, usage, limits) of ``acct``'s domain quota root, or None when the domain is unlimited."""
        domain = getattr(acct, "domain", None)
        if not domain:
            return None
        limits = await acct.domain_limits()
        if limits.storage is None and limits.messages is None:
            return None
        return domain, await acct.domain_usage(), limits

    def _domain_quota(self, domain: str, usage: Any, limits: Any) -> None:
        items = []
        if limits.storage is not None:
            items.append(b"STORAGE %d %d" % (-(-usage.storage // 1024), limits.storage // 1024))
        if limits.messages is not None:
            items.append(b"MESSAGE %d %d" % (usage.messages, limits.messages))
        self.w(b"* QUOTA " + domain.encode() + b" (" + b" ".join(items) + b")\r\n")

    async def _quota(self, acct: Any, user: Any, root: bytes) -> None:
        """``* QUOTA root (...)`` of ``acct`` with ``user``'s (its directory account's) limits."""
        # RFC 9208 §5.1: STORAGE in units of 1024 octets, MESSAGE in messages; only limited resources.
        usage = await acct.quota_usage()
        items = []
        qb = getattr(user, "quota_bytes", None)
        qm = getattr(user, "quota_messages", None)
        if qb is not None:
            items.append(b"STORAGE %d %d" % (-(-usage.storage // 1024), qb // 1024))
        if qm is not None:
            items.append(b"MESSAGE %d %d" % (usage.messages, qm))
        self.w(b"* QUOTA " + root + b" (" + b" ".join(items) + b")\r\n")

    async def cmd_setquota(self, cmd: Command) -> None:
        # RFC 9208 §4.3: users cannot change their own limits.
        raise ImapError("NO", "Quota is set by the administrator", "NOPERM")

    # -- selected -----------------------------------------------------------------------------

    async def cmd_check(self, cmd: Command) -> None:
        return None

    async def cmd_close(self, cmd: Command) -> None:
        # RFC 9051 §6.4.1: expunge silently unless read-only; RFC 4314 §4: without "e", only close
        if not self.readonly and "e" in self._selected_rights():
            try:
                await self.acct.expunge(self.view.name)
            except Exception as exc:
                raise self._store_error(exc) from None
        self._close_view()

    async def cmd_unselect(self, cmd: Command) -> None:
        self._close_view()


def _credited(limits: QuotaLimits, octets: int) -> QuotaLimits:
    """``limits`` raised by one message of ``octets`` about to be freed (unlimited stays unlimited)."""
    return QuotaLimits(None if limits.storage is None else limits.storage + octets,
                       None if limits.messages is None else limits.messages + 1)
