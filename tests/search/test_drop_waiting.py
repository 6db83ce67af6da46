"""A mailbox deleted while its deliveries wait for an indexing round (SearchService.drop): the round
does not index it, so no index files of a deleted mailbox are made again, and its held bytes go."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from pyroaring import BitMap
from search.searchbox import Box

from mailsrv.config import SearchConfig
from mailsrv.search import SearchService
from mailsrv.search.query import All
from mailsrv.search.storage import Files


async def test_a_mailbox_dropped_while_waiting_for_its_round_leaves_no_files(tmp_path: Path) -> None:
    box = Box(0)
    other = Box(0, seed=3)
    boxes = {"Mbox1": box, "Mbox2": other}
    svc = SearchService(SearchConfig(), resolver=lambda a, m: (tmp_path, boxes[m].read))
    for name, b in boxes.items():
        uid = b.add(b.gen.message(1)[0])
        svc.message_added("acct1", name, b.view.messages[-1], None, raw=b.raw[uid])
    assert svc.raw_held > 0
    # deleted before the round (queued by message_added) runs
    svc.drop("acct1", "Mbox1", tmp_path)
    await svc.idle()
    try:
        dropped, kept = Files(tmp_path, "Mbox1"), Files(tmp_path, "Mbox2")
        assert not dropped.snap.exists() and not dropped.log.exists() and not dropped.lock.exists()
        assert kept.snap.exists()  # the round went on with the other mailbox
        assert svc.raw_held == 0
    finally:
        await svc.close()


async def test_a_mailbox_dropped_while_its_round_reads_it_leaves_no_files(tmp_path: Path) -> None:
    box = Box(0)
    entered, release = threading.Event(), threading.Event()

    def read_blocking(uids: list[int]) -> dict[int, bytes]:  # the round's job reads the batch (4-tuple resolver)
        entered.set()
        assert release.wait(10)
        return {u: box.raw[u] for u in uids}

    svc = SearchService(SearchConfig(), resolver=lambda a, m: (tmp_path, box.read, None, read_blocking))
    box.add(box.gen.message(1)[0])
    svc.message_added("acct1", "Mbox1", box.view.messages[-1], None)
    try:
        assert await asyncio.to_thread(entered.wait, 10)  # the round took it and its job reads it now
        svc.drop("acct1", "Mbox1", tmp_path)
        release.set()
        await svc.idle()
        dropped = Files(tmp_path, "Mbox1")
        assert not dropped.snap.exists() and not dropped.log.exists() and not dropped.lock.exists()
    finally:
        release.set()
        await svc.close()


def _two_workers(tmp_path: Path, box: Box, alive: set[str]) -> tuple[SearchService, SearchService]:
    """Two workers' search services over the same index files and the same store, which no longer
    has a mailbox once it is deleted (in either worker)."""

    def resolver(account: str, mailbox: str) -> tuple[Path, Any, None, Any]:
        def read_blocking(uids: list[int]) -> dict[int, bytes]:
            return {u: box.raw[u] for u in uids if mailbox in alive}

        return tmp_path, box.read, None, read_blocking

    def exists(account: str, mailbox: str) -> bool:
        assert account == "acct1"
        return mailbox in alive

    return (SearchService(SearchConfig(), resolver=resolver, exists=exists),
            SearchService(SearchConfig(), resolver=resolver, exists=exists))


async def _indexed(svc: SearchService, box: Box, directory: Path, searched: bool) -> None:
    """One message delivered and indexed in ``svc``'s worker; ``searched``: then loaded there by a
    client's search."""
    uid = box.add(box.gen.message(1)[0])
    svc.message_added("acct1", "Mbox1", box.view.messages[-1], None, raw=box.raw[uid])
    await svc.idle()
    assert Files(directory, "Mbox1").snap.exists()
    if searched:
        idx = svc.mailbox("acct1", "Mbox1", directory, box.read)
        assert await idx.search(All(), box.view) == BitMap([uid])
        assert idx.gen >= 0


def _no_files(directory: Path) -> None:
    files = Files(directory, "Mbox1")
    assert not files.snap.exists() and not files.log.exists() and not files.lock.exists()
    assert not files.text_files()


@pytest.mark.parametrize("loaded", [False, True], ids=["appending", "loaded-by-a-search"])
async def test_a_round_in_another_worker_does_not_make_a_deleted_mailboxs_index_again(
        tmp_path: Path, loaded: bool) -> None:
    box = Box(0)
    alive = {"Mbox1"}
    deleting, other = _two_workers(tmp_path, box, alive)
    try:
        await _indexed(other, box, tmp_path, searched=loaded)
        # a delivery in the other worker waits for its round (its bytes held) while the mailbox is
        # deleted in this one: only this worker's search hears of it (mailbox_deleted)
        uid = box.add(box.gen.message(2)[0])
        other.message_added("acct1", "Mbox1", box.view.messages[-1], None, raw=box.raw[uid])
        alive.discard("Mbox1")
        deleting.drop("acct1", "Mbox1", tmp_path)
        await deleting.idle()
        _no_files(tmp_path)
        await other.idle()
        _no_files(tmp_path)
    finally:
        await deleting.close()
        await other.close()


async def test_a_drop_waits_for_the_lock_a_round_holds_then_removes_the_files(tmp_path: Path) -> None:
    box = Box(0)
    svc = SearchService(SearchConfig(), resolver=lambda a, m: (tmp_path, box.read))
    uid = box.add(box.gen.message(1)[0])
    svc.message_added("acct1", "Mbox1", box.view.messages[-1], None, raw=box.raw[uid])
    await svc.idle()
    files = Files(tmp_path, "Mbox1")
    held, release = threading.Event(), threading.Event()

    def hold() -> None:  # another worker's round, holding the mailbox's lock
        with files.locked(exclusive=True):
            held.set()
            assert release.wait(10)

    holder = asyncio.get_running_loop().run_in_executor(None, hold)
    try:
        assert await asyncio.to_thread(held.wait, 10)
        svc.drop("acct1", "Mbox1", tmp_path)
        assert files.snap.exists()  # not under a lock another holds: left for the pool
        release.set()
        await holder
        await svc.idle()
        assert not files.snap.exists() and not files.log.exists() and not files.lock.exists()
    finally:
        release.set()
        await svc.close()


async def test_the_workers_exists_check_sees_a_mailbox_deleted_by_another_store(tmp_path: Path) -> None:
    """mailsrv.worker.search_exists over real stores: one per worker on the same data directory."""
    from mailsrv.config import StoreConfig
    from mailsrv.store import Store
    from mailsrv.worker import search_exists

    deleting, other = (Store(StoreConfig(), tmp_path, hostname="test.example") for _ in range(2))
    try:
        acct = await deleting.account("u")
        await acct.create_mailbox("Box")
        guid = next(b.id for b in await acct.list_mailboxes() if b.name == "Box")
        exists = search_exists(other)
        assert exists("u", guid)  # not open in that worker: not known, so not refused
        await other.account("u")
        assert await asyncio.to_thread(exists, "u", guid)
        await acct.delete_mailbox("Box")
        assert not await asyncio.to_thread(exists, "u", guid)
    finally:
        await deleting.close()
        await other.close()


async def test_the_flush_at_stop_in_another_worker_does_not_make_a_deleted_mailboxs_index_again(
        tmp_path: Path) -> None:
    box = Box(0)
    alive = {"Mbox1"}
    deleting, other = _two_workers(tmp_path, box, alive)
    try:
        await _indexed(other, box, tmp_path, searched=True)
        alive.discard("Mbox1")
        deleting.drop("acct1", "Mbox1", tmp_path)
        await deleting.idle()
    finally:
        await deleting.close()
        await other.close()  # flushes the indexes it has loaded
    _no_files(tmp_path)
