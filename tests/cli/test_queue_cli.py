"""``mailsrv queue show``: a queued message's envelope, and once it left the queue its outcome."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.server import init_setup

from mailsrv import config as config_mod
from mailsrv.cli import main
from mailsrv.queue.store import Envelope, QRcpt, new_id, queue_dir


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_setup(tmp_path_factory.mktemp("setup") / "s")


def test_show_a_queued_then_a_finished_message(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    qd = queue_dir(config_mod.load(setup).server.data_dir)
    env = Envelope(id=new_id(), sender="alice@example.test",
                   rcpts=[QRcpt("a@remote.test"), QRcpt("b@remote.test")])
    qd.add(env, b"Subject: hi\r\n\r\nbody\r\n")
    assert main(["-c", str(setup), "queue", "show", env.id]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["id"] == env.id and [r["status"] for r in shown["rcpts"]] == ["pending", "pending"]

    env.rcpts[0].status, env.rcpts[0].diag = "sent", "250 2.0.0 ok"
    env.rcpts[1].status, env.rcpts[1].diag = "failed", "550 5.1.1 no such user"
    qd.record_outcome(env)
    assert qd.remove(env.id)
    assert main(["-c", str(setup), "queue", "show", env.id]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done["id"] == env.id and done["finished"] > 0
    assert [(r["addr"], r["status"], r["reply"]) for r in done["rcpts"]] == [
        ("a@remote.test", "sent", "250 2.0.0 ok"), ("b@remote.test", "failed", "550 5.1.1 no such user")]


@pytest.mark.parametrize("qid", ["0123456789abcdef01234567", "../done/x", "."])
def test_show_an_unknown_id(setup: Path, qid: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-c", str(setup), "queue", "show", qid]) == 2
    assert capsys.readouterr().err == f"mailsrv: no queued message {qid}, nor the outcome of one " \
                                      "(kept for queue.outcome_keep)\n"
