"""One line per event, ``key=value`` fields, with the session context on every line.

Usage::

    from mailsrv import log
    logger = log.get("smtp")
    logger.info("rcpt.rejected", rcpt=addr, code=550)

prints ``2026-11-26T23:40:01.123Z info smtp rcpt.rejected sid=3f2a1c peer=127.0.0.1:5123
rcpt=bob@example.test code=550``. The session fields (``sid``, ``peer``,
``user``, ``proto``) come from contextvars set by the connection that handles
the session, so every line a session causes carries them without passing them
around. Secrets are never logged: callers must not pass AUTH payloads.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, TextIO

LEVELS = {"trace": 5, "debug": 10, "info": 20, "warning": 30, "error": 40}

_level = LEVELS["info"]
_URGENT = LEVELS["error"]  # written at once even when lines are buffered
#: lines a buffer holds at most: a loop that is late (blocked) does not let it grow without bound
MAX_BUFFERED = 1024
_stream: TextIO = sys.stderr

#: Fields of the current session, merged into every line.
context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "mailsrv_log_context", default=MappingProxyType({})
)


def configure(level: str = "info", stream: TextIO | None = None) -> None:
    """Set the least severe level printed and (optionally) the stream."""
    global _level, _stream
    flush()
    _level = LEVELS[level]
    if stream is not None:
        _stream = stream
    server_log = logging.getLogger("aiohttp.server")
    if _client_http_error not in server_log.filters:
        server_log.addFilter(_client_http_error)


def _client_http_error(record: logging.LogRecord) -> bool:
    """aiohttp logs a request it could not parse (too many headers, a line too long, a bad
    Content-Length...) with its traceback on stderr, ~15 lines a request from anyone: it has
    answered 400 already, so one debug line here instead (JMAP, admin API, file links)."""
    exc = record.exc_info[1] if record.exc_info else None
    if exc is None or not type(exc).__module__.startswith("aiohttp.http_exceptions"):
        return True
    get("http").debug("http.bad_request", error=f"{type(exc).__name__}: {str(exc)[:200]}")
    return False


def enabled(level: str) -> bool:
    return LEVELS[level] >= _level


def bind(**fields: Any) -> contextvars.Token[Mapping[str, Any]]:
    """Add fields to the current context (a session's id, peer, user...)."""
    merged = _Fields(context.get())
    merged.update(fields)
    return context.set(merged)


def _quote(value: Any) -> str:
    if type(value) is int:  # digits (and a sign) are always plain
        return str(value)
    s = value if isinstance(value, str) else str(value)
    # printed as it is: printable ASCII without space, quote, ``=`` or backslash (the regex
    # ``[!#-<>-\[\]-~]+``, decided by four scans: a regex call's match state costs ~3x as much)
    if s and s.isascii() and s.isprintable() and " " not in s and '"' not in s and "=" not in s and "\\" not in s:
        return s
    if s == "" or any(c in s for c in ' "=\\') or not s.isprintable():
        s = s.replace("\\", "\\\\").replace('"', '\\"')
        s = s.encode("unicode_escape", "backslashreplace").decode("ascii").replace('\\\\"', '\\"')
        return f'"{s}"'
    return s


#: (second, "YYYY-MM-DDTHH:MM:SS") of the last stamp: strftime runs once a second, not per line.
_stamp_cache: tuple[int, str] = (-1, "")


#: ".000Z" to ".999Z": a stamp's milliseconds without a format spec per line
_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))


def _stamp(now: float) -> str:
    global _stamp_cache
    sec = int(now)
    cached_sec, prefix = _stamp_cache
    if sec != cached_sec:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        _stamp_cache = (sec, prefix)
    ms = int((now - sec) * 1000)
    return prefix + (_MILLIS[ms] if 0 <= ms < 1000 else f".{ms:03d}Z")


class _Fields(dict[str, Any]):
    """A context's fields (never changed once set: :func:`bind` makes a new one), with their formatted
    text once a line needed it: a session's context is formatted once, not on every line, and the text
    goes with the session (a process-wide cache kept up to thousands of ended sessions' contexts, ~1 KB
    each, alive: a worker's memory grew by ~2 MB over its first few thousand sessions)."""

    __slots__ = ("text", "__weakref__")
    text: str


def _context_fields(ctx: Mapping[str, Any], skip: Mapping[str, Any]) -> str:
    """`` key=value`` of the session's fields (those not in ``skip``, which override them)."""
    if skip and not ctx.keys().isdisjoint(skip):  # a field given to the call overrides the session's
        return "".join(f" {k}={_quote(v)}" for k, v in ctx.items() if v is not None and k not in skip)
    text: str | None = getattr(ctx, "text", None)
    if text is None:
        text = "".join(f" {k}={_quote(v)}" for k, v in ctx.items() if v is not None)
        if type(ctx) is _Fields:
            ctx.text = text
    return text


def format_line(level: str, component: str, event: str, fields: Mapping[str, Any]) -> str:
    parts = [f"{_stamp(time.time())} {level} {component} {event}{_context_fields(context.get(), fields)}"]
    for key, value in fields.items():
        if value is None:
            continue
        # an int is always plain (_quote's first rule, without a call: a message's line has four)
        parts.append(f"{key}={value}" if type(value) is int else f"{key}={_quote(value)}")
    return " ".join(parts)


class _Buffer:
    """Lines waiting for the owning loop to write them (see :func:`buffer_on_loop`).

    Any thread may add a line; the loop writes the batch at most ``delay`` seconds
    after its first line, in one write. ``error`` lines are written at once, with
    every line before them.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self.loop = loop
        self.delay = delay
        self.lines: list[str] = []
        self.lock = threading.Lock()
        self.thread = threading.get_ident()

    def add(self, line: str, urgent: bool) -> None:
        with self.lock:
            self.lines.append(line)
            first = len(self.lines) == 1
            full = len(self.lines) >= MAX_BUFFERED
        if urgent or full:
            self.flush()
        elif first:
            try:
                if threading.get_ident() == self.thread:
                    self.loop.call_later(self.delay, self.flush)
                else:
                    self.loop.call_soon_threadsafe(self.loop.call_later, self.delay, self.flush)
            except RuntimeError:  # loop closed: nobody will come, write now
                self.flush()

    def flush(self) -> None:
        with self.lock:  # written under the lock: batches from two threads keep their order
            lines, self.lines = self.lines, []
            if lines:
                _write("".join(lines))


_buffer: _Buffer | None = None


def _write(text: str) -> None:
    try:
        _stream.write(text)
        _stream.flush()
    except (OSError, ValueError):  # closed stderr must never kill a worker
        pass


def buffer_on_loop(loop: asyncio.AbstractEventLoop, delay: float = 0.05) -> None:
    """From now on, lines below ``error`` are batched and written by ``loop`` at most
    ``delay`` seconds later (one write per batch instead of one per line); ``error``
    lines are written at once, with what is buffered before them.

    For a serving process's event loop. The caller must call :func:`flush` (or
    :func:`unbuffer`) when the loop stops; a kill -9 loses at most ``delay`` seconds
    of lines below ``error``.
    """
    global _buffer
    flush()
    _buffer = _Buffer(loop, delay)


def unbuffer() -> None:
    """Write what is buffered and go back to one write per line."""
    global _buffer
    flush()
    _buffer = None


def flush() -> None:
    """Write out buffered lines now (shutdown and crash paths)."""
    buf = _buffer
    if buf is not None:
        buf.flush()


class Logger:
    """A named component's logger; methods take an event name and fields."""

    __slots__ = ("component",)

    def __init__(self, component: str) -> None:
        self.component = component

    def _emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        severity = LEVELS[level]
        if severity < _level:
            return
        line = format_line(level, self.component, event, fields) + "\n"
        buf = _buffer
        if buf is None:
            _write(line)
        else:
            buf.add(line, severity >= _URGENT)

    def trace(self, event: str, **fields: Any) -> None:
        self._emit("trace", event, fields)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit("info", event, fields)

    def info_fields(self, event: str, fields: dict[str, Any]) -> None:
        """:meth:`info` with fields in a dict the caller made (read, not kept): a line of many fields
        without their keyword re-pack (a message's line: ~7 k instructions of its ~45 k)."""
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit("error", event, fields)

    def exception(self, event: str, exc: BaseException, **fields: Any) -> None:
        """Log an unexpected exception as one line (type and message, no traceback)."""
        self._emit("error", event, {**fields, "error": f"{type(exc).__name__}: {exc}"})


def get(component: str) -> Logger:
    return Logger(component)


def pid_fields() -> dict[str, Any]:
    return {"pid": os.getpid()}

