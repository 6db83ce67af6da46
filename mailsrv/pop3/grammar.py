"""POP3 wire grammar (RFC 1939, RFC 2449): command lines in, typed errors out, multi-line bodies streamed.

Pure: no I/O, no asyncio, no logging. :func:`parse_command` turns one line
into a :class:`Command`; :class:`BodyEncoder` turns a message, fed in chunks
of any size, into the bytes of a multi-line response (CRLF line ends,
byte-stuffing, the TOP line limit, the terminating ``.``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailsrv._speedups.linestuff import stuff

# RFC 2449 §4: "command lines ... may be up to 255 octets, including the terminating CRLF".
MAX_COMMAND_LINE = 255
# RFC 2449 §4: "arguments may be up to 40 octets" (RFC 1939 §3 says 40 characters).
MAX_ARG = 40
# RFC 5034 §4: the AUTH initial response and later SASL responses are not
# bound by the 255-octet command limit; we take SMTP's 12288 (RFC 4954 §4).
MAX_AUTH_LINE = 12288
# RFC 2449 §4: "Responses may be up to 512 octets, including the terminating CRLF".
MAX_RESPONSE_LINE = 512
#: message numbers and line counts are 32-bit unsigned in every server we know of
MAX_NUMBER = 2**32 - 1

#: RFC 2449 §8 and RFC 3206 response codes used by mailsrv
IN_USE = "IN-USE"
LOGIN_DELAY = "LOGIN-DELAY"
SYS_TEMP = "SYS/TEMP"
SYS_PERM = "SYS/PERM"
AUTH = "AUTH"


class Pop3Error(Exception):
    """A command failed; the connection loop answers ``-ERR [code] text`` and counts it."""

    def __init__(self, text: str, code: str | None = None, *, fatal: bool = False) -> None:
        super().__init__(text)
        self.text = text
        self.code = code
        #: close the connection after the reply (hostile or hopeless client)
        self.fatal = fatal

    def reply(self) -> bytes:
        return err(self.text, self.code)


class Pop3SyntaxError(Pop3Error):
    """The line is not a well-formed command (bad verb, bad argument)."""


def ok(text: str = "") -> bytes:
    return b"+OK " + text.encode() + b"\r\n" if text else b"+OK\r\n"


def err(text: str, code: str | None = None) -> bytes:
    """``-ERR [CODE] text`` (RFC 2449 §8: the code in brackets right after ``-ERR``)."""
    prefix = f"[{code}] " if code else ""
    return b"-ERR " + (prefix + text).encode() + b"\r\n"


@dataclass(frozen=True, slots=True)
class Command:
    verb: str  #: upper case ASCII, 3 or 4 letters
    args: tuple[bytes, ...]  #: space-separated arguments
    rest: bytes  #: everything after the verb and its space, untouched (PASS may contain spaces)


def strip_eol(line: bytes) -> bytes:
    """Remove one CRLF or LF terminator."""
    if line.endswith(b"\r\n"):
        return line[:-2]
    if line.endswith(b"\n"):
        return line[:-1]
    return line


_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


def _has_control(data: bytes) -> bool:
    return _CONTROL.search(data) is not None


def parse_command(line: bytes) -> Command:
    """Parse one command line (with or without its terminator).

    Raises :class:`Pop3SyntaxError`. Bare LF is accepted as a terminator
    (deviation (RFC 1939 §3): clients typed by hand send it; harmless here
    because POP3 has no data the client sends after a command).
    """
    body = strip_eol(line)
    verb_b, sep, rest = body.partition(b" ")
    # RFC 1939 §3: "Keywords are ... three or four characters long", case-insensitive.
    if not (3 <= len(verb_b) <= 4 and verb_b.isalpha() and verb_b.isascii()):
        raise Pop3SyntaxError("Unknown command")
    verb = verb_b.decode("ascii").upper()
    limit = MAX_AUTH_LINE if verb == "AUTH" else MAX_COMMAND_LINE
    if len(body) + 2 > limit:
        raise Pop3SyntaxError("Command line too long")
    if _has_control(rest):
        raise Pop3SyntaxError("Control characters in command")
    # split() on whitespace is split(b" ") without the empty pieces here: the other whitespace is control
    args = tuple(rest.split()) if sep else ()
    if len(rest) > MAX_ARG and verb not in ("PASS", "AUTH") and any(len(a) > MAX_ARG for a in args):
        raise Pop3SyntaxError("Argument too long")
    return Command(verb, args, rest)


def parse_number(arg: bytes, what: str = "message number", *, minimum: int = 1) -> int:
    """A decimal argument (RFC 1939 §3: message numbers start at 1; TOP's line count may be 0)."""
    if not arg.isdigit() or not arg.isascii() or len(arg) > 10:
        raise Pop3SyntaxError(f"Invalid {what}")
    value = int(arg)
    if value < minimum or value > MAX_NUMBER:
        raise Pop3SyntaxError(f"Invalid {what}")
    return value


def normalize_line_ends(data: bytes) -> bytes:
    """Every LF becomes CRLF, existing CRLF stays, a bare CR stays (whole-message form)."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def wire_size(data: bytes) -> int:
    """Octets a message occupies in RETR before byte-stuffing (RFC 1939 §5 LIST size).

    A message whose last line lacks its CRLF gets one from the encoder; it is
    counted here too, so that the size always matches what RETR sends.
    """
    n = len(normalize_line_ends(data))
    if data and not data.endswith(b"\n"):
        n += 1 if data.endswith(b"\r") else 2
    return n


class SizeCounter:
    """:func:`wire_size` over a message fed in chunks split anywhere (a file read piecewise)."""

    __slots__ = ("size", "_last")

    def __init__(self) -> None:
        self.size = 0
        self._last = -1  # last byte fed (-1: nothing yet)

    def feed(self, data: bytes) -> None:
        if not data:
            return
        lf = data.count(b"\n")
        crlf = data.count(b"\r\n") + (1 if self._last == 0x0D and data[0] == 0x0A else 0)
        self.size += len(data) + lf - crlf
        self._last = data[-1]

    def total(self) -> int:
        if self._last in (-1, 0x0A):
            return self.size
        return self.size + (1 if self._last == 0x0D else 2)


class BodyEncoder:
    """Streams one message as a POP3 multi-line response body.

    - RFC 1939 §3: lines end in CRLF (bare LF is converted, bare CR kept);
      a line starting with ``.`` gets another ``.`` (byte-stuffing); the
      response ends with ``.`` CRLF, after a CRLF added if the message lacks one.
    - RFC 1939 §7 TOP: with ``body_lines`` set, only the header, the blank
      line and that many body lines are sent; :attr:`done` turns true when
      the rest of the message is no longer needed.

    ``feed`` may be called with chunks split anywhere; the output is the same
    as for the whole message at once. The octets sent, minus the stuffing
    dots and the final ``.`` CRLF, equal :func:`wire_size` of the message (RETR).
    """

    __slots__ = ("_held_cr", "_line_start", "_out_line_start", "_in_header", "_left", "done", "_empty", "_crlf")

    def __init__(self, body_lines: int | None = None, *, crlf: bool = False) -> None:
        """``crlf``: the caller knows the message has no bare LF (its :func:`wire_size` equals its length),
        so the per-chunk check for one (two ``bytes.count`` passes, ~40 % of a chunk's time) is skipped."""
        self._crlf = crlf
        self._held_cr = False  # input ended in CR: wait to see whether LF follows
        self._line_start = True  # the next input byte starts a line
        self._out_line_start = True  # the output so far ends at a line boundary
        self._in_header = True
        self._left = body_lines
        self.done = False
        self._empty = True

    def feed(self, data: bytes) -> bytes:
        if self.done or not data:
            return b""
        self._empty = False
        if self._held_cr:
            data = b"\r" + data
            self._held_cr = False
        if data.endswith(b"\r"):
            data = data[:-1]
            self._held_cr = True
            if not data:
                return b""
        # Fast paths: most stored mail is CRLF already and few lines start with a dot.
        out = data
        if not self._crlf and data.count(b"\n") != data.count(b"\r\n"):
            out = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        out = stuff(out, self._line_start)
        self._line_start = out.endswith(b"\n")
        if self._left is not None:
            out = self._limit(out)
        if out:
            self._out_line_start = out.endswith(b"\n")
        return out

    def _limit(self, out: bytes) -> bytes:
        """Cut ``out`` (already CRLF and stuffed) after the header and ``_left`` body lines."""
        assert self._left is not None
        i, n = 0, len(out)
        at_start = self._out_line_start
        while i < n:
            if self._in_header:
                if at_start and out.startswith(b"\r\n", i):
                    self._in_header = False
                    i += 2
                    at_start = True
                    continue
                j = out.find(b"\n", i)
                if j < 0:
                    return out
                i, at_start = j + 1, True
            else:
                if self._left == 0:
                    self.done = True
                    return out[:i]
                j = out.find(b"\n", i)
                if j < 0:
                    return out
                i = j + 1
                self._left -= 1
        if not self._in_header and self._left == 0 and at_start:
            self.done = True
        return out

    def finish(self) -> bytes:
        """The end of the response: a missing final CRLF, then ``.`` CRLF."""
        tail = b""
        if not self.done:
            if self._held_cr:
                self._held_cr = False
                tail = self._limit(b"\r\n") if self._left is not None else b"\r\n"
                self._out_line_start = True
            elif not self._out_line_start and not self._empty:
                tail = b"\r\n"
        self.done = True
        return tail + b".\r\n"


def unstuff(body: bytes) -> bytes:
    """Inverse of the encoder for tests and clients: drop the final ``.`` line and the stuffing."""
    assert body.endswith(b".\r\n")
    lines = body[:-3].split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = [ln[1:] if ln.startswith(b".") else ln for ln in lines]
    return b"".join(x + b"\r\n" for x in out)
