"""IMAP benchmark: mailsrv against Debian's Dovecot on 127.0.0.1, same client, same mailbox, same run.

Both servers get a copy of the same maildir (``smoke``: 2 000 messages, ``full``:
100 000) and a small second mailbox for the session benchmark. The client is
one small asyncio IMAP client used for both. mailsrv runs in a child process
(real maildir store, real directory and authenticator); Dovecot runs with its
own config in a temporary directory (long-lived login processes, maildir).

Password hashing: mailsrv uses argon2id with cheap parameters (t=1, 1 MiB) and
Dovecot a {PLAIN} passdb, so that the session rates measure IMAP, not hashing
(Dovecot's side is the cheaper one: a conservative baseline).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from ._common import (
    PASSWORD,
    add_users,
    cheap_auth_config,
    compare,
    dovecot_pids,
    fill_maildir,
    fork_server,
    listening_socket,
    message,
    rss_kib,
    serve_forever,
    start_dovecot,
    stop_child,
    stop_dovecot,
)

SIZES = {"smoke": {"messages": 2_000, "idle": 200, "sessions": 200, "stores": 500},
         "full": {"messages": 100_000, "idle": 10_000, "sessions": 2_000, "stores": 5_000}}


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


async def _timed(client: Client, text: str) -> tuple[float, list[bytes]]:
    t0 = time.perf_counter()
    out = await client.cmd(text)
    return time.perf_counter() - t0, out


async def _measure(port: int, user: str, small: str, sizes: dict[str, int], pids: Any,
                   idle_cap: int | None = None) -> dict[str, float]:
    res: dict[str, float] = {}
    n = sizes["messages"]
    c = await Client.connect(port)
    await c.cmd(f"LOGIN {user} {PASSWORD}")
    await c.cmd("SELECT INBOX")  # first SELECT: lets each server index the maildir
    await c.cmd("UNSELECT")
    t, out = await _timed(c, "SELECT INBOX")
    assert any(b"* %d EXISTS" % n in ln for ln in out), out[:3]
    res["SELECT (warm)"] = t * 1000
    t, out = await _timed(c, "UID FETCH 1:* (FLAGS)")
    res["UID FETCH 1:* (FLAGS)"] = t * 1000
    count = min(n, 1000)
    t, out = await _timed(c, f"FETCH 1:{count} (ENVELOPE BODYSTRUCTURE)")
    res["FETCH (ENVELOPE BODYSTRUCTURE)"] = count / t
    t, out = await _timed(c, "SEARCH UNSEEN")
    res["SEARCH UNSEEN"] = t * 1000
    # The first header search lets each server build what it keeps for such searches (Dovecot's
    # cache, mailsrv's search index, normally filled at delivery); the second is measured.
    await c.cmd('SEARCH HEADER Message-ID "b1@"')
    t, out = await _timed(c, 'SEARCH HEADER Message-ID "b77@"')
    res["SEARCH HEADER Message-ID (warm)"] = t * 1000
    stores = sizes["stores"]
    t0 = time.perf_counter()
    for i in range(stores):
        await c.cmd(f"STORE {i % n + 1} +FLAGS.SILENT (\\Flagged)" if i % 2 == 0 else
                    f"STORE {i % n + 1} -FLAGS.SILENT (\\Flagged)")
    res["STORE"] = stores / (time.perf_counter() - t0)
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

    # memory per IDLE connection
    idle = min(sizes["idle"], idle_cap or sizes["idle"])
    before = rss_kib(pids())
    conns = []
    for _ in range(idle):
        s = await Client.connect(port)
        await s.cmd(f"LOGIN {small} {PASSWORD}")
        await s.cmd("SELECT INBOX")
        s.n += 1
        s.w.write(b"idle%d IDLE\r\n" % s.n)
        await s.r.readline()
        conns.append(s)
    after = rss_kib(pids())
    res["RSS per IDLE connection"] = (after - before) / idle
    for s in conns:
        s.w.write(b"DONE\r\n")
        await s.close()
    return res


# --- mailsrv in a child process ----------------------------------------------------------------


def _mailsrv_child(base: Path, port: int, ready: int) -> None:
    import uvloop

    from mailsrv import log
    from mailsrv.auth import Authenticator
    from mailsrv.config import Config, DirectoryConfig, ListenerConfig, ServerConfig, StoreConfig
    from mailsrv.directory import open_directory
    from mailsrv.imap.server import ImapService
    from mailsrv.net.service import ServiceContext
    from mailsrv.search import SearchService
    from mailsrv.store import Store

    log.configure("warning")
    acfg = cheap_auth_config()
    add_users(base, acfg, {"big": base / "seed", "small": base / "seed-small"})

    async def main() -> None:
        sock = listening_socket(port, 4096)
        lcfg = ListenerConfig(protocol="imap", bind=(f"127.0.0.1:{port}",), max_connections=50_000,
                              max_connections_per_ip=50_000, idle_timeout=3600)
        cfg = Config(server=ServerConfig(data_dir=base), listener={"imap": lcfg})
        d = open_directory(DirectoryConfig(), base)
        ctx = ServiceContext(config=cfg, name="imap", listener=lcfg, ssl_context=None)
        store = Store(StoreConfig(), base)
        search = SearchService()  # as the worker wires it: text keys through the index
        store.add_observer(search)
        service = ImapService(ctx, auth=Authenticator(d, acfg), store=store, search=search)
        await serve_forever("imap", lcfg, cfg, sock, service, ready)

    uvloop.run(main())


# --- Dovecot ----------------------------------------------------------------------------------------

DOVECOT_SERVICES = """service imap-login {
  inet_listener imap {
    port = {port}
  }
  inet_listener imaps {
    port = 0
  }
  service_count = 0
  process_min_avail = 2
  client_limit = 20000
}
service imap {
  process_limit = 20000
}
protocol imap {
  mail_max_userip_connections = 20000
}
default_process_limit = 20000
default_client_limit = 40000
"""


def _start_dovecot(base: Path) -> tuple[subprocess.Popen[bytes] | None, int, str]:
    return start_dovecot(base, "imap", {"big": base / "seed", "small": base / "seed-small"},
                         DOVECOT_SERVICES, b"* OK")


# --- the scenario ---------------------------------------------------------------------------------------

UNITS = {
    "SELECT (warm)": ("ms", False),
    "UID FETCH 1:* (FLAGS)": ("ms", False),
    "FETCH (ENVELOPE BODYSTRUCTURE)": ("msg/s", True),
    "SEARCH UNSEEN": ("ms", False),
    "SEARCH HEADER Message-ID (warm)": ("ms", False),
    "STORE": ("cmd/s", True),
    "LOGIN-SELECT-FETCH-LOGOUT (10 clients)": ("sessions/s", True),
    "RSS per IDLE connection": ("KiB", False),
}


def run(size: str) -> dict[str, Any]:
    sizes = SIZES[size]
    notes: list[str] = [f"mailbox of {sizes['messages']} messages; {sizes['idle']} IDLE connections"]
    base = Path(tempfile.mkdtemp(prefix="mailsrv-bench-imap-"))
    os.chmod(base, 0o755)
    pid = 0
    proc = None
    try:
        _fill_maildir(base / "seed", sizes["messages"])
        _fill_maildir(base / "seed-small", 20)
        (base / "m").mkdir()
        shutil.move(str(base / "seed"), str(base / "m" / "seed"))
        shutil.move(str(base / "seed-small"), str(base / "m" / "seed-small"))
        pid, port = fork_server(_mailsrv_child, base / "m")
        ours = asyncio.run(_measure(port, "big@example.test", "small@example.test", sizes, lambda: [pid]))
        stop_child(pid)
        pid = 0
        shutil.copytree(base / "m" / "seed", base / "seed")
        shutil.copytree(base / "m" / "seed-small", base / "seed-small")
        proc, dport, why = _start_dovecot(base)
        theirs: dict[str, float] = {}
        if proc is None:
            notes.append(f"Dovecot baseline missing: {why}")
        else:
            p = proc
            # Dovecot runs one imap process per connection: 10 000 of them would take the machine's memory.
            theirs = asyncio.run(_measure(dport, "big", "small", sizes, lambda: dovecot_pids(p), idle_cap=1000))
            if sizes["idle"] > 1000:
                notes.append("Dovecot's RSS per IDLE connection is measured over 1000 connections")
    finally:
        if pid:
            stop_child(pid, signal.SIGKILL)
        if proc is not None:
            stop_dovecot(proc)
        shutil.rmtree(base, ignore_errors=True)
    results = compare(ours, theirs, UNITS, "dovecot")
    notes.append("ratio > 1 means mailsrv is better (faster, or less memory)")
    return {"scenario": "imap", "results": results, "notes": notes}

