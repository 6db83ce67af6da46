"""The search query AST: what IMAP SEARCH keys and JMAP filters are mapped onto.

Nodes are frozen, hashable dataclasses; docs/search-api.md gives the mapping
from every IMAP SEARCH key (RFC 9051 §6.4.4, RFC 5032, RFC 7162) and every JMAP
FilterCondition (RFC 8621 §4.4.1). Text values are matched as case-insensitive
substrings after :func:`mailsrv.search.normalize`.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Literal

from pyroaring import BitMap

__all__ = [
    "TEXT_FIELDS",
    "All",
    "And",
    "Day",
    "Flag",
    "HasAttachment",
    "Header",
    "ModSeq",
    "Not",
    "Or",
    "Query",
    "SearchError",
    "Size",
    "SortKey",
    "SORT_COLUMNS",
    "Text",
    "Time",
    "Uids",
]

TextField = Literal["from", "to", "cc", "bcc", "subject", "message-id", "body", "text", "headers"]
#: fields a :class:`Text` node may name; "text" is headers + body (IMAP TEXT)
TEXT_FIELDS: tuple[str, ...] = (
    "from", "to", "cc", "bcc", "subject", "message-id", "body", "text", "headers",
)  # fmt: skip

#: columns a :class:`SortKey` may name besides ``keyword:<kw>``
SORT_COLUMNS: tuple[str, ...] = (
    "arrival", "date", "size", "from", "to", "cc", "displayfrom", "displayto", "subject",
)  # fmt: skip


class SearchError(ValueError):
    """A query or sort the engine cannot evaluate (the session answers BAD)."""


@dataclass(frozen=True, slots=True)
class All:
    """Every message of the view (IMAP ALL)."""


@dataclass(frozen=True, slots=True)
class Flag:
    """System flag (``"\\\\Seen"``) or keyword; compared case-insensitively."""

    name: str


@dataclass(frozen=True, slots=True, eq=False)
class Uids:
    """An explicit set of UIDs (sequence sets, $, \\Recent resolved by the session)."""

    uids: BitMap


@dataclass(frozen=True, slots=True)
class Text:
    """``value`` is a substring of the normalised ``field``."""

    field: str
    value: str

    def __post_init__(self) -> None:
        if self.field not in TEXT_FIELDS:
            raise SearchError(f"unknown text field {self.field!r}")


@dataclass(frozen=True, slots=True)
class Header:
    """``value`` is a substring of a decoded ``name`` header; ``""`` = the header exists."""

    name: str
    value: str


@dataclass(frozen=True, slots=True)
class Day:
    """IMAP date keys: whole days (UTC) of the internal or the sent date."""

    column: Literal["internal", "sent"]
    op: Literal["before", "on", "since"]
    day: datetime.date


@dataclass(frozen=True, slots=True)
class Time:
    """Exact instants: ``before`` is ``< ts``, ``after`` is ``>= ts`` (epoch seconds)."""

    column: Literal["internal", "sent"]
    op: Literal["before", "after"]
    ts: float


@dataclass(frozen=True, slots=True)
class Size:
    """RFC 9051 LARGER (``> n``) / SMALLER (``< n``), in octets."""

    op: Literal["larger", "smaller"]
    n: int


@dataclass(frozen=True, slots=True)
class ModSeq:
    """RFC 7162 §3.1.5 MODSEQ: message modseq ``>= n``."""

    n: int


@dataclass(frozen=True, slots=True)
class HasAttachment:
    """JMAP hasAttachment: a part with Content-Disposition attachment or a filename."""


@dataclass(frozen=True, slots=True)
class And:
    items: tuple[Query, ...]

    def __init__(self, *items: Query) -> None:
        object.__setattr__(self, "items", tuple(items))


@dataclass(frozen=True, slots=True)
class Or:
    items: tuple[Query, ...]

    def __init__(self, *items: Query) -> None:
        object.__setattr__(self, "items", tuple(items))


@dataclass(frozen=True, slots=True)
class Not:
    item: Query


Query = All | Flag | Uids | Text | Header | Day | Time | Size | ModSeq | HasAttachment | And | Or | Not


@dataclass(frozen=True, slots=True)
class SortKey:
    """RFC 5256 / RFC 5957 sort criterion or JMAP Comparator (see docs/search-api.md)."""

    column: str
    reverse: bool = False

    def __post_init__(self) -> None:
        if self.column not in SORT_COLUMNS and not (
            self.column.startswith("keyword:") and len(self.column) > 8
        ):
            raise SearchError(f"unknown sort column {self.column!r}")
