"""IMAP command grammar (RFC 9051 §9, RFC 3501 §9 and extensions): pure parsers over bytes.

Every parser takes the buffer and an offset and returns ``(value, offset)``, or
raises :class:`NeedMore` (the buffer ends inside the command),
:class:`NeedLiteral` (a literal's ``{n}`` CRLF was read but its n bytes are not
all there) or :class:`ParseError` (the command is malformed; ``tag`` is set when
it was read, so the reply can be tagged). No I/O, no logging, no state.

The connection loop frames a command with :func:`literal_marker` (a line that
ends with ``{n}`` or ``{n+}`` is followed by n literal bytes) and parses the
complete command once with :func:`mailsrv.imap.commands.parse_command`; the
argument grammar of each command lives there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any

from mailsrv.imap.seqset import STAR, SequenceSet

# --- outcomes -------------------------------------------------------------------


class NeedMore(Exception):
    """The buffer ends before the command does."""


class NeedLiteral(Exception):
    """A literal of ``size`` bytes starts at ``offset`` and is not complete."""

    def __init__(self, size: int, nonsync: bool, offset: int) -> None:
        super().__init__(size)
        self.size = size
        self.nonsync = nonsync
        self.offset = offset


class ParseError(Exception):
    """A malformed command; answered with ``tag BAD`` (or untagged BAD without a tag)."""

    def __init__(self, message: str, tag: bytes | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.tag = tag
        self.code = code


# --- character classes (RFC 9051 §9) ----------------------------------------------

_CTL = set(range(0x00, 0x20)) | {0x7F}
#: atom-specials: "(" ")" "{" SP CTL list-wildcards quoted-specials resp-specials
_ATOM_SPECIALS = _CTL | set(b'(){ %*"\\]')
ATOM_CHARS = frozenset(c for c in range(0x01, 0x80) if c not in _ATOM_SPECIALS)
#: ASTRING-CHAR = ATOM-CHAR / resp-specials
ASTRING_CHARS = ATOM_CHARS | {ord("]")}
#: tag = 1*<any ASTRING-CHAR except "+">
TAG_CHARS = ASTRING_CHARS - {ord("+")}
#: list-char = ATOM-CHAR / list-wildcards / resp-specials
LIST_CHARS = ASTRING_CHARS | {ord("%"), ord("*")}

MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")

#: Deepest nesting of parenthesised search keys / lists accepted (bounds recursion).
MAX_NESTING = 32

_LITERAL_TAIL = re.compile(rb"~?\{(\d{1,20})(\+?)\}\r?\n\Z")


def literal_marker(line: bytes) -> tuple[int, bool] | None:
    """``(size, nonsync)`` when ``line`` ends with a literal announcement, else None.

    RFC 9051 §4.3: a literal is ``{n}`` CRLF (or ``{n+}`` with LITERAL+/LITERAL-,
    ``~{n}`` for BINARY). A quoted string cannot span lines and an atom cannot
    contain ``{``, so a line ending like this always announces a literal.
    """
    m = _LITERAL_TAIL.search(line)
    if m is None:
        return None
    return int(m.group(1)), bool(m.group(2))


# --- values -------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """A ``section`` of BODY[...] / BINARY[...] (RFC 9051 §6.4.5)."""

    parts: tuple[int, ...] = ()
    #: "", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"
    text: str = ""
    fields: tuple[bytes, ...] = ()

    def spec(self) -> bytes:
        """The section as echoed in the response, e.g. ``1.2.HEADER.FIELDS (FROM)``."""
        out = ".".join(str(p) for p in self.parts)
        if self.text:
            out = f"{out}.{self.text}" if out else self.text
        b = out.encode()
        if self.fields:
            b += b" (" + b" ".join(self.fields) + b")"
        return b


@dataclass(frozen=True)
class FetchAtt:
    """One fetch-att: ``name`` upper-case (FLAGS, BODY, BODY.PEEK, BINARY, ...)."""

    name: str
    section: Section | None = None
    partial: tuple[int, int] | None = None


@dataclass(frozen=True)
class SearchKey:
    """A search key: ``op`` upper-case; ``args`` its arguments (sub-keys for AND/OR/NOT)."""

    op: str
    args: tuple[Any, ...] = ()


@dataclass
class Command:
    tag: bytes
    name: str
    #: UID prefix (UID FETCH etc.)
    uid: bool = False
    args: dict[str, Any] = field(default_factory=dict)


# --- the cursor -----------------------------------------------------------------------


class Parser:
    """A cursor over one command's bytes. Methods consume and return values."""

    __slots__ = ("buf", "pos", "tag", "utf8", "depth")

    def __init__(self, buf: bytes, pos: int = 0, *, utf8: bool = True) -> None:
        self.buf = buf
        self.pos = pos
        self.tag: bytes | None = None
        #: 8-bit text in quoted strings (UTF8=ACCEPT, RFC 6855 / IMAP4rev2)
        self.utf8 = utf8
        self.depth = 0

    # low level

    def error(self, message: str, code: str | None = None) -> ParseError:
        return ParseError(message, self.tag, code)

    def peek(self) -> int:
        if self.pos >= len(self.buf):
            raise NeedMore
        return self.buf[self.pos]

    def at(self, literal: bytes) -> bool:
        """True (and consumed) when the input continues with ``literal`` (case-insensitive)."""
        n = len(literal)
        chunk = self.buf[self.pos : self.pos + n]
        if chunk.upper() == literal.upper():
            self.pos += n
            return True
        if len(chunk) < n and literal.upper().startswith(chunk.upper()):
            raise NeedMore
        return False

    def expect(self, literal: bytes, what: str | None = None) -> None:
        if not self.at(literal):
            raise self.error(f"expected {what or literal.decode()}")

    def sp(self) -> None:
        if self.peek() != 0x20:
            raise self.error("expected a space")
        self.pos += 1

    def maybe_sp(self) -> bool:
        if self.pos < len(self.buf) and self.buf[self.pos] == 0x20:
            self.pos += 1
            return True
        if self.pos >= len(self.buf):
            raise NeedMore
        return False

    def end(self) -> None:
        """CRLF ends the command (a bare LF is accepted as a courtesy; RFC 9051 §2.2 asks for CRLF)."""
        if self.at(b"\r\n") or self.at(b"\n"):
            if self.pos != len(self.buf):
                raise self.error("junk after the command")
            return
        if self.pos < len(self.buf) and self.buf[self.pos] == 0x20:
            raise self.error("unexpected space (trailing or doubled)")
        raise self.error("unexpected characters at the end of the command")

    def at_end(self) -> bool:
        if self.pos >= len(self.buf):
            raise NeedMore
        return self.buf[self.pos] in (0x0D, 0x0A)

    def _run(self, chars: frozenset[int] | set[int]) -> bytes:
        start = self.pos
        buf = self.buf
        n = len(buf)
        i = start
        while i < n and buf[i] in chars:
            i += 1
        if i == n:
            raise NeedMore
        self.pos = i
        return buf[start:i]

    # RFC 9051 §9 productions

    def atom(self) -> bytes:
        value = self._run(ATOM_CHARS)
        if not value:
            raise self.error("expected an atom")
        return value

    def tag_(self) -> bytes:
        value = self._run(TAG_CHARS)
        if not value:
            raise self.error("missing or invalid tag")
        return value

    def number(self, *, nz: bool = False, bits: int = 32) -> int:
        """``number`` (32-bit) / ``number64`` / ``nz-number``."""
        digits = self._run(frozenset(b"0123456789"))
        if not digits:
            raise self.error("expected a number")
        if len(digits.lstrip(b"0")) > 20:  # before int(): past 4 300 digits it raises ValueError (a crash)
            raise self.error("number out of range")
        value = int(digits)
        if value >= 1 << bits or (bits == 64 and value >= 1 << 63):
            raise self.error("number out of range")
        if nz and value == 0:
            raise self.error("expected a non-zero number")
        return value

    def quoted(self) -> bytes:
        """``quoted`` with ``\\"`` and ``\\\\`` escapes; the opening quote is at ``pos``."""
        buf = self.buf
        i = self.pos + 1
        out = bytearray()
        n = len(buf)
        while True:
            if i >= n:
                raise NeedMore
            c = buf[i]
            if c == 0x22:
                self.pos = i + 1
                return bytes(out)
            if c == 0x5C:
                if i + 1 >= n:
                    raise NeedMore
                nxt = buf[i + 1]
                if nxt not in (0x22, 0x5C):
                    raise self.error("bad escape in a quoted string")
                out.append(nxt)
                i += 2
                continue
            if c in (0x0D, 0x0A, 0x00) or (c >= 0x80 and not self.utf8):
                raise self.error("invalid character in a quoted string")
            out.append(c)
            i += 1

    def literal(self, *, binary: bool = False) -> bytes:
        """``literal`` / ``literal8``: ``{n}`` CRLF then n bytes (``~{n}`` for BINARY)."""
        start = self.pos
        if binary:
            self.expect(b"~")
        self.expect(b"{")
        size = self.number(bits=64)
        nonsync = self.at(b"+")
        self.expect(b"}")
        if not (self.at(b"\r\n") or self.at(b"\n")):
            raise self.error("expected CRLF after a literal's size")
        end = self.pos + size
        if end > len(self.buf):
            self.pos = start
            raise NeedLiteral(size, nonsync, end - size)
        data = self.buf[self.pos : end]
        if not binary and b"\x00" in data:
            # RFC 9051 §4.3: NUL is not allowed in a literal (only in literal8, BINARY).
            raise self.error("NUL in a literal (use literal8)", "CLIENTBUG")
        self.pos = end
        return data

    def string(self) -> bytes:
        c = self.peek()
        if c == 0x22:
            return self.quoted()
        if c == 0x7B:
            return self.literal()
        raise self.error("expected a string")

    def astring(self) -> bytes:
        c = self.peek()
        if c == 0x22:
            return self.quoted()
        if c == 0x7B:
            return self.literal()
        value = self._run(ASTRING_CHARS)
        if not value:
            raise self.error("expected an atom or a string")
        return value

    def nstring(self) -> bytes | None:
        if self.at(b"NIL"):
            return None
        return self.string()

    def list_mailbox(self) -> bytes:
        c = self.peek()
        if c in (0x22, 0x7B):
            return self.string()
        value = self._run(LIST_CHARS)
        if not value:
            raise self.error("expected a mailbox pattern")
        return value

    def mailbox(self) -> bytes:
        """``mailbox``: an astring; ``INBOX`` in any case means INBOX (RFC 9051 §5.1)."""
        name = self.astring()
        return b"INBOX" if name.upper() == b"INBOX" else name

    def seq_number(self) -> int:
        if self.at(b"*"):
            return STAR
        return self.number(nz=True)

    def sequence_set(self) -> SequenceSet:
        """``sequence-set`` or ``$`` (RFC 5182 SEARCHRES)."""
        if self.at(b"$"):
            return SequenceSet((), saved=True)
        ranges = []
        while True:
            lo = self.seq_number()
            hi = lo
            if self.at(b":"):
                hi = self.seq_number()
            ranges.append((lo, hi))
            if not self.at(b","):
                break
        return SequenceSet(tuple(ranges))

    def flag(self) -> bytes:
        """``flag`` / ``flag-fetch``: ``\\Word`` or a keyword atom."""
        if self.at(b"\\"):
            if self.at(b"*"):
                return b"\\*"
            return b"\\" + self.atom()
        return self.atom()

    def flag_list(self) -> list[bytes]:
        self.expect(b"(")
        flags: list[bytes] = []
        if self.at(b")"):
            return flags
        while True:
            flags.append(self.flag())
            if self.at(b")"):
                return flags
            self.sp()

    def paren_list(self, item: Any) -> list[Any]:
        """``"(" item *(SP item) ")"`` (at least one item)."""
        self.expect(b"(")
        out = [item()]
        while not self.at(b")"):
            self.sp()
            out.append(item())
        return out

    def date_month(self) -> int:
        chunk = self.buf[self.pos : self.pos + 3]
        if len(chunk) < 3:
            raise NeedMore
        try:
            month = MONTHS.index(chunk.decode("ascii", "replace").upper()) + 1
        except ValueError:
            raise self.error("bad month") from None
        self.pos += 3
        return month

    def date(self) -> date:
        """``date`` for SEARCH: ``d-Mon-yyyy``, optionally quoted."""
        quoted = self.at(b'"')
        day = self.number()
        self.expect(b"-")
        month = self.date_month()
        self.expect(b"-")
        year = self.number()
        if quoted:
            self.expect(b'"')
        try:
            return date(year, month, day)
        except ValueError:
            raise self.error("invalid date") from None

    def date_time(self) -> datetime:
        """``date-time``: ``"dd-Mon-yyyy hh:mm:ss +zzzz"`` (day may be space-padded)."""
        self.expect(b'"')
        if self.at(b" "):
            pass
        day = self.number()
        self.expect(b"-")
        month = self.date_month()
        self.expect(b"-")
        year = self.number()
        self.sp()
        hh = self.number()
        self.expect(b":")
        mm = self.number()
        self.expect(b":")
        ss = self.number()
        self.sp()
        sign = self.peek()
        if sign not in (0x2B, 0x2D):
            raise self.error("bad zone in date-time")
        self.pos += 1
        zone = self.number()
        self.expect(b'"')
        offset = timedelta(hours=zone // 100, minutes=zone % 100)
        try:
            return datetime(year, month, day, hh, mm, ss, tzinfo=timezone(-offset if sign == 0x2D else offset))
        except ValueError:
            raise self.error("invalid date-time") from None

    def nest(self) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self.error("too deeply nested", "LIMIT")

    def unnest(self) -> None:
        self.depth -= 1
