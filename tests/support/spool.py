"""Waiting for the spool remover (a thread job) to empty a spool directory."""

from __future__ import annotations

import time
from pathlib import Path


def no_spool_left(spool_dir: Path | str, timeout: float = 10.0) -> None:
    """Wait (up to ``timeout`` s, polling with a deadline) until ``spool_dir`` is empty."""
    deadline = time.monotonic() + timeout
    while list(Path(spool_dir).iterdir()):
        assert time.monotonic() < deadline, "a spool file was left behind"
        time.sleep(0.01)
