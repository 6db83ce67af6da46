"""Waiting for the spool remover (a thread job) to empty a spool directory."""

from __future__ import annotations

import os
import time
from pathlib import Path

from mailsrv.store import reserve


def spool_files(spool_dir: Path | str) -> list[str]:
    """The names in ``spool_dir`` but its store's reserve of empty files (``.reserve``, store/reserve.py)."""
    return sorted(n for n in os.listdir(spool_dir) if n != reserve.DIRECTORY)


def no_spool_left(spool_dir: Path | str, timeout: float = 10.0) -> None:
    """Wait (up to ``timeout`` s, polling with a deadline) until ``spool_dir`` is empty (but its reserve)."""
    deadline = time.monotonic() + timeout
    while spool_files(spool_dir):
        assert time.monotonic() < deadline, "a spool file was left behind"
        time.sleep(0.01)
