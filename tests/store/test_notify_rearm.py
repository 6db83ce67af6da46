"""A watched file replaced by a rename (a compacted uidlist, a notify file restored from a backup) keeps
waking its account's waiters: its kernel watch went with the old inode, and is armed again on the new one."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mailsrv.config import StoreConfig
from mailsrv.store import Store, notify

from .conftest import msg
from .test_notify_release import kernel_watches, watch


def replace_by_rename(path: Path) -> None:
    """What a uidlist compaction or rsync does: a new file with the same content renamed over ``path``."""
    tmp = path.with_name(f".{path.name}.new")
    tmp.write_bytes(path.read_bytes())
    os.replace(tmp, path)


@pytest.fixture
async def n() -> AsyncIterator[notify.Notifier]:
    notifier = notify.Notifier(asyncio.get_running_loop())
    yield notifier
    notifier.close()


async def test_a_file_replaced_by_a_rename_is_watched_on_its_new_inode(tmp_path: Path, n: notify.Notifier) -> None:
    f = tmp_path / "uidlist"
    f.write_bytes(b"3 V1 N1\n")
    w = watch(n, "a", f)
    replace_by_rename(f)
    assert await w.wait(5)  # the replacement itself wakes (the old inode's IN_ATTRIB / IN_IGNORED)
    while await w.wait(0.05):  # both events may come in two reads
        pass
    assert n.watch_count == kernel_watches(n.fd) == 1  # watched again, on the new inode
    os.utime(f)
    assert await w.wait(5), "a change to the new file woke nobody"
    w.close()
    assert n.watch_count == kernel_watches(n.fd) == 0


async def test_nobody_waiting_means_no_rearm(tmp_path: Path, n: notify.Notifier) -> None:
    f = tmp_path / "uidlist"
    f.write_bytes(b"x")
    w = watch(n, "a", f)
    other = watch(n, "b", tmp_path)  # keeps the descriptor busy for the read that sees the IN_IGNORED
    w.close()
    replace_by_rename(f)
    assert await other.wait(5)
    assert n.watch_count == kernel_watches(n.fd) == 1  # only b's directory
    other.close()


async def test_account_watch_wakes_for_a_flag_change_after_its_notify_file_was_replaced(tmp_path: Path) -> None:
    """JMAP push's watch (notify file + new/ dirs): a flag change touches only the notify file."""
    store = Store(StoreConfig(), tmp_path)
    writer = Store(StoreConfig(), tmp_path)  # another worker: a store of its own on the same files
    try:
        acct = await store.account("u")
        await acct.append("INBOX", msg(1))
        other = await writer.account("u")
        with acct.watch() as w:
            replace_by_rename(acct.engine.notify_path)
            assert await w.wait(5)
            while await w.wait(0.05):
                pass
            await other.store_flags("INBOX", [1], frozenset({"\\Seen"}), "add")
            assert await w.wait(5), "the flag change woke nobody"
    finally:
        await writer.close()
        await store.close()
