"""Pieces the benchmark scenarios share: generated messages and maildirs, free ports,
a mailsrv server in a forked child, Dovecot as a baseline, and the result rows.

Not a scenario (the leading underscore keeps it out of ``python -m bench``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

PASSWORD = "benchpass"
LOREM = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. "


# --- messages and maildirs ----------------------------------------------------------------


def message(n: int, *, repeat: int, lines: int, tag: str = "b", display_name: bool = False,
            mime: bool = True, body_prefix: str = "") -> bytes:
    """A generated plain-text message: ``lines`` lines of ``repeat`` times the lorem sentence.

    Headers vary with ``n`` (sender ``n % 97``, subject ``n % 500``, Message-ID ``<{tag}{n}@...>``).
    """
    body = (LOREM * repeat + "\r\n") * lines
    sender = f"Sender {n % 97} <sender{n % 97}@example.test>" if display_name else f"sender{n % 97}@example.test"
    mime_headers = "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n" if mime else ""
    return (
        f"From: {sender}\r\nTo: user@example.test\r\n"
        f"Subject: report {n % 500}\r\nMessage-ID: <{tag}{n}@example.test>\r\n"
        f"Date: Thu, 26 Nov 2026 12:00:00 +0000\r\n{mime_headers}\r\n{body_prefix}{body}"
    ).encode()


def fill_maildir(root: Path, messages: Iterable[bytes], name: Callable[[int, bytes], str]) -> None:
    """A maildir at ``root`` (cur/, new/, tmp/) with ``messages`` written as ``cur/<name(i, data)>``."""
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(messages):
        (root / "cur" / name(i, data)).write_bytes(data)


def fill_new(new_dir: Path, messages: Iterable[bytes]) -> None:
    """Drop messages into ``new_dir`` as another MDA would (no fsync: setup, not measured)."""
    for i, data in enumerate(messages):
        (new_dir / f"1700000000.M{i}P1Q{i}.bench").write_bytes(data)


# --- processes and ports -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening_socket(port: int, backlog: int) -> socket.socket:
    """A non-blocking listening socket on 127.0.0.1:``port`` (for a child's Listener)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def fork_server(child: Callable[[Path, int, int], None], base: Path) -> tuple[int, int]:
    """Fork ``child(base, port, ready_fd)`` on a free port; returns (pid, port) once it wrote b"1" to ready_fd."""
    port = free_port()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        try:
            child(base, port, w)
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        if f.read(1) != b"1":
            raise RuntimeError("mailsrv bench server did not start")
    return pid, port


def stop_child(pid: int, sig: int = signal.SIGTERM) -> None:
    os.kill(pid, sig)
    os.waitpid(pid, 0)


# --- mailsrv in the child ------------------------------------------------------------------


def cheap_auth_config() -> Any:
    """Plain text allowed on loopback, argon2id with cheap parameters, no throttling:
    session rates measure the protocol, not hashing."""
    from mailsrv.config import AuthConfig

    return AuthConfig(allow_plaintext_loopback=True, argon2_time_cost=1, argon2_memory_kib=1024,
                      ip_block_failures=10**6, ip_throttle_failures=10**6)


def add_users(base: Path, acfg: Any, seeds: dict[str, Path]) -> None:
    """Domain example.test with a user ``<name>@example.test`` (password PASSWORD) per seed maildir,
    the maildir copied into the user's store."""
    from mailsrv.auth.passwords import Hasher
    from mailsrv.config import DirectoryConfig
    from mailsrv.directory import open_sync

    sd = open_sync(DirectoryConfig(), base)
    sd.add_domain("example.test")
    pw, scram = Hasher(acfg).make(PASSWORD)
    accounts = {name: sd.add_user(f"{name}@example.test", password_hash=pw, scram=scram) for name in seeds}
    sd.close()
    for name, seed in seeds.items():
        (base / accounts[name].store).parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(seed, base / accounts[name].store)


async def serve_forever(name: str, lcfg: Any, cfg: Any, sock: socket.socket, service: Any, ready: int) -> None:
    """Run ``service`` behind a Listener on ``sock``, tell the parent on ``ready``, serve until killed."""
    from mailsrv.net.listener import Listener

    lst = Listener(name, lcfg, cfg.limits, [sock], service, None)
    await lst.start()
    os.write(ready, b"1")
    await asyncio.Event().wait()


# --- Dovecot -----------------------------------------------------------------------------


def start_dovecot(base: Path, protocol: str, seeds: dict[str, Path], services: str,
                  greeting: bytes) -> tuple[subprocess.Popen[bytes] | None, int, str]:
    """Dovecot serving ``protocol`` with a {PLAIN} passdb (PASSWORD) and a copy of each seed maildir.

    ``services`` is the protocol's part of dovecot.conf; ``{port}`` in it is the listening port.
    Returns (process, port, "") or (None, 0, why it is missing).
    """
    exe = shutil.which("dovecot") or "/usr/sbin/dovecot"
    if not Path(exe).exists():
        return None, 0, "dovecot not installed"
    if protocol == "pop3" and not Path("/usr/lib/dovecot/pop3").exists():
        return None, 0, "dovecot-pop3d not installed (tools/install-peers.sh)"
    import pwd

    port = free_port()
    nobody = pwd.getpwnam("nobody")
    mail = base / "dmail"
    for user, seed in seeds.items():
        shutil.copytree(seed, mail / user / "Maildir")
    subprocess.run(["chown", "-R", f"{nobody.pw_uid}:{nobody.pw_gid}", str(mail)], check=True)
    (base / "passwd").write_text("".join(f"{user}:{{PLAIN}}{PASSWORD}\n" for user in seeds))
    (base / "drun").mkdir()
    conf = base / "dovecot.conf"
    conf.write_text(f"""
base_dir = {base}/drun
state_dir = {base}/dstate
log_path = {base}/dovecot.log
listen = 127.0.0.1
protocols = {protocol}
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
""" + services.replace("{port}", str(port)))
    proc = subprocess.Popen([exe, "-F", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(100).startswith(greeting):
                    return proc, port, ""
        except OSError:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                return None, 0, f"dovecot exited: {err[:200]}"
        time.sleep(0.1)  # waiting for a foreign daemon's port, with a deadline
    stop_dovecot(proc)
    return None, 0, "dovecot did not start"


def stop_dovecot(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(10)
    if proc.stderr is not None:
        proc.stderr.close()


def dovecot_pids(proc: subprocess.Popen[bytes]) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(proc.pid)], capture_output=True, text=True).stdout
    return [proc.pid] + [int(x) for x in out.split()]


# --- results -------------------------------------------------------------------------------


def compare(ours: dict[str, float], theirs: dict[str, float], units: dict[str, tuple[str, bool]],
            baseline: str) -> list[dict[str, Any]]:
    """Result rows: ``units[name]`` is (unit, higher is better); ratio > 1 means mailsrv is better."""
    results = []
    for name, value in ours.items():
        unit, higher_better = units[name]
        base_v = theirs.get(name)
        ratio = None
        if base_v:
            ratio = (value / base_v) if higher_better else (base_v / value if value else None)
        results.append({"name": name, "unit": unit, "value": round(value, 3),
                        "baseline": {"name": baseline, "value": round(base_v, 3)} if base_v is not None else None,
                        "ratio": round(ratio, 3) if ratio else None})
    return results
