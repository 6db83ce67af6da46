"""Inotify watches are held only while someone waits: released with an account's last watch, shared ones
reference-counted, kernel-dropped ones forgotten (the count read from /proc/self/fdinfo of the descriptor)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mailsrv.config import StoreConfig
from mailsrv.store import Store, notify
from mailsrv.store.types import MailboxNotFound

MSG = b"From: a@example.test\r\nSubject: dropped\r\n\r\nhello\r\n"


def kernel_watches(fd: int) -> int:
    """Watches the kernel holds on inotify descriptor ``fd``: one ``inotify wd:`` line each."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        return sum(1 for line in f if line.startswith("inotify wd:"))


def watch(n: notify.Notifier, key: str, *paths: Path) -> notify.Watch:
    """What a watcher does (Account.watch): its paths, then a registered Watch."""
    for p in paths:
        n.add_path(key, p, notify.DIR_MASK if p.is_dir() else notify.FILE_MASK)
    w = notify.Watch(n, key)
    n.register(w)
    return w


def change(path: Path) -> None:
    """A change inotify reports: a file made and gone in a directory, a file's times."""
    if path.is_dir():
        (path / "x").write_bytes(b"x")
        (path / "x").unlink()
    else:
        os.utime(path)


def close_all(n: notify.Notifier, *watches: notify.Watch) -> None:
    """Close ``watches``, the last ones of their accounts: no inotify watch is left."""
    for w in watches:
        w.close()
    assert kernel_watches(n.fd) == n.watch_count == 0


async def wakes(w: notify.Watch, path: Path) -> bool:
    """Change ``path`` and wait for ``w`` to be woken."""
    change(path)
    return await w.wait(5)


@pytest.fixture
async def n() -> AsyncIterator[notify.Notifier]:
    notifier = notify.Notifier(asyncio.get_running_loop())
    assert kernel_watches(notifier.fd) == 0
    yield notifier
    notifier.close()


async def test_the_last_watch_of_an_account_unwatches_its_paths(tmp_path: Path, n: notify.Notifier) -> None:
    (tmp_path / "notify").write_bytes(b"")
    (tmp_path / "new").mkdir()
    w1 = watch(n, "a", tmp_path / "notify", tmp_path / "new")
    w2 = watch(n, "a", tmp_path / "notify", tmp_path / "new")  # a second stream: the same watches
    assert kernel_watches(n.fd) == n.watch_count == 2
    w1.close()
    assert kernel_watches(n.fd) == n.watch_count == 2  # w2 still waits
    assert await wakes(w2, tmp_path / "new")
    close_all(n, w2)
    assert not n._watches and not n._key_paths and not n._path_wd
    w3 = watch(n, "a", tmp_path / "notify")  # watched again from scratch
    assert kernel_watches(n.fd) == 1
    assert await wakes(w3, tmp_path / "notify")
    close_all(n, w3)


async def test_a_path_shared_by_two_accounts_stays_until_its_last_user(tmp_path: Path, n: notify.Notifier) -> None:
    shared = tmp_path / "queue"
    shared.mkdir()
    a = watch(n, "a", shared)
    b = watch(n, "b", shared)
    assert kernel_watches(n.fd) == n.watch_count == 1  # the kernel has one watch per inode
    a.close()
    assert kernel_watches(n.fd) == 1
    assert await wakes(b, shared)  # b is still woken by it
    close_all(n, b)


async def test_remove_path_unwatches_one_path(tmp_path: Path, n: notify.Notifier) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    w = watch(n, "a", one, two)
    assert kernel_watches(n.fd) == 2
    n.remove_path("a", one)
    n.remove_path("a", one)  # again: nothing
    n.remove_path("zz", two)  # another key's: nothing
    assert kernel_watches(n.fd) == n.watch_count == 1
    assert await wakes(w, two)
    close_all(n, w)


async def test_a_directory_deleted_and_made_again_is_watched_anew(tmp_path: Path, n: notify.Notifier) -> None:
    d = tmp_path / "new"
    d.mkdir()
    keep = watch(n, "a", d)
    d.rmdir()  # the kernel drops its watch: IN_IGNORED
    assert await keep.wait(5)
    deadline = asyncio.get_running_loop().time() + 5
    while n.watch_count and asyncio.get_running_loop().time() < deadline:
        await keep.wait(0.05)
    assert n.watch_count == 0 and kernel_watches(n.fd) == 0
    d.mkdir()
    again = watch(n, "a", d)  # an add_path that does not think it is watched already
    assert kernel_watches(n.fd) == 1
    assert await wakes(again, d)
    close_all(n, keep, again)


async def test_polling_forgets_the_paths_of_an_account_nobody_waits_on(tmp_path: Path) -> None:
    (tmp_path / "notify").write_bytes(b"")
    n = notify.Notifier(asyncio.get_running_loop(), poll=True)
    try:
        w = watch(n, "a", tmp_path / "notify")
        assert n.watch_count == 1
        w.close()
        assert n.watch_count == 0 and not n._key_paths
    finally:
        n.close()


async def test_store_account_watches_come_back_to_the_start(tmp_path: Path) -> None:
    store = Store(StoreConfig(), tmp_path)
    try:
        acct = await store.account("u")
        other = await store.account("v")
        n = store._notifier_for_loop()
        start = kernel_watches(n.fd)
        with acct.watch(), acct.watch(), other.watch():
            held = kernel_watches(n.fd)
            assert held > start and held == n.watch_count
        assert kernel_watches(n.fd) == n.watch_count == start
    finally:
        await store.close()


async def test_a_mailbox_watch_holds_four_paths_whatever_the_folders(tmp_path: Path) -> None:
    store = Store(StoreConfig(), tmp_path)
    try:
        acct = await store.account("u")
        await acct.create_mailbox("Lists")
        folders = len(await acct.list_mailboxes())  # INBOX, the special-use ones, Lists
        assert folders >= 5
        n = store._notifier_for_loop()
        with acct.watch():  # every folder's new/ and the notify file
            assert kernel_watches(n.fd) == n.watch_count == folders + 1
        with acct.watch("Lists") as w:  # the notify file, Lists' new/, cur/ and uidlist
            assert kernel_watches(n.fd) == n.watch_count == 4
            sent_new = Path(next(p for p in n._key_paths[acct.id] if p.endswith("new")))
            assert sent_new.parent.name.endswith("Lists")
            (sent_new.parent / "tmp" / "x").write_bytes(MSG)
            os.rename(sent_new.parent / "tmp" / "x", sent_new / "x")  # another program's delivery
            assert await w.wait(5)
            with acct.watch("Lists"):  # a second session of the mailbox: no new kernel watch
                assert kernel_watches(n.fd) == 4
        assert kernel_watches(n.fd) == n.watch_count == 0
        with pytest.raises(MailboxNotFound):
            acct.watch("Nowhere")
        assert kernel_watches(n.fd) == n.watch_count == 0 and not n._key_paths  # nothing left armed
    finally:
        await store.close()


async def test_a_mailbox_watch_finds_a_folder_whose_directory_its_name_does_not_make(tmp_path: Path) -> None:
    store = Store(StoreConfig(), tmp_path)
    try:
        acct = await store.account("u")
        odd = acct.engine.root / ".&AGE-"  # another program's modified UTF-7 for "a" (canonical: ".a")
        for sub in ("cur", "new", "tmp"):
            (odd / sub).mkdir(parents=True)
        assert "a" in {m.name for m in await acct.list_mailboxes()}
        n = store._notifier_for_loop()
        with acct.watch("a") as w:
            assert str(odd / "new") in n._key_paths[acct.id]
            assert kernel_watches(n.fd) == n.watch_count == 4
            (odd / "tmp" / "x").write_bytes(MSG)
            os.rename(odd / "tmp" / "x", odd / "new" / "x")
            assert await w.wait(5)
        assert kernel_watches(n.fd) == 0
    finally:
        await store.close()
