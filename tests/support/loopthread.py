"""An event loop in a thread, so blocking clients (smtplib, imaplib) can run in the test thread."""

from __future__ import annotations

import asyncio
import threading
from typing import Any


class LoopThread:
    """An event loop in a thread, so blocking clients (smtplib) can run in the test thread."""

    def __init__(self, timeout: float = 30) -> None:
        #: default wait of :meth:`run`
        self.timeout = timeout
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(self.timeout if timeout is None else timeout)

    def stop(self) -> None:
        async def _cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(_cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
