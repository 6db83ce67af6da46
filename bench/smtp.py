"""SMTP inbound: durable messages/s and end-of-DATA -> 250 latency, mailsrv vs aiosmtpd (vs Postfix).

mailsrv is ``mailsrv serve`` from a fresh ``mailsrv init`` with two workers
(bench/_common.Mailsrv); the baselines are aiosmtpd writing each message
straight into its recipient's maildir with fsync (file and directory), after
the Return-Path and Received fields every delivering server adds, two processes each
(spawned, not forked): the primary one writes in its loop's executor (several
messages' fsyncs in flight), the issue's naive one in handle_DATA (one writer
per process). Postfix is measured only when installed. The disk's floor is one
writer's durable writes with no server at all; the one-session floor adds to the journal's sync what a
lone session's message waits for besides (loopback round trips, a thread pool hop: bench/_floors.py)
and sets it beside each server's time per message at one session. The load generator opens
1, 10, 20 and 50 sessions that pipeline MAIL/RCPT/DATA and time the final
``.\\r\\n`` -> ``250``; every server gets the same unmeasured burst first.
The delivery-to-visible latency is measured at about half the measured maximum
load, from ``250`` to the store's change notification (the same inotify watch
IMAP IDLE waits on) in another process.

Every server runs from the start, and each cell (size, sessions) is measured in rounds (3 at full size):
each round measures every server back to back, in an order that rotates by one from round to round (and
cell to cell), with nothing deleted before the end: on a file system where a create costs more after many
deletions (bench/README.md), the servers of a round meet the same disk. A server's msgs/s in a cell is
the median of its rounds, and each row also gives the rounds' values and the range of the per-round
ratios (ours / the baseline's of the same round): one slow moment of the shared disk moves one round,
not the figure. Before each server's measurement the bench runs ``sync`` and waits (bounded) until file
creates are cheap again (:class:`_DiskState`), so no server's syncs write back another's dirty data.
Each server's CPU per delivered message counts its processes during its own cells only.
"""

from __future__ import annotations

import asyncio
import functools
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from statistics import median
from typing import Any, NamedTuple

from ._common import (
    RECENT_FREE_WINDOW,
    Mailsrv,
    ServerMeter,
    cpu_seconds,
    durable_loop,
    free_port,
    fsync_create,
    maildir_count,
    percentile,
    proc_tree,
    remove_tree,
    settle_after_removal,
    smtp_reply,
    syncfs_create,
)
from ._floors import GAP, Overwrite, placed, pong_child, record, two_cpus, wakeups

ROOT = Path(__file__).resolve().parents[1]

#: ``rounds`` x ``round_seconds``: each throughput cell's measurements per server (bench/README.md says why 3 x 3 s);
#: ``seconds``: the disk floors', the front end's and store.deliver's rows (one measurement each);
#: ``floor_seconds``: each round's one-session floor probes' (the journal's sync, the round trip, the pool hop).
SIZES: dict[str, dict[str, Any]] = {
    "smoke": {"seconds": 0.3, "rounds": 1, "round_seconds": 0.3, "sessions": [1, 4], "bodies": [4096],
              "visible": 5, "warm": 0.2, "floor_seconds": 0.1},
    "full": {"seconds": 4.0, "rounds": 3, "round_seconds": 3.0, "sessions": [1, 10, 20, 50],
             "bodies": [4096, 102400], "visible": 200, "warm": 1.0, "floor_seconds": 0.5},
}
#: MAILSRV_BENCH_SMTP_ROUNDS=N overrides the size's rounds (more rounds for an A/B that must decide a cell).
ROUNDS = os.environ.get("MAILSRV_BENCH_SMTP_ROUNDS", "")
#: Each server gets an unmeasured burst before its first cell (``warm`` seconds, as many sessions as the
#: largest cell, at most one per mailbox); MAILSRV_BENCH_SMTP_WARMUP=0 leaves it out (to measure what it does).
WARMUP = os.environ.get("MAILSRV_BENCH_SMTP_WARMUP", "1") != "0"
WORKERS = 2
#: The throughput cells' load generator: ``python`` (this process, asyncio + uvloop, pipelined, the default) or
#: ``smtp-source`` (Postfix's C test generator, one process per session: a light client to compare with).
CLIENT = os.environ.get("MAILSRV_BENCH_SMTP_CLIENT", "python")
CLIENTS = ("python", "smtp-source")
#: Sessions deliver round-robin to this many mailboxes (an organisation, not one hot mailbox).
RECIPIENTS = 50


def _body(size: int) -> bytes:
    head = b"From: load@remote.test\r\nTo: load@example.test\r\nSubject: bench\r\n\r\n"
    line = b"x" * 76 + b"\r\n"
    n = max(1, (size - len(head)) // len(line))
    return head + line * n


# --- servers ------------------------------------------------------------------------------------------


def _listen() -> socket.socket:
    # IPPROTO_TCP as getaddrinfo gives it to loop.create_server(host, port) (aiosmtpd's Controller): the
    # standard asyncio loop sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP, and a plain
    # socket.socket() (proto 0) left aiosmtpd's three pipelined replies to Nagle and the client's
    # delayed ACK (a 40 ms stall per MAIL/RCPT/DATA group: 22 msgs/s at 1 session)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(1024)
    return s


def _spawn_workers(sock: socket.socket, kind: str, path: Path, count: int = WORKERS) -> list[subprocess.Popen[bytes]]:
    """``count`` fresh interpreters serving ``kind`` (a key of :data:`_CHILDREN`) on ``sock`` until SIGTERM.

    Spawned (``python -m bench.smtp KIND FD READY PATH``), not forked: a forked worker started with the
    bench process's heap, ~1.2 GB after the scenarios before ``smtp`` in ``python -m bench all`` (the
    aiosmtpd baseline's peak RSS was 2 470 MiB over 2 processes, all of it inherited), which its
    garbage collector then walked and copied page by page. Each child writes ``1`` on READY once it serves.
    """
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(count):
            r, w = os.pipe()
            try:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "bench.smtp", kind, str(sock.fileno()), str(w), str(path)],
                    pass_fds=(sock.fileno(), w), cwd=ROOT))
            finally:
                os.close(w)
            with os.fdopen(r, "rb") as f:
                if f.read(1) != b"1":
                    raise RuntimeError(f"bench server {kind} did not start")
    except BaseException:
        _stop(procs)
        raise
    return procs


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        proc.wait()


def _config(data_dir: Path) -> Any:
    from mailsrv.config import Config, LimitsConfig, ServerConfig

    return replace(Config(server=ServerConfig(data_dir=data_dir, hostname="bench.example.test"),
                          limits=LimitsConfig(max_connections_per_ip=1000)))


def _serve_smtp(sock: socket.socket, ready: int, cfg: Any, setup: Any, drain: float) -> None:
    """Serve an SmtpService on ``sock`` until SIGTERM, then drain for ``drain`` seconds.

    ``await setup(ctx)`` returns (service, cleanup): ``await cleanup()`` runs after the drain.
    """
    import uvloop

    from mailsrv import log
    from mailsrv.config import ListenerConfig
    from mailsrv.net.listener import Listener
    from mailsrv.net.service import ServiceContext

    log.configure("warning")

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        lcfg = ListenerConfig(protocol="smtp", bind=("127.0.0.1:0",), tls="none")
        ctx = ServiceContext(config=cfg, name="smtp", listener=lcfg, ssl_context=None)
        service, cleanup = await setup(ctx)
        lst = Listener("smtp", lcfg, cfg.limits, [sock], service, None)
        await lst.start()
        os.write(ready, b"1")
        await stop.wait()
        await lst.drain(drain)
        await cleanup()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        r.run(main())


class _NullBackend:
    """Accepts everything and keeps nothing: the SMTP front end alone. Its spool is the worker's kind (lazy):
    a message the policy judged in memory is sealed there and never written, so no file is made or removed
    (this row measured ext4's inode allocation more than SMTP when every message made and removed a file)."""

    def __init__(self, spool: Path) -> None:
        self.spool = spool

    async def check_sender(self, info: Any, sender: str) -> Any:
        from mailsrv.smtp.backend import Verdict

        return Verdict(250, "2.1.0", "OK")

    async def check_recipient(self, info: Any, tx: Any, address: str) -> Any:
        from mailsrv.smtp.backend import Verdict

        return Verdict(250, "2.1.5", "OK")

    def open_spool(self) -> Any:
        from mailsrv.delivery.spool import FileSpool

        return FileSpool(self.spool, lazy=True)

    async def deliver(self, info: Any, tx: Any, spool: Any) -> Any:
        from mailsrv.smtp.backend import Verdict

        return Verdict(250, "2.0.0", "OK")


def _frontend_child(sock: socket.socket, ready: int, spool: Path) -> None:
    from mailsrv.config import PolicyConfig
    from mailsrv.net.dns import Resolver
    from mailsrv.policy.pipeline import Policy
    from mailsrv.smtp.server import SmtpService

    async def setup(ctx: Any) -> tuple[Any, Any]:
        async def cleanup() -> None:
            pass

        # the worker's policy as loopback mail meets it (policy.skip_networks): judged in memory, no DNS
        ctx.resources["policy"] = Policy(PolicyConfig(), hostname=ctx.hostname, resolver=Resolver(()), state=None)
        return SmtpService(ctx, backend=_NullBackend(spool), sasl=None), cleanup

    _serve_smtp(sock, ready, _config(spool), setup, 1)


def _frontend_rows(front: Path, sizes: dict[str, Any]) -> list[dict[str, Any]]:
    """The "SMTP front end alone" rows (4 KB, each session count): msgs/s answered 250 and the front end's
    processes' CPU per message (``server_cpu_ms_per_msg``) and the Python load generator's
    (``client_cpu_ms_per_msg``)."""
    front.mkdir()
    sock = _listen()
    port = sock.getsockname()[1]
    procs = _spawn_workers(sock, "frontend", front)
    sock.close()
    rows = []
    try:
        for n in sizes["sessions"]:
            cpu0 = sum(cpu_seconds(p.pid) for p in procs)
            rate, lat, ccpu = _python_load(port, n, _body(4096), sizes["seconds"])
            cpu = sum(cpu_seconds(p.pid) for p in procs) - cpu0
            rows.append({"name": f"SMTP front end alone, no store (4 KB, {n} sessions)", "unit": "msg/s",
                         "value": rate, "baseline": None,
                         "server_cpu_ms_per_msg": cpu / len(lat) * 1000 if lat else None,
                         "client_cpu_ms_per_msg": ccpu / len(lat) * 1000 if lat else None})
    finally:
        _stop(procs)
    return rows


#: The aiosmtpd baselines' names, for what each is: the primary one (its rows keep their names across runs)
#: writes in the loop's default executor, so the fsyncs of several messages overlap; the issue's naive one
#: writes in handle_DATA itself, one message at a time per worker, its loop blocked meanwhile.
AIOSMTPD_POOL = "aiosmtpd+maildir fsync (fsync in its executor, writers overlap)"
AIOSMTPD_NAIVE = "aiosmtpd naive (fsync in the handler)"


def _aiosmtpd_child(sock: socket.socket, ready: int, maildir: Path, inline: bool = False) -> None:
    """The aiosmtpd baselines: aiosmtpd (line-by-line DATA in memory) + a maildir write with fsync (file and
    directory) into the recipient's own maildir (``maildir/LOCALPART``, as every other server here delivers),
    the message preceded by the trace fields any SMTP server that delivers adds (RFC 5321 §4.4: Return-Path
    and a Received field, of the form mailsrv writes); in the default executor, or with ``inline`` in
    handle_DATA on the loop (the issue's naive server: one writer per process)."""
    from email.utils import formatdate

    from aiosmtpd.smtp import SMTP

    boxes = {p.name: (p / "tmp", p / "new") for p in maildir.iterdir()}

    def delivery(session: Any, envelope: Any) -> tuple[Path, str, bytes, Path] | None:
        rcpt = envelope.rcpt_tos[0]
        box = boxes.get(rcpt.partition("@")[0])
        if box is None:
            return None
        name = f"{time.time_ns()}.{os.getpid()}.{id(envelope):x}"
        trace = (f"Return-Path: <{envelope.mail_from}>\r\nReceived: from {session.host_name} "
                 f"([{session.peer[0]}])\r\n\tby base.test (aiosmtpd) with ESMTP id {name}\r\n"
                 f"\tfor <{rcpt}>;\r\n\t{formatdate(localtime=True)}\r\n").encode()
        return box[0], name, trace + envelope.original_content, box[1]

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            args = delivery(session, envelope)
            if args is None:
                return "550 5.1.1 No such user"
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, fsync_create, *args)
            return "250 2.0.0 OK"

    class InlineHandler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            args = delivery(session, envelope)
            if args is None:
                return "550 5.1.1 No such user"
            fsync_create(*args)
            return "250 2.0.0 OK"

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        handler = InlineHandler if inline else Handler
        server = await loop.create_server(lambda: SMTP(handler(), hostname="base.test"), sock=sock)
        os.write(ready, b"1")
        await stop.wait()
        server.close()

    asyncio.run(main())


def _aiosmtpd_naive_child(sock: socket.socket, ready: int, maildir: Path) -> None:
    _aiosmtpd_child(sock, ready, maildir, inline=True)


#: What :func:`_spawn_workers` can start: kind -> child(sock, ready fd, path)
_CHILDREN: dict[str, Any] = {
    "frontend": _frontend_child,
    "aiosmtpd": _aiosmtpd_child,
    "aiosmtpd-naive": _aiosmtpd_naive_child,
    "floors": pong_child,
}


def _start_postfix(base: Path, port: int, recipients: int) -> tuple[Path | None, str]:
    """A private Postfix instance delivering to maildirs via virtual(8); never touches DNS."""
    exe = shutil.which("postfix") or "/usr/sbin/postfix"
    if not Path(exe).exists():
        return None, "postfix not installed"
    conf = base / "pfconf"
    conf.mkdir(parents=True)
    (base / "pfqueue").mkdir()
    (base / "pfdata").mkdir()
    try:
        pf = pwd.getpwnam("postfix")
        nobody = pwd.getpwnam("nobody")
    except KeyError as exc:
        return None, f"no such user: {exc}"
    os.chown(base / "pfdata", pf.pw_uid, pf.pw_gid)
    mail = base / "pfmail"
    mail.mkdir()
    os.chown(mail, nobody.pw_uid, nobody.pw_gid)
    users = [f"load{i}" for i in range(recipients)] + ["probe"]
    (conf / "vmap").write_text("".join(f"{u}@example.test {u}/\n" for u in users))
    (conf / "main.cf").write_text(f"""compatibility_level = 3.6
queue_directory = {base}/pfqueue
data_directory = {base}/pfdata
myhostname = postfix.bench.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination
virtual_mailbox_domains = example.test
virtual_mailbox_base = {mail}
virtual_mailbox_maps = texthash:{conf}/vmap
# never reach DNS or the network: anything not local is discarded
default_transport = discard:
relay_transport = discard:
smtp_dns_support_level = disabled
notify_classes =
virtual_uid_maps = static:{nobody.pw_uid}
virtual_gid_maps = static:{nobody.pw_gid}
virtual_minimum_uid = 1
maillog_file = {base}/pf.log
maillog_file_prefixes = {base}
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
default_process_limit = 100
alias_maps =
alias_database =
biff = no
""")
    master = Path("/etc/postfix/master.cf").read_text()
    master = re.sub(r"^smtp\s+inet.*$", f"127.0.0.1:{port} inet n - n - - smtpd", master, count=1, flags=re.M)
    # no chroot: the private queue lives outside /var/spool/postfix
    lines = []
    for line in master.splitlines():
        parts = line.split()
        if len(parts) >= 8 and not line.startswith((" ", "#", "\t")) and parts[4] == "y":
            parts[4] = "n"
            line = " ".join(parts[:8]) + (" " + " ".join(parts[8:]) if len(parts) > 8 else "")
        lines.append(line)
    (conf / "master.cf").write_text("\n".join(lines) + "\n")
    r = subprocess.run([exe, "-c", str(conf), "start"], capture_output=True, text=True)
    if r.returncode != 0:
        return None, f"postfix start failed: {r.stderr.strip()[-300:]}"
    return conf, ""


def _stop_postfix(conf: Path) -> None:
    subprocess.run(["postfix", "-c", str(conf), "stop"], capture_output=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if subprocess.run(["postfix", "-c", str(conf), "status"], capture_output=True).returncode != 0:
            return
        time.sleep(0.1)


def _wait_port(port: int, limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _postfix_master(conf: Path) -> int:
    """The pid of a private Postfix instance's master (its queue directory's pid/master.pid)."""
    queue = re.search(r"^queue_directory = (.+)$", (conf / "main.cf").read_text(), re.M)
    assert queue is not None
    return int((Path(queue.group(1)) / "pid" / "master.pid").read_text().split()[0])


# --- load -------------------------------------------------------------------------------------------


async def _reply(reader: asyncio.StreamReader) -> int:
    return int((await smtp_reply(reader))[:3])


class _Client(asyncio.Protocol):
    """The load generator's side of one SMTP connection, kept lean because it shares the cores with
    the servers it measures: no stream objects, replies parsed where they arrive, one future per
    pipelined group. ``codes`` holds the final line's code of each complete reply."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.codes: list[int] = []
        self._rest = b""
        self._want = 0
        self._waiter: asyncio.Future[None] | None = None
        self._lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self._rest + data if self._rest else data
        start = 0
        while (end := buf.find(b"\n", start)) >= 0:
            if buf[start + 3:start + 4] != b"-":  # the last line of a reply
                self.codes.append(int(buf[start:start + 3]))
            start = end + 1
        self._rest = buf[start:]
        self._wake()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._lost = exc or ConnectionError("SMTP connection closed")
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done() and (len(self.codes) >= self._want or self._lost is not None):
            w.set_result(None)

    async def replies(self, n: int) -> list[int]:
        """The codes of the next ``n`` replies."""
        while len(self.codes) < n:
            if self._lost is not None:
                raise ConnectionError(f"SMTP connection closed after {self.codes}") from self._lost
            self._want = n
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        out, self.codes = self.codes[:n], self.codes[n:]
        return out


async def _session(port: int, rcpt: str, body: bytes, until: float, lat: list[float],
                   rate: float | None = None, pipelining: bool = True) -> int:
    """Messages to ``rcpt`` until ``until``; counts (and times, end of DATA -> reply) only those answered 250.
    ``pipelining=False``: MAIL, RCPT and DATA each sent after the previous reply (a client without RFC 2920)."""
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_connection(_Client, "127.0.0.1", port)
    try:
        if await client.replies(1) != [220]:
            raise RuntimeError(f"greeting {client.codes}")
        transport.write(b"EHLO load.test\r\n")
        await client.replies(1)
        # RFC 2920: MAIL, RCPT and DATA in one write; the message only after 354
        env = f"MAIL FROM:<load@remote.test>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode()
        steps = [env] if pipelining else [ln + b"\n" for ln in env.split(b"\n")[:-1]]
        payload = body.replace(b"\r\n.", b"\r\n..") + b".\r\n"
        perf = time.perf_counter
        sent = 0
        next_at = loop.time()
        while loop.time() < until:
            if rate:
                next_at += 1.0 / rate
                delay = next_at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            codes = []
            for step in steps:
                transport.write(step)
                codes += await client.replies(step.count(b"\n"))
            if codes != [250, 250, 354]:
                raise RuntimeError(f"unexpected replies {codes}")
            transport.write(payload)
            t0 = perf()
            [code] = await client.replies(1)
            if code != 250:
                raise RuntimeError(f"DATA got {code}")
            lat.append(perf() - t0)
            sent += 1
        transport.write(b"QUIT\r\n")
    finally:
        transport.close()
    return sent


async def _load(port: int, sessions: int, body: bytes, seconds: float,
                rate: float | None = None, pipelining: bool = True) -> tuple[float, list[float]]:
    lat: list[float] = []
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    until = t0 + seconds
    counts = await asyncio.gather(*(_session(port, f"load{i % RECIPIENTS}@example.test", body, until, lat, rate,
                                             pipelining) for i in range(sessions)))
    return sum(counts) / (loop.time() - t0), lat


def _self_cpu() -> float:
    """This process's CPU seconds (user + sys, all threads): the Python load generator's own cost."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _python_load(port: int, sessions: int, body: bytes, seconds: float) -> tuple[float, list[float], float]:
    """:func:`_load` in a fresh uvloop: (msgs/s answered 250, latencies, the client's CPU seconds over it)."""
    import uvloop

    cpu0 = _self_cpu()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        rate, lat = r.run(_load(port, sessions, body, seconds))
    return rate, lat, _self_cpu() - cpu0


def _source_load(port: int, sessions: int, body: bytes, seconds: float, guess: float) -> tuple[float, int, float]:
    """The same cell from Postfix's smtp-source: one process per session (session i -> mailbox i mod
    RECIPIENTS, as :func:`_load`), each sending ``guess * seconds / sessions`` messages over one connection
    (-d; smtp-source counts messages, not time, so ``guess`` is the expected msgs/s). It speaks HELO and
    waits for each reply (no pipelining). Returns (msgs/s, messages, the processes' CPU seconds from wait4).
    Any reply but the expected one ends a process with a non-zero status, which raises."""
    exe = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    if not Path(exe).exists():
        raise RuntimeError("MAILSRV_BENCH_SMTP_CLIENT=smtp-source: smtp-source not installed "
                           "(tools/install-peers.sh installs postfix)")
    per = max(1, round(guess * seconds / sessions))
    with tempfile.NamedTemporaryFile(prefix="bench-smtp-source-", suffix=".eml") as f:
        # -F sends the file's lines with CRLF (and dot-stuffing): the Python client's message, and smtp-source
        # adds one empty line (2 bytes) before the final dot
        f.write(body.replace(b"\r\n", b"\n"))
        f.flush()
        t0 = time.monotonic()
        procs = [subprocess.Popen([exe, "-4", "-d", "-s", "1", "-m", str(per), "-F", f.name, "-M", "load.test",
                                   "-f", "load@remote.test", "-t", f"load{i % RECIPIENTS}@example.test",
                                   f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                 for i in range(sessions)]
        cpu, failed = 0.0, []
        for proc in procs:
            _pid, status, ru = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
            cpu += ru.ru_utime + ru.ru_stime
            if proc.returncode != 0:
                failed.append((proc.returncode, proc.stderr.read().decode(errors="replace")[-200:]
                               if proc.stderr else ""))
            if proc.stderr:
                proc.stderr.close()
        elapsed = time.monotonic() - t0
    if failed:
        raise RuntimeError(f"smtp-source failed in {len(failed)} of {sessions} sessions: {failed[0]}")
    return per * sessions / elapsed, per * sessions, cpu


def _pct(values: list[float], p: float) -> float:
    """:func:`percentile` of latencies in seconds, in milliseconds."""
    return percentile(values, p) * 1000


async def _visible(port: int, data_dir: Path, n: int, background_rate: float, body: bytes) -> list[float]:
    """250 -> store change notification for ``probe@``, with background load at ``background_rate``/s."""
    from mailsrv.directory import open_directory
    from mailsrv.store import Store

    cfg = _config(data_dir)
    directory = open_directory(cfg.directory, data_dir)
    store = Store(cfg.store, data_dir, hostname="bench.example.test")
    try:
        res = await directory.resolve("probe@example.test")
        acct = res.account
        sacct = await store.account(str(acct.id), data_dir / acct.store)
        loop = asyncio.get_running_loop()
        bg_lat: list[float] = []
        per = max(1, int(background_rate // 40) or 1)
        sessions = max(1, min(20, per))
        bg = asyncio.ensure_future(asyncio.gather(*(
            _session(port, f"load{i % RECIPIENTS}@example.test", body, loop.time() + 3600, bg_lat,
                     background_rate / sessions)
            for i in range(sessions))))
        out = []
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await _reply(reader)
        writer.write(b"EHLO probe.test\r\n")
        await _reply(reader)
        payload = body + b".\r\n"
        view = await sacct.open_mailbox("INBOX")
        for _ in range(n):
            with sacct.watch() as watch:
                await view.refresh()
                before = len(view.messages)
                writer.write(b"MAIL FROM:<load@remote.test>\r\nRCPT TO:<probe@example.test>\r\nDATA\r\n")
                for _ in range(3):
                    await _reply(reader)
                writer.write(payload)
                await _reply(reader)
                t250 = time.perf_counter()
                while True:
                    await watch.wait(5)
                    await view.refresh()
                    if len(view.messages) > before:
                        break
                out.append(time.perf_counter() - t250)
        writer.close()
        bg.cancel()
        await asyncio.gather(bg, return_exceptions=True)
        return out
    finally:
        await store.close()
        await directory.close()


async def _store_only(data_dir: Path, sessions: int, body: bytes, seconds: float, uids: bool = False) -> float:
    """``store.deliver`` alone (no SMTP), same message and mailboxes: the ceiling under the SMTP numbers.

    ``uids=False`` is what local delivery does (durable in new/, UID from the background indexer,
    whose backlog is indexed before the clock stops); ``uids=True`` commits the UID before returning.
    """
    from mailsrv.config import StoreConfig
    from mailsrv.store import DeliveryTarget, Store

    spool = data_dir / "spool-only"
    spool.mkdir(parents=True, exist_ok=True)
    store = Store(StoreConfig(), data_dir, hostname="bench.example.test")
    try:
        accts = [await store.account(f"only{i}") for i in range(RECIPIENTS)]
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        done = 0

        async def one(i: int) -> None:
            nonlocal done
            k = 0
            while loop.time() < until:
                p = spool / f"{i}.{k}"
                k += 1
                await loop.run_in_executor(None, p.write_bytes, body)
                await store.deliver(p, [DeliveryTarget(accts[i % RECIPIENTS])], uids=uids)
                await loop.run_in_executor(None, p.unlink)
                done += 1

        t0 = loop.time()
        await asyncio.gather(*(one(i) for i in range(sessions)))
        await store.indexer.flush()
        return done / (loop.time() - t0)
    finally:
        await store.close()


# --- scenario -----------------------------------------------------------------------------------------


class _Round(NamedTuple):
    """One server's measurement of one cell in one round."""

    rate: float  #: msgs/s answered 250
    delivered: float  #: msgs/s delivered into the maildirs (Postfix's figure: its 250 means queued)
    sent: int  #: messages answered 250
    client_cpu: float  #: the load generator's CPU seconds over the round
    lat: list[float]  #: each message's end of DATA -> 250, seconds (none with smtp-source)


class _Cell(NamedTuple):
    """One server's cell over its rounds: the medians are the figures the rows and their ratios use."""

    rate: float  #: the median over the rounds of msgs/s answered 250
    p50: float | None  #: ms, over every round's latencies pooled (None without latencies: smtp-source)
    p99: float | None
    delivered: float  #: the median over the rounds of msgs/s delivered into the maildirs
    client_ms: float | None  #: the load generator's CPU ms per message answered 250, over all rounds
    rates: list[float]  #: msgs/s answered 250, per round
    delivered_rounds: list[float]  #: msgs/s delivered, per round


def _cell(rounds: list[_Round]) -> _Cell:
    """The cell's figures from its rounds (at least one): medians of the rates, percentiles of the pooled
    latencies, the client's CPU over all rounds' messages."""
    lat = [x for r in rounds for x in r.lat]
    sent = sum(r.sent for r in rounds)
    rates, delivered = [r.rate for r in rounds], [r.delivered for r in rounds]
    return _Cell(median(rates), _pct(lat, 50) if lat else None, _pct(lat, 99) if lat else None, median(delivered),
                 sum(r.client_cpu for r in rounds) / sent * 1000 if sent else None, rates, delivered)


def _versus(ours: list[float], theirs: list[float]) -> dict[str, Any]:
    """A throughput row's ratio fields from two servers' msgs/s per round (the same rounds, in order):
    ``ratio`` is the medians' (the row's value and baseline), ``ratio_min`` and ``ratio_max`` the range of
    each round's own ratio (ours / the baseline measured in that same round), ``rounds`` and
    ``baseline_rounds`` the values."""
    per = [a / b for a, b in zip(ours, theirs, strict=True) if b]
    base = median(theirs)
    return {"ratio": median(ours) / base if base else None, "ratio_min": min(per, default=None),
            "ratio_max": max(per, default=None), "rounds": ours, "baseline_rounds": theirs}


def _round_order(servers: list[Any], cell: int, rnd: int, rounds: int) -> list[Any]:
    """The servers in the order they are measured in round ``rnd`` of cell ``cell``: rotated by one from
    round to round, continuing from cell to cell, so that each server meets each position."""
    k = (cell * rounds + rnd) % len(servers)
    return servers[k:] + servers[:k]


class _CellMeter(ServerMeter):
    """A :class:`ServerMeter` that counts CPU only from :meth:`begin` to :meth:`end` of each cell: the
    servers stand idle while the others are measured, and their idle CPU is not the messages' cost."""

    def __init__(self, name: str, pids: Any) -> None:
        super().__init__(name, pids, "messages delivered")
        self._spent = 0.0
        self._t0 = 0.0

    def _total(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids())

    def begin(self) -> None:
        self._t0 = self._total()

    def end(self, delivered: int) -> None:
        self.sample()
        self._spent += self._total() - self._t0
        self.add(delivered)

    def cpu(self) -> float:
        self.sample()
        return self._spent


#: How long a server must stay under 5 % of a core to count as idle: longer than mailsrv's ``[store]
#: index_delay`` (0.25 s), which a shorter window (it was 0.2 s) let pass before the last index batch
#: ran, so that batch ran in the next server's cell and outside this server's CPU.
QUIET = 0.5


def _quiesce(meter: _CellMeter, limit: float = 30.0) -> None:
    """Wait until the server's processes use under 5 % of a core for :data:`QUIET` s (its backlog after
    the load: the background indexer, Postfix's delivery agents), at most ``limit`` seconds."""
    deadline = time.monotonic() + limit
    last = meter._total()
    calm = 0
    while calm < round(QUIET / 0.1) and time.monotonic() < deadline:
        time.sleep(0.1)
        now = meter._total()
        calm = calm + 1 if now - last < 0.005 else 0
        last = now


class _Server:
    """A server under test, measured cell by cell (size, sessions) between the other servers' cells."""

    def __init__(self, name: str, port: int, pids: Any, delivered: Any, queued: bool = False) -> None:
        self.name, self.port, self.delivered, self.queued = name, port, delivered, queued
        self.meter = _CellMeter(name, pids)
        #: (size, sessions) -> its rounds so far, and what they add up to
        self.rounds: dict[tuple[int, int], list[_Round]] = {}
        self.cells: dict[tuple[int, int], _Cell] = {}

    def measure(self, size: int, n: int, seconds: float, client: str = "python") -> None:
        """One round of the cell (``size``, ``n`` sessions): ``seconds`` of load, then until the server is idle."""
        self.meter.begin()
        before = self.delivered()
        t0 = time.monotonic()
        lat: list[float] = []
        # the processes alive half-way through the load (Postfix's smtpd, cleanup and virtual come and go) for
        # the peak RSS; the end of the round samples those alive once the server is idle
        mid = threading.Timer(seconds / 2, self.meter.sample)
        mid.start()
        try:
            if client == "smtp-source":
                # smtp-source sends a count: the server's last rate at this size sizes the round (else a guess)
                guess = next((rs[-1].rate for (bsize, _), rs in reversed(self.rounds.items()) if bsize == size),
                             1000.0)
                rate, sent, ccpu = _source_load(self.port, n, _body(size), seconds, guess)
            else:
                rate, lat, ccpu = _python_load(self.port, n, _body(size), seconds)
                sent = len(lat)
        finally:
            mid.cancel()
            mid.join()
        done = self._delivered_since(before, sent)
        drate = done / (time.monotonic() - t0)
        _quiesce(self.meter)
        self.meter.end(done)
        rounds = self.rounds.setdefault((size, n), [])
        rounds.append(_Round(rate, drate, sent, ccpu, lat))
        self.cells[(size, n)] = _cell(rounds)

    def warm(self, sessions: int, seconds: float) -> str:
        """An unmeasured burst of 4 KB messages (python client) before the first cell, the same for every
        server: a fresh server's first messages pay for its first connections and each mailbox's first
        open (mailsrv: ~13 ms of CPU for the first delivery into each mailbox, ~2 ms after, 50 sessions,
        loaded machine). Their CPU is not counted in the cells: returns "NAME: N messages, X ms CPU each"."""
        before, cpu0 = self.delivered(), self.meter._total()
        _rate, lat, _cpu = _python_load(self.port, sessions, _body(4096), seconds)
        self._delivered_since(before, len(lat))
        _quiesce(self.meter)
        cpu = self.meter._total() - cpu0
        return f"{self.name}: {len(lat)} messages, {cpu / max(1, len(lat)) * 1000:.2f} ms CPU each"

    def _delivered_since(self, before: int, sent: int) -> int:
        """The messages delivered into the maildirs since ``before``, once the ``sent`` ones are there (Postfix's
        250 means queued: its messages count once virtual(8) wrote them; at most 120 s of waiting; mailsrv's
        plaintext 250 may come microseconds before its file is in new/: at most 5 s)."""
        deadline = time.monotonic() + (120 if self.queued else 5)
        while self.delivered() - before < sent and time.monotonic() < deadline:
            time.sleep(0.05)
        return int(self.delivered() - before)


def _create_cost(scratch: Path, n: int = 20, into: Path | None = None) -> float:
    """Median wall time of creating an empty file in a new directory under ``scratch`` (µs), or in the
    directory ``into``; the files stay until the scenario's end (a deletion would raise the cost it
    measures)."""
    d = into or Path(tempfile.mkdtemp(dir=scratch))
    tag = time.monotonic_ns()
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        os.close(os.open(d / f"{tag}.{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        times.append(time.perf_counter() - t0)
    return percentile(times, 50) * 1e6


def _settle_creates(scratch: Path, limit: float = 90.0, quiet_us: float = 150.0) -> float:
    """Wait (at most ``limit`` s) until creating a file costs under ``quiet_us`` again: a scenario run
    just before (``bench all``) may have deleted a big tree, and on a journal-less ext4 every create then
    scans recently freed inodes for a while (1 ms instead of 10-60 us), which slowed the first cell of every
    server alike. Returns the seconds waited."""
    t0 = time.monotonic()
    while _create_cost(scratch) > quiet_us and time.monotonic() - t0 < limit:
        time.sleep(1.0)
    return time.monotonic() - t0


class _DiskState:
    """What each server's cell starts from, the same for every server: no other process's dirty data
    left for its syncs to write back (a ``sync`` first: Postfix writes and deletes a queue file per
    message, mailsrv writes its index pages without fsync), and file creates back under ``quiet_us``.

    A journal-less ext4 skips inodes freed in the last 60 s (300 s while their inode table block is
    dirty) when it allocates one (``recently_deleted`` in fs/ext4/ialloc.c), so after a big deletion a
    create in a block group full of them costs 0.2-1 ms instead of 10-60 us. Which groups those are
    depends on where a directory was placed: the cost is probed both in a directory made at the
    scenario's start (``fixed``, as old as the servers' trees) and in a new one, and the higher
    counts. At most ``limit`` s of waiting per cell and ``budget`` s in all (the run's time bound).
    """

    def __init__(self, scratch: Path, limit: float, budget: float, quiet_us: float = 150.0) -> None:
        """``budget`` 0 (smoke size): no sync and no waiting, the create cost is still recorded."""
        self.scratch, self.limit, self.budget, self.quiet_us = scratch, limit, budget, quiet_us
        self.sync = budget > 0
        self.fixed = Path(tempfile.mkdtemp(dir=scratch))
        #: server name -> [(seconds waited, create cost at the cell's start in us), ...]
        self.seen: dict[str, list[tuple[float, float]]] = {}

    def cost(self) -> float:
        return max(_create_cost(self.scratch), _create_cost(self.scratch, into=self.fixed))

    def prepare(self, name: str) -> None:
        t0 = time.monotonic()
        if self.sync:
            os.sync()
        limit = min(self.limit, self.budget)
        while (cost := self.cost()) > self.quiet_us and time.monotonic() - t0 < limit:
            time.sleep(0.5)
        waited = time.monotonic() - t0
        self.budget = max(0.0, self.budget - waited)
        self.seen.setdefault(name, []).append((waited, cost))

    def note(self) -> str:
        parts = []
        for name, seen in self.seen.items():
            costs = [c for _, c in seen]
            parts.append(f"{name} {percentile(costs, 50):.0f} / {max(costs):.0f} us ({sum(w for w, _ in seen):.1f} s "
                         f"of sync and waiting)")
        return (f"before each server's measurement (each round of each cell, and each disk floor): sync, then a "
                f"wait (at most {self.limit:.0f} s each) until an empty file create costs under {self.quiet_us:.0f} "
                "us; the create cost at their start, median / max, per server: " + "; ".join(parts))


#: The disk's floor: a durable answer with no SMTP and no server, one writer, label -> write(tmp, name, data, new)
FLOORS = {
    "create + write 4 KB + fsync + rename + directory fsync": fsync_create,
    "create + write 4 KB + rename + syncfs": syncfs_create,
}
#: The delivery journal's sync as a disk floor (bench/_floors.Overwrite), measured after :data:`FLOORS`.
JOURNAL_FLOOR = "write a 4 KB record over a preallocated file + fdatasync (the journal's sync)"
#: The one-session floor row and the wake-up floors' rows (bench/README.md, the smtp scenario).
ONE_SESSION_FLOOR = "one-session floor (4 KB): loopback round trips + pool round trip + fdatasync + client CPU"
WAKE_RTT = f"wake-up floor: loopback TCP round trip, two uvloop processes, {GAP * 1000:g} ms idle gap before each"
WAKE_HOP = f"wake-up floor: loop -> thread pool -> loop (run_in_executor), {GAP * 1000:g} ms idle gap before each"


def _floor(disk: _DiskState, floor: Path, seconds: float) -> dict[str, tuple[float, list[float]]]:
    """Each of :data:`FLOORS`, then :data:`JOURNAL_FLOOR`, in a loop for ``seconds``, one writer, in ``floor``
    (tmp/ and new/ made when the servers' trees were), after the same sync and wait as a server's cell:
    label -> (writes/s, each write's seconds)."""
    body = _body(4096)
    out = {}
    for label, write in FLOORS.items():
        disk.prepare("disk floor")
        out[label] = durable_loop(functools.partial(_floor_write, write, floor, body), seconds)
    rec = record(body)
    with Overwrite(floor / f"journal.{time.monotonic_ns()}") as log:
        disk.prepare("disk floor")
        out[JOURNAL_FLOOR] = durable_loop(lambda _name: log.write(rec), seconds)
    return out


def _floor_write(write: Any, floor: Path, body: bytes, name: str) -> None:
    write(floor / "tmp", name, body, floor / "new")


#: The wake-up floors' placements: as the scheduler places the two sides (the figures the one-session floor
#: uses), then pinned: both on one CPU, and on two (:func:`bench._floors.placed`), a quarter of the time each.
PLACEMENTS = ("scheduler", "one CPU", "two CPUs")
#: One measurement of the one-session floor's probes: placement -> (round trips, pool hops), the journal's syncs
#: (each one's seconds).
_FloorRound = tuple[dict[str, tuple[list[float], list[float]]], list[float]]


class _OneSessionFloor:
    """The one-session floor's probes (bench/_floors.py), measured in each round of the 4 KB one-session cell
    right after its servers, so that they meet the machine and the disk those servers met: the journal's
    sync (its file made once in ``floor``), then the wake-ups between this process's uvloop and one fresh
    interpreter spawned as the servers are (:data:`PLACEMENTS`; the pinned ones only with two CPUs, a
    quarter of ``seconds`` each). :meth:`close` stops the interpreter and closes the file."""

    def __init__(self, floor: Path, seconds: float) -> None:
        self.seconds = seconds
        self.rec = record(_body(4096))
        self.rounds: list[_FloorRound] = []
        sock = _listen()
        self.port = sock.getsockname()[1]
        self.procs = _spawn_workers(sock, "floors", Path(os.devnull), count=1)
        sock.close()
        try:
            self.log = Overwrite(floor / f"journal.{time.monotonic_ns()}")
        except BaseException:
            _stop(self.procs)
            raise

    def measure(self, disk: _DiskState | None) -> _FloorRound:
        """One round: after ``disk``'s sync and wait (as a server's), the journal's syncs, then the wake-ups."""
        import uvloop

        if disk is not None:
            disk.prepare("one-session floor")
        _rate, sync = durable_loop(lambda _name: self.log.write(self.rec), self.seconds)
        cpus = two_cpus()
        wake = {}
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
            wake[PLACEMENTS[0]] = r.run(wakeups(self.port, self.seconds))
            if cpus is not None:
                for name, theirs in zip(PLACEMENTS[1:], cpus, strict=True):
                    with placed(self.procs[0].pid, cpus[0], theirs):
                        wake[name] = r.run(wakeups(self.port, self.seconds / 4))
        self.rounds.append((wake, sync))
        return wake, sync

    def close(self) -> None:
        self.log.close()
        _stop(self.procs)


def _floor_rows(floors: dict[str, tuple[float, list[float]]], ours: _Server,
                naive: _Server) -> list[dict[str, Any]]:
    """The disk floor rows: what the issue's "2x aiosmtpd" asks at one session against what the disk allows one
    writer. Baseline: twice the naive aiosmtpd at 4 KB, 1 session; ratio < 1: that floor is beyond any
    server that answers after its data is durable on this disk; above 1, ``left_ms_per_msg`` is what one
    message at that rate leaves for everything but the durable write (the client, two loopback round
    trips, the SMTP dialogue, the server's work)."""
    two_naive = 2 * naive.cells[(4096, 1)].rate
    rows = []
    for label, (rate, times) in floors.items():
        rows.append({"name": f"disk floor, no SMTP, one writer: {label}", "unit": "msg/s", "value": rate,
                     "baseline": {"name": f"2x {AIOSMTPD_NAIVE}, 4 KB, 1 session", "value": two_naive},
                     "ratio": rate / two_naive if two_naive else None, "writes": len(times),
                     "p50_ms": _pct(times, 50), "p99_ms": _pct(times, 99),
                     "left_ms_per_msg": (1 / two_naive - 1 / rate) * 1000 if two_naive and rate else None,
                     "mailsrv_1_session": ours.cells[(4096, 1)].rate})
    return rows


def _one_session_rows(rounds: list[_FloorRound], client_ms: float, servers: list[_Server],
                      client: str) -> list[dict[str, Any]]:
    """The wake-up floors' rows and the one-session floor from :class:`_OneSessionFloor`'s rounds: what a lone
    session's message waits for whatever the server does, as the scheduler placed the two sides: the
    dialogue's loopback round trips (2 when the client pipelines MAIL/RCPT/DATA, 4 for smtp-source), one hop
    to a thread for the sync and back, the journal's fdatasync and the load generator's CPU per message
    (``client_ms``). Each part is the median over the rounds of each round's median (as a cell's msgs/s: one
    slow moment moves one round), the floor their sum (``one_cpu_ms``: with the wake-ups pinned to one CPU);
    p90 and p99 over all rounds' samples pooled. Then, per server, its ms per message at 1 session (4 KB;
    1000 / the median of its rounds' msgs/s) against the floor: ``ratio`` is the floor's share of it,
    ``above_floor_ms`` and ``above_floor_share`` the rest."""
    round_trips = 2 if client == "python" else 4

    def p50(part: Any) -> float:
        return median(_pct(part(wake, sync), 50) for wake, sync in rounds)

    rows: list[dict[str, Any]] = []
    for i, name in enumerate((WAKE_RTT, WAKE_HOP)):
        pooled = [t for wake, _ in rounds for t in wake[PLACEMENTS[0]][i]]
        pinned = {place: p50(lambda wake, _s, place=place, i=i: wake[place][i])
                  for place in PLACEMENTS[1:] if all(place in wake for wake, _ in rounds)}
        rows.append({"name": name, "unit": "ms", "value": p50(lambda wake, _s, i=i: wake[PLACEMENTS[0]][i]),
                     "p90_ms": _pct(pooled, 90), "p99_ms": _pct(pooled, 99), "samples": len(pooled),
                     **{f"p50_ms_{place.replace(' ', '_')}": v for place, v in pinned.items()},
                     "detail": f"p90 {_pct(pooled, 90):.3f} ms, {len(pooled)} samples in {len(rounds)} rounds; "
                               "pinned, p50: " + ", ".join(f"{place} {v:.3f}" for place, v in pinned.items())})
    rtt, hop = rows[0]["value"], rows[1]["value"]
    parts = {f"{round_trips} loopback round trips": round_trips * rtt, "pool round trip": hop,
             "journal fdatasync": p50(lambda _w, sync: sync), "client CPU": client_ms}
    floor = sum(parts.values())
    one = f"p50_ms_{PLACEMENTS[1].replace(' ', '_')}"
    one_cpu = floor + round_trips * (rows[0][one] - rtt) + rows[1][one] - hop if one in rows[0] else None
    rows.append({"name": ONE_SESSION_FLOOR, "unit": "ms", "value": floor, "msgs_per_s": 1000 / floor,
                 "parts_ms": parts, "client": client, "one_cpu_ms": one_cpu,
                 "sync_p90_ms": _pct([t for _, sync in rounds for t in sync], 90),
                 "detail": f"{1000 / floor:,.0f} msgs/s at most; " + " + ".join(f"{k} {v:.3f}" for k, v in parts.items())
                           + (f"; wake-ups on one CPU {one_cpu:.3f} ms" if one_cpu is not None else "")})
    for srv in servers:
        rate = srv.cells[(4096, 1)].rate
        if not rate:
            continue
        ms = 1000 / rate
        rows.append({"name": f"ms per message at 1 session (4 KB) over the one-session floor: {srv.name}",
                     "unit": "ms", "value": ms, "baseline": {"name": "one-session floor", "value": floor},
                     "ratio": floor / ms, "above_floor_ms": ms - floor, "above_floor_share": (ms - floor) / ms,
                     "detail": f"{rate:,.0f} msgs/s; {ms - floor:.3f} ms, {(ms - floor) / ms:.0%} of it above "
                               f"the floor"})
    return rows


def _client_note(client: str) -> str:
    if client == "python":
        return ("load generator: this process (asyncio + uvloop, MAIL/RCPT/DATA pipelined; "
                "MAILSRV_BENCH_SMTP_CLIENT=smtp-source for Postfix's C generator)")
    return ("load generator for the throughput cells: Postfix's smtp-source (C), one process per session, HELO, "
            "one reply awaited per command (no pipelining), a fixed count of messages per cell sized by the "
            "server's last rate; no latency percentiles (those come only from the python client); the front "
            "end alone, store.deliver alone and 250->visible rows still use the python client")


def _client_cpu_note(client: str, servers: list[_Server]) -> str:
    """The load generator's CPU per message (user + sys, its rusage over the cell) in each server's cells."""
    parts = []
    for srv in servers:
        cells = ", ".join(f"{size // 1024} KB x {n} {c.client_ms:.3f}" for (size, n), c in srv.cells.items()
                          if c.client_ms is not None)
        parts.append(f"{srv.name}: {cells}")
    who = "this process's getrusage(RUSAGE_SELF)" if client == "python" else "the smtp-source processes' wait4 rusage"
    return (f"load generator ({client}) CPU ms per message answered 250, user + sys over each cell's rounds ({who}): "
            + "; ".join(parts))


def _count_postfix(mail: Path) -> int:
    return sum(1 for _ in mail.glob("*/new/*"))


def run(size: str) -> dict[str, Any]:
    import uvloop

    sizes = SIZES[size]
    if CLIENT not in CLIENTS:
        raise SystemExit(f"MAILSRV_BENCH_SMTP_CLIENT={CLIENT!r}: one of {', '.join(CLIENTS)}")
    notes = [f"{WORKERS} server processes each; {os.cpu_count()} cores shared with the load generator",
             _client_note(CLIENT),
             f"sessions deliver round-robin to {RECIPIENTS} mailboxes (session i -> mailbox i mod {RECIPIENTS})",
             "messages/s counts 250 replies; mailsrv replies 250 only after the maildir copy is fsync'd"]
    # python -m bench all: the sla scenario has just removed its tree (smoke size measures nothing: no wait)
    removal_wait = settle_after_removal() if size == "full" else 0.0
    base = Path(tempfile.mkdtemp(prefix="mailsrv-bench-smtp-"))
    os.chmod(base, 0o755)  # Postfix's daemons (postfix, nobody) work below it
    results: list[dict[str, Any]] = []
    procs: list[subprocess.Popen[bytes]] = []
    pf_conf: Path | None = None
    one_floor: _OneSessionFloor | None = None
    try:
        (base / "only").mkdir()
        (base / "creates").mkdir()
        floor = base / "floor"
        for d in ("tmp", "new"):
            (floor / d).mkdir(parents=True)
        disk = _DiskState(base / "creates", limit=10.0, budget=60.0 if size == "full" else 0.0)  # before the servers
        users: dict[str, Path | None] = dict.fromkeys([f"load{i}" for i in range(RECIPIENTS)] + ["probe"])
        with Mailsrv(base / "mailsrv", seeds=users, workers=WORKERS) as srv, \
                Mailsrv(base / "mailsrv-sync", seeds=users, workers=WORKERS,
                        config={"store": {"deferred_index": False}}) as sync_srv:
            # every server runs from the start and each cell measures them back to back, in an order that
            # rotates from cell to cell: the disk's state (file creates cost 0.1-1 ms of kernel CPU after
            # many deletions here) is the same for all of them, and nothing is deleted before the end
            ours = _Server("mailsrv", srv.ports["smtp"], srv.pids, lambda: maildir_count(srv.data_dir))
            synced = _Server("mailsrv, deferred_index = false", sync_srv.ports["smtp"], sync_srv.pids,
                             lambda: maildir_count(sync_srv.data_dir))
            servers = [ours]
            for kind, name in (("aiosmtpd", AIOSMTPD_POOL), ("aiosmtpd-naive", AIOSMTPD_NAIVE)):
                maildir = base / kind
                for user in users:
                    for d in ("tmp", "new", "cur"):
                        (maildir / user / d).mkdir(parents=True)
                sock = _listen()
                workers = _spawn_workers(sock, kind, maildir)
                procs += workers
                servers.append(_Server(name, sock.getsockname()[1], lambda w=workers: [p.pid for p in w],
                                       lambda root=maildir: maildir_count(root)))
                sock.close()
            theirs, naive = servers[1:]
            pfport = free_port()
            pf_conf, why = _start_postfix(base / "postfix", pfport, RECIPIENTS)
            pf: _Server | None = None
            if pf_conf is None:
                notes.append(f"Postfix baseline missing: {why}")
            else:
                _wait_port(pfport)
                master = _postfix_master(pf_conf)
                mail = base / "postfix" / "pfmail"
                pf = _Server("Postfix", pfport, lambda: proc_tree(master), lambda: _count_postfix(mail), queued=True)
                servers.append(pf)
                notes.append("Postfix: private instance, smtpd -> queue (fsync) -> virtual(8) maildir; its 250 "
                             "means queued, so its msgs/s is counted at delivery into the maildirs")
            warm_sessions = min(RECIPIENTS, max(sizes["sessions"]))
            if WARMUP:
                warmed = [s.warm(warm_sessions, sizes["warm"]) for s in [*servers, synced]]
                notes.append(f"warm-up before the first cell, not measured: {sizes['warm']:.1f} s of 4 KB messages "
                             f"over {warm_sessions} sessions (python client) on each server, then until it is "
                             f"idle (the server's CPU until then per message): " + "; ".join(warmed))
            else:
                notes.append("no warm-up (MAILSRV_BENCH_SMTP_WARMUP=0): each server's first cell meets it fresh")
            os.sync()  # the inodes a previous scenario freed count as recent for 60 s once written back, 300 s before
            settled = _settle_creates(base / "creates", limit=90.0 if size == "full" else 0.0)
            one_floor = _OneSessionFloor(floor, sizes["floor_seconds"])
            cells = [(bsize, n) for bsize in sizes["bodies"] for n in sizes["sessions"]]
            nrounds, seconds = max(1, int(ROUNDS or sizes["rounds"])), sizes["round_seconds"]
            t0 = time.monotonic()
            for i, (bsize, n) in enumerate(cells):
                present = servers + ([synced] if bsize == 4096 else [])
                for j in range(nrounds):
                    for server in _round_order(present, i, j, nrounds):
                        disk.prepare(server.name)
                        server.measure(bsize, n, seconds, CLIENT)
                    if (bsize, n) == (4096, 1):
                        one_floor.measure(disk)
            one_floor.close()
            notes.append(f"each throughput cell: {nrounds} rounds of {seconds:g} s per server; each round measures "
                         f"every server back to back, the order rotating by one from round to round and cell to "
                         f"cell ({time.monotonic() - t0:.0f} s for all cells); msgs/s is the median of a server's "
                         f"rounds and the ratio the medians' (rounds / baseline_rounds: the values, ratio_min / "
                         f"ratio_max: the range of each round's ours / baseline of the same round); end-of-DATA->250 "
                         f"p50 / p99 over all rounds' messages pooled; CPU per message over all rounds")
            notes.append(f"all servers running from the start; the bench deletes no file before the end (Postfix "
                         f"deletes its queue files); before the first cell {removal_wait:.0f} s of waiting for the "
                         f"previous scenario's freed inodes to age {RECENT_FREE_WINDOW:.0f} s, then {settled:.0f} s "
                         f"for creates under 150 us")
            floors = _floor(disk, floor, sizes["seconds"])
            notes.append(disk.note())
            best = max(c.rate for cell, c in ours.cells.items() if cell[0] == 4096)
            ours.meter.begin()
            before = maildir_count(srv.data_dir)
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
                vis = r.run(_visible(srv.ports["smtp"], srv.data_dir, sizes["visible"], best / 2, _body(4096)))
            _quiesce(ours.meter)
            ours.meter.end(maildir_count(srv.data_dir) - before)
            reports = [s.meter.summary() for s in servers]
            _stop(procs)
            procs = []
            if pf_conf is not None:
                _stop_postfix(pf_conf)
                pf_conf = None
        rounds = [ln.split(" store.rounds ", 1)[1] for ln in srv.log.read_text(errors="replace").splitlines()
                  if " store.rounds " in ln]  # each worker logs its delivery rounds at stop
        if rounds:
            notes.append("mailsrv's group-commit delivery rounds over the whole run, per worker (store.rounds: a "
                         "delivery's wait in the store, ms; per round its work, its wait for the sync with the "
                         "sync, the syncs' time): " + "; ".join(rounds))
        # every throughput row names its load generator and carries its CPU per message in our cell and in
        # the baseline's (client_cpu_ms_per_msg, baseline_client_cpu_ms_per_msg)
        client = {"client": CLIENT if CLIENT == "python" else
                  f"{CLIENT} (no latency figures: percentiles only from the python client)"}
        # the throughput rows' value and baseline are medians over the cell's rounds, with the rounds' values
        # and the per-round ratios' range (_versus); latency percentiles are over the rounds pooled
        for (bsize, n), c in ours.cells.items():
            b, nv = theirs.cells[(bsize, n)], naive.cells[(bsize, n)]
            label = f"{bsize // 1024} KB, {n} sessions"
            if (bsize, n) in synced.cells:
                sc = synced.cells[(bsize, n)]
                results.append({"name": f"durable msgs/s vs UID before 250 ({label})", "unit": "msg/s",
                                "value": c.rate, "baseline": {"name": "mailsrv, deferred_index = false",
                                                              "value": sc.rate},
                                **_versus(c.rates, sc.rates), "baseline_p99_ms": sc.p99, **client,
                                "client_cpu_ms_per_msg": c.client_ms, "baseline_client_cpu_ms_per_msg": sc.client_ms})
            if pf is not None:
                pc = pf.cells[(bsize, n)]
                results.append({"name": f"durable msgs/s vs Postfix ({label})", "unit": "msg/s", "value": c.rate,
                                "baseline": {"name": "Postfix delivered to maildir", "value": pc.delivered},
                                **_versus(c.rates, pc.delivered_rounds), **client,
                                "client_cpu_ms_per_msg": c.client_ms, "baseline_client_cpu_ms_per_msg": pc.client_ms})
                if c.p99 is not None and pc.p99 is not None:
                    results.append({"name": f"end-of-DATA->250 p99 vs Postfix ({label})", "unit": "ms",
                                    "value": c.p99, "baseline": {"name": "Postfix (250 = queued)", "value": pc.p99},
                                    "ratio": pc.p99 / c.p99 if c.p99 else None})
            results.append({"name": f"durable msgs/s ({label})", "unit": "msg/s", "value": c.rate,
                            "baseline": {"name": AIOSMTPD_POOL, "value": b.rate}, **_versus(c.rates, b.rates),
                            **client, "client_cpu_ms_per_msg": c.client_ms, "baseline_client_cpu_ms_per_msg": b.client_ms})
            results.append({"name": f"durable msgs/s vs {AIOSMTPD_NAIVE} ({label})", "unit": "msg/s",
                            "value": c.rate, "baseline": {"name": AIOSMTPD_NAIVE, "value": nv.rate},
                            **_versus(c.rates, nv.rates), **client,
                            "client_cpu_ms_per_msg": c.client_ms, "baseline_client_cpu_ms_per_msg": nv.client_ms})
            if c.p99 is not None and nv.p99 is not None:
                results.append({"name": f"end-of-DATA->250 p99 vs {AIOSMTPD_NAIVE} ({label})", "unit": "ms",
                                "value": c.p99, "baseline": {"name": AIOSMTPD_NAIVE, "value": nv.p99},
                                "ratio": nv.p99 / c.p99 if c.p99 else None})
            if c.p50 is None or c.p99 is None or b.p50 is None or b.p99 is None:
                continue
            results.append({"name": f"end-of-DATA->250 p50 ({label})", "unit": "ms", "value": c.p50,
                            "baseline": {"name": AIOSMTPD_POOL, "value": b.p50},
                            "ratio": b.p50 / c.p50 if c.p50 else None})
            results.append({"name": f"end-of-DATA->250 p99 ({label})", "unit": "ms", "value": c.p99,
                            "baseline": {"name": AIOSMTPD_POOL, "value": b.p99},
                            "ratio": b.p99 / c.p99 if c.p99 else None})
        notes.append("server CPU per message: each server's processes while its own cells ran (and until "
                     "their backlog settled), over the messages it delivered into the maildirs")
        notes.append(_client_cpu_note(CLIENT, [s for s in (ours, synced, theirs, naive, pf) if s is not None]))
        results.extend(_floor_rows(floors, ours, naive))
        results.extend(_one_session_rows(one_floor.rounds, ours.cells[(4096, 1)].client_ms or 0.0,
                                         [ours, synced, *servers[1:]], CLIENT))
        notes.append(f"the one-session floor: what a lone session's message waits for whatever the server does, "
                     f"measured in each round of the 4 KB one-session cell after its servers (after the same sync "
                     f"and wait), each part the median of the rounds' medians: the journal's fdatasync of a record "
                     f"over its preallocated file ({sizes['floor_seconds']:g} s); the loopback round trips of the "
                     f"dialogue (2 with MAIL/RCPT/DATA pipelined, 4 with smtp-source), each between this process's "
                     f"uvloop and a fresh interpreter's, {GAP * 1000:g} ms idle before each ({sizes['floor_seconds']:g} "
                     f"s as the scheduler places them, then {sizes['floor_seconds'] / 4:g} s each pinned to one CPU "
                     f"and to two: the rows' p50_ms_one_CPU / p50_ms_two_CPUs); one loop -> thread pool -> loop "
                     f"hop in that interpreter, likewise; the load generator's CPU per message in mailsrv's "
                     f"one-session cell. Each server's ms "
                     f"per message at one session is 1000 / its msgs/s there; ratio: the floor's share of it")
        notes.append(f"the aiosmtpd baselines: the same aiosmtpd server (DATA read line by line into memory) and "
                     f"the same maildir write (create in tmp/, write, fsync, rename into new/, fsync new/) into "
                     f"the recipient's own maildir, the message preceded by Return-Path and a Received field "
                     f"(RFC 5321 §4.4, as mailsrv and Postfix add them), "
                     f"{WORKERS} processes each, spawned fresh; '{AIOSMTPD_POOL}' (the primary rows, named as in "
                     f"earlier runs) writes in the loop's default executor, so one process has several messages' "
                     f"fsyncs in flight; '{AIOSMTPD_NAIVE}' writes in handle_DATA, blocking its loop: one writer "
                     f"per process, the issue's naive baseline")
        results.extend(_frontend_rows(base / "front", sizes))
        notes.append("'SMTP front end alone': the SMTP service with the policy as loopback mail meets it, a "
                     "backend that keeps nothing and the worker's lazy spool (the message is judged and sealed in "
                     "memory, no file made or removed): the protocol cost without the store; "
                     "server_cpu_ms_per_msg is its processes' CPU over the messages answered 250 (less noisy "
                     "than msg/s on shared cores)")
        for n in sizes["sessions"]:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
                only = r.run(_store_only(base / "only", n, _body(4096), sizes["seconds"]))
                only_sync = r.run(_store_only(base / "only-sync", n, _body(4096), sizes["seconds"], uids=True))
            results.append({"name": f"store.deliver alone, no SMTP (4 KB, {n} concurrent)", "unit": "msg/s",
                            "value": only, "baseline": {"name": "deliver(uids=True): UID before return",
                                                        "value": only_sync},
                            "ratio": only / only_sync if only_sync else None})
        notes.append("'store.deliver alone' is one process calling the store directly: the ceiling the "
                     "SMTP numbers sit under; local delivery acknowledges once the file is durable in new/ "
                     "(group commit: one syncfs per round) and its UID follows from the background indexer")
        notes.append("'vs UID before 250': the same mailsrv with store.deferred_index = false, 4 KB, same run")
        results.append({"name": "250->visible p50 (at half max load)", "unit": "ms", "value": _pct(vis, 50),
                        "baseline": None})
        results.append({"name": "250->visible p99 (at half max load)", "unit": "ms", "value": _pct(vis, 99),
                        "baseline": None})
        notes.append(f"visible latency: {len(vis)} probes, background load {best / 2:.0f} msg/s; "
                     "measured on the store's inotify watch that IMAP IDLE uses")
    finally:
        _stop(procs)
        if one_floor is not None:
            one_floor.close()
        if pf_conf is not None:
            _stop_postfix(pf_conf)
        remove_tree(base)
    return {"scenario": "smtp", "results": results, "notes": notes, "servers": reports}


if __name__ == "__main__":  # a baseline's worker, started by _spawn_workers: KIND FD READY PATH
    _kind, _fd, _ready, _path = sys.argv[1:]
    _CHILDREN[_kind](socket.socket(fileno=int(_fd)), int(_ready), Path(_path))
