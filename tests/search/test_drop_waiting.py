"""A mailbox deleted while its deliveries wait for an indexing round (SearchService.drop): the round
does not index it, so no index files of a deleted mailbox are made again, and its held bytes go."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from search.searchbox import Box

from mailsrv.config import SearchConfig
from mailsrv.search import SearchService
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
