"""Instructions per delivered message (Ir, valgrind callgrind) of one mailsrv SMTP worker, for A/B of
server CPU changes on a loaded machine, where wall and CPU time vary by ±15 % from run to run.

    python -m bench._irprobe [--sessions 20] [--seconds 20] [--src DIR] [--top 15]
        [--no-pipelining | --smtp-source]

One server (``mailsrv serve``, one worker) runs under ``valgrind --tool=callgrind --instr-atstart=no``;
the bench's SMTP client (bench/smtp.py, 4 KB messages, outside valgrind) warms it up, then a signal
turns instrumentation on in the worker (and its pool threads) for the measured window and another
dumps the counts (a ``sitecustomize`` in a scratch directory issues callgrind's client requests,
compiled once with gcc; ``callgrind_control`` does not reach forked children). Ir per message = the
worker's instructions in the window / the messages that reached the maildirs in it.
``--no-pipelining``: the measured window's client waits for each reply before the next command (MAIL,
RCPT, DATA; the warm-up pipelines), as clients without RFC 2920 do; ``--smtp-source``: Postfix's C
generator drives it instead (HELO, no pipelining, the message written as smtp-source writes it).
Natively most of what non-pipelining adds is kernel time and context switches (the loop sleeps and
wakes per command, the pool threads per smaller commit round), which Ir does not show: read them
beside it from /proc/PID/task/*/stat and status.
``--src DIR``: run the mailsrv package found in DIR (a copy with a change) instead of this tree's.
Needs valgrind, its headers (valgrind/callgrind.h) and gcc. Not a scenario of ``python -m bench``.
What it does not count: kernel time (syscalls, page cache, the fsyncs); check syscalls per message
with ``perf trace -s -p PID`` beside it. Under valgrind the worker runs ~50x slower, so its group
commit rounds are larger than in a native run (fixed costs per round weigh less per message):
compare runs with each other, not with native profiles. Work that scales with time (timers,
background jobs: ~5 M Ir/s) spreads over the messages of the window, so Ir per message falls as
more fit in it: compare runs of similar message counts, or fit Ir = a * messages + b over several
runs of each variant (b shared); repeat runs of similar counts differ by ~1-4 %.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import _common as C
from bench import smtp as B

_HELPER = """#include <valgrind/callgrind.h>
void cg_on(void) { CALLGRIND_START_INSTRUMENTATION; CALLGRIND_ZERO_STATS; }
void cg_off(void) { CALLGRIND_DUMP_STATS; CALLGRIND_STOP_INSTRUMENTATION; }
"""
#: each process's answer to a switch: a file ``{marks}/on.PID`` or ``off.PID``, made once the switch
#: is done (after OFF: once the callgrind dump or the profile is written), for :func:`switch` to wait on
MARK = """
import os as _os
def _mark(name):
    open(_os.path.join({marks!r}, '%s.%d' % (name, _os.getpid())), 'w').close()
"""
_SITE = """import ctypes, signal
_lib = ctypes.CDLL({lib!r})
""" + MARK + """
signal.signal(signal.SIGRTMIN + 3, lambda *a: (_lib.cg_on(), _mark('on')))
signal.signal(signal.SIGRTMIN + 4, lambda *a: (_lib.cg_off(), _mark('off')))
"""
ON, OFF = signal.SIGRTMIN + 3, signal.SIGRTMIN + 4


def _site(scratch: Path) -> Path:
    d = scratch / "site"
    d.mkdir()
    (d / "cgctl.c").write_text(_HELPER)
    subprocess.run(["gcc", "-O1", "-shared", "-fPIC", "-o", str(d / "libcgctl.so"), str(d / "cgctl.c")], check=True)
    (d / "sitecustomize.py").write_text(_SITE.format(lib=str(d / "libcgctl.so"), marks=str(d)))
    return d


def switch(pids: list[int], sig: int, marks: Path, timeout: float = 120.0) -> None:
    """Send ``sig`` (:data:`ON` or :data:`OFF`) to each of ``pids`` and return once each has answered
    (its :data:`MARK` file in ``marks``); raises TimeoutError after ``timeout`` seconds."""
    name = "on" if sig == ON else "off"
    for p in pids:
        (marks / f"{name}.{p}").unlink(missing_ok=True)
        os.kill(p, sig)
    deadline = time.monotonic() + timeout
    while not all((marks / f"{name}.{p}").exists() for p in pids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no answer to {name} from {pids} within {timeout:.0f} s")
        time.sleep(0.01)


def worker_dump(out: Path, pattern: str = "cg.*.1") -> tuple[int, Path] | None:
    """(instructions, file) of the callgrind dump with the most instructions in ``out`` (the worker's)."""
    dumps = [(int(m.group(1)), f) for f in out.glob(pattern)
             for m in [re.search(r"^totals: (\d+)", f.read_text(errors="replace"), re.M)] if m]
    return max(dumps) if dumps else None


def print_top(path: Path, count: int, n: int) -> None:
    """:func:`top`, one line each."""
    for per, pct, name in top(path, count, n):
        print(f"  {per:>9,} {pct:5.2f} %  {name}")


def report(out: Path, count: int, what: str, n: int, who: str) -> bool:
    """Print the worker's instructions per one of ``count`` ``what`` (its dump in ``out``) and its top ``n``
    functions; False (and a line on stderr naming the probe ``who``) when no worker dumped."""
    dump = worker_dump(out)
    if dump is None:
        print(f"{who}: the worker did not dump", file=sys.stderr)
        return False
    total, worker = dump
    print(f"{count} {what}, {total:,} Ir in the worker: {total // count:,} Ir per one ({worker.name})")
    print_top(worker, count, n)
    return True


def top(path: Path, msgs: int, n: int) -> list[tuple[int, float, str]]:
    """The ``n`` functions of most self cost: (Ir per message, % of all, name)."""
    text = subprocess.run(["callgrind_annotate", "--inclusive=no", str(path)], capture_output=True, text=True,
                          check=True).stdout
    out = []
    for ln in text.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\(\s*([\d.]+)%\)\s+(\S+)", ln)
        if m and "PROGRAM TOTALS" not in ln:
            where, _, fn = m.group(3).rpartition(":")
            name = fn if where in ("", "???") else f"{os.path.basename(where)}:{fn}"
            out.append((int(m.group(1).replace(",", "")) // msgs, float(m.group(2)), name))
    return out[:n]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench._irprobe", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=20.0, help="the measured window (wall, under valgrind)")
    ap.add_argument("--warm", type=float, default=4.0)
    ap.add_argument("--src", default="", help="a directory holding the mailsrv package to measure")
    ap.add_argument("--out", default="", help="keep the callgrind file here (default: a temporary directory)")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--no-pipelining", action="store_true",
                    help="the measured window's client sends MAIL, RCPT and DATA each after the previous reply")
    ap.add_argument("--smtp-source", action="store_true",
                    help="Postfix's smtp-source drives the measured window (HELO, no pipelining, as the bench's "
                         "MAILSRV_BENCH_SMTP_CLIENT=smtp-source)")
    a = ap.parse_args(argv)
    for tool in ("valgrind", "callgrind_annotate", "gcc"):
        if shutil.which(tool) is None:
            print(f"_irprobe: {tool} not found (apt-get install valgrind gcc)", file=sys.stderr)
            return 2
    scratch = Path(tempfile.mkdtemp(prefix="irprobe-"))
    out = Path(a.out) if a.out else scratch
    out.mkdir(parents=True, exist_ok=True)
    site = _site(scratch)
    popen = subprocess.Popen

    def under_valgrind(args: Any, *k: Any, **kw: Any) -> Any:  # only `mailsrv serve` runs under valgrind
        if "serve" in args:
            # -P: ``python -m`` puts the working directory first on sys.path, which would import this
            # tree's mailsrv before the one in ``--src`` (PYTHONPATH comes after it)
            args = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}/cg.%p",
                    args[0], *(["-P"] if a.src else []), *args[1:]]
            kw["env"] = {**kw.get("env", os.environ), "PYTHONPATH": os.pathsep.join(filter(None, [a.src, str(site)]))}
        return popen(args, *k, **kw)

    C.subprocess.Popen = under_valgrind  # type: ignore[assignment, misc]
    users: dict[str, Path | None] = dict.fromkeys([f"load{i}" for i in range(B.RECIPIENTS)] + ["probe"])
    try:
        srv = C.Mailsrv(scratch / "mailsrv", seeds=users, workers=1)
    finally:
        C.subprocess.Popen = popen  # type: ignore[misc]
    try:
        server = B._Server("mailsrv", srv.ports["smtp"], srv.pids, lambda: C.maildir_count(srv.data_dir))
        server.measure(4096, a.sessions, a.warm)
        kids = [p for p in srv.pids() if p != srv.proc.pid]
        switch(kids, ON, site)
        m0 = C.maildir_count(srv.data_dir)
        if a.smtp_source:  # a count sized by the warm-up's rate
            B._source_load(server.port, a.sessions, B._body(4096), a.seconds, server.cells[(4096, a.sessions)][0])
        else:
            import uvloop

            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
                r.run(B._load(server.port, a.sessions, B._body(4096), a.seconds, pipelining=not a.no_pipelining))
        switch(kids, OFF, site)  # every dump written; nothing is delivered meanwhile
        msgs = C.maildir_count(srv.data_dir) - m0
    finally:
        srv.stop()
    dump = worker_dump(out)
    if dump is None or not msgs:
        print("_irprobe: no counts (the worker did not dump, or nothing was delivered)", file=sys.stderr)
        return 1
    ir, worker = dump
    print(f"{msgs} messages over {a.sessions} sessions, {ir:,} Ir in the worker: {ir // msgs:,} Ir per message "
          f"({worker})")
    print_top(worker, msgs, a.top)
    if not a.out:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
