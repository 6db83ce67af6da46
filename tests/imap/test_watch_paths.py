"""An IMAP session watches only its selected mailbox: the account's notify file and the mailbox's new/,
cur/ and uidlist (four inotify watches, whatever the account's folders); its IDLE shares them; another
program's delivery into the mailbox still wakes IDLE and NOOP at once; nothing stays watched after it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from imaptest import ServerHandle, login, ok, serve_real_store
from support.server import wait_until

from mailsrv.store import Store

MSG = b"From: a@example.test\r\nTo: alice@example.test\r\nSubject: dropped %d\r\n\r\nhello\r\n"


def _watched(h: ServerHandle) -> tuple[int, set[str]]:
    """(kernel watches of the worker's inotify descriptor, paths watched for the account)."""

    async def read() -> tuple[int, set[str]]:
        store: Store = h.store
        notifier = store._notifier_for_loop()
        paths: set[str] = set()
        for key_paths in notifier._key_paths.values():
            paths |= key_paths
        return notifier.fd, paths

    fd, paths = h.call(read())
    with open(f"/proc/self/fdinfo/{fd}") as f:
        kernel = sum(1 for line in f if line.startswith("inotify wd:"))
    return kernel, paths


def _drop(new: Path, i: int) -> None:
    """What another program's delivery does: a file written in tmp/, renamed into new/."""
    tmp = new.parent / "tmp" / f"drop{i}"
    tmp.write_bytes(MSG % i)
    os.rename(tmp, new / f"drop{i}")


def test_a_session_watches_its_selected_mailbox_only(tmp_path: Path) -> None:
    with serve_real_store(tmp_path) as h:
        c = login(h, "alice@example.test")
        listed: Any = ok(c, b'x LIST "" "*"')
        assert len(listed) - 1 >= 5  # INBOX and the special-use folders: one new/ each
        ok(c, b"s SELECT INBOX")
        kernel, paths = _watched(h)
        assert kernel == 4, paths
        assert sorted(os.path.basename(p) for p in paths) == ["cur", "mailsrv-notify", "mailsrv-uidlist", "new"]
        (new,) = (Path(p) for p in paths if p.endswith("new"))
        c.send(b"i IDLE\r\n")
        assert c.line() == b"+ idling\r\n"
        assert _watched(h)[0] == 4  # the IDLE's watch shares the session's kernel watches
        _drop(new, 1)
        assert c.line() == b"* 1 EXISTS\r\n"
        c.send(b"DONE\r\n")
        assert c.until(b"i")[-1].startswith(b"i OK")
        _drop(new, 2)
        assert b"* 2 EXISTS\r\n" in ok(c, b"n NOOP")
        ok(c, b"s2 SELECT Sent")
        kernel, paths = _watched(h)
        assert kernel == 4 and str(new) not in paths and str(new.parent / "cur") not in paths, paths
        ok(c, b"z LOGOUT")
        c.close()
        wait_until(lambda: _watched(h) == (0, set()), timeout=5)
