"""What a delivery asks the kernel for less: ``fsio.running_loop`` (asyncio.get_running_loop without
its getpid(2) on Python 3.11) and store ids without a getrandom(2) each (``rows.new_id``)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest
from support.forked import read_pipe, spawn

from mailsrv.store.rows import new_id
from mailsrv.util import fsio


def test_running_loop_is_the_loop_running_in_this_thread() -> None:
    seen: list[asyncio.AbstractEventLoop] = []

    async def look() -> None:
        assert fsio.running_loop() is asyncio.get_running_loop()
        seen.append(fsio.running_loop())

    asyncio.run(look())
    asyncio.run(look())  # a new loop in the same thread: not the first one, closed now
    assert seen[0] is not seen[1] and seen[0].is_closed()
    t = threading.Thread(target=lambda: asyncio.run(look()))
    t.start()
    t.join()
    assert len(seen) == 3 and seen[2] is not seen[1]  # another thread's own loop
    with pytest.raises(RuntimeError):
        fsio.running_loop()  # no loop runs here now


def test_a_stopped_loop_is_not_taken_for_the_running_one() -> None:
    first = asyncio.new_event_loop()
    second = asyncio.new_event_loop()
    try:
        async def look() -> asyncio.AbstractEventLoop:
            return fsio.running_loop()

        assert first.run_until_complete(look()) is first
        assert second.run_until_complete(look()) is second  # first is stopped, not closed
        assert first.run_until_complete(look()) is first
    finally:
        first.close()
        second.close()


def test_ids_are_unique_and_a_forked_child_has_its_own(tmp_path: Path) -> None:
    ids = [new_id("E") for _ in range(20_000)]
    assert len(set(ids)) == len(ids) and all(len(i) == 25 and i.startswith("E") for i in ids)

    async def child(wfd: int) -> None:
        os.write(wfd, (" ".join(new_id("E") for _ in range(3)) + "\n").encode())
        os.close(wfd)

    pid, rfd = spawn(child, tmp_path / "err")
    try:
        theirs = read_pipe(rfd, time.monotonic() + 10).decode().split()
    finally:
        os.waitpid(pid, 0)
    assert len(theirs) == 3 and not set(theirs) & set(ids)
    assert {t[1:17] for t in theirs} != {ids[0][1:17]}  # the child drew its own random part
