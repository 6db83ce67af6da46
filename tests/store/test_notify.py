"""A change made by one process wakes a waiter in another within 100 ms (inotify, or the polling fallback)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from mailsrv.config import StoreConfig
from mailsrv.store import DeliveryTarget, Store, notify
from mailsrv.store.notify import parse_events

from .conftest import msg


def _child_changes(data_dir: Path, go_r: int, done_w: int, what: str) -> None:
    code = 1
    try:
        async def main() -> None:
            store = Store(StoreConfig(), data_dir, hostname="child.test")
            acct = await store.account("u")
            os.write(done_w, b"r")
            if await asyncio.get_running_loop().run_in_executor(None, os.read, go_r, 1) != b"g":
                return  # the parent gave up
            if what == "append":
                await acct.append("INBOX", msg(1))
            elif what == "flags":
                await acct.store_flags("INBOX", [1], frozenset({"\\Seen"}), "add")
            elif what == "deliver":
                sp = data_dir / "sp"
                sp.write_bytes(msg(2))
                await store.deliver(sp, [DeliveryTarget(acct, "Archive")])
            os.write(done_w, repr(time.monotonic()).encode())
            await store.close()

        asyncio.run(main())
        code = 0
    finally:
        os._exit(code)


def _wake_latency(data_dir: Path, what: str) -> float:
    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(go_w)
        os.close(done_r)
        _child_changes(data_dir, go_r, done_w, what)
    os.close(go_r)
    os.close(done_w)

    async def main() -> float:
        store = Store(StoreConfig(), data_dir, hostname="parent.test")
        acct = await store.account("u")
        view = await acct.open_mailbox("INBOX")
        assert await asyncio.get_running_loop().run_in_executor(None, os.read, done_r, 1) == b"r"
        with acct.watch() as watch:
            assert not await watch.wait(timeout=0.05)  # nothing happened: no wake-up
            os.write(go_w, b"g")
            assert await watch.wait(timeout=5), "no wake-up from the other process"
            woke = time.monotonic()
        changes = await view.refresh()
        if what == "append":
            assert [m.uid for m in changes.added] == [1]  # the other process's change is visible
        elif what == "flags":
            assert [sorted(m.flags) for m in changes.flags] == [["\\Seen"]]
        await store.close()
        return woke

    try:
        woke = asyncio.run(main())
        changed_at = float(os.read(done_r, 100).decode())
    finally:
        os.close(go_w)  # a child still waiting for "go" sees EOF and exits
        _, status = os.waitpid(pid, 0)
        os.close(done_r)
    assert os.waitstatus_to_exitcode(status) == 0
    return woke - changed_at


def test_change_in_other_process_wakes_waiter(tmp_path: Path) -> None:
    asyncio.run(_prepare(tmp_path))
    for what in ("append", "flags", "deliver"):
        latency = _wake_latency(tmp_path, what)
        # the wake-up may even precede the other process's return (it comes at commit)
        assert latency < 0.1, (what, latency)


def test_without_inotify_polling_still_wakes_within_100ms(tmp_path: Path, monkeypatch: Any) -> None:
    """A platform without inotify (or one refusing another instance): the stat-polling fallback."""
    def no_inotify() -> int:
        raise AttributeError("inotify_init1")  # what a libc without inotify gives

    monkeypatch.setattr(notify, "_inotify_init", no_inotify)
    asyncio.run(_prepare(tmp_path))
    for what in ("append", "flags", "deliver"):
        latency = _wake_latency(tmp_path, what)
        assert latency < 0.1, (what, latency)

    async def idle() -> None:  # costs nothing while no one waits: the poll task ends with the last watch
        store = Store(StoreConfig(), tmp_path)
        acct = await store.account("u")
        with acct.watch() as w:
            assert store._notifier is not None and store._notifier.polling
            assert not await w.wait(timeout=0.12)  # nothing changed: no spurious wake-up
            task = store._notifier._poll_task
            assert task is not None
        await asyncio.wait_for(task, 1)
        assert store._notifier._poll_task is None
        await store.close()

    asyncio.run(idle())


async def _prepare(data_dir: Path) -> None:
    store = Store(StoreConfig(), data_dir)
    await store.account("u")
    await store.close()


def test_external_program_dropping_into_new_wakes(tmp_path: Path) -> None:
    async def main() -> None:
        store = Store(StoreConfig(), tmp_path)
        acct = await store.account("u")
        root = tmp_path / "mail" / "u"
        with acct.watch() as watch:
            (root / ".Junk" / "tmp" / "x").write_bytes(msg(5))
            os.rename(root / ".Junk" / "tmp" / "x", root / ".Junk" / "new" / "x")
            assert await watch.wait(timeout=1)
        view = await acct.open_mailbox("Junk")
        assert len(view.messages) == 1
        await store.close()

    asyncio.run(main())


def test_parse_events_torn_tail() -> None:
    import struct

    ev = struct.pack("iIII", 3, 0x100, 0, 8) + b"name\0\0\0\0"
    assert parse_events(ev + ev[:10]) == [(3, 0x100, b"name")]
