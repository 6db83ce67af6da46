"""idle: N concurrent IMAP IDLE connections: memory per connection, wake-up latency, CPU while idle.

A fresh ``mailsrv init`` in a temporary directory is served by ``mailsrv serve``
(master + one worker per core + queue runner, as an operator runs it). This
process is the client: it opens N connections (``smoke`` 100, ``full``
10 000) spread over N/``per_user`` users, each LOGIN, SELECT INBOX, IDLE. Then:

- resident memory per connection: the server's VmRSS (and PSS, which shares
  out pages that forked processes have in common) summed over every server
  process, after the N are idle minus before the first connected, over N;
- CPU seconds of the server while all N sit idle for a while (no traffic: a
  server that polls shows here), from /proc/PID/stat;
- wake-up latency: in each round one message per user is sent over SMTP; for
  every IDLE client the time from the ``250`` of its user's message to its
  ``* n EXISTS`` (a negative value would mean the notification overtook the
  ``250`` on the wire); p50/p90/p99/max over clients and rounds;
- RSS growth per wake round and connection, twice: from round 1 to round 2
  (the first rounds also grow the allocator's pools and the first buffers of
  the SMTP sessions and the store: with 10 000 connections rounds 2-4 still
  grew by ~100 bytes a connection where later ones grew by 15-70), and from
  the middle round to the last ("later wake round": what one more message per
  user costs while every session holds its view of the mailbox; ~16 bytes a
  connection for the two list slots of each session's view, plus the
  process's one shared ``MessageInfo`` per mailbox, when nothing leaks).

Dovecot (when installed) serves the same users with the same client, at most
``dovecot_cap`` connections (one imap process per connection); it has no MTA
here, so its messages are dropped into the maildir as an MDA does (tmp/,
fsync, rename into new/) and its latency counts from the rename.

Both client and server raise RLIMIT_NOFILE to the hard limit; the limits in
force are in the notes. Server and client share the machine's cores (no
pinning); the client is one process, so with 10 000 clients the latency
includes the client's own time to read 10 000 sockets.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._common import (
    DOVECOT_IMAP_SERVICES,
    PASSWORD,
    Mailsrv,
    ServerMeter,
    compare,
    cpu_ns,
    dovecot_pids,
    message,
    nofile_of,
    percentile,
    pss_kib,
    raise_nofile,
    rss_kib,
    smtp_deliver,
    start_dovecot,
    stop_dovecot,
)

SIZES = {
    "smoke": {"clients": 40, "per_user": 10, "rounds": 4, "quiet": 0.3, "dovecot_cap": 40, "dovecot_rounds": 1},
    "full": {"clients": 10_000, "per_user": 100, "rounds": 10, "quiet": 5.0, "dovecot_cap": 1_000,
             "dovecot_rounds": 1},
}
EXISTS = re.compile(rb"\* (\d+) EXISTS")
OPEN_CONCURRENCY = 100  # logins in flight while the N connections are set up
DEADLINE = 120.0  # seconds a round may take before the missing wake-ups are reported


# --- the IDLE client: one asyncio.Protocol per connection, timestamps taken on arrival --------


class IdleConn(asyncio.Protocol):
    """LOGIN, SELECT INBOX, IDLE; then every ``* n EXISTS`` is stamped as it arrives."""

    def __init__(self, user: str, on_exists: Callable[[IdleConn, int, float], None]) -> None:
        self.user, self.on_exists = user, on_exists
        self.buf = b""
        self.idling = False
        self.want: re.Pattern[bytes] | None = None
        self.got: asyncio.Future[bytes] | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self.buf += data
        if self.idling:
            end = self.buf.rfind(b"\n") + 1
            for m in EXISTS.finditer(self.buf, 0, end):
                self.on_exists(self, int(m.group(1)), now)
            self.buf = self.buf[end:]
        elif self.want is not None and self.got is not None and (m := self.want.search(self.buf)):
            self.got.set_result(self.buf[: m.end()])
            self.buf = self.buf[m.end():]
            self.want = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.got is not None and not self.got.done():
            self.got.set_exception(ConnectionError(f"{self.user}: connection closed"))
        if not self.closed.done():
            self.closed.set_result(None)

    async def expect(self, send: bytes, want: bytes) -> bytes:
        self.want = re.compile(want, re.M)
        self.got = asyncio.get_running_loop().create_future()
        if self.want.search(self.buf):  # already here (the greeting)
            self.data_received(b"")
        if send:
            assert self.transport is not None
            self.transport.write(send)
        return await asyncio.wait_for(self.got, DEADLINE)

    async def start(self, password: str) -> None:
        await self.expect(b"", rb"^\* OK.*\r\n")
        out = await self.expect(f"a LOGIN {self.user} {password}\r\n".encode(), rb"^a (OK|NO|BAD).*\r\n")
        if b"a OK" not in out:
            raise RuntimeError(f"LOGIN {self.user}: {out[-200:]!r}")
        await self.expect(b"b SELECT INBOX\r\n", rb"^b OK.*\r\n")
        await self.expect(b"c IDLE\r\n", rb"^\+.*\r\n")
        self.idling = True

    def stop(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"DONE\r\nd LOGOUT\r\n")
            self.transport.close()


class Idlers:
    """N IDLE connections; ``wait(count)`` until every one has been told ``* count EXISTS``."""

    def __init__(self) -> None:
        self.conns: list[IdleConn] = []
        self.seen: dict[int, dict[IdleConn, float]] = {}
        self.target = 0
        self.done = asyncio.Event()

    def _on_exists(self, conn: IdleConn, count: int, t: float) -> None:
        self.seen.setdefault(count, {}).setdefault(conn, t)
        if count == self.target and len(self.seen[count]) == len(self.conns):
            self.done.set()

    async def open(self, port: int, users: list[str], n: int, password: str) -> None:
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(OPEN_CONCURRENCY)

        async def one(i: int) -> None:
            async with sem:
                _, conn = await loop.create_connection(
                    lambda: IdleConn(users[i % len(users)], self._on_exists), "127.0.0.1", port)
                self.conns.append(conn)
                await conn.start(password)

        await asyncio.gather(*(one(i) for i in range(n)))

    async def wait(self, count: int) -> dict[IdleConn, float]:
        """Arrival time per connection of ``* count EXISTS`` (connections missing at the deadline are absent)."""
        self.target = count
        if len(self.seen.get(count, {})) < len(self.conns):
            self.done.clear()
            try:
                await asyncio.wait_for(self.done.wait(), DEADLINE)
            except TimeoutError:
                pass
        return self.seen.get(count, {})

    async def close(self) -> None:
        for c in self.conns:
            c.stop()
        await asyncio.wait_for(asyncio.gather(*(c.closed for c in self.conns)), DEADLINE)


# --- delivering one message per user: SMTP (mailsrv) or an MDA's file drop (Dovecot) ----------


def maildir_drop(new_dirs: dict[str, Path], data: bytes, round_no: int) -> dict[str, float]:
    """Deliver as an MDA does (tmp/, fsync, rename into new/, fsync new/); the time of each rename."""
    done: dict[str, float] = {}
    for user, new in new_dirs.items():
        name = f"{time.time_ns()}.R{round_no}.bench"
        tmp = new.parent / "tmp" / name
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chown(tmp, new.stat().st_uid, new.stat().st_gid)
        os.rename(tmp, new / name)
        fd = os.open(new, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        done[user] = time.perf_counter()
    return done


# --- the measurement, the same for both servers ----------------------------------------------------


async def measure(port: int, users: list[str], n: int, rounds: int, quiet: float, meter: ServerMeter,
                  deliver: Callable[[list[str], bytes, int], Any]) -> tuple[dict[str, float], list[float], int]:
    """Open ``n`` IDLE connections and measure; returns (figures, latencies in ms, wake-ups missed)."""
    pids = meter.pids
    res: dict[str, float] = {}
    rss0, pss0 = rss_kib(pids()), pss_kib(pids())
    idlers = Idlers()
    t0 = time.perf_counter()
    await idlers.open(port, users, n, PASSWORD)
    res["connections set up (LOGIN, SELECT, IDLE)"] = n / (time.perf_counter() - t0)
    rss1, pss1 = rss_kib(pids()), pss_kib(pids())
    res["RSS per IDLE connection"] = (rss1 - rss0) / n
    res["PSS per IDLE connection"] = (pss1 - pss0) / n
    cpu0 = cpu_ns(pids())
    await asyncio.sleep(quiet)  # the measurement itself: nothing happens for `quiet` seconds
    res["server CPU while idle"] = (cpu_ns(pids()) - cpu0) / 1e9 * 60 / quiet
    lat: list[float] = []
    missed = 0
    client0 = resource.getrusage(resource.RUSAGE_SELF)
    rss_after: list[int] = []  # KiB, after each round
    for r in range(1, rounds + 1):
        data = message(r, repeat=8, lines=20, tag=f"idle{r}.")
        acked = await deliver(users, data, r)
        meter.add(len(users))
        seen = await idlers.wait(r)
        missed += n - len(seen)
        lat += [(t - acked[c.user]) * 1000 for c, t in seen.items()]
        rss_after.append(rss_kib(pids()))
    if rounds > 1:  # what one more message per user costs while every session holds its view of the mailbox
        res["RSS growth per wake round, per connection"] = (rss_after[1] - rss_after[0]) * 1024 / n
    settled = max(2, rounds // 2)  # the round after which the first rounds' one-time growth is behind
    if rounds > settled:
        res["RSS growth per later wake round, per connection"] = (
            (rss_after[-1] - rss_after[settled - 1]) * 1024 / (rounds - settled) / n)
    client1 = resource.getrusage(resource.RUSAGE_SELF)
    client_cpu = client1.ru_utime + client1.ru_stime - client0.ru_utime - client0.ru_stime
    res["client CPU per wake-up (this process, delivery included)"] = client_cpu * 1e6 / max(1, len(lat))
    meter.add(n * 3)  # LOGIN, SELECT, IDLE
    meter.sample()  # before the per-connection processes (Dovecot) exit with their CPU time
    await idlers.close()
    if lat:
        for p in (50, 90, 99):
            res[f"wake-up latency p{p}"] = percentile(lat, p)
        res["wake-up latency max"] = max(lat)
    return res, lat, missed


UNITS = {
    "connections set up (LOGIN, SELECT, IDLE)": ("conn/s", True),
    "RSS per IDLE connection": ("KiB", False),
    "PSS per IDLE connection": ("KiB", False),
    "RSS growth per wake round, per connection": ("bytes", False),
    "RSS growth per later wake round, per connection": ("bytes", False),
    "server CPU while idle": ("CPU s/min", False),
    "wake-up latency p50": ("ms", False),
    "wake-up latency p90": ("ms", False),
    "wake-up latency p99": ("ms", False),
    "wake-up latency max": ("ms", False),
    "client CPU per wake-up (this process, delivery included)": ("µs", False),
}


def _mailsrv(base: Path, sizes: dict[str, Any], notes: list[str]) -> tuple[dict[str, float], dict[str, Any]]:
    n, per_user = sizes["clients"], sizes["per_user"]
    names = [f"idle{i}" for i in range(max(1, n // per_user))]
    with Mailsrv(base / "mailsrv", seeds=dict.fromkeys(names), config={"listener": {"imap": {"tls": "none"}}}) as srv:
        meter = srv.meter("deliveries + IMAP commands")
        users = [f"{u}@example.test" for u in names]
        notes.append(f"mailsrv: {n} IDLE connections, {len(users)} users x {n // len(users)}, "
                     f"{len(srv.pids()) - 1} server processes below the master; RLIMIT_NOFILE client "
                     f"{resource.getrlimit(resource.RLIMIT_NOFILE)[0]}, server {nofile_of(srv.proc.pid)}")

        async def deliver(users: list[str], data: bytes, _round: int) -> dict[str, float]:
            return await smtp_deliver(srv.ports["smtp"], users, data)

        ours, _lat, missed = asyncio.run(measure(srv.ports["imap"], users, n, sizes["rounds"], sizes["quiet"],
                                                 meter, deliver))
        summary = meter.summary()
        if srv.errors:
            notes += [f"mailsrv error: {e}" for e in srv.errors[:3]]
    if missed:
        raise SystemExit(f"idle: mailsrv never told {missed} IDLE clients about a delivered message")
    return ours, summary


def _dovecot(base: Path, sizes: dict[str, Any], notes: list[str]) -> tuple[dict[str, float], dict[str, Any] | None]:
    n = min(sizes["clients"], sizes["dovecot_cap"])
    names = [f"idle{i}" for i in range(max(1, sizes["clients"] // sizes["per_user"]))]
    empty = base / "empty"
    for sub in ("cur", "new", "tmp"):
        (empty / sub).mkdir(parents=True, exist_ok=True)
    proc, port, why = start_dovecot(base, "imap", dict.fromkeys(names, empty), DOVECOT_IMAP_SERVICES, b"* OK")
    if proc is None:
        notes.append(f"Dovecot baseline missing: {why}")
        return {}, None
    try:
        meter = ServerMeter("dovecot", lambda: dovecot_pids(proc), "deliveries + IMAP commands").start()
        new_dirs = {u: base / "dmail" / u / "Maildir" / "new" for u in names}

        async def deliver(users: list[str], data: bytes, round_no: int) -> dict[str, float]:
            return await asyncio.get_running_loop().run_in_executor(None, maildir_drop, new_dirs, data, round_no)

        theirs, _lat, missed = asyncio.run(measure(port, names, n, sizes["dovecot_rounds"], sizes["quiet"], meter,
                                                   deliver))
        summary = meter.summary()
    finally:
        stop_dovecot(proc)
    notes.append(f"Dovecot: {n} IDLE connections (one imap process each), {len(names)} users, "
                 f"{sizes['dovecot_rounds']} round(s); messages dropped into the maildir by this process "
                 "(no MTA): latency from the rename into new/")
    if missed:
        notes.append(f"Dovecot missed {missed} wake-ups within {DEADLINE:.0f} s")
    inotify = int(Path("/proc/sys/fs/inotify/max_user_instances").read_text())
    if n > inotify:
        notes.append(f"fs.inotify.max_user_instances is {inotify} on this host: Dovecot's imap processes beyond "
                     "that (one per connection, all running as one user) cannot watch their maildir and poll "
                     "it every mailbox_idle_check_interval (30 s), which is what its wake-up latency shows; "
                     "mailsrv needs one inotify instance per worker")
    return theirs, summary


def run(size: str) -> dict[str, Any]:
    sizes = SIZES[size]
    soft, hard = raise_nofile()
    notes: list[str] = [f"RLIMIT_NOFILE raised to {soft} (hard limit {hard}) in the client, inherited by the servers"]
    if soft < sizes["clients"] + 100:
        raise SystemExit(f"idle: RLIMIT_NOFILE hard limit {hard} is too low for {sizes['clients']} connections")
    base = Path(tempfile.mkdtemp(prefix="mailsrv-bench-idle-"))
    os.chmod(base, 0o755)  # Dovecot's processes (nobody) work below it
    servers = []
    try:
        ours, summary = _mailsrv(base, sizes, notes)
        servers.append(summary)
        theirs, dsummary = _dovecot(base, sizes, notes)
        if dsummary is not None:
            servers.append(dsummary)
    finally:
        if (base / "dmail").exists():
            subprocess.run(["chown", "-R", f"{os.getuid()}:{os.getgid()}", str(base / "dmail")], check=False)
        shutil.rmtree(base, ignore_errors=True)
    notes.append("ratio > 1 means mailsrv is better (less memory, less CPU, lower latency, faster set-up); "
                 "'server CPU while idle' is CPU seconds per minute of all server processes with every "
                 "connection idle and no mail arriving")
    return {"scenario": "idle", "results": compare(ours, theirs, UNITS, "dovecot"), "notes": notes,
            "servers": servers}
