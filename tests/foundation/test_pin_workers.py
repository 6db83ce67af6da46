"""server.pin_workers: worker N and every thread it starts run on CPU N only (mailsrv/master.py _pin);
"loop": only its event loop's thread and its delivery rounds' threads (mailsrv/util/affinity.py);
off, the workers keep the master's CPUs."""

from __future__ import annotations

import os
import smtplib
import time
from pathlib import Path

from support.server import ServerProcess, init_setup

from mailsrv.master import worker_cpu

CPUS = sorted(os.sched_getaffinity(0))


def allowed(pid: int) -> dict[int, set[int]]:
    """Thread id -> the CPUs it may run on, for every thread of ``pid``."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        out[int(tid)] = os.sched_getaffinity(int(tid))
    return out


def start(tmp_path: Path, pin: bool | str) -> ServerProcess:
    config = init_setup(tmp_path / "srv", "--demo", workers=2)
    value = f'"{pin}"' if isinstance(pin, str) else str(pin).lower()
    config.write_text(config.read_text().replace("[server]", f"[server]\npin_workers = {value}", 1))
    srv = ServerProcess(config).wait_ready()
    srv.wait_for(r"worker\.ready", count=2)
    return srv


def test_each_worker_and_its_threads_run_on_their_own_cpu(tmp_path: Path) -> None:
    srv = start(tmp_path, pin=True)
    try:
        if len(CPUS) < 2:  # one CPU: nothing to pin, nothing logged (worker_cpu is None)
            for m in srv.wait_for(r"worker\.started pid=\d+ slot=\d+ generation=\d+.*", count=2):
                assert "cpu=" not in m.group(0)
            assert worker_cpu(0) is None and worker_cpu(1) is None
            return
        found = srv.wait_for(r"worker\.started pid=(\d+) slot=(\d+) generation=\d+ cpu=(\d+)", count=2)
        seen = set()
        for m in found:
            pid, slot, cpu = int(m.group(1)), int(m.group(2)), int(m.group(3))
            assert cpu == worker_cpu(slot) == CPUS[slot % len(CPUS)]
            threads = allowed(pid)
            assert len(threads) > 1  # the loop and the threads it started (pools, journal, reserve)
            assert all(cpus == {cpu} for cpus in threads.values()), threads
            seen.add(cpu)
        assert len(seen) == 2  # two workers, two CPUs
        assert os.sched_getaffinity(srv.proc.pid) == set(CPUS)  # the master stays unpinned
    finally:
        srv.stop()


def test_unpinned_workers_keep_every_cpu(tmp_path: Path) -> None:
    srv = start(tmp_path, pin=False)
    try:
        for pid in srv.worker_pids():
            assert all(cpus == set(CPUS) for cpus in allowed(pid).values())
        for m in srv.wait_for(r"worker\.started pid=\d+ slot=\d+ generation=\d+.*", count=2):
            assert "cpu=" not in m.group(0)
    finally:
        srv.stop()


def test_loop_mode_pins_the_loop_and_its_round_threads_and_frees_the_background(tmp_path: Path) -> None:
    """pin_workers = "loop": each worker's main (loop) thread and the express threads of its delivery
    rounds run on its CPU; the pools' and other background threads on every CPU the master has."""
    srv = start(tmp_path, pin="loop")
    try:
        if len(CPUS) < 2:  # one CPU: nothing to pin
            assert all(cpus == set(CPUS) for pid in srv.worker_pids() for cpus in allowed(pid).values())
            return
        found = srv.wait_for(r"worker\.started pid=(\d+) slot=(\d+) generation=\d+ cpu=(\d+)", count=2)
        cpu_of = {int(m.group(1)): int(m.group(3)) for m in found}
        assert sorted(cpu_of.values()) == CPUS[:2]

        def pinned_besides_loop(pid: int) -> int:
            return sum(cpus == {cpu_of[pid]} for tid, cpus in allowed(pid).items() if tid != pid)

        # deliveries until both workers ran a round (SO_REUSEPORT spreads the connections)
        deadline = time.monotonic() + 60
        while not all(pinned_besides_loop(pid) for pid in cpu_of):
            assert time.monotonic() < deadline, {pid: allowed(pid) for pid in cpu_of}
            with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=10) as c:
                assert c.sendmail("a@remote.test", ["alice@example.test"], b"Subject: pin\r\n\r\nx\r\n") == {}
        for pid, cpu in cpu_of.items():
            threads = allowed(pid)
            assert threads[pid] == {cpu}  # the loop's thread
            assert all(cpus in ({cpu}, set(CPUS)) for cpus in threads.values()), threads
            assert sum(cpus == set(CPUS) for cpus in threads.values()) >= 1  # the pools' threads are free
        assert os.sched_getaffinity(srv.proc.pid) == set(CPUS)
    finally:
        srv.stop()
