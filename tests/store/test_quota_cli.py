"""`mailsrv quota show|recalc` as an operator runs them, on a setup made by `mailsrv init`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from mailsrv import config as config_mod
from mailsrv.directory import open_sync
from mailsrv.store import DeliveryTarget, Store
from mailsrv.store.usage import BOOK_NAME

from .conftest import msg, spool


def _mailsrv(setup: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MAILSRV_CONFIG": str(setup / "mailsrv.toml")}
    return subprocess.run([sys.executable, "-m", "mailsrv", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_show_and_recalc(tmp_path: Path) -> None:
    setup = tmp_path / "s"
    p = subprocess.run([sys.executable, "-m", "mailsrv", "init", "--dir", str(setup), "--demo", "--any-port"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    cfg = config_mod.load(setup / "mailsrv.toml")
    data_dir = Path(cfg.server.data_dir)
    d = open_sync(cfg.directory, data_dir)
    try:
        d.add_domain("other.test")
        users = [d.account_by_address(a) for a in ("alice@example.test", "bob@example.test")]
    finally:
        d.close()
    assert all(u is not None for u in users)

    async def deliver() -> int:
        store = Store(cfg.store, data_dir, hostname="test.example")
        try:
            targets = [DeliveryTarget(await store.account(str(u.id), data_dir / u.store, domain=u.domain))
                       for u in users if u is not None]
            for i in range(3):
                res = await store.deliver(spool(tmp_path, msg(i), f"s{i}"), targets)
                assert [r.status for r in res] == ["ok", "ok"]
            return store.usage.domain_usage("example.test").storage
        finally:
            await store.close()

    total = asyncio.run(deliver())
    assert total == 2 * sum(len(msg(i)) for i in range(3))
    shown = [json.loads(line) for line in _mailsrv(setup, "quota", "show", "--json").stdout.splitlines()]
    assert shown == [{"domain": "example.test", "storage": total, "messages": 6, "max_storage": None},
                     {"domain": "other.test", "storage": 0, "messages": 0, "max_storage": None}]
    # the book is lost: show knows nothing, recalc rebuilds it from the per-account indexes
    for f in data_dir.glob(BOOK_NAME + "*"):
        f.unlink()
    assert "example.test: 0 bytes in 0 messages" in _mailsrv(setup, "quota", "show", "example.test").stdout
    out = _mailsrv(setup, "quota", "recalc")
    assert out.returncode == 0, out.stderr
    assert f"example.test: {total} bytes in 6 messages (limit unlimited)" in out.stdout
    again = json.loads(_mailsrv(setup, "quota", "show", "example.test", "--json").stdout)
    assert (again["storage"], again["messages"]) == (total, 6)
    bad = _mailsrv(setup, "quota", "recalc", "nowhere.test")
    assert bad.returncode == 2 and "no domain nowhere.test" in bad.stderr
    # a deleted user's mail leaves the domain's total at once
    assert _mailsrv(setup, "user", "del", "bob@example.test").returncode == 0
    left = json.loads(_mailsrv(setup, "quota", "show", "example.test", "--json").stdout)
    assert (left["storage"], left["messages"]) == (total // 2, 3)
