"""The Sieve grammar (RFC 5228 §8): text in, a tree of commands out, or a :class:`SieveError`.

Pure and bounded: the parser is iterative over a token list (no recursion on
nesting beyond MAX_NESTING), and every limit raises SieveError with the line
where it was crossed. Names are lower-cased here (RFC 5228 §2.9: identifiers
are case-insensitive); strings keep their case.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Script size limit in bytes of UTF-8 (Dovecot's sieve_max_script_size is 1 MB; a filter set fits in far less)
MAX_SCRIPT_SIZE = 64 * 1024
#: Blocks and tests nested in one another (Pigeonhole's sieve_max_nesting default is 32... for blocks)
MAX_NESTING = 32
#: Commands plus tests in one script
MAX_NODES = 4096
#: Strings in one string list
MAX_LIST = 1024
#: Largest number after its K/M/G multiplier (RFC 5228 §2.4.1: at least 2**31 - 1 must be understood)
MAX_NUMBER = (1 << 63) - 1


class SieveError(Exception):
    """A compile error: ``line`` (1-based) and ``message``; ``str()`` is ``line N: message``."""

    def __init__(self, line: int, message: str) -> None:
        self.line = line
        self.message = message
        super().__init__(f"line {line}: {message}")


@dataclass(frozen=True)
class Tag:
    name: str  # without the colon, lower-cased
    line: int


@dataclass(frozen=True)
class StringList:
    items: tuple[str, ...]
    bracketed: bool  # written as [...] (a single string may stand for a list; a list never for a string)
    line: int


@dataclass(frozen=True)
class Number:
    value: int
    line: int


Argument = Tag | StringList | Number


@dataclass(frozen=True)
class Test:
    name: str
    args: tuple[Argument, ...]
    tests: tuple[Test, ...]
    line: int


@dataclass(frozen=True)
class Command:
    name: str
    args: tuple[Argument, ...]
    tests: tuple[Test, ...]
    block: tuple[Command, ...] | None  # None: ended by ";"
    line: int


# --- lexer -------------------------------------------------------------------

# RFC 5228 §8.1: identifier = (ALPHA / "_") *(ALPHA / DIGIT / "_"); number = 1*DIGIT [ QUANTIFIER ]
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"[0-9]+([KkMmGg]?)")
_WS = re.compile(r"[ \t\r\n]+")
_MULTILINE_START = re.compile(r"text:[ \t]*(#[^\n]*)?\r?\n")
_SPECIALS = "[](){},;"
_QUANT = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}

# token kinds
IDENT, TAG, NUM, STR, SPECIAL = "ident", "tag", "num", "str", "special"
Token = tuple[str, object, int]  # (kind, value, line)


def tokenize(text: str) -> list[Token]:
    """RFC 5228 §8.1 lexical tokens; comments and white space dropped. CRLF or bare LF line ends."""
    out: list[Token] = []
    i, n, line = 0, len(text), 1
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            m = _WS.match(text, i)
            assert m is not None
            line += m.group().count("\n")
            i = m.end()
        elif c == "#":  # hash-comment to the end of the line
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif c == "/" and text.startswith("/*", i):  # bracket-comment, not nested
            j = text.find("*/", i + 2)
            if j < 0:
                raise SieveError(line, "unterminated comment")
            line += text.count("\n", i, j)
            i = j + 2
        elif c in _SPECIALS:
            out.append((SPECIAL, c, line))
            i += 1
        elif c == '"':
            start_line = line
            value, i, line = _quoted(text, i + 1, line)
            out.append((STR, value, start_line))
        elif c == ":":
            m = _IDENT.match(text, i + 1)
            if m is None:
                raise SieveError(line, "a tag needs a name after ':'")
            out.append((TAG, m.group().lower(), line))
            i = m.end()
        elif "0" <= c <= "9":
            m = _NUMBER.match(text, i)
            assert m is not None
            digits = m.group()[: len(m.group()) - len(m.group(1))]
            if len(digits) > 20:
                raise SieveError(line, "number too large")
            num = int(digits) * _QUANT[m.group(1).lower()]
            if num > MAX_NUMBER:
                raise SieveError(line, "number too large")
            out.append((NUM, num, line))
            i = m.end()
            if i < n and _IDENT.match(text, i):
                raise SieveError(line, f"bad number suffix {text[i]!r}")
        elif _IDENT.match(c):
            m = _IDENT.match(text, i)
            assert m is not None
            word = m.group()
            if word.lower() == "text" and text.startswith(":", m.end()):
                ml = _MULTILINE_START.match(text, i)
                if ml is None:
                    raise SieveError(line, "text: must be followed by the end of the line")
                start_line = line
                line += 1
                value, i, line = _multiline(text, ml.end(), line)
                out.append((STR, value, start_line))
                continue
            out.append((IDENT, word.lower(), line))
            i = m.end()
        else:
            raise SieveError(line, f"unexpected character {c!r}")
    return out


def _quoted(text: str, i: int, line: int) -> tuple[str, int, int]:
    """RFC 5228 §2.4.2: a quoted string after its opening quote; \\\\ and \\" are escapes, any other
    backslash is dropped (``"\\a"`` is ``"a"``)."""
    parts: list[str] = []
    n = len(text)
    while True:
        j = i
        while j < n and text[j] not in '"\\':
            j += 1
        parts.append(text[i:j])
        line += text.count("\n", i, j)
        if j >= n:
            raise SieveError(line, "unterminated string")
        if text[j] == '"':
            return "".join(parts), j + 1, line
        if j + 1 >= n:
            raise SieveError(line, "unterminated string")
        parts.append(text[j + 1])
        line += text[j + 1] == "\n"
        i = j + 2


def _multiline(text: str, i: int, line: int) -> tuple[str, int, int]:
    """RFC 5228 §2.4.2: lines up to a line holding only "."; a leading ".." stands for "."."""
    out: list[str] = []
    n = len(text)
    while i < n:
        j = text.find("\n", i)
        if j < 0:
            break
        raw = text[i:j + 1]
        body = raw[:-2] if raw.endswith("\r\n") else raw[:-1]
        line += 1
        if body == ".":
            return "".join(out), j + 1, line
        out.append(raw[1:] if raw.startswith("..") else raw)
        i = j + 1
    raise SieveError(line, "unterminated text: (a line with only '.' ends it)")


# --- parser ------------------------------------------------------------------


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.toks = tokens
        self.i = 0
        self.nodes = 0

    def line(self) -> int:
        if self.i < len(self.toks):
            return self.toks[self.i][2]
        return self.toks[-1][2] if self.toks else 1

    def peek(self) -> Token | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def special(self, c: str) -> bool:
        t = self.peek()
        if t is not None and t[0] == SPECIAL and t[1] == c:
            self.i += 1
            return True
        return False

    def count(self, line: int) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise SieveError(line, f"too many commands and tests (more than {MAX_NODES})")

    def commands(self, depth: int) -> tuple[Command, ...]:
        """commands = *command; inside a block up to its "}"."""
        out: list[Command] = []
        while True:
            t = self.peek()
            if t is None:
                if depth:
                    raise SieveError(self.line(), "missing '}' at the end of the script")
                return tuple(out)
            if t[0] == SPECIAL and t[1] == "}":
                if not depth:
                    raise SieveError(t[2], "unexpected '}'")
                self.i += 1
                return tuple(out)
            out.append(self.command(depth))

    def command(self, depth: int) -> Command:
        t = self.peek()
        assert t is not None
        if t[0] != IDENT:
            raise SieveError(t[2], f"expected a command, found {_show(t)}")
        self.i += 1
        name, line = str(t[1]), t[2]
        self.count(line)
        args, tests = self.arguments(depth)
        if self.special(";"):
            return Command(name, args, tests, None, line)
        if self.special("{"):
            if depth + 1 > MAX_NESTING:
                raise SieveError(line, f"blocks nested deeper than {MAX_NESTING}")
            return Command(name, args, tests, self.commands(depth + 1), line)
        nxt = self.peek()
        raise SieveError(self.line(), f"expected ';' or '{{' after {name}, found "
                         f"{_show(nxt) if nxt else 'the end of the script'}")

    def arguments(self, depth: int) -> tuple[tuple[Argument, ...], tuple[Test, ...]]:
        """arguments = *argument [ test / test-list ]"""
        args: list[Argument] = []
        while True:
            t = self.peek()
            if t is None:
                return tuple(args), ()
            kind = t[0]
            if kind == TAG:
                args.append(Tag(str(t[1]), t[2]))
                self.i += 1
            elif kind == NUM:
                args.append(Number(int(t[1]), t[2]))  # type: ignore[call-overload]
                self.i += 1
            elif kind == STR:
                args.append(StringList((str(t[1]),), False, t[2]))
                self.i += 1
            elif kind == SPECIAL and t[1] == "[":
                self.i += 1
                args.append(self.string_list(t[2]))
            elif kind == IDENT:
                return tuple(args), (self.test(depth + 1),)
            elif kind == SPECIAL and t[1] == "(":
                self.i += 1
                return tuple(args), self.test_list(depth + 1, t[2])
            else:
                return tuple(args), ()

    def string_list(self, line: int) -> StringList:
        items: list[str] = []
        while True:
            t = self.peek()
            if t is None or t[0] != STR:
                raise SieveError(self.line(), "expected a string in the string list")
            items.append(str(t[1]))
            if len(items) > MAX_LIST:
                raise SieveError(line, f"string list longer than {MAX_LIST}")
            self.i += 1
            if self.special("]"):
                return StringList(tuple(items), True, line)
            if not self.special(","):
                raise SieveError(self.line(), "expected ',' or ']' in the string list")

    def test(self, depth: int) -> Test:
        t = self.peek()
        if t is None or t[0] != IDENT:
            raise SieveError(self.line(), f"expected a test, found {_show(t) if t else 'the end of the script'}")
        if depth > MAX_NESTING:
            raise SieveError(t[2], f"tests nested deeper than {MAX_NESTING}")
        self.i += 1
        self.count(t[2])
        args, tests = self.arguments(depth)
        return Test(str(t[1]), args, tests, t[2])

    def test_list(self, depth: int, line: int) -> tuple[Test, ...]:
        out = [self.test(depth)]
        while self.special(","):
            out.append(self.test(depth))
        if not self.special(")"):
            raise SieveError(self.line(), "expected ',' or ')' in the test list")
        return tuple(out)


def _show(t: Token) -> str:
    kind, value, _ = t
    if kind == STR:
        return "a string"
    if kind == NUM:
        return "a number"
    if kind == TAG:
        return f"':{value}'"
    return repr(value)


def parse(text: str, max_size: int = MAX_SCRIPT_SIZE) -> tuple[Command, ...]:
    """RFC 5228 §8.2 ``start = commands``; raises SieveError (and nothing else) on bad input."""
    if len(text.encode("utf-8", "surrogatepass")) > max_size:
        raise SieveError(1, f"script larger than {max_size} bytes")
    if "\x00" in text:
        raise SieveError(text.count("\n", 0, text.index("\x00")) + 1, "NUL character in the script")
    return _Parser(tokenize(text)).commands(0)
