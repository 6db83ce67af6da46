"""Every benchmark scenario runs at smoke size and emits the documented JSON (speed is not asserted)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from statistics import median

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench.__main__ import scenarios  # noqa: E402

SCENARIOS = scenarios()
#: Scenarios that measure a library in-process (bench/README.md says why); every other one
#: measures a `mailsrv serve` started from `mailsrv init`.
IN_PROCESS = {"auth", "mime", "search", "security", "store"}


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
        if "rounds" in r:  # measured in rounds (bench/smtp.py): the figures are the rounds' medians
            check_rounds(r)
    check_servers(report)


def check_rounds(r: dict) -> None:
    """A row measured in rounds: value and baseline are the medians of ``rounds`` and ``baseline_rounds``, the
    ratio theirs, and ``ratio_min`` / ``ratio_max`` the range of the rounds' own ratios around it."""
    assert len(r["rounds"]) == len(r["baseline_rounds"]) >= 1, r
    assert r["value"] == pytest.approx(median(r["rounds"])), r
    assert r["baseline"]["value"] == pytest.approx(median(r["baseline_rounds"])), r
    per = [a / b for a, b in zip(r["rounds"], r["baseline_rounds"], strict=True) if b]
    assert (r["ratio_min"], r["ratio_max"]) == (pytest.approx(min(per)), pytest.approx(max(per))), r
    if len(per) == len(r["rounds"]) and (len(per) % 2 or len(per) == 2):
        # an odd count: some round is at or below both medians' ratio and some at or above (pigeonhole); two: the
        # mediant lies between the two rounds' ratios
        assert r["ratio_min"] * (1 - 1e-9) <= r["ratio"] <= r["ratio_max"] * (1 + 1e-9), r


def check_servers(report: dict) -> None:
    """The ``servers`` entries: CPU seconds per 1 000 operations and peak RSS (bench/README.md)."""
    servers = report["servers"]
    assert servers, "a scenario must report its server's CPU and peak RSS"
    first = servers[0]
    if report["scenario"] in IN_PROCESS:
        assert first["name"] == "in-process (library)", first
    else:
        assert first["name"] == "mailsrv", first
        assert first["processes"] >= 3, first  # master, a worker, the queue runner
    for srv in servers:
        assert isinstance(srv["name"], str) and isinstance(srv["operations_unit"], str), srv
        assert srv["operations"] > 0, srv
        # /proc counts CPU in 10 ms ticks per process: a baseline's short-lived processes at smoke size
        # (Dovecot's 48 for 124 operations) can each stay under one tick and sum to 0
        assert srv["cpu_seconds"] > 0 if srv is first else srv["cpu_seconds"] >= 0, srv
        assert srv["cpu_s_per_1k_ops"] == pytest.approx(srv["cpu_seconds"] * 1000 / srv["operations"], rel=0.01,
                                                         abs=1e-3), srv
        assert srv["peak_rss_kib"] > 1024, srv  # a Python server holds more than 1 MiB
        assert srv["processes"] >= 1, srv


def test_there_are_scenarios() -> None:
    assert SCENARIOS, "bench/ has no scenario modules"
    assert "idle" in SCENARIOS
    assert IN_PROCESS <= set(SCENARIOS)


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
    report = data["reports"][0]
    check_report(report)
    assert f"== {name} ==" in res.stdout
    assert f"server {report['servers'][0]['name']}: " in res.stdout
    if name == "idle":
        check_idle(report)
    if name == "smtp":
        check_smtp_client(report, "python", rounds=1)
        check_smtp_baselines(report, "python")


def check_smtp_client(report: dict, client: str, rounds: int) -> None:
    """Every throughput row names its load generator and the generator's CPU per message in our cell and the
    baseline's, and holds ``rounds`` rounds; smtp-source gives no latency rows (bench/README.md, the smtp
    scenario)."""
    rows = [r for r in report["results"] if r["name"].startswith("durable msgs/s")]
    assert rows
    for r in rows:
        assert r["client"].startswith(client), r
        assert len(r["rounds"]) == rounds, r
        assert 0 < r["client_cpu_ms_per_msg"] < 100 and 0 < r["baseline_client_cpu_ms_per_msg"] < 100, r
    front = [r for r in report["results"] if r["name"].startswith("SMTP front end alone")]
    assert front and all(r["client_cpu_ms_per_msg"] > 0 for r in front), front
    latency = [r for r in report["results"] if r["name"].startswith("end-of-DATA->250")]
    assert bool(latency) == (client == "python"), latency
    assert any(n.startswith(f"load generator ({client}) CPU ms per message") for n in report["notes"])


def test_smtp_smoke_with_smtp_source(tmp_path: Path) -> None:
    """MAILSRV_BENCH_SMTP_CLIENT=smtp-source drives the throughput cells with Postfix's C generator (the postfix
    package, tools/install-peers.sh); with MAILSRV_BENCH_SMTP_ROUNDS=2, in two rounds per cell."""
    exe = Path("/usr/sbin/smtp-source")
    assert exe.exists(), "smtp-source missing: run tools/install-peers.sh"
    out = tmp_path / "out.json"
    res = subprocess.run(
        [sys.executable, "-m", "bench", "smtp", "--size", "smoke", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "MAILSRV_BENCH_SMTP_CLIENT": "smtp-source", "MAILSRV_BENCH_SMTP_ROUNDS": "2"},
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = json.loads(out.read_text())["reports"][0]
    check_report(report)
    check_smtp_client(report, "smtp-source", rounds=2)
    assert any(n.startswith("each throughput cell: 2 rounds of 0.3 s per server") for n in report["notes"])
    check_smtp_baselines(report, "smtp-source")


def check_smtp_baselines(report: dict, client: str) -> None:
    """Each cell has rows against both aiosmtpd baselines (the primary one, in its executor, under its old row
    names; the issue's naive one, fsync in the handler), the disk floor's two rows hold one writer's durable
    writes against twice the naive baseline at one session, and every server was warmed up
    (bench/README.md, the smtp scenario)."""
    rows = {r["name"]: r for r in report["results"]}
    naive = "aiosmtpd naive (fsync in the handler)"
    for n in (1, 4):  # the smoke size's session counts
        label = f"4 KB, {n} sessions"
        primary = rows[f"durable msgs/s ({label})"]
        assert primary["baseline"]["name"].startswith("aiosmtpd+maildir fsync (fsync in its executor"), primary
        row = rows[f"durable msgs/s vs {naive} ({label})"]
        assert row["baseline"]["name"] == naive and row["baseline"]["value"] > 0, row
        assert row["ratio"] == pytest.approx(row["value"] / row["baseline"]["value"]), row
        assert row["value"] == primary["value"]
        assert (f"end-of-DATA->250 p99 vs {naive} ({label})" in rows) == (client == "python")
    floors = [r for r in report["results"] if r["name"].startswith("disk floor, no SMTP, one writer: ")]
    assert len(floors) == 3 and "fdatasync (the journal's sync)" in floors[2]["name"], floors
    two_naive = 2 * rows[f"durable msgs/s vs {naive} (4 KB, 1 sessions)"]["baseline"]["value"]
    for r in floors:
        assert r["value"] > 0 and r["writes"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"], r
        assert r["baseline"]["value"] == pytest.approx(two_naive), r
        assert r["left_ms_per_msg"] == pytest.approx(1000 / two_naive - 1000 / r["value"]), r
    names = [s["name"] for s in report["servers"]]
    assert naive in names and any(n.startswith("aiosmtpd+maildir fsync (") for n in names), names
    # the one-session floor (tests/bench/test_floors.py checks its values): one row per server beside it
    floor = rows["one-session floor (4 KB): loopback round trips + pool round trip + fdatasync + client CPU"]
    assert floor["value"] > 0 and floor["value"] == pytest.approx(sum(floor["parts_ms"].values())), floor
    for name in names + ["mailsrv, deferred_index = false"]:
        r = rows[f"ms per message at 1 session (4 KB) over the one-session floor: {name}"]
        assert r["baseline"]["value"] == floor["value"] and r["value"] > 0, r
    warm = [n for n in report["notes"] if n.startswith("warm-up before the first cell")]
    assert warm, report["notes"]
    for name in names + ["mailsrv, deferred_index = false"]:
        assert re.search(re.escape(name) + r": [1-9]\d* messages, \d+\.\d\d ms CPU each", warm[0]), (name, warm[0])


def check_idle(report: dict) -> None:
    rows = {r["name"]: r for r in report["results"]}
    for p in ("p50", "p90", "p99", "max"):
        assert rows[f"wake-up latency {p}"]["unit"] == "ms"
    lat = [rows[f"wake-up latency {p}"]["value"] for p in ("p50", "p90", "p99", "max")]
    assert lat == sorted(lat) and 0 < lat[-1] < 120_000, lat
    assert rows["RSS per IDLE connection"]["value"] > 0
    assert rows["server CPU while idle"]["unit"] == "CPU s/min"
    for name in ("RSS growth per wake round, per connection", "RSS growth per later wake round, per connection"):
        assert rows[name]["unit"] == "bytes", rows.get(name)
    assert any("RLIMIT_NOFILE" in n for n in report["notes"])
