"""The real thing: ``mailsrv serve`` (master + 2 workers) speaking IMAP over implicit TLS and STARTTLS.

A message that arrives in the maildir is announced by IDLE on every connection,
whichever worker holds it: the change travels through the store's files, not memory.
"""

from __future__ import annotations

import imaplib
import os
import re
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import imapclient
import pytest
from support.server import ServerProcess, init_setup, mailsrv_cmd

from mailsrv import config as config_mod

MSG = b"From: bob@example.test\r\nTo: alice@example.test\r\nSubject: across workers\r\n\r\nhi\r\n"


def _keep_imap_listeners(cfg_path: Path) -> None:
    """Only the IMAP listeners: this test is about IMAP, not the other services."""
    out, skipping = [], False
    for line in cfg_path.read_text().splitlines():
        m = re.match(r"\[listener\.([^\]]+)\]", line)
        if m:
            skipping = m.group(1) not in ("imap", "imaps")
        elif line.startswith("["):
            skipping = False
        if not skipping:
            out.append(line)
    cfg_path.write_text("\n".join(out) + "\n")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, ssl.SSLContext]]:
    base = tmp_path_factory.mktemp("imapserve")
    cfg_path = init_setup(base / "s", workers=2)
    _keep_imap_listeners(cfg_path)
    for args, stdin in ((("domain", "add", "example.test"), None),
                        (("user", "add", "alice@example.test", "--password-stdin"), "wonderland\n")):
        subprocess.run(mailsrv_cmd(*args, "-c", str(cfg_path)), input=stdin, text=True, check=True,
                       capture_output=True, timeout=60)
    cfg = config_mod.load(cfg_path)
    ctx = ssl.create_default_context(cafile=str(cfg.tls.cert))
    ctx.check_hostname = False
    server = ServerProcess(cfg_path)
    server.extra_data_dir = cfg.server.data_dir  # type: ignore[attr-defined]
    try:
        server.wait_ready()
        yield server, ctx
    finally:
        server.stop()


def _idlers(port: int, ctx: ssl.SSLContext, n: int) -> list[imapclient.IMAPClient]:
    out = []
    for _ in range(n):  # several connections: with two workers, some land on the other one
        w = imapclient.IMAPClient("127.0.0.1", port, ssl=True, ssl_context=ctx, timeout=20)
        w.login("alice@example.test", "wonderland")
        w.select_folder("INBOX")
        w.idle()
        out.append(w)
    return out


def _wait_exists(w: imapclient.IMAPClient, count: int) -> None:
    """IDLE until an EXISTS of at least ``count`` arrives (responses may come in several batches)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for resp in w.idle_check(timeout=max(0.1, deadline - time.monotonic())):
            if len(resp) == 2 and resp[1] == b"EXISTS" and resp[0] >= count:
                return
    raise AssertionError(f"no EXISTS {count} within the deadline")


def test_imaps_idle_across_workers_sees_appends(served: tuple[ServerProcess, ssl.SSLContext]) -> None:
    """APPENDs from several connections while IDLE on both workers moves files new/ -> cur/.

    Regression: an APPEND failed with FileNotFoundError (NO [UNAVAILABLE]) when the other
    worker's refresh renamed the file out of new/ while the append was still indexing it.
    """
    server, ctx = served
    port = server.ports["imaps"]
    c = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=ctx, timeout=20)
    c.login("alice@example.test", "wonderland")
    typ, data = c.select("INBOX")
    before = int(data[0])
    c.logout()
    watchers = _idlers(port, ctx, 4)
    appenders = []
    for _ in range(4):
        a = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=ctx, timeout=20)
        a.login("alice@example.test", "wonderland")
        appenders.append(a)
    rounds, errors = 10, []

    def run(a: imaplib.IMAP4_SSL, n: int) -> None:
        for i in range(rounds):
            msg = MSG.replace(b"across workers", f"append {n}.{i}".encode())
            if i % 3 == 0:  # larger than the literal spool threshold: the store links the spool file
                msg += (b"x" * 78 + b"\r\n") * 4000
            typ, resp = a.append("INBOX", "", None, msg)  # type: ignore[arg-type]
            if typ != "OK":
                errors.append(resp)

    threads = [threading.Thread(target=run, args=(a, n)) for n, a in enumerate(appenders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    total = before + rounds * len(appenders)
    for w in watchers:
        _wait_exists(w, total)
        w.idle_done()
        w.logout()
    for a in appenders:
        a.select("INBOX")
        typ, data = a.search(None, "SUBJECT", '"append 3.9"')
        assert typ == "OK" and len(data[0].split()) == 1
        a.logout()
    c = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=ctx, timeout=20)
    c.login("alice@example.test", "wonderland")
    typ, data = c.select("INBOX")
    assert int(data[0]) == total
    typ, data = c.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    subjects = sorted(x[1] for x in data if isinstance(x, tuple))
    assert len(subjects) == total and len(set(subjects)) == total
    c.logout()


def test_imaps_idle_across_workers_sees_a_delivery(served: tuple[ServerProcess, ssl.SSLContext]) -> None:
    server, ctx = served
    port = server.ports["imaps"]
    c = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=ctx, timeout=20)
    c.login("alice@example.test", "wonderland")
    typ, data = c.select("INBOX")
    total = int(data[0]) + 1
    c.logout()
    watchers = _idlers(port, ctx, 4)
    # Another program (an MDA) drops a message into new/: every worker's IDLE hears of it.
    maildir = server.extra_data_dir / "mail" / "example.test" / "alice"
    tmp = maildir / "tmp" / "1800000000.drop.host"
    tmp.write_bytes(MSG)
    tmp.rename(maildir / "new" / tmp.name)
    for w in watchers:
        _wait_exists(w, total)
        w.idle_done()
        w.logout()
    c = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=ctx, timeout=20)
    c.login("alice@example.test", "wonderland")
    c.select("INBOX")
    typ, data = c.fetch(str(total), "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert data[0][1] == b"Subject: across workers\r\n\r\n"
    c.logout()


def test_starttls_listener(served: tuple[ServerProcess, ssl.SSLContext]) -> None:
    server, ctx = served
    c = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=20)
    assert "STARTTLS" in c.capabilities
    c.starttls(ssl_context=ctx)
    assert c.login("alice@example.test", "wonderland")[0] == "OK"
    typ, data = c.list()
    assert typ == "OK" and any(b"\\Sent" in line for line in data)
    c.logout()


def _server_inode(server_port: int, client_port: int) -> int:
    """The socket inode of the server side of a loopback TCP connection (/proc/net/tcp)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if int(f[1].rsplit(":", 1)[1], 16) == server_port and int(f[2].rsplit(":", 1)[1], 16) == client_port:
                return int(f[9])
    raise AssertionError(f"no server socket for client port {client_port}")


def _worker_of(server: ServerProcess, conn: imaplib.IMAP4, port: int) -> int:
    """The pid of the worker process holding ``conn``."""
    needle = f"socket:[{_server_inode(port, conn.sock.getsockname()[1])}]"
    for pid in server.worker_pids():
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == needle:
                    return pid
            except FileNotFoundError:
                continue
    raise AssertionError("connection held by no worker")


def _login(served: tuple[ServerProcess, ssl.SSLContext]) -> imaplib.IMAP4_SSL:
    server, ctx = served
    c = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=ctx, timeout=20)
    c.login("alice@example.test", "wonderland")
    return c


def _on_two_workers(served: tuple[ServerProcess, ssl.SSLContext]) -> tuple[imaplib.IMAP4_SSL, imaplib.IMAP4_SSL]:
    """Two logged-in connections held by different workers (connections land where the kernel
    puts them: open until both are hit; the spare ones are logged out)."""
    server = served[0]
    port = server.ports["imaps"]
    by_worker: dict[int, imaplib.IMAP4_SSL] = {}
    spare = []
    for _ in range(40):
        c = _login(served)
        pid = _worker_of(server, c, port)
        if pid in by_worker:
            spare.append(c)
        else:
            by_worker[pid] = c
        if len(by_worker) == 2:
            break
    for c in spare:
        c.logout()
    assert len(by_worker) == 2, "all connections landed on one worker"
    a, b = by_worker.values()
    return a, b


def _recent(c: imaplib.IMAP4) -> int:
    return int(c.response("RECENT")[1][0] or 0)


def test_recent_is_claimed_once_across_workers(served: tuple[ServerProcess, ssl.SSLContext]) -> None:
    """RFC 3501 §2.3.2: \\Recent in exactly one session, whichever worker holds the others."""
    feeder = _login(served)
    assert feeder.create("RecentBox")[0] == "OK"
    for i in range(3):
        feeder.append("RecentBox", "", None, MSG.replace(b"across workers", b"recent %d" % i))  # type: ignore[arg-type]
    a, b = _on_two_workers(served)
    typ, data = a.select("RecentBox")
    assert data == [b"3"] and _recent(a) == 3
    typ, data = a.fetch("1:3", "(FLAGS)")
    assert all(b"\\Recent" in line for line in data)
    typ, data = b.select("RecentBox")
    assert data == [b"3"] and _recent(b) == 0
    typ, data = b.search(None, "RECENT")
    assert data == [b""]
    assert b"RECENT 0" in feeder.status("RecentBox", "(RECENT)")[1][0]
    # new mail: the first session told of it (b, by its NOOP) holds it; a, told later, does not
    feeder.append("RecentBox", "", None, MSG)  # type: ignore[arg-type]
    assert b"RECENT 1" in feeder.status("RecentBox", "(RECENT)")[1][0]
    b.noop()
    assert _recent(b) == 1
    a.noop()
    assert _recent(a) == 3
    typ, data = b.fetch("4", "(FLAGS)")
    assert b"\\Recent" in data[0]
    typ, data = a.fetch("4", "(FLAGS)")
    assert b"\\Recent" not in data[0]
    # several sessions racing to SELECT new mail: each message is recent in exactly one of them
    for _ in range(4):
        feeder.append("RecentBox", "", None, MSG)  # type: ignore[arg-type]
    racers = [_login(served) for _ in range(4)]
    counts: list[int] = []

    def select(c: imaplib.IMAP4_SSL) -> None:
        c.select("RecentBox")
        typ, data = c.search(None, "RECENT")
        counts.extend(int(n) for n in data[0].split())

    threads = [threading.Thread(target=select, args=(c,)) for c in racers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(counts) == [5, 6, 7, 8]
    for c in (*racers, a, b, feeder):
        c.logout()


def test_noop_on_another_worker_reports_a_change_made_just_before(
        served: tuple[ServerProcess, ssl.SSLContext]) -> None:
    """RFC 9051 §6.1.2: NOOP is the poll. A STORE/APPEND/EXPUNGE answered OK by one worker is in the
    reply to a NOOP sent right after it to another worker (which skips the store when nothing changed)."""
    writer, poller = _on_two_workers(served)
    assert writer.create("FreshBox")[0] == "OK"
    for c in (writer, poller):
        assert c.select("FreshBox")[0] == "OK"
        c.response("EXISTS")
    count = 0
    for i in range(5):
        assert writer.append("FreshBox", "", None, MSG.replace(b"across workers", b"fresh %d" % i))[0] == "OK"  # type: ignore[arg-type]
        count += 1
        assert poller.noop()[0] == "OK"
        assert poller.response("EXISTS")[1] == [str(count).encode()]
        assert writer.store(str(count), "+FLAGS", "(\\Flagged)")[0] == "OK"
        assert poller.noop()[0] == "OK"
        fetched = poller.response("FETCH")[1]
        assert fetched and b"%d (FLAGS (\\Flagged" % count in fetched[0]
        if i % 2:
            assert writer.store("1", "+FLAGS.SILENT", "(\\Deleted)")[0] == "OK"
            assert writer.expunge()[0] == "OK"
            count -= 1
            assert poller.noop()[0] == "OK"
            assert poller.response("EXPUNGE")[1] == [b"1"]
            assert poller.response("EXISTS")[1] == [str(count).encode()]
        assert poller.noop()[0] == "OK"  # nothing new: nothing reported
        assert poller.response("EXISTS")[1] == [None] and poller.response("FETCH")[1] == [None]
    writer.logout()
    poller.logout()
