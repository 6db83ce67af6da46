"""A serving worker settles its collector once its long-lived objects exist (mailsrv/worker.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from mailsrv import worker


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_settle_gc_freezes_and_raises_thresholds(restore_gc: None) -> None:
    gc.unfreeze()
    survivor = {"long": ["lived"]}  # tracked by the collector: must leave its generations
    assert gc.get_freeze_count() == 0
    assert any(o is survivor for o in gc.get_objects())
    worker._settle_gc()
    assert gc.get_threshold() == worker.GC_THRESHOLDS
    assert worker.GC_THRESHOLDS[0] > 700  # larger than CPython's default young generation
    assert gc.get_freeze_count() > 0
    assert not any(o is survivor for gen in range(3) for o in gc.get_objects(gen))
