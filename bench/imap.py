"""IMAP benchmark: mailsrv against Debian's Dovecot on 127.0.0.1, same client, same mailbox, same run.

Both servers get a copy of the same maildir (``smoke``: 2 000 messages, ``full``:
100 000) and a small second mailbox for the session benchmark. The client is
one small asyncio IMAP client used for both (this process). mailsrv is
``mailsrv serve`` from a fresh ``mailsrv init`` (bench/_common.Mailsrv); Dovecot
runs with its own config in a temporary directory (long-lived login processes,
maildir). Memory per IDLE connection is the ``idle`` scenario's.

Password hashing: mailsrv uses argon2id with cheap parameters (t=1, 1 MiB) and
Dovecot a {PLAIN} passdb, so that the session rates measure IMAP, not hashing
(Dovecot's side is the cheaper one: a conservative baseline).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from ._common import (
    DOVECOT_IMAP_SERVICES,
    PASSWORD,
    Mailsrv,
    ServerMeter,
    compare,
    dovecot_pids,
    fill_maildir,
    message,
    pss_kib,
    rss_kib,
    seed_cache,
    start_dovecot,
    stop_dovecot,
)

#: runs: the single-command figures (SELECT, UID FETCH 1:*, the repeated FETCH, SEARCH) are the median of
#: this many; noops: NOOP is the median of this many (the refresh after a command, nothing else)
SIZES = {"smoke": {"messages": 200, "sessions": 20, "stores": 50, "runs": 3, "noops": 50},
         "full": {"messages": 100_000, "sessions": 2_000, "stores": 5_000, "runs": 5, "noops": 500}}


def _message(n: int) -> bytes:
    return message(n, repeat=8, lines=4, display_name=True)


def _fill_maildir(root: Path, n: int) -> None:
    fill_maildir(root, (_message(i) for i in range(n)),
                 lambda i, _: f"{1700000000 + i}.M{i}P1.bench:2,{'S' if i % 3 == 0 else ''}")


# --- the client -------------------------------------------------------------------------


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.r, self.w, self.n = reader, writer, 0

    @classmethod
    async def connect(cls, port: int) -> Client:
        r, w = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
        await r.readline()
        return cls(r, w)

    async def cmd(self, text: str) -> list[bytes]:
        self.n += 1
        tag = b"t%d" % self.n
        self.w.write(tag + b" " + text.encode() + b"\r\n")
        out = []
        while True:
            line = await self.r.readline()
            if not line:
                raise ConnectionError("closed")
            m = re.search(rb"\{(\d+)\}\r\n$", line)
            if m:
                line += await self.r.readexactly(int(m.group(1)))
                line += await self.r.readline()
            out.append(line)
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise RuntimeError(f"{text!r}: {line!r}")
                return out

    async def close(self) -> None:
        self.w.close()
        try:
            await self.w.wait_closed()
        except OSError:
            pass


async def _timed(client: Client, text: str, runs: int = 1) -> tuple[float, list[bytes]]:
    """Seconds of ``text`` (the median of ``runs`` in a row: one run of a ~100 ms command on a
    shared machine is a noisy figure) and the last run's response."""
    times = []
    out: list[bytes] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = await client.cmd(text)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


async def _measure(port: int, user: str, small: str, sizes: dict[str, int], meter: ServerMeter) -> dict[str, float]:
    res: dict[str, float] = {}
    n = sizes["messages"]
    c = await Client.connect(port)
    await c.cmd(f"LOGIN {user} {PASSWORD}")
    await c.cmd("SELECT INBOX")  # first SELECT: lets each server index the maildir
    await c.cmd("UNSELECT")
    runs = sizes["runs"]
    selects = []
    for _ in range(runs):
        t, out = await _timed(c, "SELECT INBOX")
        assert any(b"* %d EXISTS" % n in ln for ln in out), out[:3]
        selects.append(t)
    res["SELECT (warm)"] = statistics.median(selects) * 1000
    t, out = await _timed(c, "UID FETCH 1:* (FLAGS)", runs)
    res["UID FETCH 1:* (FLAGS)"] = t * 1000
    count = min(n, 1000)
    t, out = await _timed(c, f"FETCH 1:{count} (ENVELOPE BODYSTRUCTURE)")
    res["FETCH (ENVELOPE BODYSTRUCTURE)"] = count / t
    # the same FETCH again: answered from what each server kept (Dovecot's cache file, our render cache)
    t, out = await _timed(c, f"FETCH 1:{count} (ENVELOPE BODYSTRUCTURE)", runs)
    res["FETCH (ENVELOPE BODYSTRUCTURE) repeated"] = t * 1000
    noops = sizes["noops"]
    t, out = await _timed(c, "NOOP", noops)
    res["NOOP"] = t * 1000
    t, out = await _timed(c, "SEARCH UNSEEN", runs)
    res["SEARCH UNSEEN"] = t * 1000
    # The first header search lets each server build what it keeps for such searches (Dovecot's
    # cache, mailsrv's search index, normally filled at delivery); the second is measured.
    await c.cmd('SEARCH HEADER Message-ID "b1@"')
    t, out = await _timed(c, 'SEARCH HEADER Message-ID "b77@"', runs)
    res["SEARCH HEADER Message-ID (warm)"] = t * 1000
    stores = sizes["stores"]
    t0 = time.perf_counter()
    for i in range(stores):
        await c.cmd(f"STORE {i % n + 1} +FLAGS.SILENT (\\Flagged)" if i % 2 == 0 else
                    f"STORE {i % n + 1} -FLAGS.SILENT (\\Flagged)")
    res["STORE"] = stores / (time.perf_counter() - t0)
    meter.sample()  # before LOGOUT: Dovecot's imap process of this session (the big mailbox) exits with it
    await c.cmd("LOGOUT")
    await c.close()

    # sessions: LOGIN, SELECT (small mailbox user), FETCH, LOGOUT; 10 clients at once
    sessions = sizes["sessions"]
    sem = asyncio.Semaphore(10)

    async def one() -> None:
        async with sem:
            s = await Client.connect(port)
            await s.cmd(f"LOGIN {small} {PASSWORD}")
            await s.cmd("SELECT INBOX")
            await s.cmd("FETCH 1:10 (FLAGS)")
            await s.cmd("LOGOUT")
            await s.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(sessions)))
    res["LOGIN-SELECT-FETCH-LOGOUT (10 clients)"] = sessions / (time.perf_counter() - t0)
    meter.add(6 + 5 * runs + noops + stores + 4 * sessions)
    return res


def _memory_note(name: str, pids: list[int]) -> str:
    """What each process holds right after the load (RSS, in /proc order: mailsrv's master first), and
    the PSS total, where pages that forked processes share count once (the peak RSS row counts them in
    every process: ~30 MiB of each mailsrv process is the master's, shared)."""
    each = " / ".join(f"{rss_kib([p]) / 1024:.0f}" for p in pids)
    return (f"{name} after the load: RSS {each} MiB per process (sum {rss_kib(pids) / 1024:.1f}),"
            f" PSS {pss_kib(pids) / 1024:.1f} MiB (shared pages counted once)")


# --- Dovecot ----------------------------------------------------------------------------------------


def _start_dovecot(base: Path, seeds: dict[str, Path]) -> tuple[subprocess.Popen[bytes] | None, int, str]:
    return start_dovecot(base, "imap", seeds, DOVECOT_IMAP_SERVICES, b"* OK")


# --- the scenario ---------------------------------------------------------------------------------------

UNITS = {
    "SELECT (warm)": ("ms", False),
    "UID FETCH 1:* (FLAGS)": ("ms", False),
    "FETCH (ENVELOPE BODYSTRUCTURE)": ("msg/s", True),
    "FETCH (ENVELOPE BODYSTRUCTURE) repeated": ("ms", False),
    "NOOP": ("ms", False),
    "SEARCH UNSEEN": ("ms", False),
    "SEARCH HEADER Message-ID (warm)": ("ms", False),
    "STORE": ("cmd/s", True),
    "LOGIN-SELECT-FETCH-LOGOUT (10 clients)": ("sessions/s", True),
}


def run(size: str) -> dict[str, Any]:
    sizes = SIZES[size]
    notes: list[str] = [f"mailbox of {sizes['messages']} messages; memory per IDLE connection: see the idle scenario"]
    base = Path(tempfile.mkdtemp(prefix="mailsrv-bench-imap-"))
    os.chmod(base, 0o755)
    proc = None
    servers = []
    try:
        n = sizes["messages"]
        big = seed_cache("imap", n, _message(0) + _message(n - 1), _fill_maildir)  # built once, linked
        _fill_maildir(base / "seed-small", 20)
        seeds = {"big": big, "small": base / "seed-small"}
        with Mailsrv(base / "mailsrv", seeds=dict(seeds), config={"listener": {"imap": {"tls": "none"}}}) as srv:
            meter = srv.meter("IMAP commands")
            ours = asyncio.run(_measure(srv.ports["imap"], "big@example.test", "small@example.test", sizes, meter))
            servers.append(meter.summary())
            notes.append(_memory_note("mailsrv", srv.pids()))
        proc, dport, why = _start_dovecot(base, seeds)
        theirs: dict[str, float] = {}
        if proc is None:
            notes.append(f"Dovecot baseline missing: {why}")
        else:
            p = proc
            dmeter = ServerMeter("dovecot", lambda: dovecot_pids(p), "IMAP commands").start()
            theirs = asyncio.run(_measure(dport, "big", "small", sizes, dmeter))
            servers.append(dmeter.summary())
            notes.append(_memory_note("dovecot", dovecot_pids(p)))
    finally:
        if proc is not None:
            stop_dovecot(proc)
        shutil.rmtree(base, ignore_errors=True)
    results = compare(ours, theirs, UNITS, "dovecot")
    notes.append("ratio > 1 means mailsrv is better (faster, or less memory)")
    return {"scenario": "imap", "results": results, "notes": notes, "servers": servers}

