"""Header field values: unfolding, RFC 2047 encoded words, RFC 2231 parameters, addresses.

Everything here is a pure function over bytes; nothing raises on bad input.
Raw header bytes are handled as latin-1 ``str`` (a 1:1 byte mapping) while
parsing, so IMAP output can give back the exact bytes and JMAP output can
decode them with the right charset at the end.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
from typing import NamedTuple

__all__ = [
    "Address",
    "decode_bytes",
    "decode_words",
    "lookup_charset",
    "merge_params",
    "message_ids",
    "mime_token",
    "parse_addresses",
    "parse_params_lenient",
    "unfold",
]

#: Charset names mail uses for a codec Python knows by a wider name: GB2312
#: and GBK text routinely contains GB18030 characters (what clients do too).
_ALIASES = {
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "euc-cn": "gb18030",
    "cp936": "gb18030",
    "big5": "big5hkscs",
    "x-big5": "big5hkscs",
    "ks_c_5601-1987": "cp949",
    "ks_c_5601": "cp949",
    "euc-kr": "cp949",
    "iso-2022-jp": "iso2022_jp_ext",
    "shift_jis": "cp932",
    "x-sjis": "cp932",
    "windows-874": "cp874",
    "x-mac-roman": "mac_roman",
    "unicode-1-1-utf-7": "utf-7",
    "us-ascii": "ascii",
    "ascii": "ascii",
    "iso-8859-8-i": "iso-8859-8",
    "utf8": "utf-8",
}


#: characters of a Subject the RFC 5256 base-subject functions look at (IMAP SORT and THREAD, the store's
#: thread headers, search, JMAP sorting): their strip-and-repeat loops are quadratic, and a header block
#: may carry a 256 KiB Subject ("Re: " 64 000 times cost minutes of CPU per message, at delivery too)
BASE_SUBJECT_MAX = 2000


def lookup_charset(name: str | bytes | None) -> str | None:
    """A Python codec name for a MIME charset name, or None when unknown.

    An RFC 2231 §5 language suffix (``utf-8*en``) is ignored.
    """
    if not name:
        return None
    if isinstance(name, bytes):
        name = name.decode("latin-1")
    name = name.strip().strip('"').split("*", 1)[0].lower()
    name = _ALIASES.get(name, name)
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        return None
    # never decode mail with a codec that is not a text encoding (e.g. "rot13", "base64")
    if not getattr(info, "_is_text_encoding", True):
        return None
    if name.startswith("us-ascii") or info.name == "ascii":
        # 8-bit bytes labelled us-ascii are nearly always latin-1 / cp1252 in practice
        return "cp1252"
    return info.name


def decode_bytes(raw: bytes, charset: str | None = None) -> str:
    """Bytes of unknown quality -> text: UTF-8 if valid, else ``charset``, else cp1252."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    codec = lookup_charset(charset) if charset else None
    if codec:
        return raw.decode(codec, "replace")
    return raw.decode("cp1252", "replace")


_FOLD = re.compile(rb"\r?\n(?=[ \t])|\r?\n$")


def unfold(value: bytes) -> bytes:
    """RFC 5322 §2.2.3: remove the CRLF of each fold, keep the white space after it."""
    return value.replace(b"\r", b"").replace(b"\n", b"")


# --- RFC 2047 encoded words --------------------------------------------------

_EW = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_QHEX = re.compile(rb"=([0-9A-Fa-f]{2})")


def _ew_bytes(enc: str, text: str) -> bytes | None:
    data = text.encode("latin-1", "replace")
    if enc in "bB":
        data = data.rstrip(b"=")
        try:
            return base64.b64decode(data + b"=" * (-len(data) % 4), validate=True)
        except (binascii.Error, ValueError):
            return None
    return _QHEX.sub(lambda m: bytes([int(m.group(1), 16)]), data.replace(b"_", b" "))


def decode_words(value: bytes | str, charset: str | None = None) -> str:
    """RFC 2047 §6: decode the encoded words of an unstructured value (or phrase).

    White space between adjacent encoded words is dropped; adjacent words in
    the same charset are joined before decoding (multi-byte characters are
    often split across words); an undecodable word is left as written. Bytes
    outside encoded words are decoded with :func:`decode_bytes`.
    """
    if isinstance(value, str):
        value = value.encode("latin-1", "replace")
    if b"=?" not in value:
        return decode_bytes(value, charset)
    text = value.decode("latin-1")
    out: list[str] = []
    pend_cs: str | None = None
    pend: list[bytes] = []
    pos = 0

    def flush() -> None:
        nonlocal pend_cs, pend
        if pend_cs is not None:
            out.append(b"".join(pend).decode(pend_cs, "replace"))
        pend_cs = None
        pend = []

    for m in _EW.finditer(text):
        gap = text[pos : m.start()]
        codec = lookup_charset(m.group(1))
        data = _ew_bytes(m.group(2), m.group(3)) if codec else None
        if data is None:
            flush()
            out.append(decode_bytes(gap.encode("latin-1"), charset))
            out.append(m.group(0))
            pos = m.end()
            continue
        if gap.strip(" \t\r\n") or pend_cs is None and not out:
            flush()
            out.append(decode_bytes(gap.encode("latin-1"), charset))
        elif pend_cs is None and out and not out[-1].endswith("?="):
            out.append(decode_bytes(gap.encode("latin-1"), charset))
        if pend_cs is not None and codec != pend_cs:
            flush()
        pend_cs = codec
        pend.append(data)
        pos = m.end()
    flush()
    out.append(decode_bytes(text[pos:].encode("latin-1"), charset))
    return "".join(out)


# --- RFC 2231 parameters -----------------------------------------------------

_PCT = re.compile(rb"%([0-9A-Fa-f]{2})")
_WSP = b" \t\r\n"
_TSPECIALS = b'()<>@,;:\\"/[]?= \t\r\n'


def _skip_comments(v: bytes, i: int, n: int) -> int:
    """Skip white space and RFC 5322 comments from i."""
    while i < n:
        c = v[i : i + 1]
        if c in (b" ", b"\t", b"\r", b"\n"):
            i += 1
        elif c == b"(":
            depth = 1
            i += 1
            while i < n and depth:
                c = v[i : i + 1]
                if c == b"\\":
                    i += 1
                elif c == b"(":
                    depth += 1
                elif c == b")":
                    depth -= 1
                i += 1
        else:
            break
    return i


def mime_token(v: bytes) -> tuple[bytes, bool]:
    """The RFC 2045 token a structured value starts with (after white space and
    comments), and whether nothing but white space and comments follows it.

    ``b"base64 (x)"`` -> ``(b"base64", True)``; ``b"Base64;x"`` -> ``(b"Base64", False)``;
    ``b'"base64"'`` -> ``(b"", False)``.
    """
    n = len(v)
    i = _skip_comments(v, 0, n)
    j = i
    while j < n and 32 < v[j] < 127 and v[j] not in _TSPECIALS:
        j += 1
    return v[i:j], j > i and _skip_comments(v, j, n) >= n


def parse_params_lenient(v: bytes) -> list[tuple[bytes, bytes]]:
    """``;``-separated parameters of a Content-Type or Content-Disposition value, read
    the way a reader wants the names and filenames shown (JMAP, attachment names).

    RFC 2045 §5.1 allows a token or a quoted-string as a value, and says
    nothing on recovering from anything else. The IMAP BODYSTRUCTURE keeps
    Dovecot's strict reading (``name=my file.pdf`` gives ``my``); here an
    unquoted value followed by more than white space and comments runs to the
    next ``;`` (``my file.pdf``), trimmed, and every ``;`` starts a new
    parameter. ``v`` is the unfolded value; what precedes the first ``;`` (the
    type or disposition) is skipped. At most 64 parameters.
    """
    out: list[tuple[bytes, bytes]] = []
    n = len(v)
    i = v.find(b";")
    while 0 <= i < n and len(out) < 64:
        i += 1
        eq = i
        while eq < n and v[eq : eq + 1] not in (b"=", b";"):
            eq += 1
        name = v[i:eq].strip(_WSP)
        if eq >= n or v[eq : eq + 1] == b";" or not name:
            i = eq if eq < n and v[eq : eq + 1] == b";" else v.find(b";", eq)
            continue
        j = eq + 1
        while j < n and v[j : j + 1] in (b" ", b"\t", b"\r", b"\n"):
            j += 1
        if v[j : j + 1] == b'"':
            buf = bytearray()
            j += 1
            while j < n and v[j : j + 1] != b'"':
                if v[j : j + 1] == b"\\" and j + 1 < n:
                    j += 1
                buf += v[j : j + 1]
                j += 1
            out.append((name, bytes(buf).replace(b"\r", b"").replace(b"\n", b"")))
            i = v.find(b";", j + 1)
            continue
        semi = v.find(b";", j)
        stop = n if semi < 0 else semi
        k = j
        while k < n and v[k] > 32 and v[k] < 127 and v[k] not in _TSPECIALS:
            k += 1
        if k > j and v[k : k + 1] != b"=" and _skip_comments(v, k, n) >= stop:
            value = v[j:k]  # a clean token (RFC 2045 §5.1)
        else:
            value = v[j:stop].strip(_WSP)
        out.append((name, value))
        i = semi
    return out


def merge_params(params: tuple | list, charset: str | None = None) -> list[tuple[str, str]]:
    """Raw (name, value) pairs -> decoded (lower-case name, value), RFC 2231 merged.

    RFC 2231 §3-4: ``name*0``, ``name*1*`` ... are joined in order, a ``*``
    section is ``charset'language'percent-encoded``. A plain ``name`` wins
    over nothing but loses to its RFC 2231 form; RFC 2047 words in a plain
    value (as Outlook writes filenames) are decoded.
    """
    plain: dict[str, str] = {}
    order: list[str] = []
    sections: dict[str, dict[int, tuple[bool, bytes]]] = {}
    for rname, rvalue in params:
        name = rname.decode("latin-1").lower()
        if "*" in name:
            base, _, rest = name.partition("*")
            encoded = rest.endswith("*") or rest == ""
            num = rest.rstrip("*")
            # str.isdigit() is true for "²" and other non-ASCII digits, which int() refuses (the
            # names are latin-1 decoded bytes): a section number is ASCII digits (RFC 2231 §3)
            idx = int(num) if num.isascii() and num.isdigit() and len(num) < 4 else (0 if num == "" else -1)
            if idx < 0:
                continue
            if base not in sections:
                sections[base] = {}
                if base not in plain:
                    order.append(base)
            sections[base].setdefault(idx, (encoded, rvalue))
        elif name not in plain:
            plain[name] = decode_words(rvalue, charset)
            if name not in sections:
                order.append(name)
    result = []
    for name in order:
        if name in sections:
            secs = sections[name]
            cs: str | None = None
            buf = bytearray()
            for i in range(len(secs)):
                if i not in secs:
                    break
                encoded, raw = secs[i]
                if encoded:
                    if i == 0:
                        parts = raw.split(b"'", 2)
                        if len(parts) == 3:
                            cs = lookup_charset(parts[0]) if parts[0] else None
                            raw = parts[2]
                    raw = _PCT.sub(lambda m: bytes([int(m.group(1), 16)]), raw)
                buf += raw
            value = bytes(buf).decode(cs, "replace") if cs else decode_bytes(bytes(buf), charset)
            result.append((name, value))
        else:
            result.append((name, plain[name]))
    return result


# --- RFC 5322 addresses --------------------------------------------------------


class Address(NamedTuple):
    """One entry of an address list, in IMAP ENVELOPE shape (latin-1 text of raw bytes).

    A group is an entry with only ``mailbox`` (the group name) and ends with
    an all-None entry (RFC 3501 §7.4.2).
    """

    name: str | None
    route: str | None
    mailbox: str | None
    host: str | None


_ATEXT = frozenset("!#$%&'*+-/=?^_`{|}~") | frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
)


# RFC 5322 §3.2.3 atext (8-bit bytes, here latin-1 characters, count as atext)
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\x80-\xff]+")
_ATOM_DOTS = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\x80-\xff.]+")


def _is_atext(c: str) -> bool:
    return c in _ATEXT or c >= "\x80"


class _Rfc822:
    """A cursor over one header value, in the manner of an RFC 5322 tokenizer."""

    __slots__ = ("s", "i", "n", "last_comment")

    def __init__(self, s: str) -> None:
        self.s = s
        self.i = 0
        self.n = len(s)
        self.last_comment = ""

    def peek(self) -> str:
        return self.s[self.i] if self.i < self.n else ""

    def skip_lwsp(self) -> bool:
        """Skip CFWS; False at the end of the value. Remembers the last comment."""
        s, n = self.s, self.n
        while self.i < n:
            c = s[self.i]
            if c in " \t\r\n":
                self.i += 1
            elif c == "(":
                depth, j, buf = 1, self.i + 1, []
                while j < n and depth:
                    c = s[j]
                    if c == "\\" and j + 1 < n:
                        j += 1
                        buf.append(s[j])
                    elif c == "(":
                        depth += 1
                        buf.append(c)
                    elif c == ")":
                        depth -= 1
                        if depth:
                            buf.append(c)
                    elif c not in "\r\n":
                        buf.append(c)
                    j += 1
                self.last_comment = "".join(buf)
                self.i = j
            else:
                return True
        return False

    def atom(self, dots: bool = False) -> str:
        m = (_ATOM_DOTS if dots else _ATOM).match(self.s, self.i)
        if m is None:
            return ""
        self.i = m.end()
        return m.group()

    def quoted(self) -> str:
        """At a DQUOTE: the unescaped content (CR/LF dropped)."""
        s, n = self.s, self.n
        j = self.i + 1
        buf = []
        while j < n:
            c = s[j]
            if c == '"':
                j += 1
                break
            if c == "\\" and j + 1 < n:
                j += 1
                c = s[j]
            if c not in "\r\n":
                buf.append(c)
            j += 1
        self.i = j
        return "".join(buf)

    def dot_atom(self) -> str:
        """``atom *("." atom)`` (obsolete CFWS around dots allowed)."""
        out = [self.atom()]
        self.skip_lwsp()
        while self.peek() == ".":
            self.i += 1
            out.append(".")
            self.skip_lwsp()
            if self.peek() == '"':
                out.append(self.quoted())
            else:
                out.append(self.atom())
            self.skip_lwsp()
        return "".join(out)

    def phrase(self) -> str | None:
        """``1*word / obs-phrase``; None when there is no word here."""
        words: list[str] = []
        while self.i < self.n:
            c = self.s[self.i]
            if c == '"':
                words.append(self.quoted())
            elif _is_atext(c) or c == ".":
                words.append(self.atom(dots=True))
            else:
                break
            self.skip_lwsp()
        return " ".join(words) if words else None

    def domain(self) -> str:
        """After "@": dot-atom or domain-literal."""
        self.i += 1
        self.skip_lwsp()
        if self.peek() == "[":
            j = self.s.find("]", self.i)
            j = self.n if j < 0 else j + 1
            out = self.s[self.i : j]
            self.i = j
            self.skip_lwsp()
            return out.replace("\r", "").replace("\n", "")
        return self.dot_atom()


def _addr_spec(p: _Rfc822) -> tuple[str | None, str | None]:
    mailbox = host = None
    if p.peek() == '"':
        mailbox = p.quoted()
        p.skip_lwsp()
        while p.peek() == ".":  # obs-local-part: "a".b
            p.i += 1
            p.skip_lwsp()
            mailbox += "." + (p.quoted() if p.peek() == '"' else p.atom())
            p.skip_lwsp()
    elif p.peek() and (_is_atext(p.peek()) or p.peek() == "."):
        mailbox = p.dot_atom()
    if p.peek() == "@":
        host = p.domain()
    return mailbox, host


def _mailbox(p: _Rfc822) -> Address:
    start = p.i
    name = p.phrase()
    if p.peek() == "<":
        p.i += 1
        p.skip_lwsp()
        route = None
        if p.peek() == "@":
            routes = []
            while p.peek() == "@":
                routes.append("@" + p.domain())
                while p.peek() == ",":
                    p.i += 1
                    p.skip_lwsp()
            route = ",".join(routes)
            if p.peek() == ":":
                p.i += 1
                p.skip_lwsp()
        mailbox, host = _addr_spec(p)
        if p.peek() == ">":
            p.i += 1
        else:
            # deviation: broken angle address, as Dovecot reports it
            host = "SYNTAX_ERROR"
            j = p.s.find(">", p.i)
            p.i = p.n if j < 0 else j + 1
        p.skip_lwsp()
        return Address(name or None, route, mailbox or "MISSING_MAILBOX", host or "MISSING_DOMAIN")
    phrase_end = p.i
    p.i = start
    p.last_comment = ""
    mailbox, host = _addr_spec(p)
    if host is None and name is not None and phrase_end > p.i:
        # "Someone Else" without any address: a display name (as Dovecot shows it)
        p.i = phrase_end
        return Address(name, None, "MISSING_MAILBOX", "MISSING_DOMAIN")
    comment = p.last_comment or None
    return Address(comment, None, mailbox or "MISSING_MAILBOX", host or "MISSING_DOMAIN")


def parse_addresses(value: bytes, limit: int = 10000) -> list[Address]:
    """RFC 5322 §3.4 address-list (with groups and obsolete forms), best effort.

    Returns IMAP-ENVELOPE-shaped entries (see :class:`Address`); missing
    parts are filled as Dovecot does (``MISSING_MAILBOX``, ``MISSING_DOMAIN``).
    """
    p = _Rfc822(unfold(value).decode("latin-1"))
    out: list[Address] = []
    if not p.skip_lwsp():
        return out
    while p.i < p.n and len(out) < limit:
        start = p.i
        name = p.phrase()
        if name is not None and p.peek() == ":":
            # RFC 5322 §3.4 group = display-name ":" [group-list] ";"
            p.i += 1
            out.append(Address(None, None, name, None))
            p.skip_lwsp()
            while p.i < p.n and p.peek() != ";" and len(out) < limit:
                before = p.i
                out.append(_mailbox(p))
                if p.peek() == ",":
                    p.i += 1
                    p.skip_lwsp()
                elif p.i == before or p.peek() != ";":
                    break
            if p.peek() == ";":
                p.i += 1
            out.append(Address(None, None, None, None))
            p.skip_lwsp()
        else:
            p.i = start
            before = p.i
            out.append(_mailbox(p))
            if p.i == before and p.peek() != ",":
                break  # garbage that is no address: stop here
        if p.peek() != ",":
            break
        p.i += 1
        if not p.skip_lwsp():
            break
    return out


_MSGID = re.compile(rb"<([^<>]*)>")


def message_ids(value: bytes) -> list[str]:
    """RFC 5322 §3.6.4 msg-id list -> ids without angle brackets (for threading)."""
    ids = []
    for m in _MSGID.finditer(unfold(value)):
        v = re.sub(rb"\s+", b"", m.group(1))
        if v:
            ids.append(v.decode("utf-8", "replace"))
    return ids
