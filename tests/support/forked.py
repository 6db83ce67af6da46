"""Forked children for the kill -9 trials: no exec, so a child starts in milliseconds.

A child runs one coroutine on its own event loop and reports on a pipe; the parent
reads the pipe with a deadline and kills the child when it likes.
"""

from __future__ import annotations

import asyncio
import os
import select
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path


def spawn(main: Callable[[int], Awaitable[None]], err: Path) -> tuple[int, int]:
    """Fork a child that runs ``asyncio.run(main(wfd))`` and exits: 0, or 3 with its traceback in ``err``.

    Returns (pid, read end of the child's pipe ``wfd``).
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(r)

            async def run() -> None:
                await main(w)

            asyncio.run(run())
        except BaseException:
            err.write_text(traceback.format_exc())
            code = 3
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def read_pipe(fd: int, deadline: float, enough: Callable[[bytes], bool] | None = None) -> bytes:
    """What a child wrote on its pipe until EOF, the deadline, or ``enough(what was read)``."""
    buf = b""
    while time.monotonic() < deadline and not (enough is not None and enough(buf)):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
    return buf
