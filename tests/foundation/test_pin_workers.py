"""server.pin_workers: worker N and every thread it starts run on CPU N only (mailsrv/master.py _pin);
off, the workers keep the master's CPUs."""

from __future__ import annotations

import os
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


def start(tmp_path: Path, pin: bool) -> ServerProcess:
    config = init_setup(tmp_path / "srv", workers=2)
    config.write_text(config.read_text().replace("[server]", f"[server]\npin_workers = {str(pin).lower()}", 1))
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
