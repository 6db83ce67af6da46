"""What the disk does per durable SMTP message: bytes, write IOs and flushes per 4 KB message at
1-50 sessions, for mailsrv variants (store settings) side by side, alternated.

    python -m bench._diskprobe --dir /mnt/r/probe --sessions 1,10,20,50 --seconds 4 --pairs 3 \\
        base= fsync=store.syncfs=false

Each variant is ``NAME=key.sub=value,...`` (values parsed as TOML: ``false``, ``5.0``), merged into
the bench's mailsrv config; ``NAME=`` is the defaults. Every variant runs from the start (two
workers, 50 mailboxes, as bench/smtp.py), warmed once; then each pair measures every variant's cells
back to back, the order alternating. Per cell: msgs/s (250 replies), p50/p99, and from the block
device that holds ``--dir`` (/sys/dev/block/M:m/stat) the sectors and write IOs and flush requests
per message during the cell ("cell"), and until the indexer has emptied every new/ and a final
syncfs ("all": what the flusher and the index batches wrote for the cell's messages too). Use a
private file system (a loop device) for the device figures: another process's writes on the same
device count too. The msgs/s on the real disk: point ``--dir`` there (its device figures are then
only indicative).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from mailsrv.util import fsio

from ._common import Mailsrv, remove_tree
from .smtp import RECIPIENTS, WORKERS, _body, _pct, _python_load


def _dev_stat(path: Path) -> list[int]:
    """The block device's counters for ``path``'s file system: (write IOs, sectors written, flushes)."""
    dev = os.stat(path).st_dev
    f = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/stat").read_text().split()
    return [int(f[4]), int(f[6]), int(f[15]) if len(f) > 15 else 0]


def _dirtied(pids: list[int]) -> int:
    """Bytes the processes caused to be written (``/proc/PID/io`` write_bytes: file pages they dirtied,
    data only; the file system's metadata is the device's bytes less these)."""
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/io").read_text().split("write_bytes:")[1].split()[0])
        except (OSError, IndexError, ValueError):
            continue
    return total


def _variant(spec: str) -> tuple[str, dict[str, Any]]:
    name, _, rest = spec.partition("=")
    cfg: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        *parents, leaf = key.split(".")
        node = cfg
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = tomllib.loads(f"v = {value}")["v"]
    return name, cfg


def _settle(data_dir: Path, limit: float = 60.0) -> None:
    """Wait until every new/ below ``data_dir`` is empty (the indexer took the files), then syncfs."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if not any(os.listdir(d) for d in data_dir.glob("mail/*/*/new")):
            break
        time.sleep(0.05)
    fsio.syncfs(data_dir)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench._diskprobe", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, required=True, help="a fresh directory is made below it (removed at the end)")
    ap.add_argument("--sessions", default="10,20,50")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("variants", nargs="+", help="NAME=key.sub=value,... (NAME= : defaults)")
    args = ap.parse_args(argv)
    sessions = [int(x) for x in args.sessions.split(",")]
    variants = [_variant(v) for v in args.variants]
    args.dir.mkdir(parents=True, exist_ok=True)
    base = Path(os.path.realpath(args.dir)) / f"probe-{os.getpid()}"
    base.mkdir()
    users: dict[str, Path | None] = dict.fromkeys(f"load{i}" for i in range(RECIPIENTS))
    servers: list[tuple[str, Mailsrv]] = []
    body = _body(args.size)
    try:
        for name, cfg in variants:
            srv = Mailsrv(base / name, seeds=users, workers=WORKERS, config=cfg)
            servers.append((name, srv))
            _python_load(srv.ports["smtp"], min(RECIPIENTS, max(sessions)), body, 1.0)
            _settle(srv.data_dir)
        print(f"# {len(servers)} variants, {args.size} B, {args.seconds} s cells, device of {base}", flush=True)
        print("pair variant sessions msgs/s p50ms p99ms | cell: KB/msg IOs/msg flush/msg | all: KB/msg IOs/msg "
              "flush/msg | data KB/msg (cell) | load", flush=True)
        for pair in range(args.pairs):
            order = servers if pair % 2 == 0 else servers[::-1]
            for n in sessions:
                for name, srv in order:
                    _settle(srv.data_dir)
                    s0 = _dev_stat(base)
                    d0 = _dirtied(srv.pids())
                    rate, lat, _ = _python_load(srv.ports["smtp"], n, body, args.seconds)
                    s1 = _dev_stat(base)
                    d1 = _dirtied(srv.pids())
                    _settle(srv.data_dir)
                    s2 = _dev_stat(base)
                    m = max(1, len(lat))
                    cell = [(b - a) / m for a, b in zip(s0, s1, strict=True)]
                    every = [(b - a) / m for a, b in zip(s0, s2, strict=True)]
                    print(f"{pair} {name:>10} {n:3d} {rate:7.0f} {_pct(lat, 50):6.2f} {_pct(lat, 99):6.2f} | "
                          f"{cell[1] / 2:6.1f} {cell[0]:5.2f} {cell[2]:5.2f} | {every[1] / 2:6.1f} {every[0]:5.2f} "
                          f"{every[2]:5.2f} | {(d1 - d0) / m / 1024:5.1f} | {os.getloadavg()[0]:.1f}", flush=True)
        for name, srv in servers:
            errs = srv.errors
            if errs:
                print(f"# {name}: {len(errs)} error lines, first: {errs[0]}", file=sys.stderr)
            srv.stop()
            rounds = [ln.split(" store.rounds ", 1)[1] for ln in srv.log.read_text(errors="replace").splitlines()
                      if " store.rounds " in ln]
            print(f"# {name} rounds: {'; '.join(rounds)}")
    finally:
        for _, srv in servers:
            srv.stop()
        remove_tree(base)


if __name__ == "__main__":
    main()
