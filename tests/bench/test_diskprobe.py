"""bench/_diskprobe.py: the variant specs, the block device counters, and one tiny run end to end."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench import _diskprobe  # noqa: E402


def test_variant_specs_become_nested_toml_values() -> None:
    assert _diskprobe._variant("base=") == ("base", {})
    name, cfg = _diskprobe._variant("b1=store.index_delay_busy=1.0,store.syncfs=false,server.log_level=\"info\"")
    assert name == "b1"
    assert cfg == {"store": {"index_delay_busy": 1.0, "syncfs": False}, "server": {"log_level": "info"}}


def test_device_counters_count_a_durable_write(tmp_path: Path) -> None:
    before = _diskprobe._dev_stat(tmp_path)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"x" * 8192)
        os.fsync(fd)
    finally:
        os.close(fd)
    after = _diskprobe._dev_stat(tmp_path)
    assert len(before) == 3 and all(isinstance(v, int) for v in before)
    assert after[0] > before[0] and after[1] >= before[1] + 16  # >= 16 sectors of 512 bytes written


def test_a_tiny_run_prints_a_row_per_variant_and_cell(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _diskprobe.main(["--dir", str(tmp_path), "--sessions", "2", "--seconds", "0.3", "--pairs", "1",
                     "base=", "busy=store.index_delay_busy=0.5"])
    rows = [ln.split() for ln in capsys.readouterr().out.splitlines() if ln and ln[0].isdigit()]
    assert [(r[1], r[2]) for r in rows] == [("base", "2"), ("busy", "2")]
    assert all(float(r[3]) > 0 for r in rows)  # msgs/s
    assert not any(p.name.startswith("probe-") for p in tmp_path.iterdir())  # its tree is removed
