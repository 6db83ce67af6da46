"""Queue entries written before archive markers had a MAC (docs/archive.md): the master signs their
markers once, at start, for entries older than ``archive.key`` only; their delivery then makes no
second archive copy, while an unsigned marker in a younger entry stays ignored (archived as usual)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from support.server import serve_users, wait_until

sys.path.insert(0, str(Path(__file__).parent))
from archiveserve import RULES, archived, message, setup_server, subjects

from mailsrv.config import ArchiveConfig, load
from mailsrv.delivery.archive import (
    KEY_FILE,
    SIGNED_STAMP,
    ArchiveRules,
    marker_key,
    sign_legacy,
    sign_old_markers,
)
from mailsrv.queue.store import SENT, Envelope, QRcpt, new_id, queue_dir

D = "example.test"
SENDER = "x@remote.test"


def rules(key: bytes) -> ArchiveRules:
    return ArchiveRules(ArchiveConfig(), None, key)


def test_an_old_marker_is_signed_and_then_honoured() -> None:
    key = os.urandom(32)
    a = rules(key)
    bob = f"bob@{D}"
    for old in ("x-mailsrv-archived;-", "x-mailsrv-archived;rfc822;bob@example.test"):
        assert not a.archived("127.0.0.1", SENDER, [(bob, old)])  # unsigned: archived again
        new = sign_legacy(key, SENDER, bob, old)
        assert new is not None and new.endswith(old.partition(";")[2])
        assert a.archived("127.0.0.1", SENDER, [(bob, new)])
        assert sign_legacy(key, SENDER, bob, new) is None  # signed already: left alone
        assert not rules(os.urandom(32)).archived("127.0.0.1", SENDER, [(bob, new)])  # another key's
    retry = sign_legacy(key, SENDER, f"archive@{D}", "x-mailsrv-archive;Legal")
    assert a.retry_folder("127.0.0.1", SENDER, f"archive@{D}", retry) == "Legal"
    assert a.retry_folder("127.0.0.1", SENDER, f"bob@{D}", retry) is None  # bound to its recipient
    for other in (None, "rfc822;bob@example.test", "x-mailsrv-other;-"):
        assert sign_legacy(key, SENDER, bob, other) is None


def entry(qdir: Any, created: float, rcpts: list[QRcpt], subject: str) -> str:
    env = Envelope(new_id(), SENDER, rcpts, created=created)
    qdir.add(env, message(subject).as_bytes().replace(b"\n", b"\r\n"))
    return env.id


def test_only_entries_older_than_the_key_are_signed_and_only_once(tmp_path: Path) -> None:
    key = marker_key(tmp_path)
    born = (tmp_path / KEY_FILE).stat().st_mtime
    q = queue_dir(tmp_path)
    old = entry(q, born - 60, [QRcpt(f"bob@{D}", orcpt="x-mailsrv-archived;-"),
                               QRcpt(f"archive@{D}", orcpt="x-mailsrv-archive;Legal"),
                               QRcpt(f"dave@{D}", orcpt="x-mailsrv-archived;-", status=SENT),
                               QRcpt("far@remote.test", orcpt="rfc822;far@remote.test")], "old")
    young = entry(q, born + 60, [QRcpt(f"bob@{D}", orcpt="x-mailsrv-archived;-")], "young")
    assert sign_old_markers(tmp_path, q.rewrite_orcpts) == 2
    a = rules(key)
    r = q.load(old).rcpts
    assert a.archived("127.0.0.1", SENDER, [(r[0].addr, r[0].orcpt)])
    assert a.retry_folder("127.0.0.1", SENDER, r[1].addr, r[1].orcpt) == "Legal"
    assert r[2].orcpt == "x-mailsrv-archived;-"  # sent already: nothing to deliver
    assert r[3].orcpt == "rfc822;far@remote.test"
    assert q.load(young).rcpts[0].orcpt == "x-mailsrv-archived;-"  # not ours: stays ignored
    assert (tmp_path / SIGNED_STAMP).read_text() == "2\n"
    assert sign_old_markers(tmp_path, q.rewrite_orcpts) is None  # once per data directory


def test_serve_delivers_an_old_entry_without_a_second_archive_copy(tmp_path: Path) -> None:
    cfg, users = setup_server(tmp_path, RULES)  # bob's and team@'s (dave's) mail in: archive@ Legal
    data_dir = load(cfg).server.data_dir
    marker_key(data_dir)  # the key as a worker made it (a version with MACs ran here before)
    born = (data_dir / KEY_FILE).stat().st_mtime
    q = queue_dir(data_dir)
    # an entry of the version before the MAC: bob's copy was archived at acceptance, then tempfailed
    entry(q, born - 3600, [QRcpt(f"bob@{D}", orcpt="x-mailsrv-archived;-")], "queued before the MAC")
    # the same unsigned marker in an entry younger than the key: not ours, archived as usual
    entry(q, time.time() + 5, [QRcpt(f"dave@{D}", orcpt="x-mailsrv-archived;-")], "unsigned after the key")
    srv = serve_users(cfg, users)
    try:
        srv.wait_for(r"archive\.markers_signed .*recipients=1")
        wait_until(lambda: subjects(srv, f"bob@{D}", "INBOX") == ["queued before the MAC"], timeout=60)
        wait_until(lambda: subjects(srv, f"dave@{D}", "INBOX") == ["unsigned after the key"], timeout=60)
        wait_until(lambda: q.ids() == [], timeout=30)
        assert archived(srv) == ["unsigned after the key"]  # the old entry: no second copy
    finally:
        assert srv.stop() == 0
