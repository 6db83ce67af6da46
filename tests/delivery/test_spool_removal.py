"""A serving worker's spool removals gather for REMOVE_DELAY seconds into one job (mailsrv/delivery/spool.py)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.spool import no_spool_left

from mailsrv.delivery import spool as spool_mod
from mailsrv.delivery.spool import FileSpool


@pytest.fixture
def jobs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Removal jobs run (their spool counts); the remover's delay is restored after the test."""
    ran: list[int] = []
    original = spool_mod._Remover._run

    def counting(self: Any) -> None:
        ran.append(len(self._todo))
        original(self)

    monkeypatch.setattr(spool_mod._Remover, "_run", counting)
    yield ran
    spool_mod.flush_removals()
    spool_mod.batch_removals(0.0)
    assert not spool_mod._remover._todo


async def _written(directory: Path, n: int) -> list[FileSpool]:
    spools = []
    for i in range(n):
        sp = FileSpool(directory)
        await sp.write(b"message %d\r\n" % i)
        await sp.commit()
        spools.append(sp)
    assert all(sp.path.exists() for sp in spools)
    return spools


def test_spools_discarded_one_by_one_are_removed_by_one_delayed_job(tmp_path: Path, jobs: list[int]) -> None:
    spool_mod.batch_removals(0.5)

    async def go() -> None:
        spools = await _written(tmp_path, 5)
        for sp in spools:
            sp.discard()
            await asyncio.sleep(0)  # one message at a time: each discard in a loop turn of its own
        assert all(sp.path.exists() for sp in spools)  # waiting for the delay
        await asyncio.get_running_loop().run_in_executor(None, no_spool_left, tmp_path)

    asyncio.run(go())
    assert jobs == [5]


def test_flush_removes_what_waits_for_the_delay(tmp_path: Path, jobs: list[int]) -> None:
    spool_mod.batch_removals(3600.0)  # the timer would never fire within the test

    async def go() -> None:
        for sp in await _written(tmp_path, 3):
            sp.discard()
        assert len(os.listdir(tmp_path)) == 3
        spool_mod.flush_removals()  # a stopping worker, after its sessions
        assert os.listdir(tmp_path) == []
        spool_mod.flush_removals()  # nothing waits: nothing happens
        more = await _written(tmp_path, 1)
        more[0].discard()  # a new batch starts after a flush
        spool_mod.flush_removals()

    asyncio.run(go())
    assert list(tmp_path.iterdir()) == []
    assert jobs == [3, 1]


def test_without_a_delay_the_job_starts_at_once(tmp_path: Path, jobs: list[int]) -> None:
    async def go() -> None:
        for sp in await _written(tmp_path, 2):
            sp.discard()
        assert spool_mod._remover._timer is None  # no timer: the job was handed to the executor
        await asyncio.get_running_loop().run_in_executor(None, no_spool_left, tmp_path)

    asyncio.run(go())
    assert sum(jobs) == 2




def test_a_discard_after_the_flush_is_not_left_to_a_timer(tmp_path: Path, jobs: list[int]) -> None:
    """A stopping worker flushes, then closes its services: a spool they discard then must not wait
    for a timer that the closing loop never runs (it would be left until spool.clean, an hour on)."""
    spool_mod.batch_removals(3600.0)

    async def go() -> list[FileSpool]:
        spools = await _written(tmp_path, 1)
        spool_mod.flush_removals()  # the worker, after its sessions
        spools[0].discard()  # a service closing after the flush
        return spools

    asyncio.run(go())  # the loop stops: its executor's jobs finish, a timer never fires
    assert list(tmp_path.iterdir()) == []
    assert jobs == [1]
