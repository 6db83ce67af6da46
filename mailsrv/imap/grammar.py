"""IMAP command grammar (RFC 9051 §9, RFC 3501 §9 and extensions): pure parsers over bytes.

Every parser takes the buffer and an offset and returns ``(value, offset)``, or
raises :class:`NeedMore` (the buffer ends inside the command),
:class:`NeedLiteral` (a literal's ``{n}`` CRLF was read but its n bytes are not
all there) or :class:`ParseError` (the command is malformed; ``tag`` is set when
it was read, so the reply can be tagged). No I/O, no logging, no state.

The connection loop frames a command with :func:`literal_marker` (a line that
ends with ``{n}`` or ``{n+}`` is followed by n literal bytes) and parses the
complete command once with :func:`parse_command`.
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


# --- command arguments ------------------------------------------------------------------


def _no_args(p: Parser, cmd: Command) -> None:
    return None


def _login(p: Parser, cmd: Command) -> None:
    p.sp()
    cmd.args["user"] = p.astring()
    p.sp()
    cmd.args["password"] = p.astring()


def _authenticate(p: Parser, cmd: Command) -> None:
    p.sp()
    cmd.args["mechanism"] = p.atom().upper().decode()
    cmd.args["initial"] = None
    if p.maybe_sp():
        # RFC 4959 SASL-IR: base64 or "=" for an empty response.
        cmd.args["initial"] = p._run(frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="))


def _enable(p: Parser, cmd: Command) -> None:
    caps = []
    p.sp()
    caps.append(p.atom().upper().decode())
    while p.maybe_sp():
        caps.append(p.atom().upper().decode())
    cmd.args["capabilities"] = caps


def _mailbox_only(p: Parser, cmd: Command) -> None:
    p.sp()
    cmd.args["mailbox"] = p.mailbox()


def _select(p: Parser, cmd: Command) -> None:
    p.sp()
    cmd.args["mailbox"] = p.mailbox()
    cmd.args["condstore"] = False
    cmd.args["qresync"] = None
    if p.maybe_sp():
        p.expect(b"(")
        while not p.at(b")"):
            if p.at(b"CONDSTORE"):
                cmd.args["condstore"] = True
            elif p.at(b"QRESYNC"):
                # RFC 7162 §3.2.5: QRESYNC (uidvalidity modseq [known-uids [(seq uids)]])
                p.sp()
                p.expect(b"(")
                uidvalidity = p.number(nz=True)
                p.sp()
                modseq = p.number(bits=64)
                known = None
                match = None
                if p.maybe_sp():
                    if p.peek() != 0x28:
                        known = p.sequence_set()
                        p.maybe_sp()
                    if p.at(b"("):
                        seqs = p.sequence_set()
                        p.sp()
                        uids = p.sequence_set()
                        p.expect(b")")
                        match = (seqs, uids)
                p.expect(b")")
                cmd.args["qresync"] = (uidvalidity, modseq, known, match)
            else:
                raise p.error("unknown SELECT parameter")
            if p.peek() != 0x29:
                p.sp()


def _create(p: Parser, cmd: Command) -> None:
    p.sp()
    cmd.args["mailbox"] = p.mailbox()
    cmd.args["use"] = []
    if p.maybe_sp():
        # RFC 6154 §3: CREATE name (USE (\Drafts))
        p.expect(b"(")
        p.expect(b"USE")
        p.sp()
        cmd.args["use"] = p.flag_list()
        p.expect(b")")


def _rename(p: Parser, cmd: Command) -> None:
    p.sp()
    cmd.args["mailbox"] = p.mailbox()
    p.sp()
    cmd.args["new"] = p.mailbox()


_LIST_SELECT = {"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"}
_LIST_RETURN = {"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS", "MYRIGHTS"}


def _list(p: Parser, cmd: Command) -> None:
    p.sp()
    select: list[str] = []
    if p.peek() == 0x28:
        # RFC 5258 §3: LIST (selection-options) reference patterns
        p.expect(b"(")
        while not p.at(b")"):
            select.append(p.atom().upper().decode())
            if p.peek() != 0x29:
                p.sp()
        p.sp()
    cmd.args["select"] = select
    cmd.args["reference"] = p.mailbox() if p.peek() not in (0x22, 0x7B) else p.string()
    p.sp()
    if p.peek() == 0x28:
        cmd.args["patterns"] = p.paren_list(p.list_mailbox)
        cmd.args["extended"] = True
    else:
        cmd.args["patterns"] = [p.list_mailbox()]
        cmd.args["extended"] = bool(select)
    returns: dict[str, Any] = {}
    if p.maybe_sp():
        p.expect(b"RETURN")
        p.sp()
        p.expect(b"(")
        while not p.at(b")"):
            opt = p.atom().upper().decode()
            if opt == "STATUS":
                p.sp()
                returns[opt] = p.paren_list(lambda: p.atom().upper().decode())
            else:
                returns[opt] = True
            if p.peek() != 0x29:
                p.sp()
        cmd.args["extended"] = True
    cmd.args["returns"] = returns


def _lsub(p: Parser, cmd: Command) -> None:
    p.sp()
    cmd.args["reference"] = p.astring()
    p.sp()
    cmd.args["patterns"] = [p.list_mailbox()]
    cmd.args["select"] = ["SUBSCRIBED"]
    cmd.args["returns"] = {}
    cmd.args["extended"] = False


def _status(p: Parser, cmd: Command) -> None:
    p.sp()
    cmd.args["mailbox"] = p.mailbox()
    p.sp()
    cmd.args["items"] = p.paren_list(lambda: p.atom().upper().decode())


def _append(p: Parser, cmd: Command) -> None:
    p.sp()
    cmd.args["mailbox"] = p.mailbox()
    messages = []
    # RFC 3502 MULTIAPPEND: append-message *(SP append-message)
    while True:
        p.sp()
        flags: list[bytes] = []
        when = None
        if p.peek() == 0x28:
            flags = p.flag_list()
            p.sp()
        if p.peek() == 0x22:
            when = p.date_time()
            p.sp()
        binary = p.peek() == 0x7E
        if p.at(b"UTF8"):
            # RFC 6855 §4: UTF8 (literal8)
            p.sp()
            p.expect(b"(")
            data = p.literal(binary=True)
            p.expect(b")")
        else:
            data = p.literal(binary=binary)
        messages.append((flags, when, data))
        if p.at_end():
            break
    cmd.args["messages"] = messages


_FETCH_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_FETCH_SIMPLE = {
    "ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822", "RFC822.HEADER", "RFC822.SIZE", "RFC822.TEXT",
    "BODYSTRUCTURE", "UID", "MODSEQ", "EMAILID", "THREADID", "SAVEDATE", "BODY",
}
_FETCH_ATT_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.")


def _section(p: Parser, *, binary: bool = False) -> Section:
    """``section`` after ``[`` up to and including ``]``."""
    parts: list[int] = []
    text = ""
    fields_: list[bytes] = []
    if p.at(b"]"):
        return Section()
    while True:
        c = p.peek()
        if 0x30 <= c <= 0x39:
            parts.append(p.number(nz=True))
            if p.at(b"."):
                continue
            break
        word = p._run(frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz.")).upper().decode()
        if binary:
            raise p.error("BINARY sections are part numbers only")
        if word in ("HEADER", "TEXT") or (word == "MIME" and parts):
            text = word
        elif word in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            text = word
            p.sp()
            fields_ = [f.upper() for f in p.paren_list(p.astring)]
        else:
            raise p.error("bad section")
        break
    p.expect(b"]")
    return Section(tuple(parts), text, tuple(fields_))


def _fetch_att(p: Parser) -> FetchAtt:
    name = p._run(_FETCH_ATT_CHARS).upper().decode()
    if name in ("BODY", "BODY.PEEK", "BINARY", "BINARY.PEEK", "BINARY.SIZE") and p.at(b"["):
        section = _section(p, binary=name.startswith("BINARY"))
        partial = None
        if name != "BINARY.SIZE" and p.at(b"<"):
            start = p.number()
            p.expect(b".")
            length = p.number(nz=True)
            p.expect(b">")
            partial = (start, length)
        return FetchAtt(name, section, partial)
    if name == "PREVIEW":
        if p.at(b" (LAZY)") or p.at(b"(LAZY)"):
            pass
        return FetchAtt(name)
    if name in _FETCH_SIMPLE:
        return FetchAtt(name)
    raise p.error(f"unknown fetch attribute {name or '(none)'}")


def _fetch(p: Parser, cmd: Command) -> None:
    p.sp()
    cmd.args["set"] = p.sequence_set()
    p.sp()
    atts: list[FetchAtt]
    if p.peek() == 0x28:
        atts = p.paren_list(lambda: _fetch_att(p))
    else:
        start = p.pos
        word = p._run(_FETCH_ATT_CHARS).upper().decode()
        if word in _FETCH_MACROS:
            atts = [FetchAtt(n) for n in _FETCH_MACROS[word]]
        else:
            p.pos = start
            atts = [_fetch_att(p)]
    cmd.args["atts"] = atts
    cmd.args["changedsince"] = None
    cmd.args["vanished"] = False
    if p.maybe_sp():
        # RFC 7162 §3.1.4 / §3.2.6: (CHANGEDSINCE n [VANISHED])
        p.expect(b"(")
        while not p.at(b")"):
            if p.at(b"CHANGEDSINCE"):
                p.sp()
                cmd.args["changedsince"] = p.number(bits=64)
            elif p.at(b"VANISHED"):
                cmd.args["vanished"] = True
            else:
                raise p.error("unknown FETCH modifier")
            if p.peek() != 0x29:
                p.sp()


def _store(p: Parser, cmd: Command) -> None:
    p.sp()
    cmd.args["set"] = p.sequence_set()
    p.sp()
    cmd.args["unchangedsince"] = None
    if p.at(b"("):
        p.expect(b"UNCHANGEDSINCE")
        p.sp()
        cmd.args["unchangedsince"] = p.number(bits=64)
        p.expect(b")")
        p.sp()
    mode = "="
    if p.at(b"+"):
        mode = "+"
    elif p.at(b"-"):
        mode = "-"
    p.expect(b"FLAGS")
    silent = p.at(b".SILENT")
    p.sp()
    if p.peek() == 0x28:
        flags = p.flag_list()
    else:
        flags = [p.flag()]
        while p.maybe_sp():
            flags.append(p.flag())
    cmd.args.update(mode=mode, silent=silent, flags=flags)


def _copy(p: Parser, cmd: Command) -> None:
    p.sp()
    cmd.args["set"] = p.sequence_set()
    p.sp()
    cmd.args["mailbox"] = p.mailbox()


def _uid_expunge(p: Parser, cmd: Command) -> None:
    p.sp()
    cmd.args["set"] = p.sequence_set()


_SEARCH_FLAG_KEYS = {
    "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "RECENT", "SEEN", "NEW", "OLD",
    "UNANSWERED", "UNDELETED", "UNDRAFT", "UNFLAGGED", "UNSEEN", "ALL",
}
_SEARCH_STRING_KEYS = {"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"}
_SEARCH_DATE_KEYS = {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE", "SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"}


def search_key(p: Parser) -> SearchKey:
    """One ``search-key`` (RFC 9051 §6.4.4, RFC 7162 MODSEQ, RFC 5032 OLDER/YOUNGER)."""
    c = p.peek()
    if c == 0x28:
        p.nest()
        p.pos += 1
        keys = [search_key(p)]
        while not p.at(b")"):
            p.sp()
            keys.append(search_key(p))
        p.unnest()
        return SearchKey("AND", tuple(keys))
    if 0x30 <= c <= 0x39 or c in (0x2A, 0x24):
        return SearchKey("SEQ", (p.sequence_set(),))
    word = p.atom().upper().decode("ascii", "replace")
    if word in _SEARCH_FLAG_KEYS or word == "SAVEDATESUPPORTED":
        return SearchKey(word)
    if word in _SEARCH_STRING_KEYS:
        p.sp()
        return SearchKey(word, (p.astring(),))
    if word in _SEARCH_DATE_KEYS:
        p.sp()
        return SearchKey(word, (p.date(),))
    if word in ("KEYWORD", "UNKEYWORD"):
        p.sp()
        return SearchKey(word, (p.flag(),))
    if word == "HEADER":
        p.sp()
        name = p.astring()
        p.sp()
        return SearchKey(word, (name, p.astring()))
    if word in ("LARGER", "SMALLER"):
        p.sp()
        return SearchKey(word, (p.number(bits=64),))
    if word in ("OLDER", "YOUNGER"):
        p.sp()
        return SearchKey(word, (p.number(nz=True),))
    if word == "UID":
        p.sp()
        return SearchKey(word, (p.sequence_set(),))
    if word in ("EMAILID", "THREADID"):
        p.sp()
        return SearchKey(word, (p.astring(),))
    if word == "NOT":
        p.sp()
        p.nest()
        key = search_key(p)
        p.unnest()
        return SearchKey(word, (key,))
    if word == "OR":
        p.sp()
        p.nest()
        a = search_key(p)
        p.sp()
        b = search_key(p)
        p.unnest()
        return SearchKey(word, (a, b))
    if word == "MODSEQ":
        # RFC 7162 §3.1.5: MODSEQ [entry-name entry-type-req] mod-sequence-valzer
        p.sp()
        if p.peek() == 0x22:
            p.quoted()
            p.sp()
            p.atom()
            p.sp()
        return SearchKey(word, (p.number(bits=64),))
    raise p.error(f"unknown search key {word}")


def _search_program(p: Parser, cmd: Command, *, charset_required: bool = False) -> None:
    charset = None
    if charset_required:
        charset = p.astring().upper().decode("ascii", "replace")
        p.sp()
    elif p.at(b"CHARSET "):
        charset = p.astring().upper().decode("ascii", "replace")
        p.sp()
    keys = [search_key(p)]
    while p.maybe_sp():
        keys.append(search_key(p))
    cmd.args["charset"] = charset
    cmd.args["key"] = keys[0] if len(keys) == 1 else SearchKey("AND", tuple(keys))


def _search(p: Parser, cmd: Command) -> None:
    p.sp()
    cmd.args["return"] = None
    if p.at(b"RETURN "):
        # RFC 4731 §3 / RFC 9051 §6.4.4: RETURN (MIN MAX ALL COUNT SAVE)
        p.expect(b"(")
        opts: list[str] = []
        while not p.at(b")"):
            opts.append(p.atom().upper().decode())
            if p.peek() != 0x29:
                p.sp()
        for opt in opts:
            if opt not in ("MIN", "MAX", "ALL", "COUNT", "SAVE"):
                raise p.error(f"unknown SEARCH return option {opt}")
        cmd.args["return"] = opts
        p.sp()
    _search_program(p, cmd)


def _sort(p: Parser, cmd: Command) -> None:
    # RFC 5256 §3: SORT (criteria) charset keys
    p.sp()
    cmd.args["return"] = None
    if p.at(b"RETURN "):
        p.expect(b"(")
        opts: list[str] = []
        while not p.at(b")"):
            opts.append(p.atom().upper().decode())
            if p.peek() != 0x29:
                p.sp()
        cmd.args["return"] = opts
        p.sp()
    criteria: list[tuple[bool, str]] = []
    p.expect(b"(")
    reverse = False
    while True:
        word = p.atom().upper().decode()
        if word == "REVERSE":
            reverse = True
            p.sp()
            continue
        if word not in ("ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"):
            raise p.error(f"unknown sort criterion {word}")
        criteria.append((reverse, word))
        reverse = False
        if p.at(b")"):
            break
        p.sp()
    cmd.args["criteria"] = criteria
    p.sp()
    _search_program(p, cmd, charset_required=True)


def _thread(p: Parser, cmd: Command) -> None:
    p.sp()
    algorithm = p.atom().upper().decode()
    if algorithm not in ("REFERENCES", "ORDEREDSUBJECT"):
        raise p.error(f"unknown thread algorithm {algorithm}")
    cmd.args["algorithm"] = algorithm
    p.sp()
    _search_program(p, cmd, charset_required=True)


def _id(p: Parser, cmd: Command) -> None:
    # RFC 2971 §3.1: ID ("key" "value" ...) / NIL
    p.sp()
    params: dict[str, str | None] = {}
    if not p.at(b"NIL"):
        p.expect(b"(")
        while not p.at(b")"):
            key = p.string().decode("utf-8", "replace")
            p.sp()
            value = p.nstring()
            params[key] = None if value is None else value.decode("utf-8", "replace")
            if p.peek() != 0x29:
                p.sp()
    cmd.args["params"] = params


def _getquota(p: Parser, cmd: Command) -> None:
    p.sp()
    cmd.args["root"] = p.astring()


def _setquota(p: Parser, cmd: Command) -> None:
    p.sp()
    cmd.args["root"] = p.astring()
    p.sp()
    p.expect(b"(")
    limits = []
    while not p.at(b")"):
        name = p.atom().upper().decode()
        p.sp()
        limits.append((name, p.number(bits=64)))
        if p.peek() != 0x29:
            p.sp()
    cmd.args["limits"] = limits


def _compress(p: Parser, cmd: Command) -> None:
    p.sp()
    cmd.args["mechanism"] = p.atom().upper().decode()


def _namespace_args(p: Parser, cmd: Command) -> None:
    return None


#: verb -> argument parser. UID-prefixed verbs are in :data:`UID_COMMANDS`.
COMMANDS = {
    "CAPABILITY": _no_args,
    "NOOP": _no_args,
    "LOGOUT": _no_args,
    "STARTTLS": _no_args,
    "AUTHENTICATE": _authenticate,
    "LOGIN": _login,
    "ENABLE": _enable,
    "SELECT": _select,
    "EXAMINE": _select,
    "CREATE": _create,
    "DELETE": _mailbox_only,
    "RENAME": _rename,
    "SUBSCRIBE": _mailbox_only,
    "UNSUBSCRIBE": _mailbox_only,
    "LIST": _list,
    "LSUB": _lsub,
    "NAMESPACE": _namespace_args,
    "STATUS": _status,
    "APPEND": _append,
    "IDLE": _no_args,
    "CHECK": _no_args,
    "CLOSE": _no_args,
    "UNSELECT": _no_args,
    "EXPUNGE": _no_args,
    "SEARCH": _search,
    "FETCH": _fetch,
    "STORE": _store,
    "COPY": _copy,
    "MOVE": _copy,
    "SORT": _sort,
    "THREAD": _thread,
    "ID": _id,
    "GETQUOTA": _getquota,
    "GETQUOTAROOT": _mailbox_only,
    "SETQUOTA": _setquota,
    "COMPRESS": _compress,
}
UID_COMMANDS = {
    "FETCH": _fetch,
    "STORE": _store,
    "COPY": _copy,
    "MOVE": _copy,
    "SEARCH": _search,
    "EXPUNGE": _uid_expunge,
    "SORT": _sort,
    "THREAD": _thread,
}


def parse_command(buf: bytes, *, utf8: bool = True) -> Command:
    """Parse one complete command (its line(s) and literals, ending in CRLF).

    Raises :class:`NeedMore`, :class:`NeedLiteral` or :class:`ParseError` (with
    ``tag`` set once the tag was read; ``code`` an IMAP response code or None).
    """
    p = Parser(buf, utf8=utf8)
    tag = p.tag_()
    p.tag = tag
    p.sp()
    name = p.atom().upper().decode("ascii", "replace")
    cmd = Command(tag, name)
    table = COMMANDS
    if name == "UID":
        p.sp()
        name = p.atom().upper().decode("ascii", "replace")
        cmd.name = name
        cmd.uid = True
        table = UID_COMMANDS
    parse_args = table.get(name)
    if parse_args is None:
        raise ParseError(f"unknown command {('UID ' if cmd.uid else '') + name}", tag)
    parse_args(p, cmd)
    p.end()
    return cmd


def parse_tag(line: bytes) -> bytes | None:
    """The tag of a line that failed to parse, for a tagged BAD; None when there is none."""
    p = Parser(line)
    try:
        tag = p.tag_()
    except (NeedMore, ParseError):
        return None
    if p.pos < len(line) and line[p.pos] == 0x20:
        return tag
    return None
