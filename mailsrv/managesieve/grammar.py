"""ManageSieve wire grammar (RFC 5804 §4): command lines in, tokens out; responses out. Pure.

A command is a verb and arguments: atoms, numbers, quoted strings and literals
(``{n+}`` CRLF n octets, or ``{n}``: RFC 5804 §1.2 has no continuation, so a
server reads a synchronizing literal's octets at once as well, as Dovecot does).
:func:`parse_line` takes one line (without CRLF) and appends its tokens to the
command in progress; when the line ends in a literal marker it returns the
literal's size and the connection loop reads the octets, appends them with
:meth:`Command.add_literal`, and feeds the next line with ``continued=True``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: RFC 5804 §4: quoted = DQUOTE *1024QUOTED-CHAR DQUOTE
MAX_QUOTED = 1024
#: RFC 5804 §4: number = 1*DIGIT ;; A 32-bit unsigned number (0 <= n < 4,294,967,296)
MAX_NUMBER = 2**32 - 1
#: arguments of one command: RENAMESCRIPT takes the most (2); a few more are a syntax error, many a hostile client
MAX_ARGS = 8

#: RFC 5804 §1.3 response codes used by mailsrv
QUOTA_MAXSCRIPTS = "QUOTA/MAXSCRIPTS"
QUOTA_MAXSIZE = "QUOTA/MAXSIZE"
NONEXISTENT = "NONEXISTENT"
ACTIVE = "ACTIVE"
ALREADYEXISTS = "ALREADYEXISTS"
TRYLATER = "TRYLATER"
AUTH_TOO_WEAK = "AUTH-TOO-WEAK"
ENCRYPT_NEEDED = "ENCRYPT-NEEDED"


class SieveProtocolError(Exception):
    """A command failed: the connection loop answers ``NO``/``BYE (code) "text"`` and counts it."""

    def __init__(self, text: str, code: str = "", *, bye: bool = False, fatal: bool = False) -> None:
        super().__init__(text)
        self.text = text
        self.code = code
        #: answer BYE and close (RFC 5804 §1.3: the server is closing the connection)
        self.bye = bye
        #: close after the reply (hostile or hopeless client); implied by ``bye``
        self.fatal = fatal or bye

    def reply(self) -> bytes:
        return response("BYE" if self.bye else "NO", self.code, self.text)


class SieveSyntaxError(SieveProtocolError):
    """The command is not well formed (RFC 5804 §1.3: NO for a syntax error as for any failure)."""


@dataclass(frozen=True, slots=True)
class Atom:
    """A bare word: the verb, a number, or the ``ACTIVE`` of a response."""

    text: str


@dataclass(slots=True)
class Command:
    """A command being read: its tokens so far (:class:`Atom` or ``bytes`` for strings)."""

    tokens: list[Atom | bytes] = field(default_factory=list)

    def add_literal(self, data: bytes) -> None:
        if len(self.tokens) >= MAX_ARGS + 1:
            raise SieveSyntaxError("Too many arguments")
        self.tokens.append(data)

    @property
    def verb(self) -> str:
        first = self.tokens[0] if self.tokens else None
        if not isinstance(first, Atom):
            raise SieveSyntaxError("Expected a command name")
        return first.text.upper()

    @property
    def args(self) -> list[Atom | bytes]:
        return self.tokens[1:]


def parse_line(line: bytes, cmd: Command, *, continued: bool = False) -> tuple[int, bool] | None:
    """Append the tokens of ``line`` (CRLF removed) to ``cmd``.

    Returns ``(size, synchronizing)`` when the line ends with a literal marker (the literal's
    octets follow), else None: the command is complete. ``continued``: the line follows a
    literal, so it is empty or starts with a space. Raises :class:`SieveSyntaxError`.
    """
    n = len(line)
    i = 0
    if continued:
        if n and line[0] != 0x20:
            raise SieveSyntaxError("Expected a space or the end of the command after a literal")
    while i < n:
        if cmd.tokens or continued:
            if line[i] != 0x20:
                raise SieveSyntaxError("Expected a space between arguments")
            i += 1
            if i == n:
                raise SieveSyntaxError("Trailing space")
        if len(cmd.tokens) > MAX_ARGS:
            raise SieveSyntaxError("Too many arguments")
        c = line[i]
        if c == 0x22:  # DQUOTE
            value, i = _quoted(line, i + 1)
            cmd.tokens.append(value)
        elif c == 0x7B:  # "{"
            size, sync, i = _literal_marker(line, i + 1)
            if i != n:
                raise SieveSyntaxError("A literal marker ends its line")
            return size, sync
        else:
            j = i
            while j < n and (0x30 <= line[j] <= 0x39 or 0x41 <= line[j] <= 0x5A or 0x61 <= line[j] <= 0x7A
                             or line[j] in b"-_/."):
                j += 1
            if j == i:
                raise SieveSyntaxError("Unexpected character in command")
            cmd.tokens.append(Atom(line[i:j].decode("ascii")))
            i = j
    if not cmd.tokens:
        raise SieveSyntaxError("Empty command")
    return None


def _quoted(line: bytes, i: int) -> tuple[bytes, int]:
    """RFC 5804 §4 quoted: the value and the offset after the closing quote."""
    out = bytearray()
    n = len(line)
    while i < n:
        c = line[i]
        if c == 0x22:
            return bytes(out), i + 1
        if c == 0x5C:  # "\" QUOTED-SPECIALS
            if i + 1 >= n or line[i + 1] not in b'"\\':
                raise SieveSyntaxError("Bad escape in quoted string")
            c = line[i + 1]
            i += 1
        elif c in (0x00, 0x0D, 0x0A):
            raise SieveSyntaxError("NUL, CR or LF in quoted string")
        out.append(c)
        if len(out) > MAX_QUOTED:
            raise SieveSyntaxError(f"Quoted string longer than {MAX_QUOTED} octets (use a literal)")
        i += 1
    raise SieveSyntaxError("Unterminated quoted string")


def _literal_marker(line: bytes, i: int) -> tuple[int, bool, int]:
    """``{`` number [``+``] ``}``: size, synchronizing, offset after ``}``."""
    j = i
    while j < len(line) and 0x30 <= line[j] <= 0x39:
        j += 1
    if j == i or j - i > 10:
        raise SieveSyntaxError("Bad literal size")
    size = int(line[i:j])
    if size > MAX_NUMBER:
        raise SieveSyntaxError("Literal size out of range")
    sync = True
    if j < len(line) and line[j] == 0x2B:  # "+"
        sync = False
        j += 1
    if j >= len(line) or line[j] != 0x7D:
        raise SieveSyntaxError("Bad literal marker")
    return size, sync, j + 1


def literal_marker(line: bytes) -> tuple[int, bool] | None:
    """The ``{n}``/``{n+}`` a line (CRLF removed) ends with, if any (for discarding a refused command)."""
    if not line.endswith(b"}"):
        return None
    start = line.rfind(b"{")
    if start < 0:
        return None
    try:
        size, sync, end = _literal_marker(line, start + 1)
    except SieveSyntaxError:
        return None
    return (size, sync) if end == len(line) else None


# -- arguments ------------------------------------------------------------------------------------


def string_arg(token: Atom | bytes, what: str) -> bytes:
    if isinstance(token, Atom):
        raise SieveSyntaxError(f"{what} must be a string")
    return token


def text_arg(token: Atom | bytes, what: str) -> str:
    """A string argument as text (RFC 5804 §4: strings are UTF-8)."""
    try:
        return string_arg(token, what).decode("utf-8")
    except UnicodeDecodeError:
        raise SieveSyntaxError(f"{what} is not UTF-8") from None


def number_arg(token: Atom | bytes, what: str) -> int:
    if not isinstance(token, Atom) or not token.text.isdigit() or not token.text.isascii():
        raise SieveSyntaxError(f"{what} must be a number")
    digits = token.text.lstrip("0")
    if len(digits) > 10:  # before int(): 5 000 digits pass its 4 300-digit limit
        raise SieveSyntaxError(f"{what} out of range")
    value = int(digits or "0")
    if value > MAX_NUMBER:
        raise SieveSyntaxError(f"{what} out of range")
    return value


# -- responses ------------------------------------------------------------------------------------


def string(value: bytes | str) -> bytes:
    """A quoted string when it can be one, else a literal (RFC 5804 §4 literal-s2c)."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    if len(data) <= MAX_QUOTED and not any(b in (0x00, 0x0D, 0x0A) for b in data):
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(data) + data


def response(kind: str, code: str = "", text: str | bytes = "", *, code_arg: bytes | None = None) -> bytes:
    """``OK``/``NO``/``BYE`` [``(code [string])``] [string] CRLF (RFC 5804 §4 response-*)."""
    out = kind.encode("ascii")
    if code:
        out += b" (" + code.encode("ascii") + (b" " + string(code_arg) if code_arg is not None else b"") + b")"
    if text:
        out += b" " + string(text)
    return out + b"\r\n"
