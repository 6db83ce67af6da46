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

import contextvars
import os
import sys
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, TextIO

LEVELS = {"trace": 5, "debug": 10, "info": 20, "warning": 30, "error": 40}

_level = LEVELS["info"]
_stream: TextIO = sys.stderr

#: Fields of the current session, merged into every line.
context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "mailsrv_log_context", default=MappingProxyType({})
)


def configure(level: str = "info", stream: TextIO | None = None) -> None:
    """Set the least severe level printed and (optionally) the stream."""
    global _level, _stream
    _level = LEVELS[level]
    if stream is not None:
        _stream = stream


def enabled(level: str) -> bool:
    return LEVELS[level] >= _level


def bind(**fields: Any) -> contextvars.Token[Mapping[str, Any]]:
    """Add fields to the current context (a session's id, peer, user...)."""
    merged = dict(context.get())
    merged.update(fields)
    return context.set(merged)


def _quote(value: Any) -> str:
    s = value if isinstance(value, str) else str(value)
    if s == "" or any(c in s for c in ' "=\\') or not s.isprintable():
        s = s.replace("\\", "\\\\").replace('"', '\\"')
        s = s.encode("unicode_escape", "backslashreplace").decode("ascii").replace('\\\\"', '\\"')
        return f'"{s}"'
    return s


def format_line(level: str, component: str, event: str, fields: dict[str, Any]) -> str:
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
    parts = [stamp, level, component, event]
    for key, value in {**context.get(), **fields}.items():
        if value is None:
            continue
        parts.append(f"{key}={_quote(value)}")
    return " ".join(parts)


class Logger:
    """A named component's logger; methods take an event name and fields."""

    __slots__ = ("component",)

    def __init__(self, component: str) -> None:
        self.component = component

    def _emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        if LEVELS[level] < _level:
            return
        line = format_line(level, self.component, event, fields)
        try:
            _stream.write(line + "\n")
            _stream.flush()
        except (OSError, ValueError):  # closed stderr must never kill a worker
            pass

    def trace(self, event: str, **fields: Any) -> None:
        self._emit("trace", event, fields)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
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
