"""Store test helpers: a Store on a temp dir, and running coroutines without a plugin."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from mailsrv.config import StoreConfig
from mailsrv.store import Store

T = TypeVar("T")


def msg(n: int | str, subject: str = "hello", extra: str = "") -> bytes:
    return (
        f"From: a@example.test\r\nTo: b@example.test\r\nSubject: {subject}\r\n"
        f"Message-ID: <m{n}@example.test>\r\n{extra}\r\nbody {n}\r\n"
    ).encode()


@pytest.fixture
def run() -> Iterator[Callable[[Awaitable[T]], T]]:
    loop = asyncio.new_event_loop()

    def _run(aw: Awaitable[Any]) -> Any:
        return loop.run_until_complete(aw)

    yield _run
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


@pytest.fixture
def make_store(tmp_path: Path, run: Callable[[Awaitable[Any]], Any]) -> Iterator[Callable[..., Store]]:
    stores: list[Store] = []

    def _make(**kw: Any) -> Store:
        s = Store(StoreConfig(**kw), tmp_path, hostname="test.example")
        stores.append(s)
        return s

    yield _make
    for s in stores:
        run(s.close())


def spool(tmp_path: Path, data: bytes, name: str = "spool") -> Path:
    d = tmp_path / "spool"
    d.mkdir(exist_ok=True)
    p = d / name
    p.write_bytes(data)
    return p


def hold_syncfs(monkeypatch: pytest.MonkeyPatch, then: Callable[[Any], None] | None = None
                ) -> tuple[threading.Event, threading.Event]:
    """Make every syncfs wait (up to 10 s) until the returned ``release`` is set; ``entered`` is set
    once one waits. It then runs ``then(path)`` (default: the real syncfs)."""
    from mailsrv.util import fsio

    entered, release = threading.Event(), threading.Event()
    after = then or fsio.syncfs

    def held(path: Any) -> None:
        entered.set()
        release.wait(10)
        after(path)

    monkeypatch.setattr(fsio, "syncfs", held)
    return entered, release
