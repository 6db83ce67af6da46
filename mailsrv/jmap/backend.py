"""What the JMAP front end needs from an account's mail: the small interface it calls.

The JMAP methods never see maildir paths or store internals; they call a
:class:`MailBackend`. ``memory.MemoryBackend`` is the reference used by fast
tests; ``storebackend.StoreBackend`` adapts ``mailsrv.store`` (docs/store-api.md).

States are opaque strings that the backend derives from its modseqs; a
backend raises :class:`CannotCalculateChanges` when it cannot answer
``changes`` from a given state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from mailsrv.mime import MessageStructure

#: The object types whose state and changes a backend tracks.
TYPES = ("Mailbox", "Email", "Thread")

#: RFC 8621 §2: Mailbox properties that change with every email change.
COUNT_PROPERTIES = ["totalEmails", "unreadEmails", "totalThreads", "unreadThreads"]


class Unchanged:
    """The type of :data:`UNCHANGED`: "leave this property as it is"."""


UNCHANGED = Unchanged()


class BackendError(Exception):
    """Base of what a backend raises on purpose."""


class CannotCalculateChanges(BackendError):
    pass


class NotFound(BackendError):
    pass


class MailboxHasChild(BackendError):
    pass


class MailboxHasEmail(BackendError):
    pass


class Forbidden(BackendError):
    """The operation is not allowed on this object (e.g. deleting INBOX)."""


class NameConflict(BackendError):
    pass


class InvalidName(NameConflict):
    """A name the store cannot keep (e.g. too long once stored): invalidProperties, not alreadyExists."""


class OverQuota(BackendError):
    pass


@dataclass(frozen=True)
class Mailbox:
    id: str
    name: str
    parent_id: str | None
    role: str | None
    sort_order: int
    is_subscribed: bool
    total_emails: int
    unread_emails: int
    total_threads: int
    unread_threads: int


@dataclass(frozen=True)
class EmailMeta:
    """The per-email facts the store keeps (everything else comes from the message)."""

    id: str
    blob_id: str
    thread_id: str
    mailbox_ids: frozenset[str]
    keywords: frozenset[str]  # JMAP keywords, lower case ("$seen")
    size: int
    received_at: float  # POSIX seconds


@dataclass
class ChangeSet:
    old_state: str
    new_state: str
    has_more: bool
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    destroyed: list[str] = field(default_factory=list)
    #: Mailbox/changes only: set when every update was a count change (RFC 8621 §2.2)
    counts_only: bool = False


class Watch(Protocol):
    async def wait(self, seconds: float | None = None) -> bool: ...

    def close(self) -> None: ...


class MailBackend(Protocol):
    """One account's mail, as JMAP sees it. Every change is durable when the call returns."""

    account_id: str
    name: str

    async def state(self, type_: str) -> str: ...

    async def changes(self, type_: str, since: str, max_changes: int | None) -> ChangeSet:
        """Raises CannotCalculateChanges (unknown/too old state)."""

    async def mailboxes(self) -> list[Mailbox]: ...

    async def create_mailbox(
        self, name: str, parent_id: str | None, role: str | None, sort_order: int, is_subscribed: bool
    ) -> Mailbox:
        """Raises NameConflict, NotFound (parent)."""

    async def update_mailbox(
        self,
        mailbox_id: str,
        *,
        name: str | None = None,
        parent_id: str | None | Unchanged = UNCHANGED,
        role: str | None | Unchanged = UNCHANGED,
        sort_order: int | None = None,
        is_subscribed: bool | None = None,
    ) -> None:
        """UNCHANGED leaves parent/role as they are. Raises NotFound, NameConflict."""

    async def destroy_mailbox(self, mailbox_id: str, remove_emails: bool) -> None:
        """Raises NotFound, MailboxHasChild, MailboxHasEmail."""

    async def emails(self) -> list[EmailMeta]:
        """Every email of the account."""

    async def get_emails(self, ids: list[str]) -> dict[str, EmailMeta]: ...

    async def read_blob(self, blob_id: str) -> bytes | None:
        """The raw message of an email blob id, or None."""

    async def structures(self, blob_ids: list[str]) -> dict[str, MessageStructure]:
        """The cached MIME structures of email blob ids (no message file is read); ids the backend
        has none for are left out (the caller parses the bytes)."""

    async def update_email(
        self, email_id: str, *, mailbox_ids: frozenset[str] | None = None, keywords: frozenset[str] | None = None
    ) -> None:
        """Raises NotFound."""

    async def destroy_email(self, email_id: str) -> None:
        """Raises NotFound."""

    async def import_email(
        self, data: bytes | Path, mailbox_ids: frozenset[str], keywords: frozenset[str], received_at: float | None
    ) -> EmailMeta:
        """Raises NotFound (mailbox), OverQuota."""

    async def quota(self) -> tuple[int, int, int | None, int | None]:
        """(used bytes, used messages, limit bytes, limit messages); None = unlimited."""

    def watch(self) -> Watch:
        """Wakes on any change to the account, by any process."""
