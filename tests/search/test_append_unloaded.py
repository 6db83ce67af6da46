"""Indexing after delivery appends to an index this process has not loaded (no snapshot load).

Every other process (or this one, after the index left its cache) sees the appended
records when it loads or tails the journal; and whatever the appends missed (no index
yet, a stale journal) is indexed by the next search: a search never misses a message.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pyroaring import BitMap
from search.searchbox import Box, indexed, open_index

from mailsrv.config import SearchConfig
from mailsrv.search import SearchService, Text
from mailsrv.search.scan import matches
from mailsrv.search.storage import Files, journal_generation, snapshot_meta


def _reference(box: Box, q: Text) -> BitMap:
    return BitMap(m.uid for m in box.view.messages if matches(q, box.docs[m.uid], m))


def _queries(box: Box) -> list[Text]:
    """A few body and subject words of the box's messages (each matching some, not all)."""
    out = []
    for uid in list(box.docs)[::7]:
        words = box.docs[uid].text["subject"].split()
        if words:
            out.append(Text("subject", words[0]))
        body = box.docs[uid].text["body"].split()
        if body:
            out.append(Text("body", body[len(body) // 2]))
    return out


def _age_journal(files: Files) -> None:
    """Make the journal name the generation before its snapshot's (stale)."""
    with open(files.log, "r+b") as fh:
        gen = journal_generation(fh.fileno())
        assert gen is not None
        fh.seek(8)
        fh.write((gen - 1).to_bytes(8, "little"))
        fh.flush()
        os.fsync(fh.fileno())


async def _deliver(svc: SearchService, box: Box, start: int, n: int) -> list[int]:
    uids = []
    for i in range(start, start + n):
        uids.append(box.add(box.gen.message(i)[0]))
        svc.message_added("acct1", "Mbox1", box.view.messages[-1], None)
    await svc.idle()
    return uids


async def test_deliveries_append_without_loading_and_others_see_them(tmp_path: Path) -> None:
    box = Box(20)
    first = SearchService(SearchConfig())
    idx = open_index(first, box, tmp_path)
    await idx.search(Text("body", "a"), box.view)  # builds the index files (snapshot + journal)
    await first.close()

    # a worker that never searched this mailbox: deliveries append, no snapshot load
    second = SearchService(SearchConfig(), resolver=lambda a, m: (tmp_path, box.read))
    uids = await _deliver(second, box, 20, 30)
    idx2 = second._open[("acct1", "Mbox1")]
    assert idx2.stats["loads"] == 0 and idx2.gen == -1
    assert idx2.stats["appended"] == 30
    await second.close()

    # a third process loads snapshot + journal: the appended messages are indexed, none re-read
    third = SearchService(SearchConfig())
    idx3 = open_index(third, box, tmp_path)
    reads = box.reads
    queries = _queries(box)
    assert queries
    for q in queries:
        assert await idx3.search(q, box.view) == _reference(box, q), q
    assert box.reads == reads  # nothing needed a catch-up read
    assert set(uids) <= set(idx3.core.indexed)
    await third.close()


async def test_a_long_journal_is_folded_at_load(tmp_path: Path) -> None:
    box = Box(5)
    first = SearchService(SearchConfig(snapshot_every=10))
    await open_index(first, box, tmp_path).search(Text("body", "a"), box.view)
    await first.close()
    second = SearchService(SearchConfig(snapshot_every=10), resolver=lambda a, m: (tmp_path, box.read))
    await _deliver(second, box, 5, 25)  # 25 journal records, never folded by the appender
    await second.close()
    files = Files(tmp_path, "Mbox1")
    gen_before, _ = snapshot_meta(files.snap)
    third = SearchService(SearchConfig(snapshot_every=10))
    idx3 = open_index(third, box, tmp_path)
    q = Text("body", box.docs[box.view.messages[-1].uid].text["body"].split()[0])
    assert await idx3.search(q, box.view) == _reference(box, q)
    gen_after, _ = snapshot_meta(files.snap)
    assert gen_after > gen_before and idx3.stats["snapshots"] == 1
    assert idx3.since_snapshot == 0
    await third.close()


async def test_no_index_yet_or_a_stale_journal_falls_back_and_search_finds_everything(tmp_path: Path) -> None:
    box = Box(0)
    svc = SearchService(SearchConfig(), resolver=lambda a, m: (tmp_path, box.read))
    await _deliver(svc, box, 0, 10)  # no files yet: the first batch makes an empty index, appends to it
    idx = svc._open[("acct1", "Mbox1")]
    assert idx.stats["appended"] == 10 and idx.gen < 0 and not idx.core.indexed  # not kept loaded
    assert indexed(idx) == {m.uid for m in box.view.messages}
    await svc.close()

    # a journal of another generation (a writer died between snapshot and new journal)
    _age_journal(Files(tmp_path, "Mbox1"))
    svc2 = SearchService(SearchConfig(), resolver=lambda a, m: (tmp_path, box.read))
    late = await _deliver(svc2, box, 10, 5)
    idx2 = svc2._open[("acct1", "Mbox1")]
    assert idx2.stats["appended"] == 0  # nothing appended to the stale journal: loaded instead
    for q in _queries(box):
        assert await idx2.search(q, box.view) == _reference(box, q), q
    assert set(late) <= set(idx2.core.indexed)
    await svc2.close()


async def test_search_right_after_delivery_finds_the_message(tmp_path: Path) -> None:
    """The indexing after delivery has not run yet (or failed): the search indexes it first."""
    box = Box(10)
    svc = SearchService(SearchConfig())
    idx = open_index(svc, box, tmp_path)
    await idx.search(Text("body", "a"), box.view)
    raw = box.gen.message(77)[0]
    uid = box.add(raw)  # delivered; no message_added event reached the index
    words = box.docs[uid].text["body"].split()
    q = Text("body", words[-1])
    hits = await idx.search(q, box.view)
    assert uid in hits and hits == _reference(box, q)
    await svc.close()


async def test_batch_reader_is_used_once_per_batch(tmp_path: Path) -> None:
    box = Box(0)
    calls: list[list[int]] = []
    gone: set[int] = set()

    async def read_many(uids: list[int]) -> dict[int, bytes]:
        calls.append(list(uids))
        return {u: box.raw[u] for u in uids if u not in gone}

    svc = SearchService(SearchConfig(), resolver=lambda a, m: (tmp_path, box.read, read_many))
    uids = await _deliver(svc, box, 0, 3)
    vanished = box.add(box.gen.message(3)[0])
    gone.add(vanished)  # expunged before it was read: left out, no error
    svc.message_added("acct1", "Mbox1", box.view.messages[-1], None)
    more = await _deliver(svc, box, 4, 2)
    assert sum(len(c) for c in calls) == 6 and box.reads == 0
    idx = svc._open[("acct1", "Mbox1")]
    assert set(uids) | set(more) <= indexed(idx) and vanished not in indexed(idx)
    await svc.close()


async def test_blocking_batch_reader_reads_in_the_indexing_job(tmp_path: Path) -> None:
    """The 4-tuple resolver: a batch after delivery is read and indexed in one search pool job
    (no store job to read it first); a failed read skips the batch, the next search indexes it."""
    import threading

    box = Box(0)
    calls: list[tuple[list[int], bool]] = []
    fail = [False]

    async def read_many(uids: list[int]) -> dict[int, bytes]:
        raise AssertionError("the blocking reader is used")

    def read_many_blocking(uids: list[int]) -> dict[int, bytes]:
        calls.append((list(uids), threading.current_thread().name.startswith("search")))
        if fail[0]:
            raise OSError("disk trouble")
        return {u: box.raw[u] for u in uids}

    svc = SearchService(SearchConfig(), resolver=lambda a, m: (tmp_path, box.read, read_many, read_many_blocking))
    jobs: list[str] = []
    real = svc.run

    async def counted(fn: Any, *args: Any) -> Any:
        jobs.append(getattr(fn, "__name__", "?"))
        return await real(fn, *args)

    svc.run = counted  # type: ignore[method-assign]
    uids = await _deliver(svc, box, 0, 3)
    assert [c[1] for c in calls] == [True] * len(calls) and sum(len(c[0]) for c in calls) == 3
    assert jobs == ["_index_round"] * len(calls) and box.reads == 0  # one job per round
    idx = svc._open[("acct1", "Mbox1")]
    assert set(uids) <= indexed(idx)
    fail[0] = True
    [lost] = await _deliver(svc, box, 3, 1)
    assert lost not in indexed(idx)  # skipped, no error raised
    words = box.docs[lost].text["body"].split()
    q = Text("body", words[-1])
    assert lost in await idx.search(q, box.view)  # the search indexes what it finds missing
    await svc.close()


async def test_cache_bounds_loaded_indexes_not_the_appended_ones(tmp_path: Path) -> None:
    boxes = {f"Mbox{i}": Box(3, seed=i) for i in range(4)}
    svc = SearchService(SearchConfig(cache_mailboxes=1),
                        resolver=lambda a, m: (tmp_path, boxes[m].read))
    for name in ("Mbox0", "Mbox1"):  # two searched (loaded) indexes: the older one goes
        idx = svc.mailbox("acct1", name, tmp_path, boxes[name].read)
        await idx.search(Text("body", "a"), boxes[name].view)
    assert list(svc._open) == [("acct1", "Mbox1")]
    for name in ("Mbox2", "Mbox3", "Mbox0"):  # deliveries into mailboxes nobody searches here
        box = boxes[name]
        box.add(box.gen.message(50)[0])
        svc.message_added("acct1", name, box.view.messages[-1], None)
        await svc.idle()
    # Mbox2 and Mbox3 had no index files: their first batch made an empty one each and appended to
    # it without loading it, so the searched Mbox1 stays loaded; Mbox0's files exist: appended to
    loaded = [k[1] for k, i in svc._open.items() if i.gen >= 0]
    assert loaded == ["Mbox1"]
    for name in ("Mbox0", "Mbox2", "Mbox3"):
        idx = svc._open[("acct1", name)]
        assert idx.gen == -1 and idx.stats["appended"] == 1
        assert boxes[name].view.messages[-1].uid in indexed(idx)  # (loads it)
    await svc.close()


async def test_a_missing_text_file_is_rebuilt_not_appended_to(tmp_path: Path) -> None:
    box = Box(12)
    first = SearchService(SearchConfig())
    await open_index(first, box, tmp_path).search(Text("body", "a"), box.view)
    await first.close()
    _, text_name = snapshot_meta(Files(tmp_path, "Mbox1").snap)
    (tmp_path / text_name).unlink()  # lost (an operator, a disk problem)
    svc = SearchService(SearchConfig(), resolver=lambda a, m: (tmp_path, box.read))
    await _deliver(svc, box, 12, 3)
    idx = svc._open[("acct1", "Mbox1")]
    # loaded, found corrupt, rebuilt (empty), and the batch appended to the new files, not the old ones
    assert idx.stats["rebuilds"] == 1 and idx.stats["appended"] == 3
    for q in _queries(box):  # the rebuilt index re-reads the older messages: nothing is missed
        assert await idx.search(q, box.view) == _reference(box, q), q
    await svc.close()


async def test_append_files_kept_between_rounds_follow_another_process_snapshot(tmp_path: Path) -> None:
    """The journal and text file stay open between delivery rounds; when another process folds the
    journal into a new snapshot (new journal) the next round appends to the new one."""
    box = Box(5)
    first = SearchService(SearchConfig())
    await open_index(first, box, tmp_path).search(Text("body", "a"), box.view)
    await first.close()
    second = SearchService(SearchConfig(), resolver=lambda a, m: (tmp_path, box.read))
    await _deliver(second, box, 5, 3)
    idx2 = second._open[("acct1", "Mbox1")]
    app = idx2._app
    assert app is not None and idx2.gen == -1
    await _deliver(second, box, 8, 2)
    assert idx2._app is app  # kept: nothing changed on disk
    other = SearchService(SearchConfig(snapshot_every=1))
    idx_o = open_index(other, box, tmp_path)
    await idx_o.search(Text("body", "a"), box.view)  # loads, folds the 5 appended records
    assert idx_o.stats["snapshots"] == 1
    late = await _deliver(second, box, 10, 3)
    assert idx2._app is not app and idx2.stats["appended"] == 8 and idx2.gen == -1
    reads = box.reads
    for q in _queries(box):
        assert await idx_o.search(q, box.view) == _reference(box, q), q
    assert box.reads == reads  # the loaded index tailed the new journal: no catch-up read
    assert set(late) <= set(idx_o.core.indexed)
    await other.close()
    await second.close()


async def test_open_append_files_are_bounded(tmp_path: Path, monkeypatch: Any) -> None:
    import mailsrv.search.service as service_mod

    monkeypatch.setattr(service_mod, "APPENDERS_OPEN", 2)
    boxes = {f"Mbox{i}": Box(0, seed=i) for i in range(4)}
    svc = SearchService(SearchConfig(), resolver=lambda a, m: (tmp_path / m, boxes[m].read))

    async def deliver(name: str, i: int) -> int:
        box = boxes[name]
        uid = box.add(box.gen.message(i)[0])
        svc.message_added("acct1", name, box.view.messages[-1], None)
        await svc.idle()
        return uid

    for i, name in enumerate(boxes):
        await deliver(name, i)
    idxs = [svc._open[("acct1", name)] for name in boxes]
    assert [i._app is not None for i in idxs] == [False, False, True, True]
    assert list(svc._appenders) == idxs[2:]
    again = await deliver("Mbox0", 9)  # reopened, the least recently used one closed
    assert [i._app is not None for i in idxs] == [True, False, False, True]
    assert again in indexed(idxs[0]) and {m.uid for m in boxes["Mbox2"].view.messages} <= indexed(idxs[2])
    await svc.close()
    assert svc._appenders == {}
