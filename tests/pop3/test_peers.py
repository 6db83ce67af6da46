"""Debian's fetchmail (STLS) and getmail6 (implicit TLS) fetching from a real server into local maildirs."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pop3e2e import Setup, start

pytestmark = pytest.mark.peer

MSGS = [
    b"From: a@example.test\r\nSubject: peer one\r\nMessage-ID: <p1@example.test>\r\n\r\nhello\r\n.dotted\r\n",
    b"From: b@example.test\r\nSubject: peer two\r\nMessage-ID: <p2@example.test>\r\n\r\n" + b"line\r\n" * 3000,
]
NEW = b"From: c@example.test\r\nSubject: peer three\r\nMessage-ID: <p3@example.test>\r\n\r\nlater\r\n"

MDA = """
import os, sys, time
root = sys.argv[1]
data = sys.stdin.buffer.read()
name = "%d.%d.mda" % (time.time_ns(), os.getpid())
tmp = os.path.join(root, "tmp", name)
with open(tmp, "wb") as fh:
    fh.write(data)
    fh.flush()
    os.fsync(fh.fileno())
os.rename(tmp, os.path.join(root, "new", name))
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    s = start(tmp_path_factory.mktemp("pop3peers"))
    try:
        yield s
    finally:
        assert s.server.stop() == 0


def maildir(path: Path) -> Path:
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path


def delivered(md: Path) -> list[bytes]:
    """Bodies (after the header block the fetcher added) sorted by subject."""
    out = []
    for p in sorted((md / "new").iterdir()) + sorted((md / "cur").iterdir()):
        out.append(p.read_bytes())
    return out


def subjects(md: Path) -> list[str]:
    subs = []
    for raw in delivered(md):
        for line in raw.replace(b"\r\n", b"\n").split(b"\n"):
            if line.startswith(b"Subject: "):
                subs.append(line[9:].decode())
                break
    return sorted(subs)


def fetchmail(setup: Setup, address: str, work: Path, md: Path, *, keep: bool) -> subprocess.CompletedProcess[bytes]:
    exe = shutil.which("fetchmail")
    assert exe, "fetchmail is not installed (tools/install-peers.sh)"
    mda = work / "mda.py"
    mda.write_text(MDA)
    rc = work / "fetchmailrc"
    rc.write_text(
        "set no syslog\nset no bouncemail\n"
        f"poll 127.0.0.1 with proto POP3 service {setup.port('pop3')} uidl auth password\n"
        f'  user "{address}" there with password "{setup.passwords[address]}" is "root" here\n'
        f"  sslproto 'TLS1.2+' sslcertck sslcertfile \"{setup.cert}\" sslcommonname mail.example.test\n"
        f'  mda "{sys.executable} {mda} {md}"\n'
        f"  {'keep' if keep else 'no keep'}\n"
    )
    rc.chmod(0o600)
    env = {**os.environ, "FETCHMAILUSER": "root", "FETCHMAILHOME": str(work), "HOME": str(work)}
    return subprocess.run([exe, "-f", str(rc), "-N", "--nosyslog", "-v"], env=env, capture_output=True, timeout=120)


def getmail(setup: Setup, address: str, work: Path, md: Path, *, delete: bool) -> subprocess.CompletedProcess[bytes]:
    exe = shutil.which("getmail")
    assert exe, "getmail6 is not installed (tools/install-peers.sh)"
    rc = work / "getmailrc"
    rc.write_text(
        "[retriever]\ntype = SimplePOP3SSLRetriever\nserver = 127.0.0.1\n"
        f"port = {setup.port('pop3s')}\nusername = {address}\npassword = {setup.passwords[address]}\n"
        f"ca_certs = {setup.cert}\n"
        f"[destination]\ntype = Maildir\npath = {md}/\n"
        # getmail never delivers to a maildir as root; as root the test delivers as nobody
        + ("user = nobody\n" if os.geteuid() == 0 else "")
        +
        f"[options]\ndelete = {'true' if delete else 'false'}\nread_all = false\nverbose = 2\n"
    )
    return subprocess.run([exe, "--getmaildir", str(work), "--rcfile", str(rc)], capture_output=True, timeout=120)


@pytest.fixture
def nobody_maildir() -> Iterator[Path]:
    """A maildir the delivering user can reach (pytest's root-only tmp dir is not)."""
    base = Path(tempfile.mkdtemp(prefix="pop3-getmail-"))
    try:
        base.chmod(0o755)
        md = maildir(base / "Maildir")
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            for p in [md, *md.iterdir()]:
                os.chown(p, nobody.pw_uid, nobody.pw_gid)
        yield md
    finally:
        shutil.rmtree(base)


def server_uids(setup: Setup, address: str) -> list[int]:
    import asyncio

    return asyncio.run(setup.inbox_uids(address))


def test_fetchmail_stls_fetch_and_delete(setup: Setup, tmp_path: Path) -> None:
    addr = setup.add_user("fm-delete", MSGS)
    md = maildir(tmp_path / "Maildir")
    r = fetchmail(setup, addr, tmp_path, md, keep=False)
    assert r.returncode == 0, r.stderr.decode() + r.stdout.decode()
    log = r.stderr.decode() + r.stdout.decode()
    assert "STLS" in log
    assert subjects(md) == ["peer one", "peer two"]
    assert any(b"\n..dotted" not in raw and b".dotted" in raw for raw in delivered(md))
    assert server_uids(setup, addr) == []


def test_fetchmail_keep_with_uidl_fetches_only_new(setup: Setup, tmp_path: Path) -> None:
    import asyncio

    addr = setup.add_user("fm-keep", MSGS)
    md = maildir(tmp_path / "Maildir")
    r = fetchmail(setup, addr, tmp_path, md, keep=True)
    assert r.returncode == 0, r.stderr.decode()
    assert subjects(md) == ["peer one", "peer two"]
    r = fetchmail(setup, addr, tmp_path, md, keep=True)
    assert r.returncode == 1, r.stderr.decode()  # 1: no new mail
    asyncio.run(setup.append(addr, [NEW]))
    r = fetchmail(setup, addr, tmp_path, md, keep=True)
    assert r.returncode == 0, r.stderr.decode()
    assert subjects(md) == ["peer one", "peer three", "peer two"]
    assert len(server_uids(setup, addr)) == 3


def test_getmail_implicit_tls_leave_on_server_then_delete(setup: Setup, tmp_path: Path,
                                                          nobody_maildir: Path) -> None:
    import asyncio

    addr = setup.add_user("gm", MSGS)
    md = nobody_maildir
    r = getmail(setup, addr, tmp_path, md, delete=False)
    assert r.returncode == 0, r.stderr.decode() + r.stdout.decode()
    assert subjects(md) == ["peer one", "peer two"]
    # leave on server: the UIDLs it saw are remembered, a second run fetches nothing new
    r = getmail(setup, addr, tmp_path, md, delete=False)
    assert r.returncode == 0 and subjects(md) == ["peer one", "peer two"], r.stderr.decode()
    asyncio.run(setup.append(addr, [NEW]))
    r = getmail(setup, addr, tmp_path, md, delete=True)
    assert r.returncode == 0, r.stderr.decode()
    assert subjects(md) == ["peer one", "peer three", "peer two"]
    # only the new message was downloaded again (no duplicates above); with delete on, getmail
    # also deletes the ones it had left on the server, through DELE + QUIT
    assert server_uids(setup, addr) == []
    body = next(raw for raw in delivered(md) if b"peer two" in raw)
    assert body.count(b"line\n") + body.count(b"line\r\n") == 3000
