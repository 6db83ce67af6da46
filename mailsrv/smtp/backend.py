"""The small interfaces an SMTP session calls, and the records it hands them.

Sessions never touch the store, the directory or the queue directly: they
call a :class:`MailBackend` (recipient policy, spool, delivery) and a
:class:`SaslProvider` (mailsrv.auth's Authenticator fits it). Tests drive a
session with in-memory fakes of both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from mailsrv.smtp.early import EarlyReply


@dataclass
class SessionInfo:
    """What the policy needs to know about the client (read-only for the backend)."""

    sid: str
    hostname: str
    listener: str  # "smtp" (MTA) or "submission"
    peer_ip: str
    helo: str = ""
    esmtp: bool = False
    tls: dict[str, str] = field(default_factory=dict)  # {"tls": "TLSv1.3", "cipher": ...} or {}
    account: Any = None  # the authenticated directory Account, or None
    trusted: bool = False  # client in listener.trusted_networks


@dataclass
class Recipient:
    address: str
    notify: frozenset[str] = frozenset()  # RFC 3461 NOTIFY: SUCCESS FAILURE DELAY NEVER
    orcpt: str | None = None  # RFC 3461 ORCPT, "rfc822;addr" (decoded)
    route: Any = None  # opaque: what the backend's check_recipient decided (local targets, relay)


@dataclass
class Transaction:
    """One mail transaction: MAIL, RCPTs, and the DATA/BDAT in progress."""

    sender: str  # "" is the null reverse path
    body: str = "7BIT"  # RFC 6152 BODY=
    smtputf8: bool = False
    size_hint: int | None = None  # RFC 1870 SIZE=
    ret: str | None = None  # RFC 3461 RET=FULL|HDRS
    envid: str | None = None  # RFC 3461 ENVID (decoded)
    rcpts: list[Recipient] = field(default_factory=list)
    junk: bool = False  # the policy filed the message as spam: deliver into Junk (issue 12)
    checking: Recipient | None = None  # the RCPT that check_recipient is asked about (its NOTIFY, ORCPT)
    #: at the end of DATA on a plaintext session: the channel a backend may arm to have the 250 written
    #: from the store's round thread (mailsrv.smtp.early), when its reply can only be "250 iff every
    #: copy of its one store call is durable"; None: the loop replies
    early: EarlyReply | None = None


@dataclass(frozen=True)
class Verdict:
    """A backend decision turned into an SMTP reply."""

    code: int
    enh: str
    text: str
    route: Any = None
    #: extra fields for the session's one log line about the message (``message.accepted``)
    log: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def ok(self) -> bool:
        return self.code < 400


class Spool(Protocol):
    """A message being received, in a file beside the maildirs.

    A spool may also offer ``seal() -> bool`` (keep a message judged in memory unwritten: the store's
    delivery job writes the file, one thread job less) and ``async materialize()`` (write a sealed
    spool's file, e.g. for the queue); the session and backend look them up with ``getattr``
    (``mailsrv.delivery.spool.FileSpool``)."""

    path: Path

    def buffer(self, data: bytes) -> bool:
        """Append ``data`` if it stays in memory, at once (no coroutine); False: nothing done, call
        :meth:`write` (a spool that holds nothing in memory always answers False)."""

    async def write(self, data: bytes) -> None:
        """Append message bytes (buffered; blocking I/O happens in a thread)."""

    async def commit(self) -> None:
        """Finish writing. Durability is the consumers' job: ``deliver`` must fsync every copy
        it makes (store link, queue link) before it returns. Raises OSError."""

    def discard(self) -> None:
        """Remove the file (idempotent)."""


class MailBackend(Protocol):
    async def check_sender(self, info: SessionInfo, sender: str) -> Verdict: ...

    async def check_recipient(self, info: SessionInfo, tx: Transaction, address: str) -> Verdict: ...

    def open_spool(self) -> Spool: ...

    async def deliver(self, info: SessionInfo, tx: Transaction, spool: Spool) -> Verdict:
        """Deliver locally and/or enqueue; return only when every copy is durable."""


class SaslExchange(Protocol):
    async def step(self, data: bytes | None) -> Any:
        """-> an object with ``.account`` (success), ``.reason`` (failure) or ``.data`` (challenge)."""

    def abort(self) -> None: ...


class SaslProvider(Protocol):
    """The part of mailsrv.auth.Authenticator the SMTP session uses."""

    def mechanisms(self, *, tls: bool, client_ip: str, channel_binding: bool = False) -> list[str]: ...

    def sasl(self, mechanism: str, *, protocol: str, client_ip: str, tls: bool,
             channel_binding: Any = None) -> SaslExchange: ...
