"""Inotify watches are held only while someone waits: released with an account's last watch, shared ones
reference-counted, kernel-dropped ones forgotten (the count read from /proc/self/fdinfo of the descriptor)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from mailsrv.config import StoreConfig
from mailsrv.store import Store, notify


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


def touch(path: Path) -> None:
    if path.is_dir():
        (path / "x").write_bytes(b"x")
        (path / "x").unlink()
    else:
        os.utime(path)


async def test_the_last_watch_of_an_account_unwatches_its_paths(tmp_path: Path) -> None:
    (tmp_path / "notify").write_bytes(b"")
    (tmp_path / "new").mkdir()
    n = notify.Notifier(asyncio.get_running_loop())
    try:
        assert kernel_watches(n.fd) == 0
        w1 = watch(n, "a", tmp_path / "notify", tmp_path / "new")
        w2 = watch(n, "a", tmp_path / "notify", tmp_path / "new")  # a second stream: the same watches
        assert kernel_watches(n.fd) == n.watch_count == 2
        w1.close()
        assert kernel_watches(n.fd) == n.watch_count == 2  # w2 still waits
        touch(tmp_path / "new")
        assert await w2.wait(5)
        w2.close()
        assert kernel_watches(n.fd) == n.watch_count == 0
        assert not n._watches and not n._key_paths and not n._path_wd
        w3 = watch(n, "a", tmp_path / "notify")  # watched again from scratch
        assert kernel_watches(n.fd) == 1
        touch(tmp_path / "notify")
        assert await w3.wait(5)
        w3.close()
        assert kernel_watches(n.fd) == 0
    finally:
        n.close()


async def test_a_path_shared_by_two_accounts_stays_until_its_last_user(tmp_path: Path) -> None:
    shared = tmp_path / "queue"
    shared.mkdir()
    n = notify.Notifier(asyncio.get_running_loop())
    try:
        a = watch(n, "a", shared)
        b = watch(n, "b", shared)
        assert kernel_watches(n.fd) == n.watch_count == 1  # the kernel has one watch per inode
        a.close()
        assert kernel_watches(n.fd) == 1
        touch(shared)
        assert await b.wait(5)  # b is still woken by it
        b.close()
        assert kernel_watches(n.fd) == n.watch_count == 0
    finally:
        n.close()


async def test_remove_path_unwatches_one_path(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    n = notify.Notifier(asyncio.get_running_loop())
    try:
        w = watch(n, "a", one, two)
        assert kernel_watches(n.fd) == 2
        n.remove_path("a", one)
        n.remove_path("a", one)  # again: nothing
        n.remove_path("zz", two)  # another key's: nothing
        assert kernel_watches(n.fd) == n.watch_count == 1
        touch(two)
        assert await w.wait(5)
        w.close()
        assert kernel_watches(n.fd) == 0
    finally:
        n.close()


async def test_a_directory_deleted_and_made_again_is_watched_anew(tmp_path: Path) -> None:
    d = tmp_path / "new"
    d.mkdir()
    n = notify.Notifier(asyncio.get_running_loop())
    try:
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
        touch(d)
        assert await again.wait(5)
        keep.close()
        again.close()
        assert kernel_watches(n.fd) == 0
    finally:
        n.close()


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
