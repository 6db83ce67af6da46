"""Adding messages to the queue from any process (SMTP workers): durable before it returns."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from mailsrv.queue.store import Envelope, QRcpt, QueueDir, new_id, queue_dir


class Enqueuer:
    """Per-worker handle on the queue directory."""

    def __init__(self, data_dir: Path) -> None:
        self.qd: QueueDir = queue_dir(data_dir)

    async def enqueue(
        self,
        spool: Path | bytes,
        sender: str,
        rcpts: Sequence[QRcpt],
        *,
        envid: str | None = None,
        ret: str | None = None,
        smtputf8: bool = False,
        body: str = "7BIT",
        is_bounce: bool | None = None,
    ) -> str:
        """Commit a new entry (message hard-linked from the durable ``spool``) and wake the runner.

        Returns the queue id once the entry is durable. Raises OSError.
        """
        env = Envelope(id=new_id(), sender=sender, rcpts=list(rcpts), envid=envid, ret=ret,
                       smtputf8=smtputf8, body=body, is_bounce=(sender == "") if is_bounce is None else is_bounce)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.qd.add, env, spool)
        self.qd.poke()
        return env.id
