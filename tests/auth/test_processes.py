"""Lockout state is shared by separate processes (workers) through the directory database."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from mailsrv.directory import SyncDirectory

from .conftest import PASSWORD

SCRIPT = textwrap.dedent("""
    import asyncio, json, sys
    from mailsrv.auth import Authenticator
    from mailsrv.config import AuthConfig
    from mailsrv.directory import Directory

    path, user, password, ip, n, failures = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])

    async def main():
        d = Directory(path, threads=2)
        cfg = AuthConfig(argon2_memory_kib=1024, argon2_time_cost=1, throttle_delay=0,
                         account_failures=failures, ip_throttle_failures=10000, ip_block_failures=10000)
        a = Authenticator(d, cfg)
        out = []
        for i in range(n):
            r = await a.login(user, password, protocol="imap", client_ip=ip)
            out.append([r.ok, r.reason])
        await a.close()
        await d.close()
        print(json.dumps(out))

    asyncio.run(main())
""")


def run_workers(db: Path, jobs: list[tuple[str, str, str, int, int]]) -> list[list[list]]:
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, str(db), *map(str, job)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) for job in jobs]
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        outs.append(json.loads(out))
    return outs


def test_failure_counts_are_atomic_across_processes(db_path: Path, sd: SyncDirectory) -> None:
    # 4 processes x 25 failures from one IP at the same time: no update may be lost.
    run_workers(db_path, [("nobody@example.test", "x", "198.51.100.9", 25, 100000)] * 4)
    st = sd.failure_state("ip:198.51.100.9")
    assert st is not None and st.count == 100


def test_lockout_in_one_worker_refuses_in_another(db_path: Path, sd: SyncDirectory) -> None:
    (first,) = run_workers(db_path, [("alice@example.test", "wrong", "192.0.2.1", 3, 3)])
    assert [r[1] for r in first] == ["bad password"] * 3
    (second,) = run_workers(db_path, [("alice@example.test", PASSWORD, "192.0.2.200", 1, 3)])
    assert second == [[False, "account locked"]]
    (third,) = run_workers(db_path, [("bob@example.test", PASSWORD, "192.0.2.200", 1, 3)])
    assert third == [[True, "ok"]]
