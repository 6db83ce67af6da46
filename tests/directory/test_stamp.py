"""One change-stamp mechanism (directory/stamp.py) for the directory and the policy database: a commit by
another process moves it, it costs one stat, and an interval bounds how often it stats."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from mailsrv.directory import Directory, SyncDirectory, stamp
from mailsrv.directory.stamp import WalStamp
from mailsrv.policy import state as policy_state
from mailsrv.policy.state import PolicyState

ROOT = Path(__file__).resolve().parents[2]

ADD_USER = """
import sys
from pathlib import Path
from mailsrv.directory import SyncDirectory
d = SyncDirectory(Path(sys.argv[1]))
d.add_user(sys.argv[2])
d.close()
"""


def _stats(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The paths the stamp module stats from now on."""
    seen: list[bytes] = []
    real = os.stat

    def counting(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        seen.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(stamp.os, "stat", counting)
    return seen


async def _in_another_process(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", ADD_USER, *args, cwd=ROOT)
    assert await asyncio.wait_for(proc.wait(), 120) == 0


async def test_a_commit_by_another_process_moves_the_directory_stamp_with_one_stat(
        ad: Directory, sd: SyncDirectory, db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = ad.change_stamp()
    assert ad.change_stamp() == before  # nothing committed: the same value
    stats = _stats(monkeypatch)
    await _in_another_process(str(db_path), "dora@example.test")  # what `mailsrv user add` does
    after = ad.change_stamp()
    assert after != before
    assert stats == [os.fsencode(db_path) + b"-wal"]  # the log only: one stat per look
    assert (await ad.resolve("dora@example.test")).account is not None


def test_the_interval_bounds_the_stats_and_a_change_is_seen_after_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(stamp, "clock", lambda: now[0])
    sd = SyncDirectory(tmp_path / "d.sqlite3")
    try:
        sd.add_domain("example.test")
        st = WalStamp(tmp_path / "d.sqlite3", interval=0.005)
        first = st.stamp()
        stats = _stats(monkeypatch)
        sd.add_user("erin@example.test")  # a commit: the log grows
        now[0] += 0.004
        assert st.stamp() == first and stats == []  # within the interval: the last look, no stat
        now[0] += 0.002
        assert st.stamp() != first and len(stats) == 1  # past it: looked again, the change seen
    finally:
        sd.close()
    assert WalStamp(tmp_path / "gone.sqlite3").stamp() == stamp.NO_LOG


async def test_policy_stamp_sees_its_own_learn_at_once_and_another_process_within_the_interval(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(stamp, "clock", lambda: now[0])
    db = tmp_path / "policy.db"
    state = PolicyState(db)
    try:
        await state.run(lambda c: c.execute("INSERT INTO sent VALUES ('a', 1)"))
        first = state.change_stamp()
        await state.run(lambda c: c.execute("INSERT INTO sent VALUES ('a', 2)"))
        assert state.change_stamp() != first  # this state's commit: at once, no matter the interval
        mine = state.change_stamp()
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", (
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None);"
            " c.execute(\"INSERT INTO sent VALUES ('b', 3)\"); c.close()"), str(db), cwd=ROOT)
        assert await asyncio.wait_for(proc.wait(), 120) == 0
        assert state.change_stamp() == mine  # within the interval: not looked yet
        now[0] += policy_state.STAMP_INTERVAL * 1.5
        assert state.change_stamp() != mine  # another process's commit, seen once the interval passed
    finally:
        state.close()
