"""The real server (`mailsrv serve`, master + workers) with real clients: swaks and smtplib."""

from __future__ import annotations

import re
import shutil
import smtplib
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from support.server import ServerProcess, init_setup

pytestmark = pytest.mark.peer


@pytest.fixture
def served(tmp_path: Path):  # type: ignore[no-untyped-def]
    cfg = init_setup(tmp_path / "s", "--demo")
    users = dict(re.findall(r"demo user (\S+) password (\S+)", (tmp_path / "s" / "demo-users.txt").read_text()))
    srv = ServerProcess(cfg).wait_ready()
    try:
        yield srv, users, tmp_path / "s"
    finally:
        srv.stop()


def _inbox(setup: Path) -> list[Path]:
    """Message files once the server's background indexer has moved every acknowledged one into cur/.

    A 250 means durable in new/; the UID (and the move to cur/) follows within milliseconds.
    """
    deadline = time.monotonic() + 30
    while list(setup.glob("data/mail/**/new/*")) and time.monotonic() < deadline:
        time.sleep(0.01)  # polling with a deadline: the indexer runs in another process
    return sorted([*setup.glob("data/mail/**/new/*"), *setup.glob("data/mail/**/cur/*")])


def test_swaks_starttls_auth_pipelining(served) -> None:  # type: ignore[no-untyped-def]
    swaks = shutil.which("swaks")
    assert swaks, "swaks is needed (apt-get install swaks; `make peers`)"
    srv, users, setup = served
    ports = srv.ports
    sub = next(p for n, p in ports.items() if n == "submission")
    mta = next(p for n, p in ports.items() if n == "smtp")
    # MTA: plain delivery with pipelining to a local user
    out = subprocess.run([swaks, "--server", f"127.0.0.1:{mta}", "--from", "x@remote.test", "--to",
                          "bob@example.test", "--pipeline", "--helo", "client.test"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "250 2.0.0 OK id=" in out.stdout
    # submission: STARTTLS + AUTH PLAIN, relay to the outside goes to the queue
    out = subprocess.run([swaks, "--server", f"127.0.0.1:{sub}", "--from", "alice@example.test", "--to",
                          "someone@remote.test,bob@example.test", "--tls", "--auth", "PLAIN",
                          "--auth-user", "alice@example.test", "--auth-password", users["alice@example.test"],
                          "--helo", "client.test"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "235 2.7.0" in out.stdout and "queued as" in out.stdout
    # no AUTH before TLS on submission
    out = subprocess.run([swaks, "--server", f"127.0.0.1:{sub}", "--from", "alice@example.test", "--to",
                          "bob@example.test", "--auth", "PLAIN", "--auth-user", "alice@example.test",
                          "--auth-password", "x", "--helo", "client.test"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode != 0 and "Host did not advertise authentication" in out.stdout + out.stderr
    files = _inbox(setup)
    bob = [f for f in files if "/example.test/bob/" in f.as_posix()]
    assert len(bob) == 2  # the MTA delivery and the submission's local copy
    assert all(f.read_bytes().startswith(b"Return-Path: <") for f in bob)
    # the rest can only be alice's bounce for someone@remote.test (no such domain here), if it came already
    others = [f.read_bytes() for f in files if f not in bob]
    assert len(others) <= 1 and all(b"multipart/report" in m and b"someone@remote.test" in m for m in others)
    # queued: still waiting, or already bounced (then the queue keeps its outcome record)
    assert [*setup.glob("data/queue/env/*.json"), *setup.glob("data/queue/done/*.json")], "not queued"


def test_implicit_tls_smtplib(served) -> None:  # type: ignore[no-untyped-def]
    srv, users, setup = served
    port = srv.ports["submissions"]
    ctx = ssl.create_default_context(cafile=str(setup / "tls" / "cert.pem"))
    ctx.check_hostname = False
    with smtplib.SMTP_SSL("127.0.0.1", port, context=ctx) as c:
        c.ehlo("client.test")
        c.login("bob@example.test", users["bob@example.test"])
        c.sendmail("bob@example.test", ["alice@example.test"], b"Subject: tls\r\n\r\nover TLS\r\n")
    [f] = _inbox(setup)
    assert b"with ESMTPSA id" in f.read_bytes()


def test_smtp_source_load(served) -> None:  # type: ignore[no-untyped-def]
    """Postfix's smtp-source: 10 parallel sessions, 200 messages of 4 KB, all durable in the maildir."""
    exe = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    assert Path(exe).exists(), "smtp-source is needed (postfix package; `make peers`)"
    srv, users, setup = served
    out = subprocess.run([exe, "-s", "10", "-m", "200", "-l", "4096", "-f", "load@remote.test",
                          "-t", "alice@example.test", "-M", "mail.example.test", f"127.0.0.1:{srv.ports['smtp']}"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(_inbox(setup)) == 200
