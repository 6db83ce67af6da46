"""kill -9 (and SIGTERM) of a real server between the SMTP 250 and the background indexing of the messages.

``mailsrv serve`` with ``[store] index_delay`` of an hour: every acknowledged
message is durable in ``new/`` and none has a UID yet. The whole process tree
is SIGKILLed; after it, every acknowledged message is found, indexed exactly
once, with fresh UIDs, and keeps them across another open. A SIGTERM instead indexes them at the
worker's stop.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import smtplib
from pathlib import Path

from support.server import ServerProcess, init_setup

from mailsrv.config import StoreConfig, load
from mailsrv.directory import open_sync
from mailsrv.store import Store

MSGID = re.compile(rb"Message-ID: <(crash\d+)@remote\.test>")


def _message(n: int) -> bytes:
    return (f"From: x@remote.test\r\nTo: bob@example.test\r\nSubject: crash {n}\r\n"
            f"Message-ID: <crash{n}@remote.test>\r\n\r\nbody {n}\r\n").encode()


async def _inbox(data_dir: Path, account_id: str, maildir: Path) -> dict[int, str]:
    store = Store(StoreConfig(), data_dir, hostname="check.test")
    try:
        acct = await store.account(account_id, maildir)
        view = await acct.open_mailbox("INBOX")
        out: dict[int, str] = {}
        for m in view.messages:
            found = MSGID.search(await acct.read_message("INBOX", m.uid))
            if found:
                out[m.uid] = found.group(1).decode()
        return out
    finally:
        await store.close()


def _serve_unindexed(tmp_path: Path, count: int) -> tuple[ServerProcess, Path, Path, str]:
    """A running demo server whose indexer never runs (index_delay an hour), with ``count`` messages to
    bob acknowledged (250) and waiting in new/; returns (server, data_dir, bob's maildir, his account id)."""
    cfg_path = init_setup(tmp_path / "s", "--demo")
    with open(cfg_path, "a") as fh:
        fh.write("\n[store]\nindex_delay = 3600.0\n")
    cfg = load(cfg_path)
    info = open_sync(cfg.directory, cfg.server.data_dir).user_info("bob@example.test")
    maildir = cfg.server.data_dir / info["store"]
    srv = ServerProcess(cfg_path).wait_ready()
    try:
        with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=60) as c:
            c.ehlo("client.test")
            for n in range(count):
                assert c.sendmail("x@remote.test", ["bob@example.test"], _message(n)) == {}  # 250
        new = [p for p in (maildir / "new").iterdir() if not p.name.startswith(".")]
        assert len(new) == count  # acknowledged, durable in new/, not indexed
        assert not [p for p in (maildir / "cur").iterdir()]
    except BaseException:
        srv.stop()
        raise
    return srv, cfg.server.data_dir, maildir, str(info["id"])


def test_sigkill_after_250_before_indexing(tmp_path: Path) -> None:
    srv, data_dir, maildir, account_id = _serve_unindexed(tmp_path, 20)
    try:
        for pid in srv.worker_pids():
            os.kill(pid, signal.SIGKILL)
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(30)
    finally:
        srv.stop()
    first = asyncio.run(_inbox(data_dir, account_id, maildir))
    assert sorted(first.values()) == sorted(f"crash{n}" for n in range(20))  # each once
    assert sorted(first) == list(range(1, 21))
    assert asyncio.run(_inbox(data_dir, account_id, maildir)) == first


def test_stop_indexes_waiting_messages_and_reports_them_to_an_open_search(tmp_path: Path) -> None:
    """SIGTERM while acknowledged messages wait for the indexer: the worker's stop indexes them
    (Store.close) and reports them to search, which must still be open then (it closes after the
    store): no observer fails on a closed search service, and the messages are in cur/ afterwards."""
    srv, _, maildir, _ = _serve_unindexed(tmp_path, 5)
    assert srv.stop() == 0
    failed = [line for line in srv.lines if "observer.failed" in line]
    assert not failed, failed
    assert len([p for p in (maildir / "cur").iterdir() if not p.name.startswith(".")]) == 5
