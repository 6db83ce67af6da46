"""SMTP command grammar (RFC 5321 §4.1, RFC 6531, RFC 1870, RFC 3461, RFC 3030): pure parsers over bytes.

No I/O, no logging. Every parser either returns a value or raises
:class:`SmtpSyntaxError`, which carries the reply the session should send.
Addresses come out as ``str`` (UTF-8 decoded; ASCII unless SMTPUTF8 was
asked for), ESMTP parameters as an ordered ``dict`` of upper-case keywords.
"""

from __future__ import annotations

import re
from typing import NamedTuple, TypeVar

# RFC 5321 §4.5.3.1.4: a command line is at most 512 octets including CRLF;
# ESMTP parameters (RFC 1869 §4.1.2) may add up to 2000 more for MAIL/RCPT.
MAX_COMMAND_LINE = 512 + 2000
# RFC 5321 §4.5.3.1.1 / §4.5.3.1.2: local part 64 octets, domain 255 octets.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
# RFC 5321 §4.5.3.1.3: a path is at most 256 octets including the brackets.
MAX_PATH = 256

K = TypeVar("K")
V = TypeVar("V")


class SmtpError(Exception):
    """Any command failure; ``code``/``enh``/``text`` form the reply (sent by the connection loop)."""

    def __init__(self, text: str, code: int = 501, enh: str = "5.5.4") -> None:
        super().__init__(text)
        self.code = code
        self.enh = enh
        self.text = text

    def reply(self) -> bytes:
        return reply(self.code, self.enh, self.text)


class SmtpSyntaxError(SmtpError):
    """A command that does not parse."""


class Command(NamedTuple):
    """A command line split (a tuple: one per command, made faster than a frozen dataclass)."""

    verb: str  # upper-case ASCII, e.g. "MAIL"
    arg: bytes  # the rest after one space, without CRLF


#: command line -> its split: most lines come back (DATA, RSET, a relay's MAIL FROM, a list's RCPT TO)
_COMMANDS: dict[bytes, Command] = {}
#: lines remembered at most (then the cache starts over), and the longest line remembered
MAX_COMMANDS = 1024
MAX_COMMAND_REMEMBERED = 320


def split_command(line: bytes) -> Command:
    """``b"mail FROM:<a@b>\\r\\n"`` -> Command("MAIL", b"FROM:<a@b>").

    A pure function: the splits of lines up to :data:`MAX_COMMAND_REMEMBERED` bytes are remembered (at
    most :data:`MAX_COMMANDS`); a line that does not split is not, nor AUTH (its initial response)."""
    known = _COMMANDS.get(line)
    if known is not None:
        return known
    command = _split_command(line)
    if len(line) <= MAX_COMMAND_REMEMBERED and command.verb != "AUTH":
        _remember(_COMMANDS, line, command, MAX_COMMANDS)
    return command


def _split_command(line: bytes) -> Command:
    """:func:`split_command` without its memory."""
    if line.endswith(b"\r\n"):
        line = line[:-2]
    elif line.endswith(b"\n"):
        line = line[:-1]
    verb, _, arg = line.partition(b" ")
    if not verb or len(verb) > 12 or not verb.isalpha():
        raise SmtpSyntaxError("Syntax error, command unrecognized", 500, "5.5.2")
    return Command(verb.decode("ascii").upper(), arg.strip(b" "))


# RFC 5321 §4.1.2: atext, Dot-string, Quoted-string; RFC 6531 §3.3 adds UTF8-non-ascii.
_ATEXT = rb"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_DOT_ATOM = re.compile(rb"[" + _ATEXT + rb"]+(?:\.[" + _ATEXT + rb"]+)*\Z")
_DOT_ATOM_UTF8 = re.compile(rb"[" + _ATEXT + rb"\x80-\xff]+(?:\.[" + _ATEXT + rb"\x80-\xff]+)*\Z")
_QUOTED = re.compile(rb'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"\Z')
_QUOTED_UTF8 = re.compile(rb'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\x20-\x7e])*"\Z')
# RFC 5321 §4.1.2 Domain: sub-domain *("." sub-domain); Let-dig [Ldh-str].
_LABEL = rb"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
_DOMAIN = re.compile(_LABEL + rb"(?:\." + _LABEL + rb")*\Z")
_LABEL_UTF8 = rb"[A-Za-z0-9\x80-\xff](?:[A-Za-z0-9\-\x80-\xff]*[A-Za-z0-9\x80-\xff])?"
_DOMAIN_UTF8 = re.compile(_LABEL_UTF8 + rb"(?:\." + _LABEL_UTF8 + rb")*\Z")
_ADDR_LITERAL = re.compile(rb"\[(?:[0-9.]+|IPv6:[0-9A-Fa-f:.]+)\]\Z")
_KEYWORD = re.compile(rb"[A-Za-z0-9][A-Za-z0-9\-]*\Z")
_ESMTP_VALUE = re.compile(rb"[\x21-\x3c\x3e-\x7e]+\Z")
_ESMTP_VALUE_UTF8 = re.compile(rb"[\x21-\x3c\x3e-\x7e\x80-\xff]+\Z")


def parse_domain(raw: bytes, utf8: bool = False) -> str:
    """A HELO/EHLO argument or the domain of an address: a name or an address literal."""
    if not raw or len(raw) > MAX_DOMAIN:
        raise SmtpSyntaxError("Invalid domain")
    if _ADDR_LITERAL.match(raw):
        return raw.decode("ascii")
    if (_DOMAIN_UTF8 if utf8 else _DOMAIN).match(raw):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SmtpSyntaxError("Domain is not valid UTF-8", 553, "5.6.7") from None
    raise SmtpSyntaxError("Invalid domain")


#: (raw mailbox, utf8) -> its parse: the same senders and recipients come back message after message
_MAILBOXES: dict[tuple[bytes, bool], str] = {}
#: mailboxes remembered at most (then the cache starts over); only valid ones are kept
MAX_MAILBOXES = 4096


def parse_mailbox(raw: bytes, utf8: bool = False) -> str:
    """``local@domain`` (RFC 5321 §4.1.2 Mailbox) -> str. Raises SmtpSyntaxError.

    A pure function: its valid results are remembered (at most :data:`MAX_MAILBOXES`)."""
    key = (raw, utf8)
    known = _MAILBOXES.get(key)
    if known is not None:
        return known
    address = _parse_mailbox(raw, utf8)
    _remember(_MAILBOXES, key, address, MAX_MAILBOXES)
    return address


def _remember(memory: dict[K, V], key: K, value: V, limit: int) -> None:
    """``memory[key] = value``, the memory emptied first when it holds ``limit`` entries."""
    if len(memory) >= limit:
        memory.clear()
    memory[key] = value


def _parse_mailbox(raw: bytes, utf8: bool) -> str:
    """:func:`parse_mailbox` without its memory."""
    at = raw.rfind(b"@")
    if at <= 0:
        raise SmtpSyntaxError("Address must be local-part@domain", 553, "5.1.3")
    local, domain = raw[:at], raw[at + 1 :]
    if len(local) > MAX_LOCAL_PART:
        raise SmtpSyntaxError("Local part too long", 553, "5.1.3")
    if local.startswith(b'"'):
        ok = (_QUOTED_UTF8 if utf8 else _QUOTED).match(local)
    else:
        ok = (_DOT_ATOM_UTF8 if utf8 else _DOT_ATOM).match(local)
    if not ok:
        if not utf8 and any(b > 0x7F for b in raw):
            # RFC 6531 §3.4: non-ASCII addresses need SMTPUTF8 on the MAIL command.
            raise SmtpSyntaxError("Non-ASCII address requires SMTPUTF8", 553, "5.6.7")
        raise SmtpSyntaxError("Invalid local part", 553, "5.1.3")
    try:
        domain_s = parse_domain(domain, utf8)
    except SmtpSyntaxError:
        if not utf8 and any(b > 0x7F for b in domain):
            raise SmtpSyntaxError("Non-ASCII address requires SMTPUTF8", 553, "5.6.7") from None
        raise SmtpSyntaxError("Invalid domain in address", 553, "5.1.2") from None
    try:
        return local.decode("utf-8") + "@" + domain_s
    except UnicodeDecodeError:
        raise SmtpSyntaxError("Address is not valid UTF-8", 553, "5.6.7") from None


def parse_params(raw: bytes, utf8: bool = False) -> dict[str, str | None]:
    """RFC 5321 §4.1.2 Mail-parameters / Rcpt-parameters: ``KEY[=VALUE]`` separated by spaces."""
    params: dict[str, str | None] = {}
    if not raw:  # most commands: none
        return params
    for item in raw.split(b" "):
        if not item:
            continue
        key, eq, value = item.partition(b"=")
        if not _KEYWORD.match(key):
            raise SmtpSyntaxError("Invalid parameter keyword", 501, "5.5.4")
        name = key.decode("ascii").upper()
        if name in params:
            raise SmtpSyntaxError(f"Duplicate parameter {name}", 501, "5.5.4")
        if eq:
            if not (_ESMTP_VALUE_UTF8 if utf8 else _ESMTP_VALUE).match(value):
                raise SmtpSyntaxError(f"Invalid value for {name}", 501, "5.5.4")
            try:
                params[name] = value.decode("utf-8")
            except UnicodeDecodeError:
                raise SmtpSyntaxError(f"Invalid value for {name}", 501, "5.5.4") from None
        else:
            params[name] = None
    return params


def _split_path(arg: bytes, prefix: bytes) -> tuple[bytes, bytes]:
    # RFC 5321 §4.1.1.2: "MAIL FROM:" Reverse-path; many clients put a space after the colon.
    if arg[: len(prefix)].upper() != prefix:
        raise SmtpSyntaxError(f"Syntax: {prefix.decode()}<address>", 501, "5.5.4")
    rest = arg[len(prefix) :].lstrip(b" ")
    if not rest.startswith(b"<"):
        raise SmtpSyntaxError("Address must be in angle brackets", 501, "5.5.4")
    end = _closing_bracket(rest)
    if end < 0:
        raise SmtpSyntaxError("Unterminated address", 501, "5.5.4")
    path = rest[1:end]
    if len(path) + 2 > MAX_PATH:
        raise SmtpSyntaxError("Path too long", 501, "5.5.4")
    after = rest[end + 1 :]
    if after and not after.startswith(b" "):
        raise SmtpSyntaxError("Garbage after address", 501, "5.5.4")
    # RFC 5321 §4.1.1.3 / §C: a source route "@a,@b:" must be accepted and ignored.
    if path.startswith(b"@"):
        colon = path.find(b":")
        if colon < 0:
            raise SmtpSyntaxError("Invalid source route", 501, "5.5.4")
        path = path[colon + 1 :]
    return path, after


def _closing_bracket(rest: bytes) -> int:
    """Index of the ``>`` that ends the path, skipping quoted strings."""
    if b'"' not in rest:  # the common case: the first ">"
        return rest.find(b">", 1)
    i, n, quoted = 1, len(rest), False
    while i < n:
        c = rest[i]
        if quoted:
            if c == 0x5C:  # backslash
                i += 2
                continue
            if c == 0x22:
                quoted = False
        elif c == 0x22:
            quoted = True
        elif c == 0x3E:
            return i
        i += 1
    return -1


def wants_smtputf8(arg: bytes) -> bool:
    """True when the MAIL parameters contain SMTPUTF8 (decided before parsing the address)."""
    end = arg.rfind(b">")
    return any(p.upper() == b"SMTPUTF8" for p in arg[end + 1 :].split(b" "))


#: (MAIL argument without parameters, its UTF-8 flag) -> its address, and the same for RCPT: the
#: parsers below answer a known argument with one look-up (a relay's sender, a list's recipients)
_SENDERS: dict[tuple[bytes, bool], str] = {}
_RECIPIENTS: dict[tuple[bytes, bool], str] = {}
#: arguments remembered at most (then the memory starts over); longer ones are not
MAX_PATHS = 4096
MAX_PATH_REMEMBERED = MAX_PATH + 8


def parse_mail(arg: bytes, utf8_allowed: bool = True) -> tuple[str, dict[str, str | None]]:
    """``FROM:<a@b> SIZE=10`` -> ("a@b", {"SIZE": "10"}); the null path gives "".

    A pure function: the addresses of valid arguments without parameters are remembered."""
    known = _SENDERS.get((arg, utf8_allowed))
    if known is not None:
        return known, {}
    utf8 = utf8_allowed and wants_smtputf8(arg)
    path, after = _split_path(arg, b"FROM:")
    params = parse_params(after, utf8)
    address = parse_mailbox(path, utf8) if path else ""
    if not params and len(arg) <= MAX_PATH_REMEMBERED:
        _remember(_SENDERS, (arg, utf8_allowed), address, MAX_PATHS)
    return address, params


def parse_rcpt(arg: bytes, utf8: bool = False) -> tuple[str, dict[str, str | None]]:
    """``TO:<a@b> NOTIFY=NEVER`` -> ("a@b", {...}). ``<Postmaster>`` is returned as "postmaster".

    A pure function: the addresses of valid arguments without parameters are remembered."""
    known = _RECIPIENTS.get((arg, utf8))
    if known is not None:
        return known, {}
    path, after = _split_path(arg, b"TO:")
    params = parse_params(after, utf8)
    # RFC 5321 §4.1.1.3: "Postmaster" without a domain must be accepted.
    if path.lower() == b"postmaster":
        address = "postmaster"
    elif not path:
        raise SmtpSyntaxError("Recipient address required", 501, "5.1.3")
    else:
        address = parse_mailbox(path, utf8)
    if not params and len(arg) <= MAX_PATH_REMEMBERED:
        _remember(_RECIPIENTS, (arg, utf8), address, MAX_PATHS)
    return address, params


def parse_bdat(arg: bytes) -> tuple[int, bool]:
    """RFC 3030 §2: ``BDAT chunk-size [LAST]`` -> (size, last)."""
    parts = arg.split()
    if not parts or len(parts) > 2 or not parts[0].isdigit() or len(parts[0]) > 18:
        raise SmtpSyntaxError("Syntax: BDAT size [LAST]", 501, "5.5.4")
    last = False
    if len(parts) == 2:
        if parts[1].upper() != b"LAST":
            raise SmtpSyntaxError("Syntax: BDAT size [LAST]", 501, "5.5.4")
        last = True
    return int(parts[0]), last


_XCHAR_OK = re.compile(r"[\x21-\x2a\x2c-\x3c\x3e-\x7e]")


def xtext_decode(value: str) -> str:
    """RFC 3461 §4: ``+XX`` hex escapes. Raises SmtpSyntaxError on a bad escape."""
    out: list[str] = []
    i = 0
    while i < len(value):
        c = value[i]
        if c == "+":
            h = value[i + 1 : i + 3]
            if len(h) != 2 or not all(ch in "0123456789ABCDEF" for ch in h):
                raise SmtpSyntaxError("Invalid xtext", 501, "5.5.4")
            out.append(chr(int(h, 16)))
            i += 3
            continue
        out.append(c)
        i += 1
    return "".join(out)


def xtext_encode(value: str) -> str:
    """RFC 3461 §4: the inverse of :func:`xtext_decode` for ASCII text."""
    return "".join(c if _XCHAR_OK.match(c) else f"+{ord(c):02X}" for c in value)


def reply(code: int, enh: str | None, text: str | list[str]) -> bytes:
    """Format a (possibly multi-line) reply (RFC 5321 §4.2.1) with enhanced codes (RFC 2034)."""
    if isinstance(text, str):  # one line: most replies, one per command
        return (f"{code} {enh} {text}\r\n" if enh else f"{code} {text}\r\n").encode("utf-8")
    lines = text
    out = []
    for i, line in enumerate(lines):
        sep = "-" if i < len(lines) - 1 else " "
        body = f"{enh} {line}" if enh else line
        out.append(f"{code}{sep}{body}\r\n")
    return "".join(out).encode("utf-8")
