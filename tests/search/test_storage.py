"""Index files: reopen, journal replay, torn and corrupt files, crash during indexing, several processes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from pyroaring import BitMap
from search.searchbox import Box, indexed, open_index

from mailsrv.config import SearchConfig
from mailsrv.search import All, And, Flag, Not, Or, Query, SearchService, Size, Text, matches

QUERIES: list[Query] = [
    Text("body", "季度报告"),
    Text("subject", "report"),
    Text("from", "ann"),
    Or(Text("body", "straße"), And(Not(Flag("\\Seen")), Size("larger", 2500))),
    Text("text", "ort"),
]


def reference(box: Box, q: Query) -> BitMap:
    return BitMap(m.uid for m in box.view.messages if matches(q, box.docs[m.uid], m))


async def check_all(svc: SearchService, box: Box, d: Path) -> None:
    idx = open_index(svc, box, d)
    for q in QUERIES:
        assert await idx.search(q, box.view) == reference(box, q), q


async def test_reopen_uses_snapshot_and_journal(tmp_path: Path) -> None:
    box = Box(120)
    svc = SearchService(SearchConfig(snapshot_every=50, batch=20))
    await check_all(svc, box, tmp_path)
    assert box.reads == 120
    assert open_index(svc, box, tmp_path).stats["snapshots"] >= 2
    # no close(): the journal holds the records after the last snapshot
    svc._pool.shutdown(wait=True)
    box.reads = 0
    svc2 = SearchService(SearchConfig(snapshot_every=50))
    await check_all(svc2, box, tmp_path)
    assert box.reads == 0, "a reopened index must not re-read messages"
    await svc2.close()


async def test_second_process_sees_appends_and_snapshots(tmp_path: Path) -> None:
    box = Box(30)
    a = SearchService(SearchConfig(snapshot_every=1000))
    b = SearchService(SearchConfig(snapshot_every=1000))
    await check_all(a, box, tmp_path)
    await check_all(b, box, tmp_path)
    assert box.reads == 30  # b took a's records from the journal
    uid = box.add(box.gen.message(500)[0])
    await open_index(a, box, tmp_path).index_uids([uid])
    box.reads = 0
    await check_all(b, box, tmp_path)
    assert box.reads == 0
    await open_index(a, box, tmp_path).flush()  # a new snapshot generation
    uid = box.add(box.gen.message(501)[0])
    await check_all(b, box, tmp_path)  # b reloads, then indexes the new one
    assert box.reads == 1
    await a.close()
    await b.close()


def _tear(log: Path) -> None:
    size = log.stat().st_size
    with open(log, "r+b") as f:
        f.truncate(size - 7)  # the last record loses its end
        f.seek(0, os.SEEK_END)
        f.write(b"\x05\x00\x00\x00garbage")


def _remove_all(d: Path) -> None:
    for p in d.iterdir():
        p.unlink()


async def test_torn_journal_tail_is_cut_and_reindexed(tmp_path: Path) -> None:
    box = Box(40)
    svc = SearchService(SearchConfig(snapshot_every=1000))
    await check_all(svc, box, tmp_path)
    svc._pool.shutdown(wait=True)
    _tear(tmp_path / "Mbox1.log")
    box.reads = 0
    svc2 = SearchService(SearchConfig(snapshot_every=1000))
    await check_all(svc2, box, tmp_path)
    assert box.reads == 1, "only the message of the torn record is read again"
    await svc2.close()


async def test_corrupt_snapshot_is_rebuilt(tmp_path: Path) -> None:
    box = Box(40)
    svc = SearchService(SearchConfig(snapshot_every=10))
    await check_all(svc, box, tmp_path)
    await svc.close()
    snap = tmp_path / "Mbox1.snap"
    data = bytearray(snap.read_bytes())
    data[len(data) // 2] ^= 0xFF
    snap.write_bytes(bytes(data))
    box.reads = 0
    svc2 = SearchService(SearchConfig(snapshot_every=10))
    await check_all(svc2, box, tmp_path)
    assert box.reads == 40
    assert open_index(svc2, box, tmp_path).stats["rebuilds"] == 1
    await svc2.close()


async def test_deleted_files_are_rebuilt_and_rebuild_api(tmp_path: Path) -> None:
    box = Box(25)
    svc = SearchService(SearchConfig(snapshot_every=10))
    await check_all(svc, box, tmp_path)
    _remove_all(tmp_path)
    await check_all(svc, box, tmp_path)
    box.reads = 0
    await open_index(svc, box, tmp_path).rebuild(box.view)
    assert box.reads == 25
    await check_all(svc, box, tmp_path)
    await svc.close()


async def test_expunge_and_flags_follow_the_view(tmp_path: Path) -> None:
    box = Box(30)
    svc = SearchService(SearchConfig(snapshot_every=7))
    idx = open_index(svc, box, tmp_path)
    await check_all(svc, box, tmp_path)
    gone = [m.uid for m in box.view.messages[::3]]
    box.expunge(gone)
    svc.messages_expunged("acct1", "Mbox1", gone)
    await svc.idle()
    assert not (idx.core.indexed & BitMap(gone))
    target = box.view.messages[1].uid
    box.set_flags(target, frozenset({"$OnlyThisOne"}))
    assert await idx.search(Flag("$onlythisone"), box.view) == BitMap([target])
    await check_all(svc, box, tmp_path)
    await svc.close()


async def test_observer_indexes_after_delivery(tmp_path: Path) -> None:
    box = Box(5)

    def resolve(account_id: str, mailbox_id: str):  # type: ignore[no-untyped-def]
        return (tmp_path, box.read) if (account_id, mailbox_id) == ("acct1", "Mbox1") else None

    svc = SearchService(SearchConfig(), resolver=resolve)
    uid = box.add(box.gen.message(77)[0])
    svc.message_added("acct1", "Mbox1", box.view.messages[-1], None)
    svc.message_added("acct1", "Other", box.view.messages[-1], None)  # not resolvable: ignored
    await svc.idle()
    idx = open_index(svc, box, tmp_path)
    assert uid in indexed(idx)
    assert idx.columns(uid) is not None
    await check_all(svc, box, tmp_path)
    await svc.close()


async def test_unreadable_message_is_scanned_as_empty(tmp_path: Path) -> None:
    box = Box(10)
    victim = box.view.messages[4].uid
    del box.raw[victim]
    svc = SearchService(SearchConfig())
    idx = open_index(svc, box, tmp_path)
    got = await idx.search(Not(Text("body", "zzzz-nothing")), box.view)
    assert victim in got and len(got) == 10
    got = await idx.search(Text("body", ""), box.view)
    assert victim in got
    got = await idx.search(Text("subject", "a"), box.view)
    assert victim not in got
    await svc.close()


CHILD = r"""
import asyncio, sys
sys.path.insert(0, sys.argv[2])
from search.searchbox import Box, open_index
from mailsrv.config import SearchConfig
from mailsrv.search import SearchService, Flag

async def main():
    box = Box(400, seed=3)
    svc = SearchService(SearchConfig(snapshot_every=int(sys.argv[3]), batch=5))
    idx = open_index(svc, box, __import__("pathlib").Path(sys.argv[1]))
    print("ready", flush=True)
    await idx.search(Flag("\\Seen"), box.view)
    print("done", flush=True)

asyncio.run(main())
"""


def _index_and_kill(d: Path, snapshot_every: int, target: int) -> None:
    """Run CHILD indexing into ``d`` and SIGKILL it once its journal holds ``target`` bytes."""
    tests_dir = str(Path(__file__).resolve().parent.parent)
    d.mkdir()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(d), tests_dir, str(snapshot_every)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 60
    log = d / "Mbox1.log"
    while time.monotonic() < deadline:  # poll for progress, then kill mid-flight
        if log.exists() and log.stat().st_size >= target:
            break
        if child.poll() is not None:
            break
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()


async def test_crash_during_indexing_then_correct_rebuild(tmp_path: Path) -> None:
    """SIGKILL a process at random moments while it indexes; the next open answers exactly."""
    rng = random.Random(5)
    box = Box(400, seed=3)
    for round_ in range(4):
        d = tmp_path / f"r{round_}"
        # journal bytes: at least one record is on disk
        _index_and_kill(d, rng.choice([30, 1000]), rng.randrange(200, 3_000))
        box.reads = 0
        svc = SearchService(SearchConfig(snapshot_every=100))
        await check_all(svc, box, d)
        assert box.reads < 400, "what the killed process indexed is kept"
        # and once more from what that run wrote
        await svc.close()
        box.reads = 0
        svc = SearchService(SearchConfig())
        await check_all(svc, box, d)
        assert box.reads == 0
        await svc.close()


def _text_sizes(d: Path) -> list[int]:
    return [p.stat().st_size for p in sorted(d.glob("Mbox1.*.text"))]


async def test_text_cache_is_compacted_after_expunges(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from mailsrv.search import service as service_mod

    monkeypatch.setattr(service_mod, "COMPACT_SLACK", 0)
    box = Box(60)
    svc = SearchService(SearchConfig(snapshot_every=1000))
    other = SearchService(SearchConfig(snapshot_every=1000))
    await check_all(svc, box, tmp_path)
    await check_all(other, box, tmp_path)
    idx = open_index(svc, box, tmp_path)
    (before,) = _text_sizes(tmp_path)
    gone = [m.uid for m in box.view.messages[:45]]
    box.expunge(gone)
    await idx.expunged(gone)
    await idx.flush()
    assert idx.stats["text_compactions"] == 1
    (after,) = _text_sizes(tmp_path)  # the old file is gone
    assert after < before / 2
    await check_all(svc, box, tmp_path)
    box.reads = 0
    await check_all(other, box, tmp_path)  # reloads the new generation and its text file
    assert box.reads == 0
    await svc.close()
    await other.close()
    fresh = SearchService()
    await check_all(fresh, box, tmp_path)
    assert box.reads == 0
    await fresh.close()


async def test_least_recently_used_indexes_are_closed(tmp_path: Path) -> None:
    box = Box(12)
    svc = SearchService(SearchConfig(cache_mailboxes=2))
    first = svc.mailbox("acct1", "A", tmp_path, box.read)
    want = reference(box, Text("body", "report"))
    assert await first.search(Text("body", "report"), box.view) == want
    for mid in ("B", "C"):
        assert await svc.mailbox("acct1", mid, tmp_path, box.read).search(All(), box.view) == BitMap(
            m.uid for m in box.view.messages
        )
    assert first.gen == -1, "evicted and closed"
    again = svc.mailbox("acct1", "A", tmp_path, box.read)
    assert again is not first
    box.reads = 0
    assert await again.search(Text("body", "report"), box.view) == want
    assert box.reads == 0  # reopened from its files
    await svc.close()


async def test_cached_sort_order_follows_changes(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from mailsrv.search import SortKey
    from mailsrv.search import service as service_mod

    monkeypatch.setattr(service_mod, "SORT_CACHE_MIN", 0)
    box = Box(20)
    svc = SearchService()
    idx = open_index(svc, box, tmp_path)
    key = [SortKey("keyword:$top")]
    uids = [m.uid for m in box.view.messages]
    assert await idx.sort(All(), key, box.view) == uids
    box.set_flags(uids[7], frozenset({"$Top"}))
    assert await idx.sort(All(), key, box.view) == [uids[7], *uids[:7], *uids[8:]]
    uid = box.add(box.gen.message(900)[0], flags=frozenset({"$top"}))
    assert await idx.sort(All(), key, box.view) == [uids[7], uid, *uids[:7], *uids[8:]]
    box.expunge([uids[7]])
    assert await idx.sort(All(), key, box.view) == [uid, *uids[:7], *uids[8:]]
    assert await idx.sort(All(), [SortKey("keyword:$top", reverse=True)], box.view) == [*uids[:7], *uids[8:], uid]
    await svc.close()


async def test_loaded_indexes_bounded_in_messages(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """CACHE_MESSAGES bounds the messages of the loaded indexes of all mailboxes together (least
    recently used out first, the one in use kept); an unloaded one answers the same from its files."""
    from mailsrv.search import service as service_mod

    monkeypatch.setattr(service_mod, "CACHE_MESSAGES", 15)
    box = Box(12)
    svc = SearchService(SearchConfig(cache_mailboxes=16))
    every = BitMap(m.uid for m in box.view.messages)
    first = svc.mailbox("acct1", "A", tmp_path, box.read)
    assert await first.search(All(), box.view) == every
    second = svc.mailbox("acct1", "B", tmp_path, box.read)  # 12 loaded: B may load
    assert await second.search(All(), box.view) == every
    assert first.gen >= 0 and second.gen >= 0  # over the bound only once B is loaded: nothing closed yet
    third = svc.mailbox("acct1", "C", tmp_path, box.read)  # 24 > 15: A (least recently used) goes, 12 left
    assert first.gen == -1 and second.gen >= 0
    assert await third.search(All(), box.view) == every
    want = reference(box, Text("body", "report"))
    again = svc.mailbox("acct1", "A", tmp_path, box.read)  # B and C hold 24: B goes
    assert second.gen == -1 and third.gen >= 0
    box.reads = 0
    assert await again.search(Text("body", "report"), box.view) == want
    assert box.reads == 0  # reopened from its files
    await svc.close()
