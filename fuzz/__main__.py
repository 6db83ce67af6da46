"""``python -m fuzz``: list, replay and run the fuzz targets (README.md, Development: Fuzzing).

    python -m fuzz list
    python -m fuzz run NAME [--seconds 60] [--corpus DIR] [--crashes DIR] [-- libFuzzer flags]
    python -m fuzz all [--seconds 60]            # every target, one process each, one at a time
    python -m fuzz replay NAME [FILE ...]        # seeds (and the saved corpus), or the given inputs

Crashes (an exception outside the target's documented errors, a hang past 10 s, memory past
--rss-mb) are written to fuzz/crashes/NAME-crash-<sha1>; the corpus grows in fuzz/corpus/NAME.
Both folders are ignored by git.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

from fuzz import targets
from fuzz.harness import REPO, write_seeds

FUZZ_DIR = REPO / "fuzz"


def _run(args: argparse.Namespace) -> int:
    """Fuzz one target with atheris until --seconds pass or it crashes (never returns)."""
    import atheris

    with atheris.instrument_imports(include=["mailsrv"]):
        target = targets.get(args.name)
    corpus = Path(args.corpus or FUZZ_DIR / "corpus" / args.name)
    crashes = Path(args.crashes or FUZZ_DIR / "crashes")
    crashes.mkdir(parents=True, exist_ok=True)
    write_seeds(target, corpus)
    argv = [
        sys.argv[0],
        f"-max_total_time={args.seconds}",
        f"-rss_limit_mb={args.rss_mb}",
        f"-malloc_limit_mb={args.rss_mb}",
        f"-max_len={target.max_len}",
        "-timeout=10",
        f"-artifact_prefix={crashes}/{args.name}-",
        "-print_final_stats=1",
        *args.libfuzzer,
        str(corpus),
    ]
    atheris.Setup(argv, target.one)
    atheris.Fuzz()
    return 0


def _all(args: argparse.Namespace) -> int:
    """Each target in its own process; a summary line per target (execs/s from libFuzzer's stats)."""
    logs = FUZZ_DIR / "logs"
    logs.mkdir(exist_ok=True)
    failed = []
    for name in args.names or list(targets.INDEX):
        log = logs / f"{name}.log"
        start = time.monotonic()
        with log.open("wb") as out:
            cmd = [sys.executable, "-m", "fuzz", "run", name, "--seconds", str(args.seconds),
                   "--rss-mb", str(args.rss_mb)]
            rc = subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT).returncode
        text = log.read_text("utf-8", "replace")
        runs = re.search(r"stat::number_of_executed_units: (\d+)", text)
        rate = re.search(r"stat::average_exec_per_sec: +(\d+)", text)
        status = "ok" if rc == 0 else f"FAILED (rc {rc})"
        print(f"{name:22} {status:14} {runs.group(1) if runs else '?':>9} runs "
              f"{rate.group(1) if rate else '?':>6} execs/s  {time.monotonic() - start:5.0f} s  {log.relative_to(REPO)}",
              flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print("failed:", " ".join(failed), "(crash inputs in fuzz/crashes/)")
    return 1 if failed else 0


def _replay(args: argparse.Namespace) -> int:
    """Feed the seeds and the saved corpus (or the given files) in this process; stop at the first
    input that makes the target misbehave, with its traceback."""
    target = targets.get(args.name)
    if args.files:
        inputs = [(f, Path(f).read_bytes()) for f in args.files]
    else:
        inputs = [("seed", s) for s in target.seeds()]
        saved = FUZZ_DIR / "corpus" / args.name
        if saved.is_dir():
            inputs += [(str(p), p.read_bytes()) for p in sorted(saved.iterdir())]
    for where, data in inputs:
        try:
            target.one(data)
        except Exception:
            traceback.print_exc()
            print(f"{args.name}: {where}: {data[:200]!r}", file=sys.stderr)
            return 1
    print(f"{args.name}: {len(inputs)} inputs replayed")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the targets' names, most exposed first")
    run = sub.add_parser("run", help="fuzz one target with atheris (libFuzzer)")
    run.add_argument("name", choices=list(targets.INDEX))
    run.add_argument("libfuzzer", nargs="*", help="more libFuzzer flags, after --")
    every = sub.add_parser("all", help="fuzz every target (or the named ones), one process each")
    every.add_argument("names", nargs="*")
    for p in (run, every):
        p.add_argument("--seconds", type=int, default=60, help="fuzzing time per target (default 60)")
        p.add_argument("--rss-mb", type=int, default=2048, help="memory limit of the fuzzing process (MB)")
    run.add_argument("--corpus", help="where the corpus grows (default fuzz/corpus/NAME)")
    run.add_argument("--crashes", help="where crash inputs go (default fuzz/crashes)")
    replay = sub.add_parser("replay", help="feed the seeds and saved corpus, or FILEs, without atheris")
    replay.add_argument("name", choices=list(targets.INDEX))
    replay.add_argument("files", nargs="*")
    args = ap.parse_args(argv)
    if args.cmd == "list":
        print("\n".join(targets.INDEX))
        return 0
    return {"run": _run, "all": _all, "replay": _replay}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
