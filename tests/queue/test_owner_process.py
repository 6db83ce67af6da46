"""The queue owner as a real process: SIGKILL mid-delivery, restart, nothing lost; SIGTERM; the CLI."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.loopthread import LoopThread

from mailsrv.queue.store import Envelope, QRcpt, new_id, queue_dir

from .conftest import SinkHandler, start_sink


def poll(pred: Callable[[], bool], limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not pred():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        time.sleep(0.01)


def write_config(tmp: Path, port: int, domains: tuple[str, ...] = ("remote.test",)) -> Path:
    """A config whose queue routes ``domains`` to the sink on ``port``."""
    cfg = tmp / "mailsrv.toml"
    cfg.write_text(
        "[server]\n"
        f'data_dir = "{tmp / "data"}"\n'
        'hostname = "mx.example.test"\n'
        "[queue]\n"
        "retry_schedule = [0.05]\n"
        "dkim_sign = false\n"
        # one connection to the sink: one message in flight when the runner is killed, so the
        # at-least-once window below is exactly one message (with 4, several could be inside DATA)
        "max_per_destination = 1\n"
        + "".join(f'[queue.route."{d}"]\nsmarthost = "127.0.0.1:{port}"\ntls = "none"\n' for d in domains)
    )
    return cfg


def start_runner(cfg: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "mailsrv.queue.runner", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def cli(cfg: Path, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "mailsrv", "-c", str(cfg), "queue", *args],
                         capture_output=True, check=True, text=True)
    return out.stdout


def test_sigkill_mid_delivery_then_restart(tmp_path: Path) -> None:
    lt = LoopThread()
    gate = asyncio.Event()
    sink = SinkHandler(data_gate=gate)
    server, port = lt.run(start_sink(sink))
    cfg = write_config(tmp_path, port)
    qd = queue_dir(tmp_path / "data")
    ids = []
    for i in range(5):
        env = Envelope(id=new_id(), sender="alice@example.test", rcpts=[QRcpt(f"r{i}@remote.test")])
        qd.add(env, f"Message-ID: <m{i}@example.test>\r\nSubject: {i}\r\n\r\nbody {i}\r\n".encode())
        ids.append(env.id)
    assert all(i in cli(cfg, "list") for i in ids)
    proc = start_runner(cfg)
    try:
        poll(lambda: sink.in_data.is_set())  # a delivery is inside DATA, held by the sink
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert sorted(qd.ids()) == sorted(ids)  # nothing acknowledged by the sink, nothing removed
    lt.loop.call_soon_threadsafe(gate.set)
    proc = start_runner(cfg)
    try:
        poll(lambda: qd.ids() == [])
        got = {m.rcpts[0] for m in sink.received}
        assert got == {f"r{i}@remote.test" for i in range(5)}  # every message, at least once
        # at-least-once window: only the message that was in flight may arrive twice
        assert len(sink.received) <= 6
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        lt.run(_close(server))
        lt.stop()


async def _close(server: Any) -> None:
    server.close()
    await server.wait_closed()


def test_cli_hold_release_delete_flush(tmp_path: Path) -> None:
    lt = LoopThread()
    sink = SinkHandler()
    server, port = lt.run(start_sink(sink))
    cfg = write_config(tmp_path, port)
    qd = queue_dir(tmp_path / "data")
    a = Envelope(id=new_id(), sender="alice@example.test", rcpts=[QRcpt("held@remote.test")])
    b = Envelope(id=new_id(), sender="alice@example.test", rcpts=[QRcpt("gone@remote.test")])
    for env in (a, b):
        qd.add(env, b"Subject: x\r\n\r\nx\r\n")
    assert "held" in cli(cfg, "hold", a.id)
    assert "deleted" in cli(cfg, "delete", b.id)
    assert '"held":true' in cli(cfg, "show", a.id)
    listing = cli(cfg, "list")
    assert f"{a.id} HELD" in listing and b.id not in listing
    proc = start_runner(cfg)
    try:
        c = Envelope(id=new_id(), sender="alice@example.test", rcpts=[QRcpt("later@remote.test")])
        qd.add(c, b"Subject: y\r\n\r\ny\r\n")
        assert "flushed" in cli(cfg, "flush")
        poll(lambda: [m.rcpts for m in sink.received] == [["later@remote.test"]])
        assert qd.ids() == [a.id]  # held: not attempted
        assert "released" in cli(cfg, "release", a.id)
        poll(lambda: qd.ids() == [])
        assert sorted(m.rcpts[0] for m in sink.received) == ["held@remote.test", "later@remote.test"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        lt.run(_close(server))
        lt.stop()
