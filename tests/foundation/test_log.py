"""Log lines: one per event, key=value, session context, safe quoting."""

from __future__ import annotations

import asyncio
import io
import re
import sys
import threading
import time
import weakref

from hypothesis import given
from hypothesis import strategies as st

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


def _reference_quote(value: object) -> str:
    """The quoting rule as first written (no fast path): the fast path must agree with it."""
    s = value if isinstance(value, str) else str(value)
    if s == "" or any(c in s for c in ' "=\\') or not s.isprintable():
        s = s.replace("\\", "\\\\").replace('"', '\\"')
        s = s.encode("unicode_escape", "backslashreplace").decode("ascii").replace('\\\\"', '\\"')
        return f'"{s}"'
    return s


@given(st.one_of(st.text(), st.text(alphabet=st.characters(max_codepoint=127)), st.integers(), st.floats()))
def test_quote_fast_path_agrees_with_the_rule(value: object) -> None:
    assert log._quote(value) == _reference_quote(value)


@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
def test_cached_stamp_equals_strftime(now: float) -> None:
    expected = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(now))) + f".{int(now % 1 * 1000):03d}Z"
    assert log._stamp(now) == expected
    assert log._stamp(now) == expected  # the second call comes from the cache


def test_field_overrides_session_field_once() -> None:
    def body() -> None:
        token = log.bind(sid="s1", user="old")
        try:
            log.get("x").info("ev", user="new")
        finally:
            log.context.reset(token)

    out = capture(body)
    assert "user=new" in out and "user=old" not in out and out.count("user=") == 1


def test_buffered_lines_wait_for_the_loop_errors_do_not() -> None:
    buf = io.StringIO()
    log.configure("info", buf)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        log.buffer_on_loop(loop, delay=0.05)
        t0 = loop.time()
        log.get("x").info("first")
        from_thread = threading.Thread(target=lambda: log.get("x").info("threaded"))
        from_thread.start()
        from_thread.join()
        assert buf.getvalue() == ""  # not written per line
        deadline = t0 + 5
        while "first" not in buf.getvalue():  # the loop writes the batch after the delay
            assert loop.time() < deadline, "buffered lines never written"
            await asyncio.sleep(0.005)
        assert loop.time() - t0 >= 0.05
        assert [ln.split()[3] for ln in buf.getvalue().splitlines()] == ["first", "threaded"]
        log.get("x").info("second")
        log.get("x").error("bad")  # an error is written at once, after what came before it
        assert [ln.split()[3] for ln in buf.getvalue().splitlines()] == ["first", "threaded", "second", "bad"]
        log.get("x").info("last")

    try:
        asyncio.run(main())
        assert "last" not in buf.getvalue()  # the loop stopped before its timer
        log.unbuffer()  # the shutdown path writes it
        assert buf.getvalue().splitlines()[-1].split()[3] == "last"
        log.get("x").info("direct")  # unbuffered again: one write per line
        assert buf.getvalue().splitlines()[-1].split()[3] == "direct"
    finally:
        log.unbuffer()
        log.configure("info", sys.stderr)


def test_a_full_buffer_is_written_without_waiting_for_the_loop() -> None:
    buf = io.StringIO()
    log.configure("info", buf)

    async def main() -> None:
        log.buffer_on_loop(asyncio.get_running_loop(), delay=60)
        for i in range(log.MAX_BUFFERED - 1):
            log.get("x").info("n", i=i)
        assert buf.getvalue() == ""
        log.get("x").info("n", i=log.MAX_BUFFERED - 1)  # the loop is busy: the buffer is full, write now
        assert len(buf.getvalue().splitlines()) == log.MAX_BUFFERED

    try:
        asyncio.run(main())
    finally:
        log.unbuffer()
        log.configure("info", sys.stderr)


def test_configure_writes_buffered_lines_to_the_old_stream() -> None:
    old, new = io.StringIO(), io.StringIO()
    log.configure("info", old)

    async def main() -> None:
        log.buffer_on_loop(asyncio.get_running_loop(), delay=60)
        log.get("x").info("pending")
        log.configure("info", new)
        log.get("x").info("after")

    try:
        asyncio.run(main())
        log.flush()
    finally:
        log.unbuffer()
        log.configure("info", sys.stderr)
    assert "pending" in old.getvalue() and "after" not in old.getvalue()
    assert "after" in new.getvalue() and "pending" not in new.getvalue()


CHILD = r"""
import asyncio, os, signal, sys
from mailsrv import log

log.configure("info", open(sys.argv[1], "a"))

async def main():
    log.buffer_on_loop(asyncio.get_running_loop(), delay=60)
    log.get("w").info("before")
    if sys.argv[2] == "error":
        log.get("w").error("boom")  # written at once, with "before"
    log.get("w").info("lost")  # still buffered: a kill -9 may lose it
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


def test_error_line_survives_kill_9_with_the_lines_before_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess

    for mode, expected in (("error", ["before", "boom"]), ("info", [])):
        out = tmp_path / f"{mode}.log"
        proc = subprocess.run([sys.executable, "-c", CHILD, str(out), mode], timeout=60)
        assert proc.returncode == -9
        text = out.read_text() if out.exists() else ""
        assert [ln.split()[3] for ln in text.splitlines()] == expected


def test_a_session_context_is_formatted_once_and_a_field_still_overrides_it() -> None:
    token = log.bind(sid="s1", peer="127.0.0.1:1", user=None)
    try:
        first = log.format_line("info", "smtp", "a", {"n": 1})
        assert first.endswith(" info smtp a sid=s1 peer=127.0.0.1:1 n=1")
        assert getattr(log.context.get(), "text", None) == " sid=s1 peer=127.0.0.1:1"
        assert log.format_line("info", "smtp", "b", {"sid": "other"}).endswith(" b peer=127.0.0.1:1 sid=other")
        inner = log.bind(user="alice")  # a new mapping: formatted anew, never the cached text
        try:
            assert log.format_line("info", "smtp", "c", {}).endswith(" c sid=s1 peer=127.0.0.1:1 user=alice")
        finally:
            log.context.reset(inner)
        assert log.format_line("info", "smtp", "d", {}).endswith(" d sid=s1 peer=127.0.0.1:1")
    finally:
        log.context.reset(token)


class _Peer(str):
    """A field value that can be watched with a weakref."""


def test_an_ended_sessions_context_is_not_kept() -> None:
    """The formatted context goes with the session: nothing process-wide keeps ended sessions' fields
    (a cache of up to 4 096 of them held ~2 MB per worker after a few thousand sessions)."""
    watched: list[weakref.ref[_Peer]] = []

    async def session(n: int) -> None:
        peer = _Peer(f"127.0.0.1:{n}")
        watched.append(weakref.ref(peer))
        log.bind(sid=f"s{n}", peer=peer)
        log.get("pop3").info("cmd", verb="QUIT")

    async def main() -> None:
        for n in range(50):
            await asyncio.create_task(session(n))

    out = capture(lambda: asyncio.run(main()))
    assert len(out.splitlines()) == 50 and "sid=s49 peer=127.0.0.1:49 verb=QUIT" in out
    assert [n for n, ref in enumerate(watched) if ref() is not None] == []


@given(st.one_of(st.integers(), st.booleans(), st.text(max_size=20)))
def test_int_fast_path_quotes_as_the_general_rule(value: object) -> None:
    assert log._quote(value) == log._quote(str(value))
