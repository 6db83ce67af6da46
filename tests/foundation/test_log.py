"""Log lines: one per event, key=value, session context, safe quoting."""

from __future__ import annotations

import asyncio
import io
import re

from mailsrv import log


def capture(fn) -> str:
    buf = io.StringIO()
    log.configure("debug", buf)
    try:
        fn()
    finally:
        log.configure("info", __import__("sys").stderr)
    return buf.getvalue()


def test_line_shape_and_quoting() -> None:
    out = capture(lambda: log.get("smtp").info("rcpt.rejected", rcpt="bob@example.test", code=550,
                                                 reason='no such "user"\nnext', empty="", skipped=None))
    assert out.count("\n") == 1  # one line, even with a newline in a value
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z info smtp rcpt\.rejected ", out)
    assert "rcpt=bob@example.test code=550" in out
    assert 'reason="no such \\"user\\"\\nnext"' in out
    assert 'empty=""' in out and "skipped" not in out


def test_level_filter() -> None:
    buf = io.StringIO()
    log.configure("warning", buf)
    try:
        log.get("x").info("hidden")
        log.get("x").warning("shown")
        assert not log.enabled("info") and log.enabled("error")
    finally:
        log.configure("info", __import__("sys").stderr)
    assert "hidden" not in buf.getvalue() and "shown" in buf.getvalue()


def test_session_context_is_per_task() -> None:
    async def session(sid: str, ready: asyncio.Event, go: asyncio.Event) -> None:
        log.bind(sid=sid, peer="127.0.0.1:1")
        ready.set()
        await go.wait()
        log.get("imap").info("cmd", verb="NOOP")

    async def main() -> None:
        go = asyncio.Event()
        r1, r2 = asyncio.Event(), asyncio.Event()
        t1 = asyncio.create_task(session("s1", r1, go))
        t2 = asyncio.create_task(session("s2", r2, go))
        await r1.wait()
        await r2.wait()
        go.set()
        await asyncio.gather(t1, t2)

    out = capture(lambda: asyncio.run(main()))
    lines = out.splitlines()
    assert len(lines) == 2
    assert {re.search(r"sid=(\S+)", line).group(1) for line in lines} == {"s1", "s2"}  # type: ignore[union-attr]
    assert all("peer=127.0.0.1:1 verb=NOOP" in line for line in lines)


def test_exception_is_one_line() -> None:
    out = capture(lambda: log.get("w").exception("boom", ValueError("bad\nvalue")))
    assert out.count("\n") == 1 and 'error="ValueError: bad\\nvalue"' in out
