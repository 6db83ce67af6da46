"""The compiled form of a Sieve script (mailsrv.sieve.lang compiles it, mailsrv.sieve.interp runs it):
immutable typed nodes, one per test and action, and the :class:`Script` that holds them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from mailsrv.sieve.match import Matcher
from mailsrv.sieve.mimeedit import Enclose, Replace
from mailsrv.sieve.mimeparts import Break, ExtractText, ForEveryPart, MimeOpts


@dataclass(frozen=True)
class HeaderTest:
    names: tuple[str, ...]  # lower-cased field names
    keys: tuple[Matcher, ...]
    index: int = 0  # RFC 5260 §6 :index: the n-th occurrence (1-based; negative: :last); 0 every one
    mime: MimeOpts | None = None  # RFC 5703 §4.1: the current MIME part's fields


@dataclass(frozen=True)
class AddressTest:
    names: tuple[str, ...]  # header fields (address test) or envelope parts "from"/"to" (envelope test)
    part: str  # "all" | "localpart" | "domain" | "user" | "detail"
    keys: tuple[Matcher, ...]
    envelope: bool
    index: int = 0  # as HeaderTest's
    mime: MimeOpts | None = None  # RFC 5703 §4.2 (no option: :anychild only)


@dataclass(frozen=True)
class DateTest:
    """RFC 5260 §4 ``date`` (``header``: a lower-cased field name) and §5 ``currentdate`` (``header``
    None): ``part`` of the date, in ``zone`` ("+hhmm"; "" :originalzone; None the server's zone)."""

    header: str | None
    part: str
    zone: str | None
    keys: tuple[Matcher, ...]
    index: int = 0


@dataclass(frozen=True)
class ExistsTest:
    names: tuple[str, ...]
    mime: MimeOpts | None = None  # RFC 5703 §4.3 (no option: :anychild only)


@dataclass(frozen=True)
class SizeTest:
    over: bool
    limit: int


@dataclass(frozen=True)
class HasFlagTest:
    keys: tuple[Matcher, ...]


@dataclass(frozen=True)
class StringTest:
    """RFC 5229 §5: ``sources`` (expanded at run time) against the keys."""

    sources: tuple[str, ...]
    keys: tuple[Matcher, ...]


@dataclass(frozen=True)
class VerdictTest:
    """RFC 5235: ``spamtest`` (``kind`` "spam", "spam_percent" with :percent) or ``virustest``
    ("virus"): the message's value against the key."""

    kind: str
    keys: tuple[Matcher, ...]


@dataclass(frozen=True)
class DuplicateTest:
    """RFC 7352 §3: whether this message's id (``uniqueid``, else the ``header`` field's value, else
    its Message-ID) was seen under ``handle`` in the last ``seconds`` (``last``: since it was last
    seen, not first)."""

    handle: str
    header: str | None
    uniqueid: str | None
    seconds: int
    last: bool


@dataclass(frozen=True)
class EnvironmentTest:
    """RFC 5183 §4: the environment item ``name`` (lower case) against the keys."""

    name: str
    keys: tuple[Matcher, ...]


@dataclass(frozen=True)
class MailboxExists:
    names: tuple[str, ...]


@dataclass(frozen=True)
class BodyTest:
    """RFC 5173: ``transform`` "raw" (the undecoded body, one value), "text" (each text part, decoded)
    or "content" (each part of ``types``, decoded)."""

    transform: str
    types: tuple[str, ...]
    keys: tuple[Matcher, ...]


@dataclass(frozen=True)
class NotifyMethodTest:
    """RFC 5435 §5: ``valid_notify_method`` (``capability`` None) and §6 ``notify_method_capability``."""

    uris: tuple[str, ...]
    capability: str | None
    keys: tuple[Matcher, ...] = ()


@dataclass(frozen=True)
class AllOf:
    tests: tuple[Node, ...]


@dataclass(frozen=True)
class AnyOf:
    tests: tuple[Node, ...]


@dataclass(frozen=True)
class NotTest:
    test: Node


@dataclass(frozen=True)
class Const:
    value: bool


Node = HeaderTest | AddressTest | DateTest | NotifyMethodTest | ExistsTest | SizeTest | HasFlagTest | BodyTest | MailboxExists | StringTest | VerdictTest | EnvironmentTest | DuplicateTest | AllOf | AnyOf | NotTest | Const


@dataclass(frozen=True)
class Keep:
    flags: tuple[str, ...] | None  # None: the imap4flags internal variable at the time of the action


@dataclass(frozen=True)
class Discard:
    pass


@dataclass(frozen=True)
class FileInto:
    mailbox: str
    copy: bool
    flags: tuple[str, ...] | None


@dataclass(frozen=True)
class Redirect:
    address: str
    copy: bool


@dataclass(frozen=True)
class FlagOp:
    op: str  # "setflag" | "addflag" | "removeflag"
    flags: tuple[str, ...]


@dataclass(frozen=True)
class VacationAction:
    """RFC 5230 §4: the reply's parameters as written (``seconds`` from :days or :seconds)."""

    reason: str
    seconds: int
    subject: str | None
    from_: str | None
    addresses: tuple[str, ...]
    mime: bool
    handle: str


@dataclass(frozen=True)
class Reject:
    """RFC 5429: refuse the message with ``reason`` (``protocol``: ereject, refuse in SMTP when it can)."""

    reason: str
    protocol: bool


@dataclass(frozen=True)
class ErrorAction:
    """RFC 5463 §5 ``error``: a runtime error with ``message`` (the message is kept)."""

    message: str


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class Notify:
    """RFC 5435 §3: a notification by ``method`` (a mailto URI, RFC 5436)."""

    method: str
    from_: str | None
    importance: str  # "1" high, "2" normal, "3" low
    options: tuple[str, ...]
    message: str | None


@dataclass(frozen=True)
class AddHeader:
    """RFC 5293 §4: add field ``name: value`` at the beginning (``last``: the end)."""

    name: str
    value: str
    last: bool


@dataclass(frozen=True)
class DeleteHeader:
    """RFC 5293 §5: delete the occurrences of ``name`` (lower-cased) that match ``keys`` (none: every
    one), or only the ``index``-th (negative: from the end)."""

    name: str
    keys: tuple[Matcher, ...]
    index: int


@dataclass(frozen=True)
class Include:
    """RFC 6609 §3.2: run the ``location`` ("personal" | "global") script ``name`` here."""

    name: str
    location: str
    once: bool
    optional: bool


@dataclass(frozen=True)
class Return:
    """RFC 6609 §3.4: back to the including script (the end, in the main one)."""


@dataclass(frozen=True)
class GlobalVars:
    """RFC 6609 §3.3: these variables (lower-cased) are shared with the other scripts."""

    names: tuple[str, ...]


@dataclass(frozen=True)
class SetVar:
    """RFC 5229 §4: ``set`` (name lower-cased; modifiers in the order they apply)."""

    name: str
    value: str
    modifiers: tuple[str, ...]


@dataclass(frozen=True)
class If:
    branches: tuple[tuple[Node, tuple[Action, ...]], ...]  # if, then each elsif
    orelse: tuple[Action, ...] | None


Action = (Keep | Discard | FileInto | Redirect | FlagOp | VacationAction | Reject | Stop | SetVar | If | Include | Return
          | GlobalVars | Notify | AddHeader | DeleteHeader | ErrorAction | ForEveryPart | Break | ExtractText
          | Replace | Enclose)


@dataclass(frozen=True)
class Script:
    """A compiled script: immutable, shared by every delivery (cache it per script text)."""

    commands: tuple[Action, ...]
    extensions: frozenset[str]
    size: int
    #: RFC 6609: the scripts its includes (and theirs) name, by (location, name); None: not there.
    #: Filled by :func:`mailsrv.sieve.include.resolve` (empty: nothing resolved yet)
    includes: Mapping[tuple[str, str], Script | None] = field(default_factory=dict, compare=False)
