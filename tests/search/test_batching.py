"""Indexing at delivery runs in rounds: what arrives while a round runs forms the next one, all mailboxes in one job."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pyroaring import BitMap
from search.searchbox import Box, indexed

from mailsrv.config import SearchConfig
from mailsrv.search import MailboxIndex, SearchService, Text, matches


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

    def counting(raws: list[tuple[int, bytes]], **kw: Any) -> None:
        batches.append([uid for uid, _ in raws])
        original(raws, **kw)

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
    assert idx.pending == [] and svc._waiting == {} and not svc._draining
    await svc.close()


async def test_a_failed_mailbox_does_not_stop_its_round_or_later_ones(tmp_path: Path) -> None:
    boxes = {"Mbox1": Box(0), "Mbox2": Box(0, seed=3)}
    svc = SearchService(SearchConfig(), resolver=lambda a, m: (tmp_path / m, boxes[m].read))
    idxs = {m: svc.mailbox("acct1", m, tmp_path / m, box.read) for m, box in boxes.items()}
    original = idxs["Mbox1"]._extract_and_add
    calls: list[list[int]] = []

    def flaky(raws: list[tuple[int, bytes]], **kw: Any) -> None:
        calls.append([uid for uid, _ in raws])
        if len(calls) == 1:
            raise OSError("index file gone")
        original(raws, **kw)

    idxs["Mbox1"]._extract_and_add = flaky  # type: ignore[method-assign]

    def deliver(m: str, i: int) -> int:
        uid = boxes[m].add(boxes[m].gen.message(i)[0])
        svc.message_added("acct1", m, boxes[m].view.messages[-1], None)
        return uid

    lost, other = deliver("Mbox1", 1), deliver("Mbox2", 2)  # one round: Mbox1 fails, Mbox2 is indexed
    await svc.idle()
    later = deliver("Mbox1", 3)
    await svc.idle()
    assert calls == [[lost], [later]]
    assert lost not in indexed(idxs["Mbox1"])  # the failed one (a later search catches up)
    assert later in indexed(idxs["Mbox1"]) and other in indexed(idxs["Mbox2"])
    assert svc._waiting == {} and not svc._draining
    await svc.close()


async def test_a_round_indexes_every_waiting_mailbox_in_one_job_within_the_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deliveries to many mailboxes are indexed in rounds of at most ``batch`` messages in all, one
    pool job each: a delivery to many mailboxes holds at most a batch of read messages."""
    boxes = {f"Mbox{i}": Box(0, seed=i) for i in range(12)}
    cfg = SearchConfig(threads=2, batch=3)
    outstanding = peak = 0
    jobs: list[str] = []

    def reader(name: str):  # type: ignore[no-untyped-def]
        async def read(uid: int) -> bytes:
            nonlocal outstanding, peak
            outstanding += 1
            peak = max(peak, outstanding)
            return await boxes[name].read(uid)

        return read

    original = MailboxIndex._extract_and_add

    def extract_and_add(self: MailboxIndex, raws: list[tuple[int, bytes]], *a: Any, **kw: Any) -> None:
        nonlocal outstanding
        outstanding -= len(raws)
        original(self, raws, *a, **kw)

    monkeypatch.setattr(MailboxIndex, "_extract_and_add", extract_and_add)
    svc = SearchService(cfg, resolver=lambda a, m: (tmp_path / m, reader(m)))
    real = svc.run

    async def counted(fn: Any, *args: Any) -> Any:
        jobs.append(getattr(fn, "__name__", "?"))
        return await real(fn, *args)

    svc.run = counted  # type: ignore[method-assign]
    for name, box in boxes.items():
        (tmp_path / name).mkdir()
        for i in range(5):
            box.add(box.gen.message(i)[0])
            svc.message_added("acct1", name, box.view.messages[-1], None)
    await svc.idle()
    assert peak == cfg.batch and outstanding == 0
    assert jobs == ["_index_round"] * (12 * 5 // cfg.batch)  # 3 messages a round, of one or two mailboxes
    for name, box in boxes.items():
        idx = svc.mailbox("acct1", name, tmp_path / name, box.read)
        assert {m.uid for m in box.view.messages} <= indexed(idx)
    await svc.close()


async def test_a_search_catching_up_reads_each_batch_at_once(tmp_path: Path) -> None:
    box = Box(50)
    batches: list[list[int]] = []
    gone = box.view.messages[7].uid  # read_many leaves it out (renamed meanwhile): read alone

    async def read_many(uids: list[int]) -> dict[int, bytes]:
        batches.append(list(uids))
        return {u: box.raw[u] for u in uids if u != gone}

    svc = SearchService(SearchConfig(batch=20))
    idx = svc.mailbox("acct1", "Mbox1", tmp_path, box.read, read_many=read_many)
    q = Text("subject", "report")
    want = BitMap(m.uid for m in box.view.messages if matches(q, box.docs[m.uid], m))
    assert await idx.search(q, box.view) == want
    assert [len(b) for b in batches] == [20, 20, 10] and box.reads == 1  # not one read per message
    assert {m.uid for m in box.view.messages} <= indexed(idx)
    await svc.close()
