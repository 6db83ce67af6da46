"""Indexing at delivery is batched per mailbox: what arrives while a batch runs forms the next one."""

from __future__ import annotations

import asyncio
from pathlib import Path

from search.searchbox import Box, indexed, open_index

from mailsrv.config import SearchConfig
from mailsrv.search import SearchService


async def test_deliveries_during_a_batch_form_the_next_batch(tmp_path: Path) -> None:
    box = Box(0)
    gate = asyncio.Event()
    first_read = asyncio.Event()

    async def read(uid: int) -> bytes:
        first_read.set()
        await gate.wait()  # the first batch is held until every later delivery is announced
        return await box.read(uid)

    svc = SearchService(SearchConfig(), resolver=lambda a, m: (tmp_path, read) if m == "Mbox1" else None)
    idx = svc.mailbox("acct1", "Mbox1", tmp_path, read)
    batches: list[list[int]] = []
    original = idx._extract_and_add

    def counting(raws: list[tuple[int, bytes]]) -> None:
        batches.append([uid for uid, _ in raws])
        original(raws)

    idx._extract_and_add = counting  # type: ignore[method-assign]
    uids = []
    for i in range(30):
        uids.append(box.add(box.gen.message(i)[0]))
        svc.message_added("acct1", "Mbox1", box.view.messages[-1], None)
        if i == 0:
            await first_read.wait()  # batch 1 (this UID alone) is reading
    gate.set()
    await svc.idle()
    assert batches == [uids[:1], uids[1:]]
    assert set(uids) <= indexed(idx)
    assert idx.pending == [] and not idx.draining
    await svc.close()


async def test_a_failed_batch_does_not_stop_later_ones(tmp_path: Path) -> None:
    box = Box(0)
    svc = SearchService(SearchConfig(), resolver=lambda a, m: (tmp_path, box.read))
    idx = open_index(svc, box, tmp_path)
    original = idx.index_uids
    calls = 0

    async def flaky(uids: list[int]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            box.add(box.gen.message(99)[0])  # a delivery while the first batch runs ...
            svc.message_added("acct1", "Mbox1", box.view.messages[-1], None)
            raise OSError("index file gone")  # ... which then fails
        await original(uids)

    idx.index_uids = flaky  # type: ignore[method-assign]
    first = box.add(box.gen.message(1)[0])
    svc.message_added("acct1", "Mbox1", box.view.messages[-1], None)
    await svc.idle()
    assert first not in indexed(idx)  # the failed batch (a later search catches up)
    assert box.view.messages[-1].uid in indexed(idx)
    assert calls == 2 and not idx.draining
    await svc.close()


async def test_batches_in_flight_are_bounded(tmp_path: Path) -> None:
    """A delivery to many mailboxes reads at most 2 x threads batches ahead of the indexer."""
    boxes = {f"Mbox{i}": Box(0) for i in range(12)}
    reading: list[str] = []  # mailbox of each read in progress
    peak = 0
    gate = asyncio.Event()
    waiting = asyncio.Event()
    cfg = SearchConfig(threads=2, batch=3)

    def reader(name: str):  # type: ignore[no-untyped-def]
        async def read(uid: int) -> bytes:
            nonlocal peak
            reading.append(name)
            peak = max(peak, len(set(reading)))
            if len(reading) == 2 * cfg.threads * cfg.batch:
                waiting.set()
            await gate.wait()
            reading.remove(name)
            return await boxes[name].read(uid)

        return read

    svc = SearchService(cfg, resolver=lambda a, m: (tmp_path / m, reader(m)))
    for name, box in boxes.items():
        (tmp_path / name).mkdir()
        for i in range(5):
            box.add(box.gen.message(i)[0])
            svc.message_added("acct1", name, box.view.messages[-1], None)
    await waiting.wait()  # 4 batches of 3 (the 5 UIDs of a mailbox come in batches of 3 and 2)
    assert len(set(reading)) == 4  # the other mailboxes wait their turn
    gate.set()
    await svc.idle()
    assert peak == 4
    for name, box in boxes.items():
        idx = svc.mailbox("acct1", name, tmp_path / name, box.read)
        assert {m.uid for m in box.view.messages} <= indexed(idx)
    await svc.close()
