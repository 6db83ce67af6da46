"""Run a real ``mailsrv serve`` (master + workers) as a subprocess for end-to-end tests.

The server gets a fresh ``mailsrv init --any-port`` setup in a temporary
directory, so every listener is on a kernel-chosen port; the ports are read
from the master's ``listener.bound`` log lines. Waiting is always on a log
line with a deadline, never a sleep.
"""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

BOUND = re.compile(r"listener\.bound name=(\S+) proto=(\S+) addr=(\S+):(\d+) tls=(\S+)")


def mailsrv_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "mailsrv", *args]


def init_setup(directory: Path, *extra: str, workers: int = 2) -> Path:
    """``mailsrv init --any-port`` into ``directory``; returns the config path."""
    subprocess.run(
        mailsrv_cmd("init", "--dir", str(directory), "--any-port", "--workers", str(workers),
                    "--hostname", "mail.example.test", *extra),
        check=True,
        capture_output=True,
    )
    return directory / "mailsrv.toml"


class ServerProcess:
    """A running master; collects its log lines for the test to wait on."""

    def __init__(self, config: Path, env: dict[str, str] | None = None, *, session: bool = False) -> None:
        """``session``: the master leads a new session and process group (a test may SIGKILL the whole group)."""
        self.config = config
        self.lines: list[str] = []
        self._cond = threading.Condition()
        full_env = {**os.environ, **(env or {})}
        self.proc = subprocess.Popen(
            mailsrv_cmd("serve", "-c", str(config)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=full_env,
            text=True,
            errors="replace",  # a process killed mid-write may cut a character: the reader must not die
            start_new_session=session,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.ports: dict[str, int] = {}

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 30.0, start: int = 0, count: int = 1) -> list[re.Match[str]]:
        """Wait until ``count`` log lines from index ``start`` match ``pattern``."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [m for line in self.lines[start:] if (m := rx.search(line))]
                if len(found) >= count:
                    return found[:count]
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    tail = "\n".join(self.lines[-30:])
                    raise AssertionError(f"log line {pattern!r} x{count} not seen; last lines:\n{tail}")
                self._cond.wait(min(left, 0.5))

    def mark(self) -> int:
        """Index of the next log line (to wait only for what comes after now)."""
        with self._cond:
            return len(self.lines)

    def wait_ready(self, timeout: float = 30.0) -> ServerProcess:
        self.wait_for(r"master\.ready", timeout)
        with self._cond:
            for line in self.lines:
                if m := BOUND.search(line):
                    self.ports[m.group(1)] = int(m.group(4))
        return self

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def worker_pids(self) -> list[int]:
        """Live child processes of the master (its workers)."""
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(p) for p in path.read_text().split()]

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return self.proc.returncode


def serve_users(cfg: Path, users: dict[str, str]) -> ServerProcess:
    """``mailsrv serve`` of an ``init_setup`` config, ready; with ``.users`` (address -> password), ``.cfg``
    and ``.ctx`` (a client TLS context trusting the setup's certificate) for the test's clients."""
    import ssl

    srv = ServerProcess(cfg).wait_ready()
    srv.users = users  # type: ignore[attr-defined]
    srv.cfg = cfg  # type: ignore[attr-defined]
    srv.ctx = ssl.create_default_context(cafile=str(cfg.parent / "tls" / "cert.pem"))  # type: ignore[attr-defined]
    return srv


def unverified_tls() -> ssl.SSLContext:
    """A client TLS context that accepts the test servers' self-signed certificates."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def wait_until(pred: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> None:
    """Poll ``pred`` until true or raise (a deadline, not a sleep-as-synchronisation)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        time.sleep(interval)


async def wait_until_async(pred: Callable[[], bool], limit: float = 10.0) -> None:
    """:func:`wait_until` inside a running loop: poll ``pred`` each loop turn until true or raise."""
    import asyncio

    deadline = time.monotonic() + limit
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0)
