"""Every benchmark scenario runs at smoke size and emits the documented JSON (speed is not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench.__main__ import scenarios  # noqa: E402

SCENARIOS = scenarios()


def check_report(report: dict) -> None:
    assert isinstance(report["scenario"], str)
    assert isinstance(report["seconds"], (int, float))
    assert report["results"], "a scenario must report at least one figure"
    for r in report["results"]:
        assert isinstance(r["name"], str) and r["name"]
        assert isinstance(r["value"], (int, float)), r
        assert isinstance(r.get("unit", ""), str)
        base = r.get("baseline")
        if base is not None:
            assert isinstance(base["name"], str) and isinstance(base["value"], (int, float)), r
        if r.get("ratio") is not None:
            assert isinstance(r["ratio"], (int, float))


def test_there_are_scenarios() -> None:
    assert SCENARIOS, "bench/ has no scenario modules"


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_smoke(name: str, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    res = subprocess.run(
        [sys.executable, "-m", "bench", name, "--size", "smoke", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    data = json.loads(out.read_text())
    assert [r["scenario"] for r in data["reports"]] == [name]
    check_report(data["reports"][0])
    assert f"== {name} ==" in res.stdout
