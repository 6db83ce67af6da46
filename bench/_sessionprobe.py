"""Load-independent cost of one lone IMAP session in one mailsrv worker: syscalls (strace -c) or
instructions (valgrind callgrind), for A/B of the session's fixed costs on a loaded machine.

    python -m bench._sessionprobe [--mode syscalls|ir] [--sessions 100] [--warm 30] [--noop] [--src DIR]
        [--kind session|select|uid-fetch-flags|fetch-envbs|search-unseen|search-header|store|noop]
        [--messages 2000]

One server (``mailsrv serve``, one worker; under ``valgrind --tool=callgrind --instr-atstart=no`` for
``--mode ir``) and one user whose INBOX holds 20 messages (and the special-use folders ``mailsrv
init`` makes). ``--warm`` sessions first, then ``--sessions`` sequential sessions measured, each what
a polling mail client does: LOGIN, SELECT INBOX, FETCH 1:10 (FLAGS), [NOOP with ``--noop``], LOGOUT
(imaplib, outside the measurement). ``--mode syscalls``: ``strace -c -f`` attached to the worker and
queue-runner processes (all their threads) for the measured sessions; per-session counts of each
call. ``--mode ir``: the worker's instructions in the window (bench._irprobe's switch) per session.
``--kind`` other than ``session``: one command of bench/imap.py's mix instead, in one session of a
user whose INBOX holds ``--messages`` messages of bench/imap.py's shape (every third \\Seen); after
LOGIN, SELECT INBOX, UNSELECT and SELECT INBOX (as in the bench: the first SELECT took \\Recent) the
command runs ``--warm`` times, then ``--sessions`` times measured: per command, the worker's syscalls
or Ir. The commands are bench/imap.py's: SELECT INBOX, UID FETCH 1:* (FLAGS), FETCH
1:min(messages, 1000) (ENVELOPE BODYSTRUCTURE), SEARCH UNSEEN, SEARCH HEADER Message-ID "b77@",
STORE n +FLAGS.SILENT / -FLAGS.SILENT (\\Flagged) alternated over the messages, NOOP. The bench runs
them at 100 000 messages; SELECT, UID FETCH and SEARCH UNSEEN grow with the mailbox.
``--src DIR``: run the mailsrv package found in DIR (a copy with a change) instead of this tree's.
Counts are near-deterministic (strace: futex and epoll_pwait vary with thread timing); kernel time is
in neither. Not a scenario of ``python -m bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import imaplib
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
from bench import _irprobe as P
from bench import imap as B

#: --kind -> the command (``{n}``: the mailbox's size, ``{i}``: the run's number from 0)
KINDS = {
    "select": "SELECT INBOX",
    "uid-fetch-flags": "UID FETCH 1:* (FLAGS)",
    "fetch-envbs": "FETCH 1:{top} (ENVELOPE BODYSTRUCTURE)",
    "search-unseen": "SEARCH UNSEEN",
    "search-header": 'SEARCH HEADER Message-ID "b77@"',
    "store": "STORE {m} {sign}FLAGS.SILENT (\\Flagged)",
    "noop": "NOOP",
}


def _session_once(port: int, noop: bool) -> None:
    c = imaplib.IMAP4("127.0.0.1", port)
    c.login("u@example.test", C.PASSWORD)
    c.select("INBOX")
    c.fetch("1:10", "(FLAGS)")
    if noop:
        c.noop()
    c.logout()


class _Commands:
    """One logged-in session with INBOX selected, running a --kind's command (bench/imap.py's client)."""

    def __init__(self, port: int, kind: str, messages: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.kind, self.messages, self.i = kind, messages, 0
        self.c = self.loop.run_until_complete(B.Client.connect(port))
        self.loop.run_until_complete(self.c.cmd(f"LOGIN u@example.test {C.PASSWORD}"))
        for text in ("SELECT INBOX", "UNSELECT", "SELECT INBOX"):  # as bench/imap.py: no \\Recent left
            self.loop.run_until_complete(self.c.cmd(text))

    def __call__(self, port: int, noop: bool) -> None:
        n, i = self.messages, self.i
        text = KINDS[self.kind].format(top=min(n, 1000), m=i % n + 1, sign="+" if i % 2 == 0 else "-")
        self.i += 1
        self.loop.run_until_complete(self.c.cmd(text))

    def close(self) -> None:
        self.loop.run_until_complete(self.c.close())
        self.loop.close()


def _strace_counts(path: Path) -> dict[str, int]:
    """strace -c's table -> {syscall: calls} (the total row left out)."""
    rows: dict[str, int] = {}
    for line in path.read_text().splitlines():
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$", line)
        if m and m.group(2) != "total":
            rows[m.group(2)] = int(m.group(1))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench._sessionprobe", description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("syscalls", "ir"), default="syscalls")
    ap.add_argument("--sessions", type=int, default=100)
    ap.add_argument("--warm", type=int, default=30)
    ap.add_argument("--noop", action="store_true", help="one NOOP after the FETCH (what real clients send)")
    ap.add_argument("--src", default="", help="a directory holding the mailsrv package to measure")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--kind", choices=("session", *KINDS), default="session",
                    help="a lone session (LOGIN SELECT FETCH LOGOUT), or one command of bench/imap.py's mix")
    ap.add_argument("--messages", type=int, default=2000, help="INBOX's size for a --kind other than session")
    a = ap.parse_args(argv)
    needs = ("strace",) if a.mode == "syscalls" else ("valgrind", "callgrind_annotate", "gcc")
    for tool in needs:
        if shutil.which(tool) is None:
            print(f"_sessionprobe: {tool} not found", file=sys.stderr)
            return 2
    scratch = Path(tempfile.mkdtemp(prefix="sessionprobe-"))
    seed = scratch / "seed"
    if a.kind == "session":
        C.fill_maildir(seed, [C.message(i, repeat=4, lines=10) for i in range(20)],
                       lambda i, data: f"{1700000000 + i}.M{i}P1.probe,S={len(data)}:2,")
    else:
        B._fill_maildir(seed, a.messages)
    site = P._site(scratch) if a.mode == "ir" else None
    popen = subprocess.Popen

    def wrapped(args: Any, *k: Any, **kw: Any) -> Any:  # only `mailsrv serve` is wrapped
        if "serve" in args:
            pre = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={scratch}/cg.%p"]
            # -P: ``python -m`` puts the working directory first on sys.path (see bench._irprobe)
            args = [*(pre if site else []), args[0], *(["-P"] if a.src else []), *args[1:]]
            path = os.pathsep.join(filter(None, [a.src, str(site) if site else ""]))
            if path:
                kw["env"] = {**kw.get("env", os.environ), "PYTHONPATH": path}
        return popen(args, *k, **kw)

    C.subprocess.Popen = wrapped  # type: ignore[assignment, misc]
    try:
        srv = C.Mailsrv(scratch / "mailsrv", seeds={"u": seed}, workers=1,
                        config={"listener": {"imap": {"tls": "none"}}})
    finally:
        C.subprocess.Popen = popen  # type: ignore[misc]
    n = a.sessions
    what = "sessions" if a.kind == "session" else f"{a.kind} commands"
    try:
        port = srv.ports["imap"]
        _session: Any = _session_once if a.kind == "session" else _Commands(port, a.kind, a.messages)
        for _ in range(a.warm):
            _session(port, a.noop)
        kids = [p for p in srv.pids() if p != srv.proc.pid]
        if site is None:
            out = scratch / "strace.txt"
            st = subprocess.Popen(["strace", "-c", "-f", "-o", str(out), *(x for p in kids for x in ("-p", str(p)))],
                                  stderr=subprocess.PIPE)
            assert st.stderr is not None
            attached = 0
            deadline = time.monotonic() + 30
            while attached < len(kids) and time.monotonic() < deadline:  # strace says "attached" per thread
                line = st.stderr.readline()
                attached += line.startswith(b"strace: Process ") and b"attached" in line
            for _ in range(n):
                _session(port, a.noop)
            st.send_signal(signal.SIGINT)
            st.wait(60)
            st.stderr.close()
            rows = _strace_counts(out)
            print(f"{n} {what}, {sum(rows.values()) / n:.1f} syscalls per one (worker and queue runner)")
            for name, calls in sorted(rows.items(), key=lambda kv: -kv[1])[: a.top]:
                print(f"  {calls / n:8.2f}  {name}")
        else:
            P.switch(kids, P.ON, site)
            for _ in range(n):
                _session(port, a.noop)
            P.switch(kids, P.OFF, site)
        if isinstance(_session, _Commands):
            _session.close()
    finally:
        srv.stop()
    if site is not None and not P.report(scratch, n, what, a.top, "_sessionprobe"):
        return 1
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
