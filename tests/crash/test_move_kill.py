"""kill -9 in the middle of a MOVE (found by test_chaos.py): each message ends in the source or the
target, never in both (RFC 6851 §3.3: "The server SHOULD NOT leave any message in both mailboxes").

A forked child moves messages and SIGKILLs itself at the fsync of the target's cur/ (the messages are
in the target's cur/ then, the index transaction not committed); a fresh Store then finds each message
exactly once, with its UID in the source or the one the target's uidlist gave it.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from support.forked import read_pipe, spawn

from mailsrv.config import StoreConfig
from mailsrv.store import Store
from mailsrv.util import fsio


def _msg(n: int) -> bytes:
    return f"From: a@x.test\r\nSubject: move {n}\r\nMessage-ID: <move{n}@x.test>\r\n\r\nbody {n}\r\n".encode()


async def _child(data_dir: Path, wfd: int, count: int) -> None:
    store = Store(StoreConfig(), data_dir, hostname="crash.test")
    acct = await store.account("u")
    await acct.create_mailbox("Target")
    uids = [await acct.append("INBOX", _msg(n)) for n in range(count)]
    real = fsio.fsync_dir

    def fsync_dir(path: Path) -> None:
        if Path(path).name == "cur" and "Target" in str(path):
            os.kill(os.getpid(), signal.SIGKILL)  # the moved files are in Target/cur/, nothing committed
        real(path)

    fsio.fsync_dir = fsync_dir  # type: ignore[assignment]  # this forked child only
    os.write(wfd, b"moving\n")
    await acct.move("INBOX", uids, "Target")
    os.write(wfd, b"moved\n")  # not reached


async def _where(data_dir: Path) -> dict[str, list[tuple[str, int]]]:
    store = Store(StoreConfig(), data_dir, hostname="check.test")
    try:
        acct = await store.account("u")
        out: dict[str, list[tuple[str, int]]] = {}
        for name in ("INBOX", "Target"):
            for m in (await acct.open_mailbox(name)).messages:
                raw = await acct.read_message(name, m.uid)
                subject = raw.split(b"Subject: ")[1].split(b"\r\n")[0].decode()
                out.setdefault(subject, []).append((name, m.uid))
        return out
    finally:
        await store.close()


@pytest.mark.parametrize("count", [1, 3])
def test_kill_9_during_move_leaves_each_message_in_one_mailbox(tmp_path: Path, count: int) -> None:
    import asyncio
    import time

    pid, fd = spawn(lambda w: _child(tmp_path, w, count), tmp_path / "err")
    got = read_pipe(fd, time.monotonic() + 60)
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (got, (tmp_path / "err").read_text()
                                                                                if (tmp_path / "err").exists() else "")
    assert got == b"moving\n"
    where = asyncio.run(_where(tmp_path))
    assert sorted(where) == [f"move {n}" for n in range(count)]
    for subject, places in where.items():
        assert len(places) == 1, (subject, places)  # moved or not, never both
    again = asyncio.run(_where(tmp_path))
    assert again == where  # and it stays so (UIDs kept)
