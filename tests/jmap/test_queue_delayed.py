"""The outbound queue side of JMAP delayed send: an entry enqueued with ``not_before`` is not tried
before then (nor by ``mailsrv queue flush``), is released on time, and can be cancelled until
shortly before. Uses the queue tests' sinks and runner scenario (tests/queue/conftest.py)."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

from mailsrv.queue.enqueue import Enqueuer
from mailsrv.queue.store import QRcpt, queue_dir

_spec = importlib.util.spec_from_file_location("queue_scenarios", Path(__file__).parents[1] / "queue" / "conftest.py")
assert _spec is not None and _spec.loader is not None
Q: Any = sys.modules.setdefault("queue_scenarios", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(Q)

MSG = b"From: alice@example.test\r\nTo: b@remote.test\r\nSubject: later\r\n\r\nbody\r\n"


def test_not_before_release_flush_and_cancel(tmp_path: Path) -> None:
    sink = Q.SinkHandler()

    async def body(cfg: Any, runner: Any) -> None:
        enq = Enqueuer(cfg.server.data_dir)
        qd = queue_dir(cfg.server.data_dir)
        t0 = time.time()
        soon = await enq.enqueue(MSG, "alice@example.test", [QRcpt("b@remote.test")], not_before=t0 + 1.5)
        far = await enq.enqueue(MSG, "alice@example.test", [QRcpt("c@remote.test")], not_before=t0 + 3600)
        env = qd.load(far)
        assert env.next_attempt == env.created == t0 + 3600  # lifetime and delay notices count from the release
        # a flush sends what waits for a retry, not what waits for its release
        qd.poke(b"flush")
        now = await enq.enqueue(MSG, "alice@example.test", [QRcpt("d@remote.test")])
        await Q.wait_for(lambda: any(r.rcpts == ["d@remote.test"] for r in sink.received))
        assert len(sink.received) == 1
        await Q.wait_for(lambda: len(sink.received) == 2)
        released = time.time()
        assert sink.received[1].rcpts == ["b@remote.test"] and released >= t0 + 1.5
        await Q.wait_for(lambda: soon not in qd.ids() and now not in qd.ids())  # removed after the 250
        # the far one is cancelled; a second cancel finds nothing
        assert await enq.cancel_delayed(far) is True
        assert await enq.cancel_delayed(far) is False
        await Q.wait_for(lambda: far not in runner.entries)
        # too close to its release: not cancelled
        close = await enq.enqueue(MSG, "alice@example.test", [QRcpt("e@remote.test")], not_before=time.time() + 1.0)
        assert await enq.cancel_delayed(close, margin=2.0) is False
        await Q.wait_for(lambda: len(sink.received) == 3)

    asyncio.run(Q.run_scenario(tmp_path, {"remote.test": sink}, body, retry_schedule=(3600.0,)))
