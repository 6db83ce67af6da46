"""Shared fixtures: the corpus location and the speedups `impl` switch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: ../shared/corpus beside the checkout (CI has it at the same place).
CORPUS = ROOT.parent / "shared" / "corpus"


@pytest.fixture(scope="session")
def corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.fail(f"test corpus missing at {CORPUS} (expected ../shared/corpus beside the checkout)")
    return CORPUS


def in_ci() -> bool:
    return bool(os.environ.get("CI"))
