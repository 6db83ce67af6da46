"""The search round after delivery gives way to the process's delivery rounds (util/fsio.py), at most
its budget, and then indexes every delivered message once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from search.searchbox import Box, indexed
from support.server import wait_until_async

from mailsrv.config import SearchConfig
from mailsrv.search import SearchService
from mailsrv.search.query import All
from mailsrv.util import fsio


async def test_a_search_round_waits_while_a_delivery_round_runs(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fsio.foreground, "budget", 30.0)
    monkeypatch.setattr(fsio, "GIVE_WAY_STEP", 30.0)
    boxes = {"Mbox1": Box(0), "Mbox2": Box(0, seed=3)}
    svc = SearchService(SearchConfig(), resolver=lambda a, m: (tmp_path, boxes[m].read))
    try:
        fsio.foreground.enter()  # a delivery round in flight
        try:
            for name, box in boxes.items():
                for i in range(40):
                    uid = box.add(box.gen.message(i)[0])
                    svc.message_added("acct1", name, box.view.messages[-1], None, raw=box.raw[uid])
            await wait_until_async(lambda: fsio.foreground.waiting == 1)  # the round's job gives way
            assert all(svc.mailbox("acct1", n, tmp_path, b.read, for_search=False).stats["indexed"] == 0
                       for n, b in boxes.items())
        finally:
            fsio.foreground.leave()
        await svc.idle()
        for name, box in boxes.items():
            idx = svc.mailbox("acct1", name, tmp_path, box.read)
            assert indexed(idx) == set(box.raw)
            assert idx.stats["indexed"] == len(box.raw)  # each once
    finally:
        await svc.close()


async def test_a_search_round_waits_at_most_its_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sustained load (the foreground never idle): the round still indexes everything."""
    monkeypatch.setattr(fsio.foreground, "budget", 0.05)
    monkeypatch.setattr(fsio, "GIVE_WAY_STEP", 0.02)
    box = Box(0)
    svc = SearchService(SearchConfig(), resolver=lambda a, m: (tmp_path, box.read))
    before = fsio.foreground.waited
    fsio.foreground.enter()
    try:
        for i in range(100):
            uid = box.add(box.gen.message(i)[0])
            svc.message_added("acct1", "Mbox1", box.view.messages[-1], None, raw=box.raw[uid])
        await svc.idle()
        waited = fsio.foreground.waited - before
        assert indexed(svc.mailbox("acct1", "Mbox1", tmp_path, box.read)) == set(box.raw)
    finally:
        fsio.foreground.leave()
        await svc.close()
    assert waited >= 0.05  # it did give way, as long as its budget allowed


async def test_a_search_does_not_wait_for_a_round_that_gives_way(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A client's SEARCH on a mailbox whose round after delivery gives way (holding the mailbox's
    lock) is the user's foreground: the round gives way no more, and the search answers."""
    monkeypatch.setattr(fsio.foreground, "budget", 30.0)
    monkeypatch.setattr(fsio, "GIVE_WAY_STEP", 30.0)
    box = Box(0)
    svc = SearchService(SearchConfig(), resolver=lambda a, m: (tmp_path, box.read))
    try:
        fsio.foreground.enter()  # a delivery round in flight
        try:
            for i in range(40):
                uid = box.add(box.gen.message(i)[0])
                svc.message_added("acct1", "Mbox1", box.view.messages[-1], None, raw=box.raw[uid])
            await wait_until_async(lambda: fsio.foreground.waiting == 1)  # the round's job gives way
            idx = svc.mailbox("acct1", "Mbox1", tmp_path, box.read)
            assert idx.lock.locked()
            hits = await asyncio.wait_for(idx.search(All(), box.view), 10)  # not after the 30 s step
            assert set(hits) == set(box.raw)
            assert idx.stats["indexed"] == len(box.raw)  # by the round, each once
        finally:
            fsio.foreground.leave()
        await svc.idle()
    finally:
        await svc.close()
