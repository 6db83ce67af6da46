"""NOOP (and every selected-state command) skips the store's refresh job when nothing can have
changed, yet a change made by another session just before the NOOP is reported at that NOOP
(RFC 9051 §6.1.2: NOOP is the poll), over inotify and over the stat-polling fallback."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from imaptest import Raw, ServerHandle, serve_real_store

from mailsrv.store import notify

MSG = b"From: a@example.test\r\nTo: alice@example.test\r\nSubject: fresh\r\n\r\nhello\r\n"


def _login(h: ServerHandle) -> Raw:
    c = Raw(h.host, h.port)
    assert c.cmd(b"l LOGIN alice@example.test wonderland")[-1].startswith(b"l OK")
    return c


def _append(c: Raw, msg: bytes = MSG) -> None:
    c.send(b"a APPEND INBOX {%d+}\r\n" % len(msg) + msg + b"\r\n")
    assert c.until(b"a")[-1].startswith(b"a OK")


def _two_sessions(h: ServerHandle) -> tuple[Raw, Raw]:
    writer, poller = _login(h), _login(h)
    _append(writer)
    _append(writer)
    for c in (writer, poller):
        assert c.cmd(b"e ENABLE IMAP4rev2")[-1].startswith(b"e OK")  # no \\Recent: one reply shape
        assert c.cmd(b"s SELECT INBOX")[-1].startswith(b"s OK")
    return writer, poller


def _noop(c: Raw) -> list[bytes]:
    out = c.cmd(b"n NOOP")
    assert out[-1].startswith(b"n OK")
    return out[:-1]


def _changes_seen_at_the_next_noop(writer: Raw, poller: Raw, account_root: Path) -> None:
    """Each change, made right before the poller's NOOP, is in that NOOP's reply."""
    assert writer.cmd(b"w STORE 1 +FLAGS (\\Flagged)")[-1].startswith(b"w OK")
    assert _noop(poller) == [b"* 1 FETCH (FLAGS (\\Flagged))\r\n"]
    _append(writer)
    assert _noop(poller) == [b"* 3 EXISTS\r\n"]
    assert writer.cmd(b"w STORE 2 +FLAGS.SILENT (\\Deleted)")[-1].startswith(b"w OK")
    assert writer.cmd(b"x EXPUNGE")[-1].startswith(b"x OK")
    assert _noop(poller) == [b"* 2 EXPUNGE\r\n", b"* 2 EXISTS\r\n"]
    # another program (mutt on the same maildir) marks the first message seen: a rename in cur/
    cur = account_root / "cur"
    # message 1 is the only flagged one (file names do not sort in UID order)
    (first,) = [name for name in os.listdir(cur) if "F" in name.partition(":2,")[2]]
    base, _, flags = first.partition(":2,")
    os.rename(cur / first, cur / f"{base}:2,{''.join(sorted(flags + 'S'))}")
    assert _noop(poller) == [b"* 1 FETCH (FLAGS (\\Flagged \\Seen))\r\n"]


def _account_root(tmp_path: Path) -> Path:
    (notify_file,) = tmp_path.rglob("mailsrv-notify")
    return notify_file.parent


def test_noop_without_changes_runs_no_store_job_and_changes_still_show(
        real_store: ServerHandle, jobs: list[Any], tmp_path: Path) -> None:
    writer, poller = _two_sessions(real_store)
    _noop(poller)
    jobs.clear()
    for _ in range(5):
        assert _noop(poller) == []
    assert poller.cmd(b"f FETCH 1 (FLAGS)")[-1].startswith(b"f OK")
    assert jobs == []  # the flag fetch reads the snapshot; no refresh went to the pool either
    _changes_seen_at_the_next_noop(writer, poller, _account_root(tmp_path))
    assert _noop(writer) == [b"* 1 FETCH (FLAGS (\\Flagged \\Seen))\r\n"]
    _noop(poller)  # the poller's own sync of the rename was a write: one more look
    jobs.clear()
    for _ in range(3):
        assert _noop(poller) == [] and _noop(writer) == []
    assert jobs == []
    # files beside the maildir that are no message change (search index, SQLite) wake nobody
    root = _account_root(tmp_path)
    (root / "search-like.tmp").write_bytes(b"x")
    os.rename(root / "search-like.tmp", root / "search-like")
    assert _noop(poller) == [] and jobs == []
    # the uidlist growing behind our back (another writer's UID not yet announced) is looked at
    with open(root / "mailsrv-uidlist", "ab") as fh:
        fh.write(b"")
    assert _noop(poller) == [] and len(jobs) == 1
    writer.close()
    poller.close()


def test_without_inotify_every_noop_refreshes(tmp_path: Path, jobs: list[Any],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The polling fallback lags by up to POLL_INTERVAL: the refresh is never skipped there."""
    def no_inotify() -> int:
        raise AttributeError("inotify_init1")  # what a libc without inotify gives

    monkeypatch.setattr(notify, "_inotify_init", no_inotify)
    with serve_real_store(tmp_path, jobs) as handle:
        writer, poller = _two_sessions(handle)
        jobs.clear()
        assert _noop(poller) == []
        assert jobs  # refreshed, although nothing changed
        _changes_seen_at_the_next_noop(writer, poller, _account_root(tmp_path))
        writer.close()
        poller.close()
