"""The real master as a subprocess: workers, restarts, reload, drain, sd_notify, bad config."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from support.server import ServerProcess, init_setup, mailsrv_cmd, unverified_tls, wait_until

from mailsrv.cli.core import make_self_signed


def greet(port: int, timeout: float = 10.0) -> bytes:
    """Connect to the POP3 listener, read the banner, QUIT."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        f = s.makefile("rb")
        banner = f.readline()
        s.sendall(b"QUIT\r\n")
        assert f.readline().startswith(b"+OK")
        return banner


def cert_fingerprint(port: int) -> str:
    ctx = unverified_tls()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            der = s.getpeercert(binary_form=True)
            assert der is not None
            s.recv(100)
            return hashlib.sha256(der).hexdigest()


class Hammer:
    """Connect to a listener in a loop from a thread and count any failure."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ok = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                banner = greet(self.port)
                if not banner.startswith(b"+OK"):
                    self.errors.append(repr(banner))
                self.ok += 1
            except Exception as exc:  # every failure is recorded
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def __enter__(self) -> Hammer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


@pytest.fixture
def setup_dir(tmp_path: Path) -> Path:
    return init_setup(tmp_path / "srv", workers=2)


@pytest.fixture
def server(setup_dir: Path):
    srv = ServerProcess(setup_dir).wait_ready()
    yield srv
    srv.stop()


def test_workers_run_and_listeners_answer(server: ServerProcess) -> None:
    server.wait_for(r"worker\.ready", count=2)
    server.wait_for(r"singleton\.started name=queue")
    assert len(server.worker_pids()) == 3  # two workers and the queue runner
    assert set(server.ports) >= {"smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s", "jmap", "jmaps"}
    assert greet(server.ports["pop3"]).startswith(b"+OK")
    with socket.create_connection(("127.0.0.1", server.ports["smtp"]), timeout=10) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220 mail.example.test ")
        s.sendall(b"QUIT\r\n")
        assert f.readline().startswith(b"221 ")
    with socket.create_connection(("127.0.0.1", server.ports["imap"]), timeout=10) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"* OK ")
        s.sendall(b"a1 LOGOUT\r\n")
        assert f.readline().startswith(b"* BYE")
        assert f.readline() == b"a1 OK LOGOUT completed\r\n"


def test_killed_worker_is_restarted_while_listener_keeps_answering(server: ServerProcess) -> None:
    server.wait_for(r"worker\.ready", count=2)
    victim = int(server.wait_for(r"worker\.started pid=(\d+)")[0].group(1))
    mark = server.mark()
    with Hammer(server.ports["pop3"]) as hammer:
        wait_until(lambda: hammer.ok >= 5)
        os.kill(victim, signal.SIGKILL)
        died = server.wait_for(rf"worker\.died pid={victim} ", start=mark)
        assert died
        server.wait_for(r"worker\.ready", start=mark)
        before = hammer.ok
        wait_until(lambda: hammer.ok >= before + 5)
    # The one session the victim was serving at the instant of SIGKILL may be cut
    # (the client is sequential, so at most one); no new connection is refused.
    assert len(hammer.errors) <= 1, hammer.errors
    assert all("reset" in e.lower() or "EOF" in e or "assert" in e.lower() for e in hammer.errors), hammer.errors
    assert victim not in server.worker_pids()


def test_reload_serves_new_certificate_without_refusing(server: ServerProcess, setup_dir: Path) -> None:
    port = server.ports["pop3s"]
    old = cert_fingerprint(port)
    tls_dir = setup_dir.parent / "tls"
    server.wait_for(r"singleton\.started name=queue")
    old_workers = set(server.worker_pids())
    make_self_signed(tls_dir / "cert.pem", tls_dir / "key.pem", "mail.example.test")
    mark = server.mark()
    with Hammer(server.ports["pop3"]) as hammer:
        wait_until(lambda: hammer.ok >= 5)
        server.signal(signal.SIGHUP)
        server.wait_for(r"reload\.done", start=mark)
        server.wait_for(r"worker\.exited", start=mark, count=2)
        before = hammer.ok
        wait_until(lambda: hammer.ok >= before + 5)
    assert hammer.errors == []
    assert cert_fingerprint(port) != old
    server.wait_for(r"singleton\.started name=queue", start=mark)
    new_workers = set(server.worker_pids())
    assert len(new_workers) == 3 and not (new_workers & old_workers)


def test_reload_with_bad_config_keeps_serving(server: ServerProcess, setup_dir: Path) -> None:
    text = setup_dir.read_text()
    setup_dir.write_text(text.replace("[server]", "[server]\nbogus_key = 1"))
    mark = server.mark()
    server.signal(signal.SIGHUP)
    line = server.wait_for(r"reload\.failed .*bogus_key", start=mark)
    assert line
    assert greet(server.ports["pop3"]).startswith(b"+OK")


def test_sigterm_lets_sessions_finish_then_exits_zero(setup_dir: Path) -> None:
    setup_dir.write_text(setup_dir.read_text().replace("shutdown_grace = 10", "shutdown_grace = 2"))
    server = ServerProcess(setup_dir).wait_ready()
    try:
        # A session that is busy when SIGTERM arrives may go on until it ends by itself...
        busy = socket.create_connection(("127.0.0.1", server.ports["pop3"]), timeout=10)
        bf = busy.makefile("rb")
        assert bf.readline().startswith(b"+OK")
        # ...and one still open at the end of the grace period is told goodbye in its protocol.
        idle = socket.create_connection(("127.0.0.1", server.ports["imap"]), timeout=10)
        f = idle.makefile("rb")
        assert f.readline().startswith(b"* OK")
        mark = server.mark()
        t0 = time.monotonic()
        server.signal(signal.SIGTERM)
        server.wait_for(r"worker\.draining", start=mark, count=2)
        busy.sendall(b"CAPA\r\n")  # served in full although the worker is draining
        capa = [bf.readline()]
        while capa[-1] not in (b".\r\n", b""):
            capa.append(bf.readline())
        assert capa[0].startswith(b"+OK") and capa[-1] == b".\r\n" and len(capa) > 2
        busy.sendall(b"QUIT\r\n")
        assert bf.readline().startswith(b"+OK")
        busy.close()
        assert f.readline() == b"* BYE [UNAVAILABLE] Server shutting down\r\n"
        assert time.monotonic() - t0 >= 1.5  # not before the grace period
        idle.close()
        assert server.proc.wait(20) == 0
        assert time.monotonic() - t0 < 10
        server.wait_for(r"stop\.done")
        # New connections are refused once the master has stopped.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", server.ports["pop3"]), timeout=5)
    finally:
        server.stop()


def test_sd_notify_protocol(setup_dir: Path, tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(30)
    srv = ServerProcess(setup_dir, env={"NOTIFY_SOCKET": path})
    try:
        srv.wait_ready()
        msg = sock.recv(4096).decode()
        assert "READY=1" in msg and f"MAINPID={srv.proc.pid}" in msg and "STATUS=2 workers" in msg
        srv.signal(signal.SIGHUP)
        assert "RELOADING=1" in sock.recv(4096).decode()
        assert "READY=1" in sock.recv(4096).decode()
        srv.signal(signal.SIGTERM)
        assert "STOPPING=1" in sock.recv(4096).decode()
        assert srv.proc.wait(20) == 0
    finally:
        srv.stop()
        sock.close()


def test_bad_config_exits_2_naming_the_key(setup_dir: Path) -> None:
    setup_dir.write_text(setup_dir.read_text().replace('tls = "implicit"', 'tls = "sometimes"', 1))
    res = subprocess.run(mailsrv_cmd("serve", "-c", str(setup_dir)), capture_output=True, text=True, timeout=30)
    assert res.returncode == 2
    assert "listener.submissions.tls" in res.stderr and "sometimes" in res.stderr
    assert "Traceback" not in res.stderr


def test_unbindable_port_is_a_clean_error(setup_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        text = setup_dir.read_text().replace('bind = ["127.0.0.1:0"]', f'bind = ["127.0.0.1:{port}"]', 1)
        setup_dir.write_text(text)
        res = subprocess.run(mailsrv_cmd("serve", "-c", str(setup_dir)), capture_output=True, text=True, timeout=30)
    assert res.returncode == 1
    assert f"cannot bind listener.smtp 127.0.0.1:{port}" in res.stderr
    assert "Traceback" not in res.stderr


def test_workers_exit_when_master_is_killed(server: ServerProcess) -> None:
    server.wait_for(r"worker\.ready", count=2)
    server.wait_for(r"singleton\.started name=queue")
    workers = server.worker_pids()
    assert len(workers) == 3
    server.proc.kill()
    server.proc.wait(10)

    def gone() -> bool:
        return all(not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
                   for pid in workers)

    wait_until(gone, timeout=20)


def test_queue_runner_is_one_supervised_owner(server: ServerProcess) -> None:
    first = int(server.wait_for(r"singleton\.started name=queue pid=(\d+)")[0].group(1))
    assert first in server.worker_pids()  # a child of the master, beside the workers
    mark = server.mark()
    os.kill(first, signal.SIGKILL)
    server.wait_for(rf"singleton\.died name=queue pid={first} ", start=mark)
    second = int(server.wait_for(r"singleton\.started name=queue pid=(\d+)", start=mark)[0].group(1))
    assert second != first
    # A reload replaces it: the old owner exits before the new one starts.
    mark = server.mark()
    server.signal(signal.SIGHUP)
    server.wait_for(r"reload\.done", start=mark)
    exited = server.wait_for(rf"singleton\.exited name=queue pid={second} ", start=mark)
    third = server.wait_for(r"singleton\.started name=queue pid=(\d+)", start=mark)
    server.wait_for(r"worker\.exited", start=mark, count=2)  # the retired generation
    lines = server.lines[mark:]
    assert lines.index(next(x for x in lines if exited[0].group(0) in x)) < lines.index(
        next(x for x in lines if third[0].group(0) in x))
    pids = server.worker_pids()
    assert int(third[0].group(1)) in pids and second not in pids
    assert len(pids) == 3  # two workers and one queue runner


def test_reload_changing_the_worker_count_answers_every_connection(server: ServerProcess, setup_dir: Path) -> None:
    """2 -> 3 -> 1 workers (server.reuse_port): the socket group grows to 3 members and never shrinks;
    after the reload to 1 worker it serves all 3, so a burst hashed over them is greeted in full."""
    server.wait_for(r"worker\.ready", count=2)
    port = server.ports["pop3"]
    for workers in (3, 1):
        text = setup_dir.read_text()
        setup_dir.write_text(re.sub(r"(?m)^workers = .*$", f"workers = {workers}", text, count=1))
        mark = server.mark()
        with Hammer(port) as hammer:
            wait_until(lambda: hammer.ok >= 5)
            server.signal(signal.SIGHUP)
            server.wait_for(r"reload\.done", start=mark)
            wait_until(lambda before=hammer.ok: hammer.ok >= before + 5)
        assert hammer.errors == []
        bound = server.wait_for(rf"listener\.bound name=pop3 .*:{port} tls=\S+ sockets=(\d+)", start=mark)
        assert bound[0].group(1) == "3"
        server.wait_for(r"worker\.ready", start=mark, count=workers)
        burst = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(30)]
        for s in burst:
            with s:
                f = s.makefile("rb")
                assert f.readline().startswith(b"+OK")
                s.sendall(b"QUIT\r\n")
