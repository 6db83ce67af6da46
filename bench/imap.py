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
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

SIZES = {"smoke": {"messages": 2_000, "idle": 200, "sessions": 200, "stores": 500},
         "full": {"messages": 100_000, "idle": 10_000, "sessions": 2_000, "stores": 5_000}}
PASSWORD = "benchpass"


def _message(n: int) -> bytes:
    body = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 8 + "\r\n") * 4
    return (
        f"From: Sender {n % 97} <sender{n % 97}@example.test>\r\nTo: user@example.test\r\n"
        f"Subject: report {n % 500}\r\nMessage-ID: <b{n}@example.test>\r\n"
        f"Date: Thu, 26 Nov 2026 12:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}"
    ).encode()


def _fill_maildir(root: Path, n: int) -> None:
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        flags = "S" if i % 3 == 0 else ""
        (root / "cur" / f"{1700000000 + i}.M{i}P1.bench:2,{flags}").write_bytes(_message(i))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


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
    before = _rss_kib(pids())
    conns = []
    for _ in range(idle):
        s = await Client.connect(port)
        await s.cmd(f"LOGIN {small} {PASSWORD}")
        await s.cmd("SELECT INBOX")
        s.n += 1
        s.w.write(b"idle%d IDLE\r\n" % s.n)
        await s.r.readline()
        conns.append(s)
    after = _rss_kib(pids())
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
    from mailsrv.auth.passwords import Hasher
    from mailsrv.config import (
        AuthConfig,
        Config,
        DirectoryConfig,
        ListenerConfig,
        ServerConfig,
        StoreConfig,
    )
    from mailsrv.directory import open_directory, open_sync
    from mailsrv.imap.server import ImapService
    from mailsrv.net.listener import Listener
    from mailsrv.net.service import ServiceContext
    from mailsrv.search import SearchService
    from mailsrv.store import Store

    log.configure("warning")
    acfg = AuthConfig(allow_plaintext_loopback=True, argon2_time_cost=1, argon2_memory_kib=1024,
                      ip_block_failures=10**6, ip_throttle_failures=10**6)
    sd = open_sync(DirectoryConfig(), base)
    sd.add_domain("example.test")
    pw, scram = Hasher(acfg).make(PASSWORD)
    big = sd.add_user("big@example.test", password_hash=pw, scram=scram)
    small = sd.add_user("small@example.test", password_hash=pw, scram=scram)
    sd.close()
    (base / big.store).parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(base / "seed", base / big.store)
    shutil.copytree(base / "seed-small", base / small.store)

    async def main() -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(4096)
        sock.setblocking(False)
        lcfg = ListenerConfig(protocol="imap", bind=(f"127.0.0.1:{port}",), max_connections=50_000,
                              max_connections_per_ip=50_000, idle_timeout=3600)
        cfg = Config(server=ServerConfig(data_dir=base), listener={"imap": lcfg})
        d = open_directory(DirectoryConfig(), base)
        ctx = ServiceContext(config=cfg, name="imap", listener=lcfg, ssl_context=None)
        store = Store(StoreConfig(), base)
        search = SearchService()  # as the worker wires it: text keys through the index
        store.add_observer(search)
        service = ImapService(ctx, auth=Authenticator(d, acfg), store=store, search=search)
        lst = Listener("imap", lcfg, cfg.limits, [sock], service, None)
        await lst.start()
        os.write(ready, b"1")
        await asyncio.Event().wait()

    uvloop.run(main())


def _start_mailsrv(base: Path) -> tuple[int, int]:
    port = _free_port()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        try:
            _mailsrv_child(base, port, w)
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        if f.read(1) != b"1":
            raise RuntimeError("mailsrv bench server did not start")
    return pid, port


# --- Dovecot ----------------------------------------------------------------------------------------


def _start_dovecot(base: Path) -> tuple[subprocess.Popen[bytes] | None, int, str]:
    exe = shutil.which("dovecot") or "/usr/sbin/dovecot"
    if not Path(exe).exists():
        return None, 0, "dovecot not installed"
    port = _free_port()
    import pwd

    nobody = pwd.getpwnam("nobody")
    mail = base / "dmail"
    for user, seed in (("big", "seed"), ("small", "seed-small")):
        shutil.copytree(base / seed, mail / user / "Maildir")
    subprocess.run(["chown", "-R", f"{nobody.pw_uid}:{nobody.pw_gid}", str(mail)], check=True)
    (base / "passwd").write_text(f"big:{{PLAIN}}{PASSWORD}\nsmall:{{PLAIN}}{PASSWORD}\n")
    run = base / "drun"
    run.mkdir()
    conf = base / "dovecot.conf"
    conf.write_text(f"""
base_dir = {run}
state_dir = {base}/dstate
log_path = {base}/dovecot.log
listen = 127.0.0.1
protocols = imap
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = {nobody.pw_uid}
mail_location = maildir:{mail}/%u/Maildir
default_login_user = dovenull
default_internal_user = dovecot
passdb {{
  driver = passwd-file
  args = {base}/passwd
}}
userdb {{
  driver = static
  args = uid={nobody.pw_uid} gid={nobody.pw_gid} home={mail}/%u
}}
service imap-login {{
  inet_listener imap {{
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
  service_count = 0
  process_min_avail = 2
  client_limit = 20000
}}
service imap {{
  process_limit = 20000
}}
protocol imap {{
  mail_max_userip_connections = 20000
}}
default_process_limit = 20000
default_client_limit = 40000
""")
    proc = subprocess.Popen([exe, "-F", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(100).startswith(b"* OK"):
                    return proc, port, ""
        except OSError:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                return None, 0, f"dovecot exited: {err[:200]}"
        time.sleep(0.1)
    proc.terminate()
    return None, 0, "dovecot did not start"


def _dovecot_pids(proc: subprocess.Popen[bytes]) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(proc.pid)], capture_output=True, text=True).stdout
    return [proc.pid] + [int(x) for x in out.split()]


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
        pid, port = _start_mailsrv(base / "m")
        ours = asyncio.run(_measure(port, "big@example.test", "small@example.test", sizes, lambda: [pid]))
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
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
            theirs = asyncio.run(_measure(dport, "big", "small", sizes, lambda: _dovecot_pids(p), idle_cap=1000))
            if sizes["idle"] > 1000:
                notes.append("Dovecot's RSS per IDLE connection is measured over 1000 connections")
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(base, ignore_errors=True)
    results = []
    for name, value in ours.items():
        unit, higher_better = UNITS[name]
        base_v = theirs.get(name)
        ratio = None
        if base_v:
            ratio = (value / base_v) if higher_better else (base_v / value if value else None)
        results.append({"name": name, "unit": unit, "value": round(value, 3),
                        "baseline": {"name": "dovecot", "value": round(base_v, 3)} if base_v is not None else None,
                        "ratio": round(ratio, 3) if ratio else None})
    notes.append("ratio > 1 means mailsrv is better (faster, or less memory)")
    return {"scenario": "imap", "results": results, "notes": notes}

