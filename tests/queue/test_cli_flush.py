"""``mailsrv queue list|flush [DOMAIN]`` with a real runner process and SMTP sink: one destination's messages
now, the others at their times; a delayed send (sendAt) keeps its time through any flush; ``show --json``."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from support.loopthread import LoopThread

from mailsrv.queue.store import Envelope, QRcpt, new_id, queue_dir

from .conftest import SinkHandler, start_sink
from .test_owner_process import _close, cli, poll, start_runner, write_config


def test_flush_one_destination_then_all_and_a_delayed_send_keeps_its_time(tmp_path: Path) -> None:
    lt = LoopThread()
    sink = SinkHandler()
    server, port = lt.run(start_sink(sink))
    cfg = write_config(tmp_path, port, ("remote.test", "other.test"))
    qd = queue_dir(tmp_path / "data")
    later = time.time() + 3600
    retried = Envelope(new_id(), "alice@example.test", [QRcpt("x@Remote.Test")], attempts=1, next_attempt=later)
    other = Envelope(new_id(), "alice@example.test", [QRcpt("y@other.test")], attempts=1, next_attempt=later)
    delayed = Envelope(new_id(), "alice@example.test", [QRcpt("z@remote.test")], next_attempt=later)  # sendAt
    for env in (retried, other, delayed):
        qd.add(env, b"Subject: x\r\n\r\nx\r\n")
    listed = [json.loads(line)["id"] for line in cli(cfg, "list", "remote.test", "--json").splitlines()]
    assert sorted(listed) == sorted([retried.id, delayed.id])
    assert other.id in cli(cfg, "list", "@Other.Test") and retried.id not in cli(cfg, "list", "other.test")
    proc = start_runner(cfg)
    try:
        assert "1 message(s) to remote.test flushed" in cli(cfg, "flush", "remote.test")
        poll(lambda: [m.rcpts for m in sink.received] == [["x@Remote.Test"]])
        poll(lambda: retried.id not in qd.ids())
        assert qd.load(other.id).next_attempt == later and qd.load(delayed.id).next_attempt == later
        assert "queue flushed" in cli(cfg, "flush")
        poll(lambda: sorted(r for m in sink.received for r in m.rcpts) == ["x@Remote.Test", "y@other.test"])
        poll(lambda: qd.ids() == [delayed.id])
        shown = json.loads(cli(cfg, "show", delayed.id, "--json"))
        assert shown["next_attempt"] == later and shown["attempts"] == 0  # a delayed send: still at its time
        assert [m.rcpts for m in sink.received].count(["z@remote.test"]) == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        lt.run(_close(server))
        lt.stop()
