"""RCPT-time resolutions are reused while the directory is unchanged, and never after a change.

A real SQLite directory; changes are made through another connection (as the CLI or
another worker would), and must be seen at the very next RCPT.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mailsrv.config import DirectoryConfig
from mailsrv.delivery.local import STAMP_INTERVAL, LocalDelivery, ResolveCache
from mailsrv.directory import Kind, Resolution, open_directory, open_sync
from mailsrv.store import Store


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[Any, Any, LocalDelivery]]:
    cfg = DirectoryConfig()
    sd = open_sync(cfg, tmp_path)
    sd.add_domain("example.test")
    sd.add_user("alice@example.test")
    directory = open_directory(cfg, tmp_path)
    store = Store(data_dir=tmp_path, hostname="mx.example.test")
    ld = LocalDelivery(directory, store, tmp_path)
    yield sd, directory, ld
    await store.close()
    await directory.close()
    sd.close()


async def _check(ld: LocalDelivery, address: str, size: int = 100) -> int:
    chk = await ld.check(address, sender="x@remote.test", size=size, authenticated=None, may_relay=False)
    return chk.code


async def test_repeated_recipients_are_answered_from_the_cache(env: Any) -> None:
    _, _, ld = env
    for _ in range(5):
        assert await _check(ld, "alice@example.test") == 250
        assert await _check(ld, "nobody@example.test") == 550
    assert ld.resolver.misses == 2 and ld.resolver.hits == 8


async def test_a_directory_change_is_seen_at_the_next_rcpt(env: Any) -> None:
    sd, _, ld = env
    ld.resolver.stamp_interval = 0.0  # look at the stamp at every RCPT
    assert await _check(ld, "bob@example.test") == 550
    assert await _check(ld, "alice@example.test") == 250
    sd.add_user("bob@example.test")  # another process adds a user ...
    assert await _check(ld, "bob@example.test") == 250
    sd.set_user("alice@example.test", quota_bytes=10)  # ... or lowers a quota
    assert await _check(ld, "alice@example.test", size=100) == 552
    sd.del_user("bob@example.test")
    assert await _check(ld, "bob@example.test") == 550
    assert ld.resolver.hits == 0


async def test_with_the_default_interval_a_change_is_seen_within_it(env: Any) -> None:
    sd, _, ld = env
    assert ld.resolver.stamp_interval == STAMP_INTERVAL
    assert await _check(ld, "carol@example.test") == 550
    sd.add_user("carol@example.test")
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + 5.0
    while await _check(ld, "carol@example.test") != 250:  # poll: served from the cache meanwhile
        assert loop.time() < deadline, "the change was never seen"
        await asyncio.sleep(0.001)
    # seen once the interval passed (plus the loop's scheduling slack on a loaded machine)
    assert loop.time() - start < STAMP_INTERVAL + 1.0


async def test_answers_expire(env: Any) -> None:
    _, directory, _ = env
    cache = ResolveCache(directory, ttl=0.0)
    for _ in range(3):
        assert (await cache.resolve("alice@example.test")).kind == Kind.USER
    assert cache.hits == 0 and cache.misses == 3


async def test_a_directory_without_a_change_stamp_is_always_asked() -> None:
    asked: list[str] = []

    class Plain:
        async def resolve(self, address: str) -> Resolution:
            asked.append(address)
            return Resolution(address, Kind.UNKNOWN)

    cache = ResolveCache(Plain())
    for _ in range(3):
        assert (await cache.resolve("a@example.test")).kind == Kind.UNKNOWN
    assert asked == ["a@example.test"] * 3
