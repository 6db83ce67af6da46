"""File links under a real ``mailsrv serve`` (one worker), driven with curl over HTTPS and the CLI:
upload and download, Basic refused on plain HTTP, kill -9 after the 201, the workers' expiry sweep,
and a 300 MB upload with the worker's memory measured."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from support.server import ServerProcess, init_setup, mailsrv_cmd, serve_users

MB = 1024 * 1024


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("files")
    cfg = init_setup(base / "s", "--demo", workers=1)
    with open(cfg, "a") as f:
        f.write("\n[files]\nsweep_interval = 0.2\nquota = 400000000\nmax_size = 350000000\n")  # expiry within the test's patience
    return cfg


@pytest.fixture(scope="module")
def server(setup: Path):
    users = dict(re.findall(r"demo user (\S+) password (\S+)", (setup.parent / "demo-users.txt").read_text()))
    srv = serve_users(setup, users)
    yield srv
    srv.stop()


def curl(srv: Any, *args: str, user: str | None = None, port: str = "jmaps") -> subprocess.CompletedProcess[str]:
    """curl against the listener ``port`` (HTTPS trusting the setup's certificate); ``-w`` adds the status."""
    scheme = "https" if port == "jmaps" else "http"
    argv = ["curl", "-sS", "--cacert", str(srv.cfg.parent / "tls" / "cert.pem"), "-w", "\n%{http_code}"]
    if user is not None:
        argv += ["-u", f"{user}:{srv.users[user]}"]
    argv += [a.replace("BASE", f"{scheme}://127.0.0.1:{srv.ports[port]}") for a in args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=600)


def status(p: subprocess.CompletedProcess[str]) -> tuple[int, str]:
    body, _, code = p.stdout.rpartition("\n")
    return int(code), body


def alice(srv: Any) -> str:
    return sorted(srv.users)[0]


def test_curl_upload_and_download_over_https(server: ServerProcess, tmp_path: Path) -> None:
    src = tmp_path / "plan v2.pdf"
    src.write_bytes(os.urandom(300_000))
    code, body = status(curl(server, "-T", str(src), "BASE/files/", user=alice(server)))
    assert code == 201, body
    link = json.loads(body)
    assert link["name"] == "plan v2.pdf" and link["size"] == 300_000
    assert link["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    url = link["url"]
    assert url.startswith(f"https://127.0.0.1:{server.ports['jmaps']}/f/")
    out = tmp_path / "got"
    code, _ = status(curl(server, "-o", str(out), url))  # no login
    assert code == 200 and out.read_bytes() == src.read_bytes()
    code, _ = status(curl(server, "-o", str(out), "-r", "1000-1999", url))
    assert code == 206 and out.read_bytes() == src.read_bytes()[1000:2000]
    p = curl(server, "-I", url)
    assert status(p)[0] == 200
    head = p.stdout.lower()
    assert "content-security-policy: sandbox" in head and "x-content-type-options: nosniff" in head
    assert "content-type: application/octet-stream" in head and "filename*=utf-8''plan%20v2.pdf" in head
    # the CLI lists it with its download count
    p = subprocess.run(mailsrv_cmd("files", "list", alice(server), "--json", "-c", str(server.cfg)),
                       capture_output=True, text=True, check=True)
    (row,) = [json.loads(line) for line in p.stdout.splitlines() if link["id"] in line]
    assert row["downloads"] == 1 and row["owner"] == alice(server)  # the range and HEAD are not downloads


def test_basic_over_plain_http_is_refused(server: ServerProcess, tmp_path: Path) -> None:
    src = tmp_path / "a.txt"
    src.write_bytes(b"hello")
    p = curl(server, "-i", "-T", str(src), "BASE/files/", user=alice(server), port="jmap")
    assert status(p)[0] == 401
    assert 'www-authenticate: bearer realm="mailsrv"' in p.stdout.lower() and "basic realm" not in p.stdout.lower()
    assert (status(curl(server, "-T", str(src), "BASE/files/"))[0]) == 401  # no credentials at all


def test_cli_add_delete_and_expiry_by_the_workers(server: ServerProcess, tmp_path: Path) -> None:
    src = tmp_path / "report.csv"
    src.write_bytes(b"a,b\n" * 1000)
    p = subprocess.run(mailsrv_cmd("files", "add", alice(server), str(src), "--days", "3", "--json",
                                   "-c", str(server.cfg)), capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    added = json.loads(p.stdout)
    # the printed URL is built from the config (no request): rewrite its origin to the test's listener
    url = re.sub(r"^https://[^/]+", f"https://127.0.0.1:{server.ports['jmaps']}", added["url"])
    assert status(curl(server, url))[1] == src.read_text()
    p = subprocess.run(mailsrv_cmd("files", "add", "nobody@example.test", str(src), "-c", str(server.cfg)),
                       capture_output=True, text=True)
    assert p.returncode == 2 and "no user" in p.stderr
    # expired (as if 3 days went by): 410 at once, and a worker's sweep removes the file
    data = server.cfg.parent / "data" / "files"
    victim = data / "data" / added["id"][-2:] / added["id"]
    assert victim.exists()
    mark = server.mark()
    with sqlite3.connect(data / "links.db") as db:
        db.execute("UPDATE links SET expires = ? WHERE id = ?", (time.time() - 1, added["id"]))
    assert status(curl(server, url))[0] == 410
    server.wait_for(r"files\.swept .*expired=1 ", start=mark, timeout=30)
    assert not victim.exists()
    assert status(curl(server, url))[0] == 410
    # delete by id
    p = subprocess.run(mailsrv_cmd("files", "add", alice(server), str(src), "--json", "-c", str(server.cfg)),
                       capture_output=True, text=True, check=True)
    second = json.loads(p.stdout)
    p = subprocess.run(mailsrv_cmd("files", "delete", second["id"], "-c", str(server.cfg)),
                       capture_output=True, text=True)
    assert p.returncode == 0 and "deleted" in p.stdout
    url2 = re.sub(r"^https://[^/]+", f"https://127.0.0.1:{server.ports['jmaps']}", second["url"])
    assert status(curl(server, url2))[0] == 410


def test_too_large_is_refused_before_the_body(server: ServerProcess, tmp_path: Path) -> None:
    sparse = tmp_path / "huge.bin"
    with open(sparse, "wb") as f:
        f.truncate(360_000_000)  # over max_size; sparse: nothing to write
    t0 = time.monotonic()
    code, body = status(curl(server, "--limit-rate", "1M", "-T", str(sparse), "BASE/files/", user=alice(server)))
    assert code == 413 and "350000000" in body
    assert time.monotonic() - t0 < 30  # answered at "Expect: 100-continue": the body would take 6 minutes
    assert not list((server.cfg.parent / "data" / "files" / "tmp").iterdir())


def vm(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])  # KiB
    raise AssertionError(key)


@pytest.mark.slow
def test_300_megabytes_with_the_workers_memory_bounded(server: ServerProcess, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    block = os.urandom(MB)
    with open(src, "wb") as f:
        for _ in range(300):
            f.write(block)
    workers = server.worker_pids()
    before = {p: vm(p, "VmHWM") for p in workers}
    t0 = time.monotonic()
    code, body = status(curl(server, "-T", str(src), "BASE/files/", user=alice(server)))
    upload_s = time.monotonic() - t0
    assert code == 201, body
    link = json.loads(body)
    assert link["size"] == 300 * MB
    grew = {p: vm(p, "VmHWM") - before[p] for p in workers}
    # the whole body went through one worker's loop; none of the processes' peak grew by more than 64 MiB
    assert max(grew.values()) < 64 * 1024, grew
    out = tmp_path / "back.bin"
    code, _ = status(curl(server, "-o", str(out), link["url"]))
    assert code == 200 and out.stat().st_size == 300 * MB
    assert hashlib.sha256(out.read_bytes()).hexdigest() == link["sha256"]
    grew = {p: vm(p, "VmHWM") - before[p] for p in workers}
    assert max(grew.values()) < 64 * 1024, grew
    print(f"\n300 MB upload over HTTPS in {upload_s:.1f}s; peak RSS growth per process (KiB): {grew}")
    subprocess.run(mailsrv_cmd("files", "delete", link["id"], "-c", str(server.cfg)), check=True,
                   capture_output=True)
    src.unlink()  # pytest keeps the last runs' directories: not 600 MB each
    out.unlink()


def test_a_link_survives_kill_9_after_the_201(setup: Path, server: ServerProcess, tmp_path: Path) -> None:
    src = tmp_path / "keep.bin"
    src.write_bytes(os.urandom(1_000_000))
    code, body = status(curl(server, "-T", str(src), "BASE/files/keep.bin", user=alice(server)))
    assert code == 201
    link = json.loads(body)
    for pid in server.worker_pids():
        os.kill(pid, signal.SIGKILL)
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(30)
    server.stop()
    again = ServerProcess(setup).wait_ready()
    try:
        again.users, again.cfg = server.users, setup  # type: ignore[attr-defined]
        token_path = link["url"].split("/", 3)[3]
        out = tmp_path / "back"
        code, _ = status(curl(again, "-o", str(out), f"BASE/{token_path}"))
        assert code == 200 and out.read_bytes() == src.read_bytes()
    finally:
        again.stop()
