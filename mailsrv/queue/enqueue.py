"""Adding messages to the queue from any process (SMTP workers): durable before it returns."""

from __future__ import annotations

import asyncio
import time
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
        not_before: float | None = None,
    ) -> str:
        """Commit a new entry (message hard-linked from the durable ``spool``) and wake the runner.

        ``not_before`` (POSIX time): a delayed send (RFC 4865 FUTURERELEASE, JMAP sendAt): no attempt
        before then, and the queue lifetime and delay notices count from then. It is kept in the
        envelope on disk, so it survives restarts. Returns the queue id once the entry is durable.
        Raises OSError.
        """
        env = Envelope(id=new_id(), sender=sender, rcpts=list(rcpts), envid=envid, ret=ret,
                       smtputf8=smtputf8, body=body, is_bounce=(sender == "") if is_bounce is None else is_bounce)
        if not_before is not None:
            env.next_attempt = env.created = max(env.created, not_before)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.qd.add, env, spool)
        self.qd.poke()
        return env.id

    async def cancel_delayed(self, qid: str, margin: float = 2.0) -> bool:
        """Take back a delayed entry that no attempt has touched and whose release is more than
        ``margin`` seconds away (the runner starts nothing before ``next_attempt``). False when it is
        gone, already tried, or too close to its release: then it is final."""

        def untouched(env: Envelope) -> bool:
            return env.attempts == 0 and env.next_attempt - time.time() > margin

        loop = asyncio.get_running_loop()
        removed = await loop.run_in_executor(None, lambda: self.qd.remove(qid, only_if=untouched))
        if removed:
            self.qd.poke(f"reload {qid}".encode())
        return removed
