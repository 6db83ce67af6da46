"""Outcome records: the final per-recipient result of a completed entry stays readable (done/<id>.json)
after the entry is gone, the live envelope shows a retry's last reply, and old records are pruned."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from mailsrv.queue.enqueue import Enqueuer
from mailsrv.queue.store import QRcpt, queue_dir

from .conftest import SinkHandler, run_scenario, wait_for

MSG = b"From: alice@example.test\r\nTo: x@remote.test\r\nSubject: outcome\r\n\r\nbody\r\n"


def test_outcomes_sent_failed_retried(tmp_path: Path) -> None:
    sink = SinkHandler(rcpt_script={"bad@remote.test": ["550 5.1.1 no such user here"],
                                    "slow@remote.test": ["451 4.3.0 try again later", "250"]})
    seen: dict[str, Any] = {}

    async def body(cfg: Any, runner: Any) -> None:
        enq = Enqueuer(cfg.server.data_dir)
        qd = queue_dir(cfg.server.data_dir)
        gate = asyncio.Event()
        sink.data_gate = gate
        qid = await enq.enqueue(MSG, "alice@example.test",
                                [QRcpt("ok@remote.test"), QRcpt("bad@remote.test"), QRcpt("slow@remote.test")])
        await wait_for(lambda: sink.in_data.is_set())
        # in flight: the live envelope, every recipient pending
        assert {a: st for a, (st, _) in (qd.outcome(qid) or {}).items()} == dict.fromkeys(
            ["ok@remote.test", "bad@remote.test", "slow@remote.test"], "pending")
        gate.set()
        # after the first attempt: slow waits for a retry with the 451 as its last reply
        await wait_for(lambda: (qd.outcome(qid) or {}).get("slow@remote.test", ("", ""))[1].startswith("451")
                       or qid not in qd.ids())
        seen["first"] = qd.outcome(qid)
        await wait_for(lambda: qid not in qd.ids())
        seen["final"] = qd.outcome(qid)
        seen["qid"] = qid

    asyncio.run(run_scenario(tmp_path, {"remote.test": sink}, body, retry_schedule=(0.3,)))
    first = seen["first"]
    assert first["ok@remote.test"][0] == "sent" and first["ok@remote.test"][1].startswith("250 2.0.0 accepted")
    assert first["bad@remote.test"] == ("failed", "550 5.1.1 no such user here")
    assert first["slow@remote.test"] == ("pending", "451 4.3.0 try again later")
    final = seen["final"]
    assert final["ok@remote.test"][0] == "sent" and final["slow@remote.test"][0] == "sent"
    assert final["slow@remote.test"][1].startswith("250 2.0.0 accepted by sink")
    assert final["bad@remote.test"] == ("failed", "550 5.1.1 no such user here")
    # the outcome survives a new QueueDir handle (another process reads the same files)
    assert queue_dir(tmp_path / "data").outcome(seen["qid"]) == final


def test_expired_and_pruned(tmp_path: Path) -> None:
    sink = SinkHandler(rcpt_script={"late@remote.test": ["451 4.4.1 busy"] * 100})
    seen: dict[str, Any] = {}

    async def body(cfg: Any, runner: Any) -> None:
        enq = Enqueuer(cfg.server.data_dir)
        qd = queue_dir(cfg.server.data_dir)
        qid = await enq.enqueue(MSG, "alice@example.test", [QRcpt("late@remote.test")])
        await wait_for(lambda: qid not in qd.ids())
        seen["qid"] = qid
        seen["final"] = qd.outcome(qid)

    asyncio.run(run_scenario(tmp_path, {"remote.test": sink}, body, retry_schedule=(0.05,), lifetime=0.3,
                             delay_notice_after=0.0))
    status, reply = seen["final"]["late@remote.test"]
    assert status == "expired" and reply.startswith("451 4.4.1 busy") and "4.4.7" in reply
    qd = queue_dir(tmp_path / "data")
    record = qd.done / f"{seen['qid']}.json"
    assert qd.prune_outcomes(3600.0) == 0 and record.exists()
    old = time.time() - 7200
    os.utime(record, (old, old))
    assert qd.prune_outcomes(3600.0) == 1 and qd.outcome(seen["qid"]) is None
    assert qd.outcome("../../etc") is None and qd.outcome("nosuchentry") is None


def test_runner_prunes_old_outcomes_at_start(tmp_path: Path) -> None:
    qd = queue_dir(tmp_path / "data")
    old, fresh = qd.done / "0old.json", qd.done / "1fresh.json"
    for p in (old, fresh):
        p.write_bytes(b'{"id":"x","finished":0,"rcpts":[]}')
    then = time.time() - 7200
    os.utime(old, (then, then))

    async def body(cfg: Any, runner: Any) -> None:
        await wait_for(lambda: not old.exists())

    asyncio.run(run_scenario(tmp_path, {}, body, outcome_keep=3600.0))
    assert fresh.exists() and not old.exists()
