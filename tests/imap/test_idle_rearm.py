"""IDLE keeps hearing of changes after the mailbox's uidlist and the account's notify file were
replaced by a rename (a uidlist compaction, a restore): their inotify watches are armed again."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from imaptest import Raw, ServerHandle

from mailsrv.config import StoreConfig
from mailsrv.store import Store

MSG = b"From: a@example.test\r\nTo: alice@example.test\r\nSubject: rearm\r\n\r\nhello\r\n"


def _login(h: ServerHandle) -> Raw:
    c = Raw(h.host, h.port)
    assert c.cmd(b"l LOGIN alice@example.test wonderland")[-1].startswith(b"l OK")
    assert c.cmd(b"e ENABLE IMAP4rev2")[-1].startswith(b"e OK")
    return c


async def _other_worker_adds_keyword(data_dir: Path, root: Path, keyword: str) -> None:
    """What another worker process does: its own Store (and notifier) on the same files."""
    store = Store(StoreConfig(), data_dir)
    try:
        acct = await store.account(root.name, root)
        await acct.store_flags("INBOX", [1], frozenset({keyword}), "add")
    finally:
        await store.close()


def _replace_by_rename(path: Path) -> None:
    tmp = path.with_name(f".{path.name}.new")
    tmp.write_bytes(path.read_bytes())
    os.replace(tmp, path)


def test_idle_sees_changes_after_the_uidlist_and_notify_file_were_replaced(real_store: ServerHandle, tmp_path: Path) -> None:
    writer, idler = _login(real_store), _login(real_store)
    writer.send(b"a APPEND INBOX {%d+}\r\n" % len(MSG) + MSG + b"\r\n")
    assert writer.until(b"a")[-1].startswith(b"a OK")
    for c in (writer, idler):
        assert c.cmd(b"s SELECT INBOX")[-1].startswith(b"s OK")
    letters = b" ".join(b"k%02d" % i for i in range(26))
    assert writer.cmd(b"k STORE 1 +FLAGS.SILENT (" + letters + b")")[-1].startswith(b"k OK")
    assert idler.cmd(b"n NOOP")[-1].startswith(b"n OK")
    idler.send(b"i IDLE\r\n")
    assert idler.line() == b"+ idling\r\n"
    (root,) = {p.parent for p in tmp_path.rglob("mailsrv-notify")}
    (uidlist,) = root.glob("mailsrv-uidlist")
    _replace_by_rename(uidlist)
    _replace_by_rename(root / "mailsrv-notify")
    # a rename in cur/: once IDLE reports it, the events of the replacements (queued before) were read
    assert writer.cmd(b"w STORE 1 +FLAGS.SILENT (\\Seen)")[-1].startswith(b"w OK")
    assert idler.line().startswith(b"* 1 FETCH (FLAGS (\\Seen k00 ")
    # another worker sets a 27th keyword: past the 26 maildir letters it lives in the index only, so
    # the touch of the notify file is all that says so (no rename in cur/)
    asyncio.run(_other_worker_adds_keyword(tmp_path, root, "extra"))
    line = idler.line()
    assert line.startswith(b"* 1 FETCH (FLAGS (\\Seen extra k00 "), line
    writer.send(b"b APPEND INBOX {%d+}\r\n" % len(MSG) + MSG + b"\r\n")
    assert writer.until(b"b")[-1].startswith(b"b OK")
    assert idler.line() == b"* 2 EXISTS\r\n"
    idler.send(b"DONE\r\n")
    assert idler.until(b"i")[-1].startswith(b"i OK")
    writer.close()
    idler.close()
