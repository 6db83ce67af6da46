"""SEARCH key evaluation (RFC 9051 §6.4.4, RFC 7162 §3.1.5, RFC 8514 SAVEDATE) over a mailbox view.

Flag, size, date, UID and sequence keys use the view's metadata only. Header
and text keys read the message: correct, not fast, until the search index
(``mailsrv.search``) lands; :func:`needs_content` tells the caller when to read.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

from mailsrv.imap.grammar import SearchKey
from mailsrv.imap.structure import Part, parse

_CONTENT_KEYS = {"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO", "HEADER", "SENTBEFORE", "SENTON", "SENTSINCE"}

_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True), "UNANSWERED": ("\\Answered", False),
    "DELETED": ("\\Deleted", True), "UNDELETED": ("\\Deleted", False),
    "DRAFT": ("\\Draft", True), "UNDRAFT": ("\\Draft", False),
    "FLAGGED": ("\\Flagged", True), "UNFLAGGED": ("\\Flagged", False),
    "SEEN": ("\\Seen", True), "UNSEEN": ("\\Seen", False),
}


def simple_flag(key: SearchKey) -> tuple[str, bool] | None:
    """(flag, wanted) when ``key`` is a single system-flag key such as UNSEEN, else None."""
    return _FLAG_KEYS.get(key.op) if not key.args else None


def needs_content(key: SearchKey) -> bool:
    if key.op in _CONTENT_KEYS:
        return True
    return any(isinstance(a, SearchKey) and needs_content(a) for a in key.args)


def uses_modseq(key: SearchKey) -> bool:
    if key.op == "MODSEQ":
        return True
    return any(isinstance(a, SearchKey) and uses_modseq(a) for a in key.args)


def _fold(text: str) -> str:
    # RFC 9051 §6.4.4: case-insensitive substring match (we fold with str.casefold).
    return text.casefold()


def _decoded_header(value: bytes) -> str:
    text = value.decode("utf-8", "replace")
    try:
        from email.header import decode_header, make_header

        return str(make_header(decode_header(text)))
    except Exception:
        return text


def _day(ts: float) -> date:
    # deviation (RFC 9051 §6.4.4 says "disregarding time and timezone"): internal dates are compared in UTC.
    return datetime.fromtimestamp(ts, UTC).date()


class Message:
    """What a key is evaluated against: seq, metadata, and (lazily given) the raw message."""

    __slots__ = ("seq", "info", "raw", "_part")

    def __init__(self, seq: int, info: Any, raw: bytes | None) -> None:
        self.seq = seq
        self.info = info
        self.raw = raw
        self._part: Part | None = None

    @property
    def part(self) -> Part:
        if self._part is None:
            self._part = parse(self.raw or b"")
        return self._part

    def header_text(self, name: bytes) -> str | None:
        values = [v for k, v in self.part.headers if k.lower() == name.lower()]
        if not values:
            return None
        return " ".join(_decoded_header(v) for v in values)


def matcher(key: SearchKey, *, largest_seq: int, largest_uid: int, saved: list[int],
            now: float, recent: set[int] | frozenset[int] = frozenset()) -> Callable[[Message], bool]:
    """Compile ``key`` into a predicate over :class:`Message`; ``recent``: the session's \\Recent uids."""

    def sub(k: SearchKey) -> Callable[[Message], bool]:
        return matcher(k, largest_seq=largest_seq, largest_uid=largest_uid, saved=saved, now=now, recent=recent)

    op = key.op
    args = key.args
    if op == "ALL":
        return lambda m: True
    if op == "AND":
        subs = [sub(k) for k in args]
        return lambda m: all(f(m) for f in subs)
    if op == "OR":
        a, b = sub(args[0]), sub(args[1])
        return lambda m: a(m) or b(m)
    if op == "NOT":
        a = sub(args[0])
        return lambda m: not a(m)
    if op in _FLAG_KEYS:
        flag, want = _FLAG_KEYS[op]
        return lambda m: (flag in m.info.flags) == want
    if op == "RECENT":
        return lambda m: m.info.uid in recent
    if op == "NEW":
        # RFC 3501 §6.4.4: NEW is (RECENT UNSEEN)
        return lambda m: m.info.uid in recent and "\\Seen" not in m.info.flags
    if op == "OLD":
        return lambda m: m.info.uid not in recent
    if op in ("KEYWORD", "UNKEYWORD"):
        want = op == "KEYWORD"
        kw = args[0].decode("utf-8", "replace").lower()
        return lambda m: any(f.lower() == kw for f in m.info.flags) == want
    if op == "LARGER":
        return lambda m: m.info.size > args[0]
    if op == "SMALLER":
        return lambda m: m.info.size < args[0]
    if op == "MODSEQ":
        return lambda m: m.info.modseq >= args[0]
    if op == "OLDER":
        return lambda m: m.info.internal_date <= now - args[0]
    if op == "YOUNGER":
        return lambda m: m.info.internal_date >= now - args[0]
    if op in ("BEFORE", "ON", "SINCE", "SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"):
        d: date = args[0]
        attr = "saved_date" if op.startswith("SAVED") else "internal_date"
        cmp = op.removeprefix("SAVED")
        if cmp == "BEFORE":
            return lambda m: _day(getattr(m.info, attr)) < d
        if cmp == "ON":
            return lambda m: _day(getattr(m.info, attr)) == d
        return lambda m: _day(getattr(m.info, attr)) >= d
    if op == "SAVEDATESUPPORTED":
        return lambda m: True
    if op == "SEQ":
        s = args[0]
        if s.saved:
            saved_uids = frozenset(saved)
            return lambda m: m.info.uid in saved_uids
        return lambda m: s.contains(m.seq, largest_seq)
    if op == "UID":
        s = args[0]
        if s.saved:
            saved_uids = frozenset(saved)
            return lambda m: m.info.uid in saved_uids
        return lambda m: s.contains(m.info.uid, largest_uid)
    if op == "EMAILID":
        value = args[0].decode("ascii", "replace")
        return lambda m: m.info.email_id == value
    if op == "THREADID":
        value = args[0].decode("ascii", "replace")
        return lambda m: m.info.thread_id == value
    if op in ("SENTBEFORE", "SENTON", "SENTSINCE"):
        d = args[0]

        def sent(m: Message) -> bool:
            value = m.header_text(b"Date")
            if value is None:
                return False
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError):
                return False
            # RFC 9051 §6.4.4: the Date: header's date, disregarding time and timezone.
            day = when.date()
            return day < d if op == "SENTBEFORE" else day == d if op == "SENTON" else day >= d

        return sent
    if op in ("FROM", "TO", "CC", "BCC", "SUBJECT"):
        needle = _fold(args[0].decode("utf-8", "replace"))
        name = op.title().encode() if op != "BCC" else b"Bcc"
        return lambda m: needle in _fold(m.header_text(name) or "")
    if op == "HEADER":
        name, value = args
        needle = _fold(value.decode("utf-8", "replace"))
        # RFC 9051 §6.4.4: an empty string matches every message that has the field.
        return lambda m: (h := m.header_text(name)) is not None and needle in _fold(h)
    if op in ("BODY", "TEXT"):
        needle = _fold(args[0].decode("utf-8", "replace"))
        whole = op == "TEXT"

        def text(m: Message) -> bool:
            raw = m.raw or b""
            hay = raw if whole else raw[m.part.body :]
            if needle in _fold(hay.decode("utf-8", "replace")):
                return True
            if whole and any(needle in _fold(_decoded_header(v)) for _, v in m.part.headers):
                return True
            return _decoded_body_contains(m.part, raw, needle)

        return text
    raise ValueError(f"unsupported search key {op}")



def _charset(p: Part) -> str:
    """The part's charset; US-ASCII (also the default) is read as UTF-8, its superset, as clients do."""
    charset = dict(p.params).get(b"CHARSET", b"utf-8").decode("ascii", "replace")
    return "utf-8" if charset.lower() in ("us-ascii", "ascii") else charset


def first_text(raw: bytes, part: Part, max_chars: int = 200) -> str:
    """The first ``max_chars`` characters of the first text/plain part, decoded, whitespace collapsed."""
    import base64
    import quopri

    stack = [part]
    while stack:
        p = stack.pop(0)
        if p.children:
            stack = list(p.children) + stack
            continue
        if p.maintype != b"TEXT" or p.subtype != b"PLAIN":
            continue
        enc = (p.header(b"Content-Transfer-Encoding") or b"").strip().lower()
        body = raw[p.body : p.end]
        try:
            if enc == b"base64":
                body = base64.b64decode(re.sub(rb"[^A-Za-z0-9+/=]", b"", body) + b"==", validate=False)
            elif enc == b"quoted-printable":
                body = quopri.decodestring(body)
        except ValueError:
            continue
        charset = _charset(p)
        try:
            text = body.decode(charset, "replace")
        except LookupError:
            text = body.decode("utf-8", "replace")
        return " ".join(text.split())[:max_chars]
    return ""


def _decoded_body_contains(part: Part, raw: bytes, needle: str) -> bool:
    """Search decoded (base64 / quoted-printable) text parts."""
    import base64
    import quopri

    stack = [part]
    while stack:
        p = stack.pop()
        stack.extend(p.children)
        if p.message is not None:
            stack.append(p.message)
            continue
        if p.children or p.maintype != b"TEXT":
            continue
        enc = (p.header(b"Content-Transfer-Encoding") or b"").strip().lower()
        body = raw[p.body : p.end]
        try:
            if enc == b"base64":
                body = base64.b64decode(re.sub(rb"[^A-Za-z0-9+/=]", b"", body) + b"==", validate=False)
            elif enc == b"quoted-printable":
                body = quopri.decodestring(body)
            else:
                continue
        except ValueError:
            continue
        charset = _charset(p)
        try:
            text = body.decode(charset, "replace")
        except LookupError:
            text = body.decode("utf-8", "replace")
        if needle in _fold(text):
            return True
    return False
