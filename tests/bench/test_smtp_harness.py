"""bench/smtp.py's baselines and the disk floor: spawned (not forked) aiosmtpd workers that write durable
maildir files, and the floor's write loops (bench/_common.py)."""

from __future__ import annotations

import os
import smtplib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench import smtp as B  # noqa: E402
from bench._common import durable_loop, fsync_create, status_kib, syncfs_create  # noqa: E402

MIB = 1024 * 1024


def _maildir(root: Path) -> Path:
    for d in ("tmp", "new", "cur"):
        (root / d).mkdir(parents=True)
    return root


def test_baselines_are_spawned_without_the_bench_heap_and_deliver(tmp_path: Path) -> None:
    """Both aiosmtpd baselines answer 250 only with the message in its recipient's new/ (tmp/ empty),
    after Return-Path and Received (RFC 5321 §4.4), refuse a recipient without a maildir, and their
    workers are fresh interpreters: a forked worker's peak RSS counted the bench process's heap (2 470 MiB
    over 2 processes in a `bench all` run), which 256 MiB held here would show."""
    ballast = bytearray(256 * MIB)
    ballast[:: 4096] = b"x" * len(ballast[:: 4096])  # resident, as a heap that earlier scenarios grew
    for kind in ("aiosmtpd", "aiosmtpd-naive"):
        boxes = {u: _maildir(tmp_path / kind / u) for u in ("b", "c")}
        sock = B._listen()
        procs = B._spawn_workers(sock, kind, tmp_path / kind)
        port = sock.getsockname()[1]
        sock.close()
        try:
            assert len(procs) == B.WORKERS
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
                for i in range(3):
                    s.sendmail("a@remote.test", ["b@example.test"], f"Subject: {i}\r\n\r\nbody {i}\r\n")
                s.sendmail("a@remote.test", ["c@example.test"], "Subject: c\r\n\r\nbody c\r\n")
                try:
                    s.sendmail("a@remote.test", ["nobody@example.test"], "Subject: x\r\n\r\nx\r\n")
                except smtplib.SMTPDataError as e:
                    assert e.smtp_code == 550, e
                else:
                    raise AssertionError("a recipient without a maildir was accepted")
            files = sorted(os.listdir(boxes["b"] / "new"))
            assert len(files) == 3 and not os.listdir(boxes["b"] / "tmp"), files
            texts = [(boxes["b"] / "new" / f).read_bytes() for f in files]
            assert b"body 2" in b"".join(texts)
            for t in texts:
                assert t.startswith(b"Return-Path: <a@remote.test>\r\nReceived: from "), t[:80]
                assert b"\tfor <b@example.test>;\r\n" in t.split(b"\r\n\r\n", 1)[0], t[:300]
            [c] = os.listdir(boxes["c"] / "new")
            assert (boxes["c"] / "new" / c).read_bytes().endswith(b"Subject: c\r\n\r\nbody c\r\n")
            for p in procs:
                assert status_kib([p.pid], "VmHWM") < 128 * 1024, (kind, p.pid)  # KiB
        finally:
            B._stop(procs)
        assert all(p.returncode is not None for p in procs)
    del ballast


def test_floor_writes_are_durable_files_in_new(tmp_path: Path) -> None:
    root = _maildir(tmp_path / "floor")
    body = B._body(4096)
    for write in B.FLOORS.values():
        rate, times = durable_loop(lambda name, w=write: w(root / "tmp", name, body, root / "new"), count=5)
        assert rate > 0 and len(times) == 5 and all(t > 0 for t in times)
    files = os.listdir(root / "new")
    assert len(files) == 10 and not os.listdir(root / "tmp")
    assert all((root / "new" / f).read_bytes() == body for f in files)
    assert set(B.FLOORS.values()) == {fsync_create, syncfs_create}


def test_fsync_create_without_rename_stays_in_place(tmp_path: Path) -> None:
    """bench/store.py's raw baseline: create, write, fsync and the directory's fsync, no rename."""
    fsync_create(tmp_path, "one", b"data")
    assert (tmp_path / "one").read_bytes() == b"data"


def test_durable_loop_by_time(tmp_path: Path) -> None:
    names: list[str] = []
    rate, times = durable_loop(names.append, seconds=0.05)
    assert len(names) == len(times) > 0 and len(set(names)) == len(names) and rate > 0
