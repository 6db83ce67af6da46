"""POP3 benchmark: mailsrv against Debian's Dovecot (dovecot-pop3d) on 127.0.0.1, same client, same maildrops.

Two measurements, as issue 7 asks:

- sessions/s of USER/PASS, STAT, RETR of every message, QUIT on a maildrop of
  1 000 messages (one client after the other: a maildrop admits one session);
- MB/s of RETR on a maildrop of large messages (octets of the multi-line
  responses, dot-stuffing included, as the client receives them).

Both servers serve copies of the same maildirs. mailsrv runs in a child
process (real store, directory and authenticator; no TLS, plain-text login
allowed on loopback, argon2id with cheap parameters so the rate measures POP3,
not hashing); Dovecot runs with its own config and a {PLAIN} passdb (the
cheaper side: a conservative baseline).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

SIZES = {
    "smoke": {"messages": 1_000, "sessions": 3, "big": 4, "big_size": 2 << 20, "rounds": 2},
    "full": {"messages": 1_000, "sessions": 30, "big": 20, "big_size": 10 << 20, "rounds": 3},
}
PASSWORD = "benchpass"


def _message(n: int) -> bytes:
    body = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 8 + "\r\n") * 20
    return (
        f"From: Sender {n % 97} <sender{n % 97}@example.test>\r\nTo: user@example.test\r\n"
        f"Subject: report {n % 500}\r\nMessage-ID: <p{n}@example.test>\r\n"
        f"Date: Thu, 26 Nov 2026 12:00:00 +0000\r\n\r\n.{body}"
    ).encode()


def _big_message(n: int, size: int) -> bytes:
    line = b"." + b"0123456789abcdef" * 4 + b"\r\n"  # every line needs byte-stuffing: the worst case
    head = f"From: big@example.test\r\nSubject: big {n}\r\nMessage-ID: <big{n}@example.test>\r\n\r\n".encode()
    return head + line * (size // len(line))


def _fill(root: Path, messages: list[bytes]) -> None:
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(messages):
        (root / "cur" / f"{1700000000 + i}.M{i}P1.bench,S={len(data)}:2,S").write_bytes(data)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


async def _session(port: int, user: str) -> int:
    c = await Client.connect(port)
    await c.cmd(f"USER {user}")
    await c.cmd(f"PASS {PASSWORD}")
    count = int((await c.cmd("STAT")).split()[1])
    total = 0
    for i in range(1, count + 1):
        total += await c.multi(f"RETR {i}")
    await c.cmd("QUIT")
    await c.close()
    return total


async def _measure(port: int, small: str, big: str, sizes: dict[str, int]) -> dict[str, float]:
    res: dict[str, float] = {}
    await _session(port, small)  # warm-up: first login indexes the maildrop and counts sizes
    n = sizes["sessions"]
    t0 = time.perf_counter()
    for _ in range(n):
        await _session(port, small)
    res["LOGIN-STAT-RETR-all-QUIT (1000 messages)"] = n / (time.perf_counter() - t0)
    await _session(port, big)  # warm-up (page cache, index)
    best = 0.0
    for _ in range(sizes["rounds"]):
        t0 = time.perf_counter()
        octets = await _session(port, big)
        best = max(best, octets / (time.perf_counter() - t0) / 1e6)
    res["RETR throughput"] = best
    return res


# --- mailsrv in a child process ---------------------------------------------------------------


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
    from mailsrv.net.listener import Listener
    from mailsrv.net.service import ServiceContext
    from mailsrv.pop3.maildrop import StoreMaildrops
    from mailsrv.pop3.server import Pop3Service
    from mailsrv.store import Store

    log.configure("warning")
    acfg = AuthConfig(allow_plaintext_loopback=True, argon2_time_cost=1, argon2_memory_kib=1024,
                      ip_block_failures=10**6, ip_throttle_failures=10**6)
    sd = open_sync(DirectoryConfig(), base)
    sd.add_domain("example.test")
    pw, scram = Hasher(acfg).make(PASSWORD)
    for name in ("small", "big"):
        acct = sd.add_user(f"{name}@example.test", password_hash=pw, scram=scram)
        (base / acct.store).parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(base / f"seed-{name}", base / acct.store)
    sd.close()

    async def main() -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(1024)
        sock.setblocking(False)
        lcfg = ListenerConfig(protocol="pop3", bind=(f"127.0.0.1:{port}",), idle_timeout=600)
        cfg = Config(server=ServerConfig(data_dir=base), listener={"pop3": lcfg})
        ctx = ServiceContext(config=cfg, name="pop3", listener=lcfg, ssl_context=None)
        store = Store(StoreConfig(), base)
        service = Pop3Service(ctx, auth=Authenticator(open_directory(DirectoryConfig(), base), acfg),
                              maildrops=StoreMaildrops(store, base))
        lst = Listener("pop3", lcfg, cfg.limits, [sock], service, None)
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


# --- Dovecot --------------------------------------------------------------------------------------


def _start_dovecot(base: Path) -> tuple[subprocess.Popen[bytes] | None, int, str]:
    exe = shutil.which("dovecot") or "/usr/sbin/dovecot"
    if not Path(exe).exists():
        return None, 0, "dovecot not installed"
    if not Path("/usr/lib/dovecot/pop3").exists():
        return None, 0, "dovecot-pop3d not installed (tools/install-peers.sh)"
    import pwd

    port = _free_port()
    nobody = pwd.getpwnam("nobody")
    mail = base / "dmail"
    for user in ("small", "big"):
        shutil.copytree(base / f"seed-{user}", mail / user / "Maildir")
    subprocess.run(["chown", "-R", f"{nobody.pw_uid}:{nobody.pw_gid}", str(mail)], check=True)
    (base / "passwd").write_text(f"small:{{PLAIN}}{PASSWORD}\nbig:{{PLAIN}}{PASSWORD}\n")
    (base / "drun").mkdir()
    conf = base / "dovecot.conf"
    conf.write_text(f"""
base_dir = {base}/drun
state_dir = {base}/dstate
log_path = {base}/dovecot.log
listen = 127.0.0.1
protocols = pop3
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
service pop3-login {{
  inet_listener pop3 {{
    port = {port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
  service_count = 0
  process_min_avail = 2
}}
protocol pop3 {{
  pop3_uidl_format = %08Xu%08Xv
}}
""")
    proc = subprocess.Popen([exe, "-F", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(100).startswith(b"+OK"):
                    return proc, port, ""
        except OSError:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                return None, 0, f"dovecot exited: {err[:200]}"
        time.sleep(0.1)  # waiting for a foreign daemon's port, with a deadline
    proc.terminate()
    proc.wait(10)
    return None, 0, "dovecot did not start"


# --- the scenario -------------------------------------------------------------------------------------

UNITS = {
    "LOGIN-STAT-RETR-all-QUIT (1000 messages)": "sessions/s",
    "RETR throughput": "MB/s",
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
    pid = 0
    proc = None
    ours: dict[str, float] = {}
    theirs: dict[str, float] = {}
    try:
        (base / "m").mkdir()
        _fill(base / "seed-small", [_message(i) for i in range(sizes["messages"])])
        _fill(base / "seed-big", [_big_message(i, sizes["big_size"]) for i in range(sizes["big"])])
        for name in ("seed-small", "seed-big"):
            shutil.copytree(base / name, base / "m" / name)
        pid, port = _start_mailsrv(base / "m")
        ours = asyncio.run(_measure(port, "small@example.test", "big@example.test", sizes))
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
        pid = 0
        proc, dport, why = _start_dovecot(base)
        if proc is None:
            notes.append(f"Dovecot baseline missing: {why}")
        else:
            theirs = asyncio.run(_measure(dport, "small", "big", sizes))
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        if proc is not None:
            proc.terminate()
            proc.wait(10)
            if proc.stderr is not None:
                proc.stderr.close()
        shutil.rmtree(base, ignore_errors=True)
    results = []
    for name, value in ours.items():
        base_v = theirs.get(name)
        ratio = value / base_v if base_v else None
        results.append({"name": name, "unit": UNITS[name], "value": round(value, 3),
                        "baseline": {"name": "dovecot", "value": round(base_v, 3)} if base_v is not None else None,
                        "ratio": round(ratio, 3) if ratio else None})
    notes.append("ratio > 1 means mailsrv is faster")
    return {"scenario": "pop3", "results": results, "notes": notes}
