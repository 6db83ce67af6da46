"""bench/smtp.py measures each throughput cell in rounds: the figures are the rounds' medians, each row carries the
rounds' values and the range of the per-round ratios, and bench/__main__.py's tables show them."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench import smtp as B  # noqa: E402
from bench.__main__ import markdown, print_table  # noqa: E402


def test_cell_takes_medians_pools_latencies_and_sums_client_cpu() -> None:
    rounds = [
        B._Round(rate=100.0, delivered=90.0, sent=300, client_cpu=0.03, lat=[0.001] * 99 + [0.050]),
        B._Round(rate=300.0, delivered=310.0, sent=900, client_cpu=0.06, lat=[0.002] * 100),
        B._Round(rate=200.0, delivered=150.0, sent=600, client_cpu=0.09, lat=[0.003] * 100),
    ]
    c = B._cell(rounds)
    assert c.rate == 200.0 and c.delivered == 150.0  # the middle round, not the mean (200 / 183.3)
    assert c.rates == [100.0, 300.0, 200.0] and c.delivered_rounds == [90.0, 310.0, 150.0]
    # 300 latencies pooled: the median is round 2's 2 ms, the p99 (rank 297) round 3's 3 ms; round 1's one
    # 50 ms outlier alone would be its own p99
    assert c.p50 == pytest.approx(2.0) and c.p99 == pytest.approx(3.0)
    assert c.client_ms == pytest.approx(0.18 / 1800 * 1000)
    assert B._cell(rounds[:1]).p99 == pytest.approx(50.0)


def test_cell_without_latencies_or_messages() -> None:
    """smtp-source gives no latencies; a round that got no 250 has no client CPU per message."""
    c = B._cell([B._Round(rate=0.0, delivered=0.0, sent=0, client_cpu=0.01, lat=[])])
    assert c.p50 is None and c.p99 is None and c.client_ms is None and c.rate == 0.0


def test_versus_is_the_medians_ratio_with_the_per_round_range() -> None:
    v = B._versus([100.0, 300.0, 200.0], [50.0, 100.0, 400.0])
    assert v["ratio"] == pytest.approx(200.0 / 100.0)
    # the rounds' own ratios: 2.0, 3.0, 0.5 (round 3 met the baseline's good moment)
    assert v["ratio_min"] == pytest.approx(0.5) and v["ratio_max"] == pytest.approx(3.0)
    assert v["rounds"] == [100.0, 300.0, 200.0] and v["baseline_rounds"] == [50.0, 100.0, 400.0]


def test_versus_skips_empty_baseline_rounds_and_needs_the_same_rounds() -> None:
    v = B._versus([100.0, 120.0, 90.0], [0.0, 60.0, 90.0])
    assert v["ratio"] == pytest.approx(100.0 / 60.0)
    assert (v["ratio_min"], v["ratio_max"]) == (pytest.approx(1.0), pytest.approx(2.0))
    none = B._versus([10.0], [0.0])
    assert none["ratio"] is None and none["ratio_min"] is None and none["ratio_max"] is None
    with pytest.raises(ValueError):
        B._versus([1.0, 2.0], [1.0])


def test_round_order_rotates_so_each_server_meets_each_position() -> None:
    servers = ["mailsrv", "executor", "naive", "postfix", "uid-first"]
    orders = [B._round_order(servers, cell, rnd, 3) for cell in range(4) for rnd in range(3)]
    assert all(sorted(o) == sorted(servers) for o in orders)
    assert orders[1] == servers[1:] + servers[:1] and orders[3] == servers[3:] + servers[:3]  # cell 1 goes on
    seen = Counter((name, o.index(name)) for o in orders for name in servers)
    assert set(seen) == {(name, i) for name in servers for i in range(len(servers))}
    assert min(seen.values()) >= 2, seen


def _report() -> dict:
    return {"scenario": "smtp", "seconds": 1.0, "results": [
        {"name": "durable msgs/s (4 KB, 1 sessions)", "unit": "msg/s", "value": 1225.0,
         "baseline": {"name": "aiosmtpd", "value": 1015.0},
         **B._versus([1225.0, 1180.0, 1300.0], [1015.0, 1100.0, 990.0])},
        {"name": "end-of-DATA->250 p99 (4 KB, 1 sessions)", "unit": "ms", "value": 3.0,
         "baseline": {"name": "aiosmtpd", "value": 1.5}, "ratio": 0.5},
    ], "servers": []}


def test_markdown_shows_the_rounds_and_the_ratio_range() -> None:
    md = markdown([_report()]).splitlines()
    assert md[2] == ("| smtp | durable msgs/s (4 KB, 1 sessions) | 1,225 msg/s (median of 1,225 / 1,180 / 1,300) "
                     "| aiosmtpd: 1,015 (1,015 / 1,100 / 990) | 1.21x (rounds 1.07-1.31x) |")
    assert md[3] == "| smtp | end-of-DATA->250 p99 (4 KB, 1 sessions) | 3.000 ms | aiosmtpd: 1.500 | 0.50x |"


def test_table_shows_the_rounds_and_the_ratio_range(capsys: pytest.CaptureFixture[str]) -> None:
    print_table(_report())
    out = capsys.readouterr().out
    assert "(median of 1,225 / 1,180 / 1,300)" in out and "aiosmtpd: 1,015 (1,015 / 1,100 / 990)" in out
    assert "ratio 1.21x (rounds 1.07-1.31x)" in out and "ratio 0.50x\n" in out
