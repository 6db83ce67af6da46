"""Durability of a delivery whose sync fails, and of a store closed while deliveries are in flight.

A tempfailed delivery leaves no file behind for a reader (or a restart) to index: the sender
retries, and a left-over copy would be a duplicate. ``Store.close()`` answers every delivery in
flight before the engines close, and later ones are tempfail: nothing is left half done.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from support.server import wait_until_async

from mailsrv.store import DeliveryTarget, Store
from mailsrv.util import fsio

from .conftest import hold_syncfs, msg, spool
from .test_deliver_deferred import _files

Run = Callable[[Awaitable[Any]], Any]


def _broken(path: Any) -> None:
    raise OSError(errno.EIO, "Input/output error")


def test_failed_syncfs_leaves_no_file_for_a_retry_to_duplicate(
        tmp_path: Path, run: Run, make_store: Callable[..., Store], monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store(index_delay=30.0)
    acct = run(store.account("u"))
    root = tmp_path / "mail" / "u"
    monkeypatch.setattr(fsio, "syncfs", _broken)
    [r] = run(store.deliver(spool(tmp_path, msg(1)), [DeliveryTarget(acct)], uids=False))
    assert r.status == "tempfail"
    assert _files(root, "new") == [] and acct.engine.pending == {}
    monkeypatch.undo()
    [r] = run(store.deliver(spool(tmp_path, msg(1), "retry"), [DeliveryTarget(acct)], uids=False))  # the retry
    assert r.status == "ok"
    run(store.indexer.flush())
    assert [m.uid for m in run(acct.open_mailbox("INBOX")).messages] == [1]  # once, not twice


def test_a_reader_never_indexes_a_link_whose_sync_then_fails(
        tmp_path: Path, run: Run, make_store: Callable[..., Store], monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader refreshing the mailbox while the round's syncfs runs does not take the file (it is
    not durable yet); the syncfs fails, the delivery is tempfail, and the mailbox stays empty."""
    store = make_store(index_delay=30.0)
    acct = run(store.account("u"))
    entered, release = hold_syncfs(monkeypatch, then=_broken)

    async def go() -> tuple[list[Any], int, int]:
        task = asyncio.ensure_future(store.deliver(spool(tmp_path, msg(1)), [DeliveryTarget(acct)], uids=False))
        await wait_until_async(entered.is_set)
        assert len(_files(tmp_path / "mail" / "u", "new")) == 1  # linked, not yet durable
        during = len((await acct.open_mailbox("INBOX")).messages)  # a reader's sync meanwhile
        release.set()
        out = await task
        return out, during, len((await acct.open_mailbox("INBOX")).messages)

    [r], during, after = run(go())
    assert r.status == "tempfail"
    assert (during, after) == (0, 0)
    assert _files(tmp_path / "mail" / "u", "new") == [] and _files(tmp_path / "mail" / "u", "cur") == []


def test_failed_fsync_without_syncfs_leaves_no_file(
        tmp_path: Path, run: Run, make_store: Callable[..., Store], monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store(syncfs=False)
    acct = run(store.account("u"))
    monkeypatch.setattr(fsio, "fsync_dir", _broken)
    for uids in (False, True):
        [r] = run(store.deliver(spool(tmp_path, msg(1), f"s{uids}"), [DeliveryTarget(acct)], uids=uids))
        assert r.status == "tempfail" and "Input/output error" in (r.error or "")
    monkeypatch.undo()
    run(store.indexer.flush())
    assert run(acct.open_mailbox("INBOX")).messages == []
    assert _files(tmp_path / "mail" / "u", "new") == [] and acct.engine.pending == {}


def test_close_answers_the_deliveries_in_flight_first(
        tmp_path: Path, run: Run, make_store: Callable[..., Store], monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store(index_delay=30.0)
    accts = [run(store.account(f"u{i}")) for i in range(3)]
    entered, release = hold_syncfs(monkeypatch)

    async def go() -> tuple[list[Any], list[Any], bool]:
        tasks = [asyncio.ensure_future(store.deliver(spool(tmp_path, msg(i), f"s{i}"), [DeliveryTarget(accts[i])],
                                                     uids=False)) for i in range(3)]
        await wait_until_async(entered.is_set)
        closing = asyncio.ensure_future(store.close())
        await wait_until_async(lambda: store._closing)  # close has begun
        late = await store.deliver(spool(tmp_path, msg(9), "late"), [DeliveryTarget(accts[0])], uids=False)
        # a close that did not wait for the held rounds would finish (its pool jobs included) well within this
        early = bool((await asyncio.wait({closing}, timeout=0.5))[0])
        release.set()
        out = await asyncio.gather(*tasks)
        await closing
        return [r for rs in out for r in rs], late, early

    out, [late], closed_early = run(go())
    assert not closed_early
    assert [r.status for r in out] == ["ok"] * 3
    assert late.status == "tempfail" and late.error == "store closing"
    for i in range(3):  # every acknowledged copy indexed before the engines closed: nothing waits in new/
        root = tmp_path / "mail" / f"u{i}"
        assert _files(root, "new") == [] and len(_files(root, "cur")) == 1


def test_close_waits_for_a_cancelled_callers_round(
        tmp_path: Path, run: Run, make_store: Callable[..., Store], monkeypatch: pytest.MonkeyPatch) -> None:
    """A session cancelled (drain grace over) while its round syncs: close still indexes its copy."""
    store = make_store(index_delay=30.0)
    acct = run(store.account("u"))
    entered, release = hold_syncfs(monkeypatch)

    async def go() -> None:
        task = asyncio.ensure_future(store.deliver(spool(tmp_path, msg(1)), [DeliveryTarget(acct)], uids=False))
        await wait_until_async(entered.is_set)
        task.cancel()
        closing = asyncio.ensure_future(store.close())
        await wait_until_async(lambda: store._closing)  # close has begun before the round may finish
        release.set()
        await closing

    run(go())
    root = tmp_path / "mail" / "u"
    assert _files(root, "new") == [] and len(_files(root, "cur")) == 1



def test_a_watcher_that_refreshed_before_the_sync_is_woken_again(
        tmp_path: Path, run: Run, make_store: Callable[..., Store], monkeypatch: pytest.MonkeyPatch) -> None:
    """IDLE in this process: the link wakes it (inotify) before the round's syncfs; its refresh
    leaves the file alone (not durable yet); once durable it is woken again and finds the message,
    without waiting for the indexer's round (index_delay 30 s here)."""
    store = make_store(index_delay=30.0)
    acct = run(store.account("u"))
    entered, release = hold_syncfs(monkeypatch)

    async def go() -> tuple[int, list[int]]:
        await acct.open_mailbox("INBOX")
        with acct.watch() as watch:
            task = asyncio.ensure_future(store.deliver(spool(tmp_path, msg(1)), [DeliveryTarget(acct)], uids=False))
            await wait_until_async(entered.is_set)
            assert await watch.wait(5)  # the link in new/
            before = len((await acct.open_mailbox("INBOX")).messages)
            release.set()
            [r] = await task
            assert r.status == "ok"
            assert await watch.wait(5)  # woken again once durable (not by the indexer: it waits 30 s)
            assert store.indexer.waiting == 1
            return before, [m.uid for m in (await acct.open_mailbox("INBOX")).messages]

    assert run(go()) == (0, [1])
