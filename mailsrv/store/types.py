"""Value types and errors of the store API (see docs/store-api.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from mailsrv.mime import MessageStructure


class StoreError(Exception):
    """Base of every error the store raises on purpose."""


class MailboxNotFound(StoreError):
    pass


class MailboxExists(StoreError):
    pass


class BadMailboxName(StoreError):
    pass


class MessageGone(StoreError):
    """The message was expunged (or its file vanished) meanwhile."""


class OverQuota(StoreError):
    def __init__(self, resource: str) -> None:
        super().__init__(f"over quota ({resource})")
        self.resource = resource


class TemporaryFailure(StoreError):
    """Disk full, permission or I/O problem, lock timeout: retry later."""


#: special-use attributes of the folders created on first use (RFC 6154)
SPECIAL_USE: dict[str, str | None] = {
    "INBOX": None,
    "Sent": "\\Sent",
    "Drafts": "\\Drafts",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
    "Archive": "\\Archive",
}


@dataclass(frozen=True, slots=True)
class MessageInfo:
    uid: int
    key: str
    flags: frozenset[str]
    modseq: int
    internal_date: float
    saved_date: float
    size: int
    email_id: str
    thread_id: str


@dataclass(frozen=True, slots=True)
class MailboxInfo:
    name: str
    id: str
    special_use: str | None
    subscribed: bool
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    messages: int
    unseen: int
    size: int


@dataclass(frozen=True, slots=True)
class Changes:
    added: list[MessageInfo]
    expunged: list[int]
    flags: list[MessageInfo]
    uidnext: int
    highestmodseq: int

    def __bool__(self) -> bool:
        return bool(self.added or self.expunged or self.flags)


@dataclass(frozen=True, slots=True)
class ChangesSince:
    changed: list[MessageInfo]
    expunged: list[int]
    highestmodseq: int
    #: uid -> (email id, thread id) of expunged messages (absent for those expunged before the
    #: index kept ids, or forgotten by an index rebuild)
    expunged_ids: dict[int, tuple[str, str]] = field(default_factory=dict)
    #: the expunge history was pruned past ``modseq``: ``expunged`` is then every UID below UIDNEXT
    #: not in the mailbox (a superset; RFC 7162 §3.2.5.2), and JMAP answers cannotCalculateChanges
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class QuotaLimits:
    """Limits from the directory; None = unlimited. ``storage`` in octets."""

    storage: int | None = None
    messages: int | None = None


@dataclass(frozen=True, slots=True)
class QuotaUsage:
    storage: int
    messages: int


@dataclass(frozen=True)
class DeliveryTarget:
    account: Any  # mailsrv.store.Account
    mailbox: str = "INBOX"
    flags: frozenset[str] = frozenset()
    limits: QuotaLimits = field(default_factory=QuotaLimits)
    #: limits of the account's domain (RFC 9208 second quota root; the account needs a domain)
    domain_limits: QuotaLimits = field(default_factory=QuotaLimits)


@dataclass(frozen=True)
class DeliveryResult:
    target: DeliveryTarget
    status: Literal["ok", "over_quota", "tempfail"]
    uid: int | None = None
    error: str | None = None


class StoreObserver(Protocol):
    """Told of every published change, on the store's loop; must not block.

    An observer with a true ``wants_raw`` attribute also gets ``raw=`` (the message's bytes) for
    messages whose delivery held them in memory (up to ``store.KEEP_RAW``), so that it need not
    read the file back; otherwise, and for the others, ``message_added`` gets four arguments.
    """

    def message_added(self, account_id: str, mailbox_id: str, info: MessageInfo,
                      structure: MessageStructure) -> None: ...

    def messages_expunged(self, account_id: str, mailbox_id: str, uids: list[int]) -> None: ...

    def flags_changed(self, account_id: str, mailbox_id: str, infos: list[MessageInfo]) -> None: ...

    # Optional: ``mailbox_deleted(account_id, mailbox_id)``, called (if an observer has it) after a
    # mailbox was deleted through Account.delete_mailbox, so that what it keeps for the mailbox (a
    # search index's files) goes too.
