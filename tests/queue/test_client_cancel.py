"""A delivery cancelled while its message file is being opened in a thread (a hold, a delete, shutdown)
does not leak the file the thread opens after all."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from mailsrv.queue import client


def _fds_on(path: Path) -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                n += 1
        except OSError:
            pass
    return n


def test_cancel_during_the_open_closes_the_file_opened_later(tmp_path: Path) -> None:
    fifo = tmp_path / "message"
    os.mkfifo(fifo)  # opening it for reading blocks the thread until a writer opens it

    async def main() -> None:
        loop = asyncio.get_running_loop()
        submitted = asyncio.Event()
        real = loop.run_in_executor

        def spy(*args: Any) -> Any:
            job = real(*args)
            submitted.set()
            return job

        loop.run_in_executor = spy  # type: ignore[method-assign]
        reader = asyncio.create_task(client._open_in_thread(loop, fifo))
        await submitted.wait()  # the open is in a thread's hands
        reader.cancel()
        try:
            await reader
        except asyncio.CancelledError:
            pass
        assert reader.cancelled()
        wfd = os.open(fifo, os.O_WRONLY)  # now the thread's open returns, for a caller that is gone
        try:
            deadline = time.monotonic() + 10
            while True:  # the done callback closes it on the loop: poll with a deadline
                await asyncio.sleep(0.01)
                if _fds_on(fifo) == 1:  # only our writer is left
                    break
                assert time.monotonic() < deadline, "the file opened after the cancel was never closed"
        finally:
            os.close(wfd)

    asyncio.run(main())


def test_open_in_thread_returns_the_file(tmp_path: Path) -> None:
    path = tmp_path / "m"
    path.write_bytes(b"Subject: x\r\n\r\nbody\r\n")

    async def main() -> bytes:
        fh = await client._open_in_thread(asyncio.get_running_loop(), path)
        with fh:
            return fh.read()

    assert asyncio.run(main()) == b"Subject: x\r\n\r\nbody\r\n"
