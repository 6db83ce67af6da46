"""Serialising IMAP response data (RFC 9051 §7 and §9): strings, lists, flags, mailbox names.

Strings are sent as an atom-free quoted string when they can be, else as a
literal; NIL for None. Everything returns bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from mailsrv.imap import mutf7
from mailsrv.imap.grammar import ASTRING_CHARS, MONTHS

_QUOTABLE = frozenset(c for c in range(0x01, 0x80) if c not in (0x0D, 0x0A))


def quoted_ok(value: bytes, utf8: bool = False) -> bool:
    """True when ``value`` may be sent as a quoted string (RFC 9051 §4.3: no CR, LF, NUL)."""
    if len(value) > 1000:
        return False
    for c in value:
        if c not in _QUOTABLE and not (utf8 and c >= 0x80):
            return False
    return True


def string(value: bytes, utf8: bool = False) -> bytes:
    """``string``: quoted with ``\\`` escapes when possible, else a literal."""
    if quoted_ok(value, utf8):
        return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return literal(value)


def literal(value: bytes) -> bytes:
    return b"{%d}\r\n" % len(value) + value


def nstring(value: bytes | None, utf8: bool = False) -> bytes:
    return b"NIL" if value is None else string(value, utf8)


def astring(value: bytes) -> bytes:
    """``astring``: the bare atom when it is one, else a string."""
    if value and all(c in ASTRING_CHARS for c in value):
        return value
    return string(value)


def mailbox(name: str, utf8: bool) -> bytes:
    """A mailbox name as the client expects it: UTF-8 (IMAP4rev2, UTF8=ACCEPT) or modified UTF-7."""
    raw = name.encode("utf-8") if utf8 else mutf7.encode(name)
    if raw.upper() == b"INBOX":
        return b"INBOX"
    if raw and all(c in ASTRING_CHARS for c in raw):
        return raw
    return string(raw, utf8)


def flag_list(flags: Iterable[str]) -> bytes:
    return b"(" + " ".join(flags).encode("utf-8") + b")"


def paren(items: Iterable[bytes]) -> bytes:
    return b"(" + b" ".join(items) + b")"


def date_time(value: datetime) -> bytes:
    """``date-time``: ``"dd-Mon-yyyy hh:mm:ss +zzzz"`` with a space-padded day (RFC 9051 §9)."""
    off = value.utcoffset()
    minutes = int(off.total_seconds() // 60) if off is not None else 0
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return (
        f'"{value.day:2d}-{MONTHS[value.month - 1].title()}-{value.year:04d} '
        f'{value.hour:02d}:{value.minute:02d}:{value.second:02d} {sign}{minutes // 60:02d}{minutes % 60:02d}"'
    ).encode("ascii")
