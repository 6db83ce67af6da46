"""sla: a steady mixed load against a real mailsrv, measured the way the SLA is worded.

Starts ``mailsrv serve`` from a fresh ``mailsrv init --demo`` in a temporary
directory, with outbound mail for ``remote.test`` routed to an aiosmtpd sink on
127.0.0.1. A separate client process sends a steady stream of messages over
SMTP (to alice and bob) and over authenticated submission (to the sink), while
this process keeps IMAP IDLE sessions on both inboxes, a POP3 reader and a
JMAP reader busy. Reported, with the SLA bounds beside them:

- delivery latency: end of DATA (the client sends the final ".") to the
  moment an IMAP IDLE client is told EXISTS for that message;
- outbound latency: the submission's ``250`` to the sink receiving the message;
- errors and lost messages (a lost message makes the run fail loudly).

``MAILSRV_BENCH_SLA_SECONDS`` and ``MAILSRV_BENCH_SLA_RATE`` (messages/s)
override the duration and load of the ``full`` size.
"""

from __future__ import annotations

import asyncio
import base64
import json
import multiprocessing
import os
import re
import secrets
import socket
import ssl
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP

from ._common import Mailsrv, percentile, remove_tree, settle_after_removal, smtp_reply

SLA_AVERAGE = 60.0  # seconds: "average delivery latency under one minute"
SLA_MAX = 3600.0  # seconds: "none over an hour"


class Sink:
    """Outbound destination: records when each token arrives."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.time()
        m = re.search(rb"Subject: sla (\S+)", envelope.content)
        if m:
            self.arrived[m.group(1).decode()] = now
        return "250 OK"


# -- the load generator (separate process) ------------------------------------


async def _sender(port: int, rcpts: list[str], interval: float, until: float, out: list[dict],
                  auth: tuple[str, str] | None, ctx: ssl.SSLContext | None) -> None:
    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                         server_hostname="localhost" if ctx else None)
    await smtp_reply(r)
    w.write(b"EHLO loadgen.test\r\n")
    await smtp_reply(r)
    if auth:
        token = base64.b64encode(f"\0{auth[0]}\0{auth[1]}".encode()).decode()
        w.write(f"AUTH PLAIN {token}\r\n".encode())
        reply = await smtp_reply(r)
        if not reply.startswith(b"235"):
            raise RuntimeError(f"AUTH failed: {reply!r}")
    sender = auth[0] if auth else "load@outside.test"
    i = 0
    next_at = time.time()
    while time.time() < until:
        rcpt = rcpts[i % len(rcpts)]
        i += 1
        tok = secrets.token_hex(6)
        body = (f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: sla {tok}\r\nMessage-ID: <{tok}@loadgen.test>\r\n"
                f"\r\n" + "steady load line\r\n" * 40).encode()
        w.write(f"MAIL FROM:<{sender}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode())
        codes = [await smtp_reply(r) for _ in range(3)]
        rec: dict[str, Any] = {"token": tok, "rcpt": rcpt, "kind": "outbound" if auth else "inbound"}
        if not codes[2].startswith(b"354"):
            rec["error"] = repr(codes)
            w.write(b"RSET\r\n")
            await smtp_reply(r)
        else:
            w.write(body)
            rec["t_dot"] = time.time()
            w.write(b".\r\n")
            reply = await smtp_reply(r)
            rec["t_250"] = time.time()
            if not reply.startswith(b"250"):
                rec["error"] = repr(reply)
        out.append(rec)
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.time()))  # pacing of an open-loop load
    w.write(b"QUIT\r\n")
    await w.drain()
    w.close()


def _load_process(ports: dict[str, int], cafile: str, alice: tuple[str, str], seconds: float,
                  rate: float, sessions: int, result: Any) -> None:
    async def main() -> list[dict]:
        until = time.time() + seconds
        out: list[dict] = []
        interval = sessions / rate
        tasks = [_sender(ports["smtp"], ["alice@example.test", "bob@example.test"], interval, until, out, None, None)
                 for _ in range(sessions)]
        ctx = ssl.create_default_context(cafile=cafile)
        tasks.append(_sender(ports["submissions"], ["someone@remote.test"], 1.0, until, out, alice, ctx))
        done = await asyncio.gather(*tasks, return_exceptions=True)
        for d in done:
            if isinstance(d, BaseException):
                out.append({"error": f"{type(d).__name__}: {d}"})
        return out

    result.put(asyncio.run(main()))


# -- readers in this process -----------------------------------------------------


class Idle:
    """An IMAP IDLE session that timestamps when each subject token becomes visible.

    Every ``* N EXISTS`` (during IDLE, in the DONE reply, in a FETCH reply) stamps
    the sequence numbers it announces; a FETCH then maps them to subject tokens.
    """

    def __init__(self, port: int, ctx: ssl.SSLContext, user: str, password: str) -> None:
        self.port, self.ctx, self.user, self.password = port, ctx, user, password
        self.seen: dict[str, float] = {}
        self.exists = 0
        self.stamps: dict[int, float] = {}  # sequence number -> when EXISTS announced it
        self.ready = asyncio.Event()  # selected: the load may start (earlier mail would not be timed)

    async def _line(self, r: asyncio.StreamReader) -> bytes:
        line = await r.readline()
        if not line:
            raise ConnectionError("closed")
        m = re.match(rb"\* (\d+) EXISTS", line)
        if m:
            n, now = int(m.group(1)), time.time()
            for seq in range(self.exists + 1, n + 1):
                self.stamps.setdefault(seq, now)
            self.exists = n
        return line

    async def _cmd(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, tag: str, text: str) -> list[bytes]:
        w.write(f"{tag} {text}\r\n".encode())
        lines = []
        while True:
            line = await self._line(r)
            lines.append(line)
            if line.startswith(tag.encode() + b" "):
                return lines

    async def run(self, stop: asyncio.Event) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 20, ssl=self.ctx,
                                             server_hostname="localhost")
        await r.readline()
        for tag, cmd in (("a", f'LOGIN "{self.user}" "{self.password}"'), ("b", "SELECT INBOX")):
            reply = (await self._cmd(r, w, tag, cmd))[-1]
            if not reply.startswith(tag.encode() + b" OK"):
                raise RuntimeError(f"IMAP {cmd.split()[0]}: {reply!r}")
        self.stamps.clear()  # what was there before the run is not measured
        self.ready.set()
        n = 0
        while True:
            n += 1
            if self.stamps:
                lo, hi = min(self.stamps), max(self.stamps)
                lines = await self._cmd(r, w, f"f{n}", f"FETCH {lo}:{hi} (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
                for seq, tok in re.findall(rb"\* (\d+) FETCH .*?Subject: sla (\S+)", b"".join(lines), re.S):
                    stamp = self.stamps.pop(int(seq), None)
                    if stamp is not None:
                        self.seen.setdefault(tok.decode(), stamp)
                self.stamps = {k: v for k, v in self.stamps.items() if not lo <= k <= hi}
            if stop.is_set():
                break
            w.write(f"i{n} IDLE\r\n".encode())
            while not (await self._line(r)).startswith(b"+"):
                pass
            before = self.exists
            while self.exists == before and not stop.is_set():
                try:
                    await asyncio.wait_for(self._line(r), 0.5)
                except TimeoutError:
                    continue
            w.write(b"DONE\r\n")
            while not (await self._line(r)).startswith(f"i{n} ".encode()):
                pass
        w.write(b"z LOGOUT\r\n")
        w.close()


async def _pop3_reader(port: int, ctx: ssl.SSLContext, user: str, password: str, stop: asyncio.Event,
                       stats: dict) -> None:
    while not stop.is_set():
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
            await r.readline()
            for cmd in (f"USER {user}", f"PASS {password}", "STAT"):
                w.write(cmd.encode() + b"\r\n")
                reply = await r.readline()
                if not reply.startswith(b"+OK"):
                    raise RuntimeError(reply.decode(errors="replace"))
            w.write(b"QUIT\r\n")
            await r.readline()
            w.close()
            stats["pop3_sessions"] += 1
        except Exception as exc:
            stats["errors"].append(f"pop3: {exc}")
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except TimeoutError:
            pass


async def _jmap_reader(port: int, ctx: ssl.SSLContext, user: str, password: str, stop: asyncio.Event,
                       stats: dict) -> None:
    import aiohttp

    basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    async with aiohttp.ClientSession(headers={"Authorization": basic}) as http:
        while not stop.is_set():
            try:
                async with http.get(f"https://127.0.0.1:{port}/.well-known/jmap", ssl=ctx) as resp:
                    session = await resp.json(content_type=None)
                account = next(iter(session["accounts"]))
                body = {"using": ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"],
                        "methodCalls": [["Email/query", {"accountId": account, "limit": 10}, "q"]]}
                async with http.post(session["apiUrl"], json=body, ssl=ctx) as resp:
                    data = await resp.json(content_type=None)
                if data["methodResponses"][0][0] != "Email/query":
                    raise RuntimeError(json.dumps(data)[:200])
                stats["jmap_queries"] += 1
            except Exception as exc:
                stats["errors"].append(f"jmap: {type(exc).__name__}: {exc}")
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except TimeoutError:
                pass


# -- the scenario ---------------------------------------------------------------------


def run(size: str) -> dict[str, Any]:
    if size == "smoke":
        seconds, rate, sessions = 1.5, 20.0, 2
    else:
        seconds = float(os.environ.get("MAILSRV_BENCH_SLA_SECONDS", "60"))
        rate = float(os.environ.get("MAILSRV_BENCH_SLA_RATE", "200"))
        sessions = 10
    # a scenario before this one in `python -m bench all` may have removed a big tree (bench/README.md)
    waited = settle_after_removal() if size == "full" else 0.0
    base = Path(tempfile.mkdtemp(prefix="mailsrv-sla-"))
    sink = Sink()
    sink_sock = socket.socket()
    sink_sock.bind(("127.0.0.1", 0))
    sink_sock.listen(100)
    server = None
    try:
        route = {"smarthost": f"127.0.0.1:{sink_sock.getsockname()[1]}", "tls": "none"}
        server = Mailsrv(base / "srv", demo=True, config={"queue": {"route": {"remote.test": route}}})
        meter = server.meter("messages accepted")
        pw = server.passwords
        ctx = ssl.create_default_context(cafile=str(server.base / "tls" / "cert.pem"))

        async def main() -> tuple[list[dict], dict, list[Idle]]:
            sink_server = await asyncio.get_running_loop().create_server(
                lambda: SMTP(sink, hostname="sink.test"), sock=sink_sock)
            stop = asyncio.Event()
            stats: dict[str, Any] = {"pop3_sessions": 0, "jmap_queries": 0, "errors": []}
            idles = [Idle(server.ports["imaps"], ctx, u, pw[u]) for u in ("alice@example.test", "bob@example.test")]
            readers = [asyncio.create_task(i.run(stop)) for i in idles]
            readers.append(asyncio.create_task(
                _pop3_reader(server.ports["pop3s"], ctx, "bob@example.test", pw["bob@example.test"], stop, stats)))
            readers.append(asyncio.create_task(
                _jmap_reader(server.ports["jmaps"], ctx, "alice@example.test", pw["alice@example.test"], stop, stats)))
            for i in idles:
                await asyncio.wait_for(i.ready.wait(), 60)
            mp = multiprocessing.get_context("spawn")
            q = mp.Queue()
            proc = mp.Process(target=_load_process, args=(
                server.ports, str(server.base / "tls" / "cert.pem"),
                ("alice@example.test", pw["alice@example.test"]), seconds, rate, sessions, q))
            proc.start()
            sent = await asyncio.get_running_loop().run_in_executor(None, q.get)
            proc.join()
            # Let the last messages arrive: wait for every accepted inbound token to be seen (bounded).
            want = {s["token"] for s in sent if s.get("kind") == "inbound" and "t_250" in s and "error" not in s}
            out_want = {s["token"] for s in sent if s.get("kind") == "outbound" and "t_250" in s and "error" not in s}
            deadline = time.time() + 120
            while time.time() < deadline:
                seen = set().union(*(i.seen for i in idles))
                if want <= seen and out_want <= set(sink.arrived):
                    break
                await asyncio.sleep(0.05)  # polling with a deadline: the IDLE readers fill `seen`
            stop.set()
            await asyncio.gather(*readers, return_exceptions=True)
            sink_server.close()
            return sent, stats, idles

        sent, stats, idles = asyncio.run(main())
        meter.add(sum(1 for s in sent if "t_250" in s and "error" not in s))
        servers = [meter.summary()]
    finally:
        if server is not None:
            server.stop()
        sink_sock.close()
    seen: dict[str, float] = {}
    for i in idles:
        seen.update(i.seen)
    inbound = [s for s in sent if s.get("kind") == "inbound"]
    outbound = [s for s in sent if s.get("kind") == "outbound"]
    errors = [s.get("error") for s in sent if "error" in s] + stats["errors"]
    accepted = [s for s in inbound if "t_250" in s and "error" not in s]
    lat = [seen[s["token"]] - s["t_dot"] for s in accepted if s["token"] in seen]
    ack = [s["t_250"] - s["t_dot"] for s in accepted]
    lost = [s["token"] for s in accepted if s["token"] not in seen]
    out_ok = [s for s in outbound if "t_250" in s and "error" not in s]
    out_lat = [sink.arrived[s["token"]] - s["t_250"] for s in out_ok if s["token"] in sink.arrived]
    out_lost = [s["token"] for s in out_ok if s["token"] not in sink.arrived]
    if lost:
        # Tell apart a message that never reached the disk from one IDLE was never told about.
        on_disk = set()
        for f in (base / "srv" / "data").rglob("*"):
            if f.is_file() and f.parent.name in ("new", "cur"):
                m = re.search(rb"Subject: sla (\S+)", f.read_bytes()[:2048])
                if m:
                    on_disk.add(m.group(1).decode())
        unseen = [t for t in lost if t in on_disk]
        lost = [t for t in lost if t not in on_disk]
        if unseen:
            rcpts = sorted({s["rcpt"] for s in accepted if s["token"] in unseen})
            counts = {i.user: (i.exists, len(i.seen)) for i in idles}
            errors.append(f"{len(unseen)} delivered messages never announced to IDLE: {unseen[:5]} "
                          f"for {rcpts}; IDLE (EXISTS, seen) {counts}")
    remove_tree(base)  # remembered: bench/smtp.py, next in `bench all`, waits for its freed inodes to age
    results = [
        {"name": "inbound messages accepted", "unit": "msgs", "value": len(accepted)},
        {"name": "inbound rate achieved", "unit": "msgs/s", "value": round(len(accepted) / seconds, 1)},
        {"name": "end-of-DATA to 250, p50", "unit": "ms", "value": round(percentile(ack, 50) * 1000, 2)},
        {"name": "end-of-DATA to 250, p99", "unit": "ms", "value": round(percentile(ack, 99) * 1000, 2)},
        {"name": "delivery latency (DATA end to IDLE EXISTS), average", "unit": "ms",
         "value": round(statistics.fmean(lat) * 1000, 2) if lat else -1.0,
         "baseline": {"name": "SLA bound (average)", "value": SLA_AVERAGE * 1000},
         "ratio": round(SLA_AVERAGE / statistics.fmean(lat), 1) if lat else None},
        {"name": "delivery latency, p99", "unit": "ms", "value": round(percentile(lat, 99) * 1000, 2)},
        {"name": "delivery latency, max", "unit": "ms", "value": round(max(lat) * 1000, 2) if lat else -1.0,
         "baseline": {"name": "SLA bound (maximum)", "value": SLA_MAX * 1000},
         "ratio": round(SLA_MAX / max(lat), 1) if lat else None},
        {"name": "outbound latency (250 to sink), average", "unit": "ms",
         "value": round(statistics.fmean(out_lat) * 1000, 2) if out_lat else -1.0},
        {"name": "outbound latency, max", "unit": "ms", "value": round(max(out_lat) * 1000, 2) if out_lat else -1.0,
         "baseline": {"name": "SLA bound (maximum)", "value": SLA_MAX * 1000},
         "ratio": round(SLA_MAX / max(out_lat), 1) if out_lat else None},
        {"name": "POP3 reader sessions", "unit": "sessions", "value": stats["pop3_sessions"]},
        {"name": "JMAP reader queries", "unit": "requests", "value": stats["jmap_queries"]},
        {"name": "errors", "unit": "count", "value": len(errors)},
        {"name": "lost messages", "unit": "count", "value": len(lost) + len(out_lost)},
    ]
    notes = [
        f"{seconds:.0f} s at {rate:.0f} msgs/s offered over {sessions} SMTP sessions plus one submission "
        f"session at 1 msg/s; server workers = cores ({os.cpu_count()}), load generator in a separate process "
        "on the same cores (no core pinning: the server and clients compete, as on a small real host)",
        f"before the server started {waited:.0f} s of waiting for the previous scenario's freed inodes to age",
    ]
    notes += [f"error: {e}" for e in errors[:5]]
    if lost or out_lost:
        raise SystemExit(f"sla: LOST MESSAGES: inbound {lost[:10]} outbound {out_lost[:10]}")
    return {"scenario": "sla", "results": results, "notes": notes, "servers": servers}
