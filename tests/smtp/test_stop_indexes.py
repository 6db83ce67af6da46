"""SIGTERM of a real server while acknowledged messages wait for the background indexer.

``mailsrv serve`` with ``[store] index_delay`` of an hour: the messages answered 250 are durable in
``new/`` and not indexed when the worker stops. Its stop indexes them (Store.close) and reports them to
search, which must still be open then (search closes after the store): no observer fails on a closed
search service, and the messages have UIDs in cur/ when the server is gone.
"""

from __future__ import annotations

import smtplib
from pathlib import Path

from support.server import ServerProcess, init_setup

from mailsrv.config import load
from mailsrv.directory import open_sync


def _message(n: int) -> bytes:
    return (f"From: x@remote.test\r\nTo: bob@example.test\r\nSubject: parting {n}\r\n"
            f"Message-ID: <stop{n}@remote.test>\r\n\r\nbody {n}\r\n").encode()


def test_stop_indexes_waiting_messages_and_reports_them_to_an_open_search(tmp_path: Path) -> None:
    cfg_path = init_setup(tmp_path / "s", "--demo")
    with open(cfg_path, "a") as fh:
        fh.write("\n[store]\nindex_delay = 3600.0\n")  # nothing indexed before the stop
    cfg = load(cfg_path)
    info = open_sync(cfg.directory, cfg.server.data_dir).user_info("bob@example.test")
    maildir = cfg.server.data_dir / info["store"]
    srv = ServerProcess(cfg_path).wait_ready()
    try:
        with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=60) as c:
            c.ehlo("client.test")
            for n in range(5):
                assert c.sendmail("x@remote.test", ["bob@example.test"], _message(n)) == {}  # 250
        assert len([p for p in (maildir / "new").iterdir() if not p.name.startswith(".")]) == 5
    finally:
        assert srv.stop() == 0
    failed = [line for line in srv.lines if "observer.failed" in line]
    assert not failed, failed
    assert len([p for p in (maildir / "cur").iterdir() if not p.name.startswith(".")]) == 5
