"""bench/_common.py: the /proc measurements, the config writer and the mailsrv server the scenarios share."""

from __future__ import annotations

import os
import re
import resource
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench._common import (  # noqa: E402
    Mailsrv,
    ServerMeter,
    in_process_meter,
    link_tree,
    maildir_count,
    nofile_of,
    percentile,
    proc_tree,
    raise_nofile,
    seed_cache,
    status_kib,
    toml_dump,
)

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\n"

keys = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
scalars = st.one_of(
    st.booleans(), st.integers(-(2**62), 2**62), st.floats(allow_nan=False, allow_infinity=False),
    st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20),
    st.lists(st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=8), max_size=3),
)
tables = st.dictionaries(keys, scalars, max_size=4)
documents = st.dictionaries(
    keys, st.one_of(tables, st.dictionaries(st.sampled_from(["a.b", "remote.test", "x"]), tables, max_size=2)),
    max_size=4,
).map(lambda d: {k: v for k, v in d.items() if v})


@given(documents)
def test_toml_dump_round_trips(doc: dict) -> None:
    assert tomllib.loads(toml_dump(doc)) == doc


def test_percentile_nearest_rank() -> None:
    xs = [float(i) for i in range(1, 101)]
    assert percentile(xs, 50) == 51.0
    assert percentile(xs, 99) == 100.0
    assert percentile(list(reversed(xs)), 0) == 1.0


def test_raise_nofile_reaches_the_hard_limit() -> None:
    soft, hard = raise_nofile()
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (soft, hard)
    assert soft == hard or hard == resource.RLIM_INFINITY
    assert nofile_of(os.getpid()) == soft


def test_meter_counts_a_child_and_its_reaped_grandchild() -> None:
    """CPU of a process that exits during the measurement still counts (via its parent's cutime)."""
    code = ("import subprocess, sys, time\n"
            f"subprocess.run([sys.executable, '-c', {BURN.format(s=0.3)!r}])\n"
            "sys.stdout.write('done\\n'); sys.stdout.flush(); time.sleep(60)\n")
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as proc:
        meter = ServerMeter("child", lambda: proc_tree(proc.pid), "bursts").start()
        assert proc.stdout is not None and proc.stdout.readline() == "done\n"
        meter.add(2)
        s = meter.summary()
        assert 0.25 <= s["cpu_seconds"] < 3, s
        assert s["cpu_s_per_1k_ops"] == round(s["cpu_seconds"] * 500, 6)
        assert s["peak_rss_kib"] > 1024 and s["processes"] == 1
        proc.kill()


#: A server whose children come and go: each line "spawn" on stdin starts a child holding 40 MiB (written) and
#: answers its pid once the child holds it, "end PID" ends that child and answers "ended".
FORKER = """import subprocess, sys
kids = {}
for line in sys.stdin:
    if line.startswith("spawn"):
        child = subprocess.Popen([sys.executable, "-c", "import sys; b = bytearray(40 << 20); b[::4096] = "
                                  "b'x' * len(b[::4096]); print('up', flush=True); sys.stdin.read()"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline() == "up\\n"
        kids[child.pid] = child
        print(child.pid, flush=True)
    else:
        child = kids.pop(int(line.split()[1]))
        child.kill()
        child.wait()
        print("ended", flush=True)
"""


def test_meter_peak_rss_counts_the_processes_alive_at_one_sample() -> None:
    """Peak RSS is the largest sum of VmHWM over the processes alive at one sample: three 40 MiB children that
    live one after the other count once (Postfix's ~700 short-lived processes in a run of bench smtp were
    summed to 4 974 MiB), two alive together count twice."""
    with subprocess.Popen([sys.executable, "-c", FORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) as proc:
        assert proc.stdin is not None and proc.stdout is not None

        def ask(line: str) -> str:
            proc.stdin.write(line + "\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
            return proc.stdout.readline().strip()  # type: ignore[union-attr]

        meter = ServerMeter("forker", lambda: proc_tree(proc.pid)).start()
        for _ in range(3):
            pid = ask("spawn")
            meter.sample()
            assert ask(f"end {pid}") == "ended"
        one = meter.summary()
        assert one["processes"] == 2 and one["processes_seen"] == 4, one
        parent = status_kib([proc.pid], "VmHWM")
        assert 40 << 10 < one["peak_rss_kib"] - parent < 60 << 10, (one, parent)  # one child, not three
        assert 40 << 10 < one["rss_at_peak_kib"] <= one["peak_rss_kib"], one
        assert 40 << 10 < one["pss_at_peak_kib"] <= one["rss_at_peak_kib"], one  # the child's pages are its own
        pids = [ask("spawn"), ask("spawn")]
        meter.sample()
        two = meter.summary()
        assert two["processes"] == 3 and two["processes_seen"] == 6, two
        assert two["peak_rss_kib"] - parent > 80 << 10, (two, parent)
        assert 80 << 10 < two["pss_at_peak_kib"] <= two["rss_at_peak_kib"], two
        for pid in pids:
            assert ask(f"end {pid}") == "ended"
        proc.stdin.close()


def test_proc_tree_finds_grandchildren() -> None:
    code = "import subprocess, sys; p = subprocess.Popen(['sleep', '30']); print(p.pid, flush=True); p.wait()"
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        grandchild = int(proc.stdout.readline())
        try:
            assert proc_tree(proc.pid) == [proc.pid, grandchild]
        finally:
            os.kill(grandchild, 9)


def test_in_process_meter() -> None:
    big = b"\x01" * (200 << 20)  # an earlier peak (pages written), freed before the meter starts
    del big
    meter = in_process_meter("loops")
    t = time.process_time()
    while time.process_time() - t < 0.05:
        pass
    meter.add(1000)
    s = meter.summary()
    assert 0.04 <= s["cpu_seconds"] < 1 and s["cpu_s_per_1k_ops"] == s["cpu_seconds"]
    rss_now = int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))  # type: ignore[union-attr]
    # the 200 MiB before start() is not counted: the peak is about today's RSS (which, in a full
    # pytest run, is already well above 100 MiB), not 200 MiB above it
    assert 1024 < s["peak_rss_kib"] < rss_now + (100 << 10)


def _imap(port: int, lines: list[bytes]) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        f = s.makefile("rb")
        out = f.readline()
        for i, line in enumerate(lines):
            s.sendall(b"t%d " % i + line + b"\r\n")
            while not (reply := f.readline()).startswith(b"t%d " % i):
                out += reply
            out += reply
        return out


def test_mailsrv_from_init_serves_seeded_users(tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    for sub in ("cur", "new", "tmp"):
        (seed / sub).mkdir(parents=True)
    (seed / "cur" / "1700000000.M1P1.bench:2,S").write_bytes(b"Subject: hi\r\n\r\nbody\r\n")
    with Mailsrv(tmp_path / "srv", seeds={"a": seed, "b": None}, workers=1,
                 config={"listener": {"imap": {"tls": "none"}}}) as srv:
        pids = srv.pids()
        assert pids[0] == srv.proc.pid and len(pids) >= 3  # master, worker, queue runner
        assert nofile_of(pids[-1]) == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        out = _imap(srv.ports["imap"], [b"LOGIN a@example.test benchpass", b"SELECT INBOX", b"LOGOUT"])
        assert b"* 1 EXISTS" in out and b"t0 OK" in out
        out = _imap(srv.ports["imap"], [b"LOGIN b@example.test benchpass", b"SELECT INBOX"])
        assert b"* 0 EXISTS" in out
        meter = srv.meter("commands")
        _imap(srv.ports["imap"], [b"LOGIN a@example.test benchpass"] + [b"NOOP"] * 2000)
        meter.add(2001)
        s = meter.summary()
        assert s["name"] == "mailsrv" and s["cpu_seconds"] > 0 and s["peak_rss_kib"] > 10_000
        assert maildir_count(srv.data_dir) == 1
        assert srv.errors == []
    assert srv.proc.returncode is not None and srv.pids() == []


def test_mailsrv_takes_new_ports_when_one_was_taken(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A port free_ports() picked and another process bound before `mailsrv serve` did (the window is `mailsrv
    init`'s second or so) is not a failed scenario: serve starts again on newly picked ports."""
    import bench._common as common

    picked: list[list[int]] = []
    free_ports = common.free_ports
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()

        def ports(n: int) -> list[int]:  # the first pick's first port (smtp) is taken
            fresh = free_ports(n)
            picked.append([taken.getsockname()[1], *fresh[1:]] if not picked else fresh)
            return picked[-1]

        monkeypatch.setattr(common, "free_ports", ports)
        with Mailsrv(tmp_path / "srv", workers=1, config={"listener": {"smtp": {"tls": "none"}}}) as srv:
            assert len(picked) == 2 and list(srv.ports.values()) == picked[1], picked
            assert "Address already in use" in srv.log.read_text()
            with socket.create_connection(("127.0.0.1", srv.ports["smtp"]), timeout=30) as s:
                assert s.makefile("rb").readline().startswith(b"220 "), srv.ports


def test_mailsrv_init_failure_says_why(tmp_path: Path) -> None:
    """`mailsrv init`'s own message, not only its exit status, when it fails."""
    with pytest.raises(RuntimeError, match=r"(?s)mailsrv init failed \(2\): .*--workers: invalid .*'many'"):
        Mailsrv(tmp_path / "srv", workers="many")


def test_bench_all_survives_a_failing_scenario(tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """`python -m bench all` reports the others, writes their JSON and exits 1 when one scenario fails."""
    import types

    import bench.__main__ as cli

    boom = types.ModuleType("bench.boom")
    boom.run = lambda size: 1 / 0  # type: ignore[attr-defined]
    ok = types.ModuleType("bench.ok")
    ok.run = lambda size: {"results": [{"name": "x", "unit": "u", "value": 1.0}], "notes": [], "servers": []}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "bench.boom", boom)
    monkeypatch.setitem(sys.modules, "bench.ok", ok)
    monkeypatch.setattr(cli, "scenarios", lambda: ["boom", "ok"])
    out = tmp_path / "out" / "r.json"
    assert cli.main(["all", "--size", "smoke", "--json", str(out)]) == 1
    import json

    data = json.loads(out.read_text())
    assert data["failed"] == ["boom"] and [r["scenario"] for r in data["reports"]] == ["ok"]
    text = capsys.readouterr().out
    assert "== boom == FAILED" in text and "== ok ==" in text and "FAILED: boom" in text


def test_seed_cache_builds_once_and_links(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MAILSRV_BENCH_CACHE", str(tmp_path / "cache"))
    builds: list[int] = []

    def fill(root: Path, n: int) -> None:
        builds.append(n)
        (root / "cur").mkdir(parents=True)
        for i in range(n):
            (root / "cur" / f"m{i}").write_bytes(b"message %d" % i)

    seed = seed_cache("t", 3, b"v1", fill)
    assert seed_cache("t", 3, b"v1", fill) == seed and builds == [3]  # the second call reuses it
    assert seed_cache("t", 3, b"v2", fill) != seed and builds == [3, 3]  # a changed generator: a new entry
    assert len(list((tmp_path / "cache").iterdir())) == 2
    link_tree(seed, tmp_path / "copy")
    copy = tmp_path / "copy" / "cur" / "m1"
    assert copy.read_bytes() == b"message 1"
    assert copy.stat().st_ino == (seed / "cur" / "m1").stat().st_ino  # a hard link, not a copy
    copy.rename(tmp_path / "copy" / "cur" / "m1:2,S")  # a server renaming its copy leaves the seed alone
    assert (seed / "cur" / "m1").exists()
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]  # no build left behind
