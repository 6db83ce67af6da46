"""bench/smtp.py's one-session floor (bench/_floors.py): the wake-up floors (loopback round trip between two
uvloop processes, loop -> pool -> loop hop), the journal's fdatasync over a preallocated file, and the rows
that set them beside each server's ms per message at one session (bench/README.md, the smtp scenario)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench import _floors as F  # noqa: E402
from bench import smtp as B  # noqa: E402
from bench.__main__ import markdown  # noqa: E402


def check_floor_rows(rows: list[dict], servers: list[str], client: str = "python") -> None:
    """The wake-up floors' rows, the one-session floor (the sum of its parts) and one row per server against it,
    each present with sane values: the floor positive and below each server's ms per message."""
    by = {r["name"]: r for r in rows}
    for name in (B.WAKE_RTT, B.WAKE_HOP):
        r = by[name]
        assert r["unit"] == "ms" and r["samples"] > 0, r
        assert 0 < r["value"] <= r["p90_ms"] <= r["p99_ms"] < 1000, r
        if F.two_cpus() is not None:
            assert r["p50_ms_one_CPU"] > 0 and r["p50_ms_two_CPUs"] > 0, r
    floor = by[B.ONE_SESSION_FLOOR]
    parts = floor["parts_ms"]
    trips = 2 if client == "python" else 4
    assert parts[f"{trips} loopback round trips"] == pytest.approx(trips * by[B.WAKE_RTT]["value"]), parts
    assert parts["pool round trip"] == pytest.approx(by[B.WAKE_HOP]["value"]), parts
    assert parts["journal fdatasync"] > 0 and parts["client CPU"] > 0, parts
    assert floor["value"] == pytest.approx(sum(parts.values())) and floor["value"] > 0, floor
    assert floor["msgs_per_s"] == pytest.approx(1000 / floor["value"]), floor
    if F.two_cpus() is not None:
        assert 0 < floor["one_cpu_ms"], floor
    for name in servers:
        r = by[f"ms per message at 1 session (4 KB) over the one-session floor: {name}"]
        assert r["baseline"] == {"name": "one-session floor", "value": floor["value"]}, r
        assert r["value"] > floor["value"], (r, floor)  # the floor is below every server's measured time
        assert r["ratio"] == pytest.approx(floor["value"] / r["value"]) and 0 < r["ratio"] < 1, r
        assert r["above_floor_ms"] == pytest.approx(r["value"] - floor["value"]), r
        assert r["above_floor_share"] == pytest.approx(1 - r["ratio"]), r


def test_one_session_floor_rounds_measure_syncs_round_trips_and_pool_hops(tmp_path: Path) -> None:
    """Each round gives the journal's syncs and, in each placement, round trips and hops (the warm-up ones left
    out), each a few us to a few ms: a round trip is one line each way through a fresh interpreter, a hop one
    thread pool job; the interpreter is stopped at the end."""
    before = os.sched_getaffinity(0)
    probe = B._OneSessionFloor(tmp_path, 0.2)
    try:
        for _ in range(2):
            probe.measure(None)
    finally:
        probe.close()
    assert all(p.returncode is not None for p in probe.procs)
    assert os.sched_getaffinity(0) == before  # the pinned placements gave this process its CPUs back
    assert len(probe.rounds) == 2
    expect = B.PLACEMENTS if F.two_cpus() is not None else B.PLACEMENTS[:1]
    for wake, sync in probe.rounds:
        assert tuple(wake) == expect and sync and all(t > 0 for t in sync)
        for rtt, hops in wake.values():
            assert rtt and hops
            assert all(1e-6 < t < 1.0 for t in rtt + hops), (min(rtt + hops), max(rtt + hops))
        # 0.2 s of exchanges, each after a 0.3 ms gap: far more than the warm-up
        assert len(wake["scheduler"][0]) > 50 and len(wake["scheduler"][1]) > 50


def test_one_session_floor_parts_are_the_medians_of_the_rounds_medians() -> None:
    """One slow round (a busy disk, a descheduled process) moves the floor no more than a slow round moves a
    cell's msgs/s: each part is the median over the rounds of the round's median."""
    ms = 1e-3
    rounds = [({"scheduler": ([0.02 * ms] * 5, [0.04 * ms] * 5)}, [0.1 * ms] * 5),
              ({"scheduler": ([0.03 * ms] * 5, [0.05 * ms] * 5)}, [3.0 * ms] * 5),  # the disk busy
              ({"scheduler": ([0.50 * ms] * 5, [0.90 * ms] * 5)}, [0.12 * ms] * 5)]  # the CPUs busy
    rows = {r["name"]: r for r in B._one_session_rows(rounds, 0.05, [], "python")}
    floor = rows[B.ONE_SESSION_FLOOR]
    assert floor["parts_ms"] == {"2 loopback round trips": pytest.approx(0.06), "pool round trip": pytest.approx(0.05),
                                 "journal fdatasync": pytest.approx(0.12), "client CPU": 0.05}
    assert floor["value"] == pytest.approx(0.28) and floor["one_cpu_ms"] is None
    assert rows[B.WAKE_RTT]["samples"] == 15 and rows[B.WAKE_RTT]["p99_ms"] == pytest.approx(0.5)


def test_placed_pins_both_sides_and_restores(tmp_path: Path) -> None:
    cpus = F.two_cpus()
    if cpus is None:
        pytest.fail("this machine has one CPU: the placements cannot be tested")
    sock = B._listen()
    procs = B._spawn_workers(sock, "floors", Path(os.devnull), count=1)
    sock.close()
    try:
        pid = procs[0].pid
        mine, theirs = os.sched_getaffinity(0), os.sched_getaffinity(pid)
        with F.placed(pid, cpus[0], cpus[1]):
            assert os.sched_getaffinity(0) == {cpus[0]}
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
            assert all(os.sched_getaffinity(t) == {cpus[1]} for t in tids)
        assert os.sched_getaffinity(0) == mine and os.sched_getaffinity(pid) == theirs
    finally:
        B._stop(procs)


def test_overwrite_writes_over_a_preallocated_file_and_wraps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The journal's sync: the file is zero-filled to its size once, records go one after another from after
    the header and start there again at the end; the size never changes (an fdatasync writes data only)."""
    size = 64 << 10
    rec = F.record(B._body(4096))
    assert len(rec) == len(B._body(4096)) + 150
    path = tmp_path / "journal"
    calls = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        calls.append(fd)
        real(fd)

    with F.Overwrite(path, size=size) as log:
        assert path.stat().st_size == size and path.read_bytes() == bytes(size)
        monkeypatch.setattr(os, "fdatasync", fdatasync)
        fit = (size - 4096) // len(rec)
        for i in range(fit + 1):
            log.write(bytes([i + 1]) * len(rec))
        monkeypatch.undo()
    data = path.read_bytes()
    assert len(data) == size and len(calls) == fit + 1
    assert data[:4096] == bytes(4096)
    assert data[4096:4096 + len(rec)] == bytes([fit + 1]) * len(rec)  # the last record wrapped to the start
    assert data[4096 + len(rec):4096 + 2 * len(rec)] == bytes([2]) * len(rec)
    assert data[4096 + (fit - 1) * len(rec):4096 + fit * len(rec)] == bytes([fit]) * len(rec)


def test_floor_rows_beside_a_server_measured_at_one_session(tmp_path: Path) -> None:
    """A short real run: the naive aiosmtpd baseline measured at one session, the disk floors (with the
    journal's), a round of the one-session floor's probes; the rows are all there, the floor the sum of its
    parts and below the server's ms per message, and the tables show each row's detail."""
    maildir = tmp_path / "naive"
    for d in ("tmp", "new", "cur"):
        (maildir / "load0" / d).mkdir(parents=True)
    sock = B._listen()
    procs = B._spawn_workers(sock, "aiosmtpd-naive", maildir)
    naive = B._Server(B.AIOSMTPD_NAIVE, sock.getsockname()[1], lambda: [p.pid for p in procs],
                      lambda: B.maildir_count(maildir))
    sock.close()
    try:
        naive.measure(4096, 1, 0.5)
    finally:
        B._stop(procs)
    floor = tmp_path / "floor"
    for d in ("tmp", "new"):
        (floor / d).mkdir(parents=True)
    (tmp_path / "creates").mkdir()
    # a sync before each floor (the server's writes are not the floor's), no waiting for cheap creates
    disk = B._DiskState(tmp_path / "creates", limit=0.0, budget=1.0)
    floors = B._floor(disk, floor, 0.2)
    assert list(floors) == [*B.FLOORS, B.JOURNAL_FLOOR]
    rate, times = floors[B.JOURNAL_FLOOR]
    assert rate > 0 and times and all(t > 0 for t in times)
    client_ms = naive.cells[(4096, 1)].client_ms
    assert client_ms is not None and client_ms > 0
    probe = B._OneSessionFloor(floor, 0.2)
    try:
        probe.measure(disk)
    finally:
        probe.close()
    rows = B._floor_rows(floors, naive, naive) + B._one_session_rows(probe.rounds, client_ms, [naive], "python")
    check_floor_rows(rows, [B.AIOSMTPD_NAIVE])
    journal = next(r for r in rows if r["name"] == f"disk floor, no SMTP, one writer: {B.JOURNAL_FLOOR}")
    assert journal["writes"] == len(times) and 0 < journal["p50_ms"] <= journal["p99_ms"], journal
    with pytest.raises(KeyError):  # a missing row fails the check
        check_floor_rows([r for r in rows if r["name"] != B.WAKE_HOP], [B.AIOSMTPD_NAIVE])
    md = markdown([{"scenario": "smtp", "results": rows, "servers": []}])
    floor_row = next(r for r in rows if r["name"] == B.ONE_SESSION_FLOOR)
    assert f"({floor_row['detail']})" in md and "msgs/s at most; 2 loopback round trips " in md
    assert "of it above the floor)" in md


def test_floors_alone_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m bench._floors`` prints the wake-up floors, the journal's fdatasync and the one-session floor
    (with the client CPU given), and removes its journal file."""
    assert F.main(["--seconds", "0.2", "--dir", str(tmp_path), "--client-ms", "0.5"]) == 0
    out = capsys.readouterr().out
    for name in (B.WAKE_RTT, B.WAKE_HOP, B.ONE_SESSION_FLOOR, f"disk floor, one writer: {B.JOURNAL_FLOOR}"):
        assert f"  {name} " in out, (name, out)
    assert "client CPU 0.500" in out and "msgs/s at most" in out
    assert list(tmp_path.iterdir()) == []
