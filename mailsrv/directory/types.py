"""Value types the directory hands to the rest of the server (immutable, no SQL)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class DirectoryError(Exception):
    """An operator-level problem (duplicate, not found, bad value); the message says which."""


class NotFound(DirectoryError):
    """The named domain, user, alias, group or department does not exist."""


class Conflict(DirectoryError):
    """The name is taken, or the change would break a rule (e.g. domain limits)."""


class PermissionDenied(DirectoryError):
    """The acting administrator's scope does not cover the object."""


@dataclass(frozen=True, slots=True)
class Account:
    """A mailbox owner, as protocols and delivery see it."""

    id: int
    address: str
    domain: str
    display_name: str
    state: str
    store: str
    backend: str
    quota_bytes: int | None
    quota_messages: int | None
    may_send_outside: bool
    department: str | None = None
    title: str = ""
    phone: str = ""

    @property
    def active(self) -> bool:
        return self.state == "active"


class Kind(StrEnum):
    USER = "user"
    ALIAS = "alias"
    CATCHALL = "catchall"
    GROUP = "group"
    OUTSIDE = "outside"
    UNKNOWN = "unknown"
    DISABLED = "disabled"


@dataclass(frozen=True, slots=True)
class Resolution:
    """What an address is (RCPT TO time)."""

    address: str
    kind: Kind
    account: Account | None = None
    group: str | None = None


@dataclass(frozen=True, slots=True)
class Member:
    """One recipient of an expanded group: a local account or an outside address."""

    address: str
    account: Account | None = None


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the authenticator needs to check a login (never leaves the server)."""

    account: Account
    password_hash: str
    scram: str
    networks: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FailureState:
    """Login failure counter of one key ("acct:alice@example.test", "ip:192.0.2.7")."""

    key: str
    count: int
    window_start: float
    locked_until: float
    level: int


@dataclass(frozen=True, slots=True)
class Token:
    """A bearer token as stored (the secret itself is only shown once, at issue)."""

    id: int
    account: Account
    scopes: frozenset[str]
    label: str
    created: float
    expires: float | None


@dataclass(frozen=True, slots=True)
class AdminScope:
    """One administrator grant: super (everything), domain, or department (sub-tree)."""

    user: str
    scope: str
    domain: str | None = None
    dept: str | None = None


#: Rights a grant gives: read only, or read and write (never send as the owner).
GRANT_RIGHTS = ("read", "write")
#: RFC 4314 §2.1: the rights a per-folder ACL entry may hold (letters, in this order)
FOLDER_RIGHTS = "lrswipkxtea"


@dataclass(frozen=True, slots=True)
class Grant:
    """Shared access: ``grantee`` may read (``rights="read"``) or also change (``"write"``) ``owner``'s mail."""

    owner: Account
    grantee: Account
    rights: str
    created: float

    @property
    def read_only(self) -> bool:
        return self.rights != "write"


@dataclass(frozen=True, slots=True)
class FolderRights:
    """One per-folder ACL entry: ``grantee``'s RFC 4314 rights (letters, ``""`` = none) on ``owner``'s
    folder ``mailbox``; it overrides, for that folder, the account :class:`Grant` between the two."""

    owner: Account
    grantee: Account
    mailbox: str
    rights: str


@dataclass(frozen=True, slots=True)
class AnyoneRights:
    """An RFC 4314 ``anyone`` / ``authenticated`` entry on ``owner``'s folder ``mailbox``: the rights of
    every user of the owner's domain who holds no entry or account grant of their own there."""

    owner: Account
    identifier: str  # "anyone" or "authenticated"
    mailbox: str
    rights: str


@dataclass(frozen=True, slots=True)
class LoginStamp:
    """What a cached login is checked against (cheap, no hash): it is still good while the
    generation is the one it was made with and ``usable`` holds."""

    generation: int
    usable: bool  # active and not locked out
