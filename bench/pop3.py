"""POP3 benchmark: mailsrv against Debian's Dovecot (dovecot-pop3d) on 127.0.0.1, same client, same maildrops.

Two measurements, as issue 7 asks:

- sessions/s of USER/PASS, STAT, RETR of every message, QUIT on a maildrop of
  1 000 messages (one client after the other: a maildrop admits one session);
- MB/s of RETR on a maildrop of large messages (octets of the multi-line
  responses, dot-stuffing included, as the client receives them);
- each RETR's round trip in the 1 000-message sessions (p50, p99, max: the
  read-ahead's stalls show at the tail).

Both servers serve copies of the same maildirs. mailsrv is ``mailsrv serve``
from a fresh ``mailsrv init`` (bench/_common.Mailsrv: no TLS on the pop3
listener, plain-text login allowed on loopback, argon2id with cheap parameters
so the rate measures POP3, not hashing); Dovecot runs with its own config and a
{PLAIN} passdb (the cheaper side: a conservative baseline). This process is
the client.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from ._common import (
    PASSWORD,
    Mailsrv,
    ServerMeter,
    compare,
    dovecot_pids,
    fill_maildir,
    message,
    start_dovecot,
    stop_dovecot,
)

SIZES = {
    "smoke": {"messages": 200, "sessions": 1, "big": 2, "big_size": 1 << 20, "rounds": 1},
    "full": {"messages": 1_000, "sessions": 30, "big": 20, "big_size": 10 << 20, "rounds": 3},
}


def _message(n: int) -> bytes:
    return message(n, repeat=8, lines=20, tag="p", display_name=True, mime=False, body_prefix=".")


def _big_message(n: int, size: int) -> bytes:
    line = b"." + b"0123456789abcdef" * 4 + b"\r\n"  # every line needs byte-stuffing: the worst case
    head = f"From: big@example.test\r\nSubject: big {n}\r\nMessage-ID: <big{n}@example.test>\r\n\r\n".encode()
    return head + line * (size // len(line))


def _fill(root: Path, messages: list[bytes]) -> None:
    fill_maildir(root, messages, lambda i, data: f"{1700000000 + i}.M{i}P1.bench,S={len(data)}:2,S")


# --- the client ---------------------------------------------------------------------------


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.r, self.w = reader, writer

    @classmethod
    async def connect(cls, port: int) -> Client:
        r, w = await asyncio.open_connection("127.0.0.1", port, limit=1 << 26)
        greeting = await r.readline()
        if not greeting.startswith(b"+OK"):
            raise RuntimeError(f"greeting {greeting!r}")
        return cls(r, w)

    async def cmd(self, text: str) -> bytes:
        self.w.write(text.encode() + b"\r\n")
        line = await self.r.readline()
        if not line.startswith(b"+OK"):
            raise RuntimeError(f"{text!r}: {line!r}")
        return line

    async def multi(self, text: str) -> int:
        """A multi-line command; returns the octets of the body received."""
        await self.cmd(text)
        # "\r\n.\r\n" cannot occur inside a byte-stuffed body.
        body = await self.r.readuntil(b"\r\n.\r\n")
        return len(body)

    async def close(self) -> None:
        self.w.close()
        try:
            await self.w.wait_closed()
        except OSError:
            pass


async def _session(port: int, user: str, meter: ServerMeter, latencies: list[float] | None = None) -> int:
    """One session: every message RETRieved; each RETR's round trip (command written -> its last
    octet read) appended to ``latencies`` (seconds) when given."""
    c = await Client.connect(port)
    await c.cmd(f"USER {user}")
    await c.cmd(f"PASS {PASSWORD}")
    count = int((await c.cmd("STAT")).split()[1])
    total = 0
    clock = time.perf_counter
    for i in range(1, count + 1):
        t0 = clock()
        total += await c.multi(f"RETR {i}")
        if latencies is not None:
            latencies.append(clock() - t0)
    await c.cmd("QUIT")
    await c.close()
    meter.add(count + 4)
    return total


async def _measure(port: int, small: str, big: str, sizes: dict[str, int], meter: ServerMeter) -> dict[str, float]:
    res: dict[str, float] = {}
    await _session(port, small, meter)  # warm-up: first login indexes the maildrop and counts sizes
    n = sizes["sessions"]
    lat: list[float] = []
    t0 = time.perf_counter()
    for _ in range(n):
        await _session(port, small, meter, lat)
    res["LOGIN-STAT-RETR-all-QUIT (1000 messages)"] = n / (time.perf_counter() - t0)
    lat.sort()
    for name, q in LATENCY_ROWS.items():  # over every RETR of those sessions (stalls show at p99 and max)
        res[name] = lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3
    await _session(port, big, meter)  # warm-up (page cache, index)
    best = 0.0
    for _ in range(sizes["rounds"]):
        t0 = time.perf_counter()
        octets = await _session(port, big, meter)
        best = max(best, octets / (time.perf_counter() - t0) / 1e6)
    res["RETR throughput"] = best
    return res


# --- Dovecot --------------------------------------------------------------------------------------

DOVECOT_SERVICES = """service pop3-login {
  inet_listener pop3 {
    port = {port}
  }
  inet_listener pop3s {
    port = 0
  }
  service_count = 0
  process_min_avail = 2
}
protocol pop3 {
  pop3_uidl_format = %08Xu%08Xv
}
"""


def _start_dovecot(base: Path) -> tuple[subprocess.Popen[bytes] | None, int, str]:
    return start_dovecot(base, "pop3", {user: base / f"seed-{user}" for user in ("small", "big")},
                         DOVECOT_SERVICES, b"+OK")


# --- the scenario -------------------------------------------------------------------------------------

#: per-RETR round trips of the 1 000-message sessions: row -> quantile (1.0: the slowest)
LATENCY_ROWS = {"RETR latency p50": 0.5, "RETR latency p99": 0.99, "RETR latency max": 1.0}

UNITS = {  # (unit, higher is better)
    "LOGIN-STAT-RETR-all-QUIT (1000 messages)": ("sessions/s", True),
    "RETR throughput": ("MB/s", True),
    **dict.fromkeys(LATENCY_ROWS, ("ms", False)),
}


def run(size: str) -> dict[str, Any]:
    sizes = SIZES[size]
    notes: list[str] = [
        f"maildrop of {sizes['messages']} messages of {len(_message(0))} octets; "
        f"RETR throughput over {sizes['big']} messages of {sizes['big_size'] >> 20} MiB, every line dot-stuffed",
        "one client, sessions one after the other (a maildrop admits one POP3 session at a time)",
    ]
    base = Path(tempfile.mkdtemp(prefix="mailsrv-bench-pop3-"))
    os.chmod(base, 0o755)
    proc = None
    ours: dict[str, float] = {}
    theirs: dict[str, float] = {}
    servers = []
    try:
        _fill(base / "seed-small", [_message(i) for i in range(sizes["messages"])])
        _fill(base / "seed-big", [_big_message(i, sizes["big_size"]) for i in range(sizes["big"])])
        seeds: dict[str, Path | None] = {name: base / f"seed-{name}" for name in ("small", "big")}
        with Mailsrv(base / "mailsrv", seeds=seeds, config={"listener": {"pop3": {"tls": "none"}}}) as srv:
            meter = srv.meter("POP3 commands")
            ours = asyncio.run(_measure(srv.ports["pop3"], "small@example.test", "big@example.test", sizes, meter))
            servers.append(meter.summary())
        proc, dport, why = _start_dovecot(base)
        if proc is None:
            notes.append(f"Dovecot baseline missing: {why}")
        else:
            p = proc
            dmeter = ServerMeter("dovecot", lambda: dovecot_pids(p), "POP3 commands").start()
            theirs = asyncio.run(_measure(dport, "small", "big", sizes, dmeter))
            servers.append(dmeter.summary())
    finally:
        if proc is not None:
            stop_dovecot(proc)
        shutil.rmtree(base, ignore_errors=True)
    results = compare(ours, theirs, UNITS, "dovecot")
    notes.append("ratio > 1 means mailsrv is faster")
    return {"scenario": "pop3", "results": results, "notes": notes, "servers": servers}
