"""A poke that arrives while the runner lists the envelope directory is not lost (found by tests/crash/
test_chaos.py: after a queue owner's kill -9, two entries enqueued during the new owner's first rescan
waited for the 60 s periodic rescan, attempts=0)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from mailsrv.queue.enqueue import Enqueuer
from mailsrv.queue.runner import RESCAN_INTERVAL, QueueRunner
from mailsrv.queue.store import QRcpt, queue_dir

from .conftest import SinkHandler, run_scenario, wait_for

MSG = b"From: alice@example.test\r\nTo: bob@remote.test\r\nSubject: poked\r\nMessage-ID: <p@example.test>\r\n\r\nhi\r\n"


def test_an_entry_enqueued_while_the_runner_lists_the_queue_is_sent_at_once(tmp_path: Path) -> None:
    sink = SinkHandler()

    async def body(cfg: Any, runner: QueueRunner) -> None:
        listed, enqueued = threading.Event(), threading.Event()
        real = runner.qd.ids
        armed = [True]

        def ids() -> list[str]:  # the runner's listing, in its executor thread
            got = real()
            if armed[0]:
                armed[0] = False
                listed.set()
                assert enqueued.wait(10)  # a worker enqueues (and pokes) after the listing, before it returns
            return got

        qd = queue_dir(cfg.server.data_dir)
        await wait_for(qd.sock_path.exists)  # the runner is bound
        runner.qd.ids = ids  # type: ignore[method-assign]
        loop = asyncio.get_running_loop()
        assert qd.poke()  # a rescan now
        assert await loop.run_in_executor(None, listed.wait, 10)
        await Enqueuer(cfg.server.data_dir).enqueue(MSG, "alice@example.test", [QRcpt("bob@remote.test")])
        enqueued.set()
        await wait_for(lambda: len(sink.received) == 1, limit=RESCAN_INTERVAL / 4)  # not the periodic rescan

    asyncio.run(run_scenario(tmp_path, {"remote.test": sink}, body))
    assert sink.received[0].rcpts == ["bob@remote.test"]
