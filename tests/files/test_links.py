"""The link index and its files (mailsrv.files.links): tokens, quota, the sweep."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import pytest

from mailsrv.files.links import DAY, ORPHAN_AGE, TOMBSTONE_DAYS, LinkStore, OverQuota, token_digest


def durable(store: LinkStore, data: bytes) -> Path:
    tmp = store.temp_path()
    with open(tmp, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def make(store: LinkStore, data: bytes = b"x" * 100, owner: str = "1", quota: int = 0, days: float = 30):
    return store.commit(durable(store, data), owner=owner, owner_name=f"u{owner}@example.test", name="a.bin",
                        media_type="application/octet-stream", size=len(data), sha256="0" * 64, days=days, quota=quota)


def test_tokens_are_found_only_whole(tmp_path: Path) -> None:
    store = LinkStore(tmp_path)
    link, token = make(store)
    assert store.find(token) == link
    assert store.data_path(link.id).read_bytes() == b"x" * 100
    assert not list(store.tmp.iterdir())
    # a row whose lookup key matches but whose full digest differs is no match (the constant-time compare)
    with store._lock:
        store._conn().execute("UPDATE links SET token_hash = ? WHERE id = ?",
                              (token_digest(token)[:32] + "0" * 32, link.id))
    assert store.find(token) is None
    for bad in ("", "a" * 21, "a" * 23, "a" * 21 + "/", "a" * 21 + "é"):
        assert store.find(bad) is None


def test_quota_is_checked_with_the_insert(tmp_path: Path) -> None:
    # two stores: two processes' connections to the same index
    one, two = LinkStore(tmp_path), LinkStore(tmp_path)
    make(one, b"a" * 60, quota=100)
    tmp = durable(two, b"b" * 60)
    with pytest.raises(OverQuota):
        two.commit(tmp, owner="1", owner_name="u1", name="b", media_type="x/y", size=60, sha256="0" * 64,
                   days=1, quota=100)
    assert tmp.exists()  # left for the caller to remove
    assert len(one.list()) == 1 and one.used("1") == 60
    make(two, b"c" * 60, owner="2", quota=100)  # another owner
    assert len(one.list()) == 2


def test_sweep_expires_frees_quota_and_keeps_tombstones(tmp_path: Path) -> None:
    store = LinkStore(tmp_path)
    old, old_token = make(store, days=1)
    new, _ = make(store, days=30)
    now = time.time() + 2 * DAY
    assert store.used("1", now) == 100
    assert store.sweep(now) == (1, 100)
    assert not store.data_path(old.id).exists() and store.data_path(new.id).exists()
    dead = store.find(old_token)
    assert dead is not None and dead.state == "expired" and not dead.live()
    assert store.sweep(now) == (0, 0)
    store.sweep(now + TOMBSTONE_DAYS * DAY)  # long dead: the row goes (its URL then answers 404)
    assert store.find(old_token) is None and store.get(new.id) is not None


def test_sweep_removes_orphans_once_they_are_old(tmp_path: Path) -> None:
    store = LinkStore(tmp_path)
    link, _ = make(store)
    stray = store.temp_path()
    stray.write_bytes(b"half an upload")
    orphan = store.data_path("F" + "a" * 24)
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"renamed, never committed")
    store.sweep()
    assert stray.exists() and orphan.exists()  # young: maybe still being written or committed
    later = time.time() + ORPHAN_AGE + 60
    store.sweep(later)
    assert not stray.exists() and not orphan.exists()
    assert store.data_path(link.id).exists()


def test_one_sweeper_at_a_time_and_once_per_interval(tmp_path: Path) -> None:
    store = LinkStore(tmp_path)
    make(store)
    assert store.sweep_if_due(3600) == (0, 0)
    assert store.sweep_if_due(3600) is None  # swept just now (by any process)
    os.utime(tmp_path / "swept", (time.time() - 7200, time.time() - 7200))
    fd = os.open(tmp_path / "sweep.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another process sweeping
        assert store.sweep_if_due(3600) is None
    finally:
        os.close(fd)
    assert store.sweep_if_due(3600) == (0, 0)


def test_delete_ends_the_link_at_once(tmp_path: Path) -> None:
    store = LinkStore(tmp_path)
    link, token = make(store)
    assert store.delete(link.id, owner="2") is None
    assert store.delete(link.id) == link
    assert store.delete(link.id) is None
    found = store.find(token)
    assert found is not None and found.state == "deleted" and not found.live()
    assert not store.data_path(link.id).exists() and store.used("1") == 0
