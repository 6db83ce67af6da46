"""The delivery path's timeline (MAILSRV_TIMELINE, util/timeline.py) under a real ``mailsrv serve``:
each message accepted over SMTP leaves one record whose stamps follow the path in order, tied to the
group-commit round that made it durable, the round to the sync that covered it; and the worker
writes them only when it exits."""

from __future__ import annotations

import json
import re
import smtplib
import subprocess
import sys
import threading
from pathlib import Path

from support.server import ServerProcess, init_setup

from mailsrv.util import timeline

MSG = b"From: a@remote.test\r\nTo: bob@example.test\r\nSubject: timeline\r\n\r\nhello\r\n"
SENDERS = 4
EACH = 3


def _send(port: int, errors: list[BaseException]) -> None:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
            for _ in range(EACH):
                c.sendmail("a@remote.test", ["bob@example.test"], MSG)
    except BaseException as exc:  # reported by the test
        errors.append(exc)


def test_each_message_is_stamped_in_path_order(tmp_path: Path) -> None:
    cfg = init_setup(tmp_path / "s", "--demo", workers=1)
    prefix = str(tmp_path / "tl")
    srv = ServerProcess(cfg, env={"MAILSRV_TIMELINE": prefix}).wait_ready()
    try:
        errors: list[BaseException] = []
        threads = [threading.Thread(target=_send, args=(srv.ports["smtp"], errors)) for _ in range(SENDERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert not list(tmp_path.glob("tl.*.json"))  # nothing written while the worker runs
    finally:
        assert srv.stop() == 0
    [dump] = [str(p) for p in tmp_path.glob("tl.*.json")]
    assert re.fullmatch(r".*/tl\.\d+\.json", dump)
    doc = json.loads(Path(dump).read_text())
    messages = doc["messages"]
    assert len(messages) == SENDERS * EACH
    rounds = {r["id"]: r for r in doc["rounds"]}
    syncs = {s["no"]: s for s in doc["syncs"]}
    for m in messages:
        stamps = [m[s] for s in timeline.MESSAGE_STAGES if s != "written" or "early" not in m]
        assert stamps == sorted(stamps), m
        r = rounds[m["round"]]
        assert r["submit"] <= r["start"] <= m["work"] <= r["worked"] <= r["synced"] <= r["answered"] <= m["resumed"]
        if "early" in m:  # its 250 from the round's thread (mailsrv.smtp.early): after the sync, before the answer
            assert r["synced"] <= m["written"] <= r["answered"], m
        s = syncs[r["sync_no"]]
        assert m["join"] <= s["start"] <= s["end"] <= r["synced"]  # a sync that began after the message joined
    assert any("early" in m for m in messages)  # plaintext sessions: most 250s from the round's thread
    assert sum(r["n"] for r in doc["rounds"]) == SENDERS * EACH
    assert sum(j["kind"] == "_GroupCommit._round_job" for j in doc["jobs"]) == len(rounds)
    summary = timeline.summarize([dump])
    assert summary["messages"] == SENDERS * EACH
    assert summary["stages_ms"]["sync"][0] >= 0
    printed = subprocess.run([sys.executable, "-m", "mailsrv.util.timeline", dump], check=True, capture_output=True,
                             text=True).stdout
    assert printed.startswith(f"{SENDERS * EACH} messages;") and "sync" in printed
