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
import time
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from mailsrv import log
from mailsrv.imap import fetch as fetchmod
from mailsrv.imap import mutf7, sortthread
from mailsrv.imap import response as resp
from mailsrv.imap import search as searchmod
from mailsrv.imap.grammar import Command, SearchKey
from mailsrv.imap.seqset import SequenceSet, format_uids
from mailsrv.imap.structure import parse as parse_structure

logger = log.get("imap")

try:  # the real store, when it has landed
    from mailsrv.store import QuotaLimits  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - until then, the in-memory store's twin
    from mailsrv.imap.memory import QuotaLimits  # type: ignore[assignment,unused-ignore]


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
    "CHECK": _SEL, "CLOSE": _SEL, "UNSELECT": _SEL, "EXPUNGE": _SEL, "SEARCH": _SEL,
    "FETCH": _SEL, "STORE": _SEL, "COPY": _SEL, "MOVE": _SEL,
    "UID FETCH": _SEL, "UID STORE": _SEL, "UID COPY": _SEL, "UID MOVE": _SEL,
    "UID SEARCH": _SEL, "UID EXPUNGE": _SEL,
    "SORT": _SEL, "UID SORT": _SEL, "THREAD": _SEL, "UID THREAD": _SEL,
}

#: Commands after which pending mailbox changes may be reported, EXPUNGE included.
#: RFC 9051 §7.5.1: not after FETCH, STORE, SEARCH (non-UID) nor while they run.
_NO_EXPUNGE_AFTER = {"FETCH", "STORE", "SEARCH", "SORT", "THREAD"}

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
_SYSTEM_LOWER = {f.lower(): f for f in SYSTEM_FLAGS}

#: RFC 9051 §6.3.12 / RFC 7889: messages larger than this are refused with [TOOBIG].
DEFAULT_APPEND_LIMIT = 64 * 1024 * 1024
#: RFC 2177 §3: clients re-issue IDLE at least every 29 minutes; we end an IDLE after 30.
IDLE_LIMIT = 30 * 60.0
#: Failed LOGIN/AUTHENTICATE attempts before the connection is closed.
MAX_AUTH_FAILURES = 3
#: Flush the output buffer when it grows past this (FETCH 1:* of a big mailbox).
FLUSH_AT = 64 * 1024
#: Parsed message structures kept per session for repeated FETCH of the same message.
STRUCTURE_CACHE = 8


class ImapError(Exception):
    """A command failed: ``status`` NO or BAD, optional response ``code``."""

    def __init__(self, status: str, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.code = code


class Bye(Exception):
    """End the session after sending ``* BYE text``."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


class Channel(Protocol):
    """What the session needs from the connection."""

    peer_host: str

    @property
    def tls_active(self) -> bool: ...

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


def _norm_flag(flag: bytes) -> str:
    text = flag.decode("utf-8", "replace")
    return _SYSTEM_LOWER.get(text.lower(), text)


def _store_error_name(exc: BaseException) -> str:
    return type(exc).__name__


class Session:
    """One client's IMAP conversation."""

    def __init__(self, channel: Channel, auth: Any, store: Any, config: SessionConfig, search: Any = None) -> None:
        self.ch = channel
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
        #: BAD replies given (the connection loop keeps the error budget)
        self.bad_commands = 0
        self.compressed = False
        self.saved: list[int] = []
        #: RFC 3501 §2.3.2 \Recent for IMAP4rev1 clients: uids that arrived while this session had
        #: the mailbox selected. deviation: several sessions may each see a message as recent
        #: (the store keeps no per-mailbox "first session" marker).
        self.recent: set[int] = set()
        #: (uid, modseq) of flag changes this session already reported (STORE), not echoed again
        self._reported: dict[int, int] = {}
        self._structs: dict[tuple[int, int], Any] = {}
        self._out = bytearray()

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
            "MULTIAPPEND", "BINARY", "UTF8=ACCEPT", "OBJECTID", "SAVEDATE", "SORT", "SORT=DISPLAY",
            "THREAD=ORDEREDSUBJECT", "THREAD=REFERENCES",
            *([] if self.compressed else ["COMPRESS=DEFLATE"]),
        ]
        return caps

    def _plaintext_ok(self) -> bool:
        return bool(self.auth.plaintext_allowed(tls=self.ch.tls_active, client_ip=self.ch.peer_host))

    def _mechanisms(self) -> list[str]:
        mechs = self.auth.mechanisms(tls=self.ch.tls_active, client_ip=self.ch.peer_host)
        # Channel binding (-PLUS) needs the TLS exporter wired in; offer what we can do.
        return [m for m in mechs if not m.endswith("-PLUS") and m != "LOGIN"]

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
            text = await handler(cmd)
        except ImapError as exc:
            if exc.status == "BAD":
                self.bad_commands += 1
            code = f"[{exc.code}] " if exc.code else ""
            if self.state is State.SELECTED and exc.status == "NO":
                await self._send_updates(cmd.name not in _NO_EXPUNGE_AFTER or cmd.uid)
            self.w(tag + f" {exc.status} {code}{exc.text}\r\n".encode())
            return True
        if self.state is State.LOGOUT:
            self.w(b"* BYE Logging out\r\n" + tag + b" OK LOGOUT completed\r\n")
            return False
        if self.state is State.SELECTED and verb not in ("SELECT", "EXAMINE", "IDLE"):
            await self._send_updates(cmd.name not in _NO_EXPUNGE_AFTER or cmd.uid)
        if isinstance(text, bytes):
            if text:  # b"": the handler already sent its tagged reply (STARTTLS)
                self.w(tag + b" " + text + b"\r\n")
        else:
            self.w(tag + b" OK " + (text or f"{verb} completed").encode() + b"\r\n")
        return True

    # -- updates from other sessions ----------------------------------------------------------

    async def _send_updates(self, expunge_allowed: bool = True) -> None:
        """Report changes since the last refresh (RFC 9051 §5.2, §7.4.1, RFC 7162 §3.2.10)."""
        view = self.view
        if view is None or not expunge_allowed:
            # Without a refresh only this session's own flag changes could be new; those were reported.
            return
        changes = await view.refresh()
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
        if changes.added or changes.expunged:
            self.w(b"* %d EXISTS\r\n" % len(messages))
            if not self.rev2 and changes.added:
                self.recent.update(m.uid for m in changes.added)
                self.w(b"* %d RECENT\r\n" % len(self.recent))
        for info in changes.flags:
            if self._reported.get(info.uid) == info.modseq:
                continue
            seq = bisect_left(messages, info.uid, key=lambda m: m.uid) + 1
            if seq <= len(messages) and messages[seq - 1].uid == info.uid:
                self.w(fetchmod.flags_response(seq, info, uid=self.qresync, modseq=self.condstore,
                                               recent=info.uid in self.recent))
        self._reported.clear()

    # -- any state ---------------------------------------------------------------------------

    async def cmd_capability(self, cmd: Command) -> None:
        self.w(b"* CAPABILITY " + " ".join(self.capabilities()).encode() + b"\r\n")

    async def cmd_noop(self, cmd: Command) -> None:
        return None

    async def cmd_logout(self, cmd: Command) -> None:
        self.state = State.LOGOUT

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
        maildir = self.cfg.data_dir / account.store if getattr(account, "store", "") else None
        try:
            self.acct = await self.store.account(str(account.id), maildir)
        except Exception as exc:
            logger.error("store.open_failed", error=_store_error_name(exc))
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
        sasl = self.auth.sasl(mech, protocol="imap", client_ip=self.ch.peer_host, tls=self.ch.tls_active)
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
                enabled.append("IMAP4rev2")
            elif cap == "UTF8=ACCEPT" and not self.utf8:
                self.utf8 = True
                enabled.append(cap)
        # RFC 5161 §3.1: one untagged ENABLED, possibly empty.
        self.w(b"* ENABLED" + b"".join(b" " + c.encode() for c in enabled) + b"\r\n")

    async def cmd_namespace(self, cmd: Command) -> None:
        # RFC 2342: one personal namespace, "/" hierarchy
        self.w(b'* NAMESPACE (("" "/")) NIL NIL\r\n')

    def _close_view(self) -> None:
        self.view = None
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
        try:
            view = await self.acct.open_mailbox(name)
        except Exception as exc:
            raise self._store_error(exc) from None
        if cmd.args["condstore"]:
            self.condstore = True
        self.view = view
        self.readonly = readonly
        self.state = State.SELECTED
        messages = view.messages
        keywords: set[str] = set()
        for m in messages:
            for f in m.flags:
                if not f.startswith("\\"):
                    keywords.add(f)
        flags = list(SYSTEM_FLAGS) + sorted(keywords)
        self.w(b"* %d EXISTS\r\n" % len(messages))
        if not self.rev2:
            self.w(b"* 0 RECENT\r\n")
        self.w(b"* FLAGS " + resp.flag_list(flags) + b"\r\n")
        if readonly:
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
            self.w(b'* LIST () "/" ' + self._name_out(view.name) + b"\r\n")
        if qresync is not None:
            await self._qresync(qresync)
        state = b"READ-ONLY" if readonly else b"READ-WRITE"
        return b"OK [" + state + b"] " + cmd.name.encode() + b" completed"

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
        name = _store_error_name(exc)
        if name == "MailboxNotFound":
            return ImapError("NO", "No such mailbox", "NONEXISTENT")
        if name == "MailboxExists":
            return ImapError("NO", "Mailbox already exists", "ALREADYEXISTS")
        if name == "OverQuota":
            return ImapError("NO", "Quota exceeded", "OVERQUOTA")
        if name == "MessageGone":
            return ImapError("NO", "Message was expunged", "EXPUNGEISSUED")
        if name == "TemporaryFailure":
            return ImapError("NO", "Temporary failure, try again", "UNAVAILABLE")
        if isinstance(exc, (OSError, RuntimeError, ValueError)) or name.endswith("Error"):
            logger.warning("store.error", error=name, detail=str(exc)[:200])
            return ImapError("NO", "Operation failed", "SERVERBUG" if not name.startswith("Store") else "CANNOT")
        raise exc

    async def cmd_create(self, cmd: Command) -> None:
        name = self._name_in(cmd.args["mailbox"]).rstrip("/")
        if not name or name == "INBOX":
            raise ImapError("NO", "Mailbox already exists", "ALREADYEXISTS")
        use = [_norm_flag(f) for f in cmd.args["use"]]
        known_uses = {"\\Sent", "\\Drafts", "\\Trash", "\\Junk", "\\Archive", "\\All", "\\Flagged"}
        for u in use:
            if u.title() not in {k.title() for k in known_uses}:
                raise ImapError("NO", "Unknown special use", "USEATTR")
        try:
            await self.acct.create_mailbox(name, use[0] if use else None)
        except Exception as exc:
            raise self._store_error(exc) from None

    async def cmd_delete(self, cmd: Command) -> None:
        name = self._name_in(cmd.args["mailbox"])
        if name == "INBOX":
            raise ImapError("NO", "INBOX cannot be deleted", "CANNOT")
        try:
            await self.acct.delete_mailbox(name)
        except Exception as exc:
            raise self._store_error(exc) from None

    async def cmd_rename(self, cmd: Command) -> None:
        old = self._name_in(cmd.args["mailbox"])
        new = self._name_in(cmd.args["new"])
        if new == "INBOX":
            raise ImapError("NO", "Mailbox already exists", "ALREADYEXISTS")
        try:
            await self.acct.rename_mailbox(old, new)
        except Exception as exc:
            raise self._store_error(exc) from None

    async def cmd_subscribe(self, cmd: Command) -> None:
        await self.acct.subscribe(self._name_in(cmd.args["mailbox"]), True)

    async def cmd_unsubscribe(self, cmd: Command) -> None:
        await self.acct.subscribe(self._name_in(cmd.args["mailbox"]), False)

    async def cmd_list(self, cmd: Command) -> None:
        from mailsrv.imap.listing import run_list

        await run_list(self, cmd)

    async def cmd_lsub(self, cmd: Command) -> None:
        from mailsrv.imap.listing import run_list

        await run_list(self, cmd, lsub=True)

    async def status_items(self, name: str, items: Sequence[str]) -> bytes:
        """``(MESSAGES n ...)`` for STATUS and LIST-STATUS (RFC 9051 §6.3.11)."""
        try:
            info = await self.acct.mailbox_status(name)
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
                out.append(b"RECENT 0")
            elif item == "SIZE":
                out.append(b"SIZE %d" % info.size)
            elif item == "HIGHESTMODSEQ":
                out.append(b"HIGHESTMODSEQ %d" % info.highestmodseq)
            elif item == "MAILBOXID":
                out.append(b"MAILBOXID (" + info.id.encode() + b")")
            elif item == "DELETED":
                view = await self.acct.open_mailbox(name)
                out.append(b"DELETED %d" % sum(1 for m in view.messages if "\\Deleted" in m.flags))
            elif item == "APPENDLIMIT":
                out.append(b"APPENDLIMIT %d" % self.cfg.append_limit)
            else:
                raise ImapError("BAD", f"Unknown STATUS item {item}", "CLIENTBUG")
        return b"(" + b" ".join(out) + b")"

    async def cmd_status(self, cmd: Command) -> None:
        name = self._name_in(cmd.args["mailbox"])
        items = await self.status_items(name, cmd.args["items"])
        self.w(b"* STATUS " + self._name_out(name) + b" " + items + b"\r\n")

    def _limits(self) -> Any:
        user = self.user
        return QuotaLimits(getattr(user, "quota_bytes", None), getattr(user, "quota_messages", None))

    async def cmd_append(self, cmd: Command) -> str:
        name = self._name_in(cmd.args["mailbox"])
        try:
            info = await self.acct.mailbox_status(name)
        except Exception as exc:
            err = self._store_error(exc)
            if err.code == "NONEXISTENT":
                # RFC 9051 §6.3.12: TRYCREATE when the mailbox would be created by CREATE
                raise ImapError("NO", "No such mailbox", "TRYCREATE") from None
            raise err from None
        uids: list[int] = []
        try:
            for flags, when, data in cmd.args["messages"]:
                if len(data) > self.cfg.append_limit:
                    raise ImapError("NO", "Message too large", "TOOBIG")
                if not data:
                    raise ImapError("NO", "Empty message", "CANNOT")
                fl = frozenset(_norm_flag(f) for f in flags if f.lower() != b"\\recent")
                ts = when.timestamp() if isinstance(when, datetime) else None
                try:
                    uid = await self.acct.append(name, data, fl, ts, self._limits())
                except Exception as exc:
                    raise self._store_error(exc) from None
                uids.append(uid)
        except ImapError:
            # RFC 3502 §3: MULTIAPPEND is all or nothing.
            if uids:
                await self.acct.expunge(name, uids, only_deleted=False)
            raise
        return f"[APPENDUID {info.uidvalidity} {format_uids(uids)}] APPEND completed"

    async def cmd_idle(self, cmd: Command) -> None:
        """RFC 2177: report changes as they happen until the client sends DONE.

        The session task waits for DONE with the connection's *command* read, so a
        draining worker interrupts an IDLE (ServerShutdown -> BYE). A helper task
        reports changes; it holds ``lock`` while it refreshes and writes, and the
        session takes the lock before stopping it, so a refresh is never cut in the
        middle (sequence numbers stay in step).
        """
        watch = self.acct.watch()
        lock = asyncio.Lock()

        async def notifier() -> None:
            while True:
                await watch.wait()
                async with lock:
                    if self.state is State.SELECTED:
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
        self.w(b"* QUOTAROOT " + self._name_out(name) + b' ""\r\n')
        await self._quota()

    async def cmd_getquota(self, cmd: Command) -> None:
        if cmd.args["root"] != b"":
            raise ImapError("NO", "No such quota root", "NONEXISTENT")
        await self._quota()

    async def _quota(self) -> None:
        # RFC 9208 §5.1: STORAGE in units of 1024 octets, MESSAGE in messages; only limited resources.
        usage = await self.acct.quota_usage()
        items = []
        qb = getattr(self.user, "quota_bytes", None)
        qm = getattr(self.user, "quota_messages", None)
        if qb is not None:
            items.append(b"STORAGE %d %d" % (-(-usage.storage // 1024), qb // 1024))
        if qm is not None:
            items.append(b"MESSAGE %d %d" % (usage.messages, qm))
        self.w(b'* QUOTA "" (' + b" ".join(items) + b")\r\n")

    async def cmd_setquota(self, cmd: Command) -> None:
        # RFC 9208 §4.3: users cannot change their own limits.
        raise ImapError("NO", "Quota is set by the administrator", "NOPERM")

    # -- selected -----------------------------------------------------------------------------

    async def cmd_check(self, cmd: Command) -> None:
        return None

    async def cmd_close(self, cmd: Command) -> None:
        # RFC 9051 §6.4.1: expunge silently unless read-only
        if not self.readonly:
            try:
                await self.acct.expunge(self.view.name)
            except Exception as exc:
                raise self._store_error(exc) from None
        self._close_view()

    async def cmd_unselect(self, cmd: Command) -> None:
        self._close_view()

    def _require_writable(self) -> None:
        if self.readonly:
            raise ImapError("NO", "Mailbox is read-only", "READ-ONLY")

    async def cmd_expunge(self, cmd: Command) -> None:
        self._require_writable()
        try:
            await self.acct.expunge(self.view.name)
        except Exception as exc:
            raise self._store_error(exc) from None

    async def cmd_uid_expunge(self, cmd: Command) -> None:
        self._require_writable()
        uids = self._resolve(cmd.args["set"], uid=True)
        try:
            await self.acct.expunge(self.view.name, [m.uid for m in uids])
        except Exception as exc:
            raise self._store_error(exc) from None

    def _resolve(self, s: SequenceSet, *, uid: bool) -> list[Any]:
        """Messages of the view selected by a sequence set (ascending)."""
        messages = self.view.messages
        if s.saved:
            return [m for u in self.saved if (m := self.view.by_uid(u)) is not None]
        if uid:
            largest = messages[-1].uid if messages else 0
            out = []
            for a, b in s.resolved(largest):
                i = bisect_left(messages, a, key=lambda m: m.uid)
                while i < len(messages) and messages[i].uid <= b:
                    out.append(messages[i])
                    i += 1
            if len(s.ranges) > 1:
                out = sorted({m.uid: m for m in out}.values(), key=lambda m: m.uid)
            return out
        n = len(messages)
        seqs: set[int] = set()
        for a, b in s.resolved(n):
            if b > n or a < 1:
                if n == 0 and all(lo == 0 or hi == 0 for lo, hi in s.ranges):
                    continue
                # RFC 9051 §9: a sequence number must be in the mailbox
                raise ImapError("BAD", "Invalid message sequence number", "CLIENTBUG")
            if len(s.ranges) == 1:
                return messages[a - 1 : b]
            seqs.update(range(a, b + 1))
        return [messages[i - 1] for i in sorted(seqs)]

    async def cmd_fetch(self, cmd: Command) -> None:
        await self._fetch(cmd, uid=False)

    async def cmd_uid_fetch(self, cmd: Command) -> None:
        await self._fetch(cmd, uid=True)

    def _structure(self, uid: int, raw: bytes) -> Any:
        key = (self.view.uidvalidity, uid)
        part = self._structs.get(key)
        if part is None:
            part = parse_structure(raw)
            if len(self._structs) >= STRUCTURE_CACHE:
                self._structs.pop(next(iter(self._structs)))
            self._structs[key] = part
        return part

    async def _fetch(self, cmd: Command, *, uid: bool) -> None:
        atts = cmd.args["atts"]
        changedsince = cmd.args["changedsince"]
        if cmd.args["vanished"] and (not uid or not self.qresync or changedsince is None):
            raise ImapError("BAD", "VANISHED needs UID FETCH, QRESYNC and CHANGEDSINCE", "CLIENTBUG")
        if changedsince is not None:
            self.condstore = True  # RFC 7162 §3.1: CHANGEDSINCE enables CONDSTORE
        selected = self._resolve(cmd.args["set"], uid=uid)
        if changedsince is not None:
            selected = [m for m in selected if m.modseq > changedsince]
        if cmd.args["vanished"]:
            since = await self.acct.changes_since(self.view.name, changedsince)
            s: SequenceSet = cmd.args["set"]
            gone = [u for u in since.expunged if s.contains(u, self.view.uidnext)]
            if gone:
                self.w(b"* VANISHED (EARLIER) " + format_uids(gone).encode() + b"\r\n")
        name = self.view.name
        plan = fetchmod.plan(atts)
        structs: dict[int, Any] = {}
        if plan.wants_structure or plan.header_only:
            # The structure cached at delivery answers ENVELOPE/BODYSTRUCTURE and says where the
            # header ends, so those never re-read or re-parse the whole message.
            try:
                structs = await self.acct.structures(name, [m.uid for m in selected])
            except Exception:  # an index without structures: fall back to the bytes
                structs = {}
        seen_now: dict[int, Any] = {}
        if fetchmod.sets_seen(atts) and not self.readonly:
            # RFC 9051 §6.4.5: BODY[...] sets \Seen; one durable change for the whole FETCH.
            unseen = [m.uid for m in selected if "\\Seen" not in m.flags]
            if unseen:
                modified, _ = await self.acct.store_flags(name, unseen, frozenset({"\\Seen"}), "add")
                for m in modified:
                    self._reported[m.uid] = m.modseq
                    seen_now[m.uid] = m
        for info in selected:
            seq = self._seq_of(info.uid)
            raw = part = None
            pre: dict[str, bytes] = {}
            struct = structs.get(info.uid)
            if plan.wants_structure and struct is not None and hasattr(struct, "imap_envelope"):
                if "ENVELOPE" in plan.names:
                    pre["ENVELOPE"] = struct.imap_envelope()
                if "BODYSTRUCTURE" in plan.names:
                    pre["BODYSTRUCTURE"] = struct.imap_bodystructure(True)
                if "BODY" in plan.names:
                    pre["BODY"] = struct.imap_bodystructure(False)
            need_full = plan.needs_body or (plan.wants_structure and not pre)
            if need_full or plan.header_only:
                header_end = getattr(struct, "header_end", None) if not need_full else None
                try:
                    if header_end:
                        raw = await self.acct.read_message(name, info.uid, 0, header_end)
                    else:
                        raw = await self.acct.read_message(name, info.uid)
                except Exception as exc:
                    if _store_error_name(exc) == "MessageGone":
                        # RFC 9051 §7.5.1: expunged by another session meanwhile; skip it
                        continue
                    raise self._store_error(exc) from None
                part = self._structure(info.uid, raw) if not header_end else parse_structure(raw)
            new = seen_now.get(info.uid)
            if new is not None:
                info = new
            try:
                body = fetchmod.render(atts, info, raw, part, uid=uid, modseq=self.condstore,
                                       recent=info.uid in self.recent,
                                       flags=new.flags if new is not None else None, precomputed=pre)
            except fetchmod.UnknownCte:
                raise ImapError("NO", "Unknown Content-Transfer-Encoding", "UNKNOWN-CTE") from None
            self.w(b"* %d FETCH " % seq + body + b"\r\n")
            await self.maybe_flush()

    async def cmd_store(self, cmd: Command) -> str | None:
        return await self._store(cmd, uid=False)

    async def cmd_uid_store(self, cmd: Command) -> str | None:
        return await self._store(cmd, uid=True)

    async def _store(self, cmd: Command, *, uid: bool) -> str | None:
        self._require_writable()
        selected = self._resolve(cmd.args["set"], uid=uid)
        flags = frozenset(_norm_flag(f) for f in cmd.args["flags"] if f.lower() != b"\\recent")
        mode = {"+": "add", "-": "remove", "=": "replace"}[cmd.args["mode"]]
        unchanged = cmd.args["unchangedsince"]
        if unchanged is not None:
            self.condstore = True
        try:
            modified, failed = await self.acct.store_flags(
                self.view.name, [m.uid for m in selected], flags, mode, unchanged
            )
        except Exception as exc:
            raise self._store_error(exc) from None
        changed = {m.uid: m for m in modified}
        for info in selected:
            new = changed.get(info.uid)
            if new is not None:
                self._reported[new.uid] = new.modseq
            elif info.uid in failed:
                continue
            # RFC 9051 §6.4.6: untagged FETCH with the new flags unless .SILENT;
            # RFC 7162 §3.1.3: with CONDSTORE, also for .SILENT when the modseq changed.
            if cmd.args["silent"] and not (self.condstore and new is not None):
                continue
            if new is None and cmd.args["silent"]:
                continue
            state = new or info
            self.w(fetchmod.flags_response(self._seq_of(info.uid), state, uid=uid, modseq=self.condstore,
                                           recent=info.uid in self.recent))
        if failed:
            nums = failed if uid else [self._seq_of(u) for u in failed]
            return f"[MODIFIED {format_uids(sorted(nums))}] Conditional STORE failed"
        return None

    async def cmd_copy(self, cmd: Command) -> str:
        return await self._copy(cmd, uid=False, move=False)

    async def cmd_uid_copy(self, cmd: Command) -> str:
        return await self._copy(cmd, uid=True, move=False)

    async def cmd_move(self, cmd: Command) -> str:
        return await self._copy(cmd, uid=False, move=True)

    async def cmd_uid_move(self, cmd: Command) -> str:
        return await self._copy(cmd, uid=True, move=True)

    async def _copy(self, cmd: Command, *, uid: bool, move: bool) -> str:
        if move:
            self._require_writable()
        selected = self._resolve(cmd.args["set"], uid=uid)
        dest = self._name_in(cmd.args["mailbox"])
        try:
            info = await self.acct.mailbox_status(dest)
        except Exception as exc:
            err = self._store_error(exc)
            if err.code == "NONEXISTENT":
                raise ImapError("NO", "No such mailbox", "TRYCREATE") from None
            raise err from None
        uids = [m.uid for m in selected]
        if not uids:
            return "No messages" if not move else "No messages moved"
        try:
            if move:
                mapping = await self.acct.move(self.view.name, uids, dest)
            else:
                mapping = await self.acct.copy(self.view.name, uids, dest, self._limits())
        except Exception as exc:
            raise self._store_error(exc) from None
        code = f"COPYUID {info.uidvalidity} {format_uids([s for s, _ in mapping])} {format_uids([d for _, d in mapping])}"
        if move:
            # RFC 6851 §4.3: COPYUID in an untagged OK before the EXPUNGEs
            self.w(f"* OK [{code}] Moved\r\n".encode())
            return "MOVE completed"
        return f"[{code}] COPY completed"

    def _check_charset(self, charset: str | None) -> None:
        if charset not in (None, "UTF-8", "US-ASCII"):
            # RFC 9051 §6.4.4
            raise ImapError("NO", "Unsupported charset", "BADCHARSET (UTF-8 US-ASCII)")

    async def _matching(self, key: SearchKey) -> list[tuple[int, Any]]:
        """(sequence number, info) of the view's messages that match ``key``, ascending."""
        view = self.view
        messages = view.messages
        largest_uid = messages[-1].uid if messages else 0
        try:
            match = searchmod.matcher(key, largest_seq=len(messages), largest_uid=largest_uid,
                                      saved=self.saved, now=time.time(), recent=self.recent)
        except ValueError as exc:
            raise ImapError("BAD", str(exc), "CLIENTBUG") from None
        content = searchmod.needs_content(key)
        if content and self.search is not None:
            hits = await self._index_search(key)
            if hits is not None:
                return [(i + 1, m) for i, m in enumerate(messages) if m.uid in hits]
        found: list[tuple[int, Any]] = []
        for i, info in enumerate(messages):
            raw = None
            if content:
                try:
                    raw = await self.acct.read_message(view.name, info.uid)
                except Exception:  # expunged meanwhile: it does not match
                    continue
            if match(searchmod.Message(i + 1, info, raw)):
                found.append((i + 1, info))
        return found

    async def _index_search(self, key: SearchKey) -> Any:
        """Text keys through the search index (``mailsrv.search``); None when it cannot answer."""
        from mailsrv.imap import searchindex

        view = self.view
        name = view.name
        root = getattr(self.acct, "root", None)
        account_id = getattr(self.acct, "id", None)
        if root is None or account_id is None:
            return None
        try:
            query = searchindex.to_query(
                key, searchindex.metadata_evaluator(view, saved=self.saved, recent=self.recent))
            idx = self.search.mailbox(account_id, view.id, Path(root) / "mailsrv-search",
                                      lambda uid: self.acct.read_message(name, uid))
            return await idx.search(query, view)
        except Exception as exc:  # the index is a cache: scan instead of failing the SEARCH
            logger.warning("search.index_failed", error=type(exc).__name__, detail=str(exc)[:200])
            return None

    async def _items(self, found: list[tuple[int, Any]], uid: bool) -> list[sortthread.Item]:
        items = []
        for seq, info in found:
            try:
                raw = await self.acct.read_message(self.view.name, info.uid)
            except Exception:  # expunged meanwhile
                continue
            headers: dict[bytes, bytes] = {}
            for k, v in parse_structure(raw).headers:
                headers.setdefault(k.lower(), v)
            items.append(sortthread.Item(info.uid if uid else seq, seq, info.internal_date, info.size, headers))
        return items

    async def cmd_sort(self, cmd: Command) -> None:
        await self._sort(cmd, uid=False)

    async def cmd_uid_sort(self, cmd: Command) -> None:
        await self._sort(cmd, uid=True)

    async def _sort(self, cmd: Command, *, uid: bool) -> None:
        # RFC 5256 §3
        self._check_charset(cmd.args["charset"])
        if cmd.args["return"] is not None:
            raise ImapError("BAD", "ESORT is not supported", "CLIENTBUG")
        items = await self._items(await self._matching(cmd.args["key"]), uid)
        nums = sortthread.sort(items, cmd.args["criteria"])
        self.w(b"* SORT" + b"".join(b" %d" % n for n in nums) + b"\r\n")

    async def cmd_thread(self, cmd: Command) -> None:
        await self._thread(cmd, uid=False)

    async def cmd_uid_thread(self, cmd: Command) -> None:
        await self._thread(cmd, uid=True)

    async def _thread(self, cmd: Command, *, uid: bool) -> None:
        # RFC 5256 §4
        self._check_charset(cmd.args["charset"])
        items = await self._items(await self._matching(cmd.args["key"]), uid)
        if cmd.args["algorithm"] == "REFERENCES":
            roots = sortthread.thread_references(items)
        else:
            roots = sortthread.thread_orderedsubject(items)
        threads = sortthread.format_threads(roots)
        self.w(b"* THREAD" + (b" " + threads if threads else b"") + b"\r\n")

    async def cmd_search(self, cmd: Command) -> None:

        await self._search(cmd, uid=False)

    async def cmd_uid_search(self, cmd: Command) -> None:
        await self._search(cmd, uid=True)

    async def _search(self, cmd: Command, *, uid: bool) -> None:
        self._check_charset(cmd.args["charset"])
        key: SearchKey = cmd.args["key"]
        found = await self._matching(key)
        nums = [info.uid if uid else seq for seq, info in found]
        modseq = max((info.modseq for _, info in found), default=0) if searchmod.uses_modseq(key) else None
        if modseq:
            self.condstore = True
        returns = cmd.args["return"]
        if returns is not None and not returns:
            returns = ["ALL"]
        if returns is None and not self.rev2:
            tail = f" (MODSEQ {modseq})" if modseq else ""
            self.w(b"* SEARCH" + b"".join(b" %d" % n for n in nums) + tail.encode() + b"\r\n")
            return
        if returns is None:
            returns = ["ALL"]
        if "SAVE" in returns:
            # RFC 5182 §2.1: SAVE keeps the result (as uids) for "$"
            self.saved = [info.uid for _, info in found]
            returns = [r for r in returns if r != "SAVE"]
            if not returns:
                return
        # RFC 4731 §3.1 / RFC 9051 §7.3.4: ESEARCH
        parts = [b'* ESEARCH (TAG "' + cmd.tag + b'")']
        if uid:
            parts.append(b"UID")
        if nums:
            if "MIN" in returns:
                parts.append(b"MIN %d" % min(nums))
            if "MAX" in returns:
                parts.append(b"MAX %d" % max(nums))
            if "ALL" in returns:
                parts.append(b"ALL " + format_uids(sorted(nums)).encode())
        if "COUNT" in returns:
            parts.append(b"COUNT %d" % len(nums))
        if modseq:
            parts.append(b"MODSEQ %d" % modseq)
        self.w(b" ".join(parts) + b"\r\n")

