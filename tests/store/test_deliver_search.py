"""Deliveries through the store reach the search index (the worker's wiring), and no search misses one.

Real store, real search service with the worker's resolver (mailsrv.worker.search_resolver):
deferred deliveries are indexed by the store's indexer, then by the search observer in
batches read with one store job each (``Account.read_messages``), appended to indexes the
worker has not loaded.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from mailsrv.config import SearchConfig
from mailsrv.search import SearchService, Text
from mailsrv.store import DeliveryTarget, MailboxNotFound, Store, account_root
from mailsrv.worker import search_resolver

from .conftest import msg, spool

Run = Callable[[Awaitable[Any]], Any]


def _body(i: int) -> bytes:
    return msg(i, subject=f"topic{i % 4}").replace(f"body {i}".encode(), f"body word{i}x".encode())


def test_every_delivery_is_found_by_search(tmp_path: Path, run: Run, make_store: Callable[..., Store]) -> None:
    store = make_store(index_delay=0.001)
    # one cached index for three mailboxes: deliveries mostly append to indexes not loaded here
    search = SearchService(SearchConfig(cache_mailboxes=1, batch=4), search_resolver(store))
    store.add_observer(search)
    accts = [run(store.account(f"u{i}")) for i in range(3)]
    n = 30

    async def deliver() -> None:
        for i in range(n):
            res = await store.deliver(spool(tmp_path, _body(i), f"s{i}"), [DeliveryTarget(accts[i % 3])], uids=False)
            assert res[0].status == "ok"
        await store.indexer.flush()
        await search.idle()

    run(deliver())
    appended = sum(idx.stats["appended"] for idx in search._open.values())
    run(search.close())

    # a fresh worker's search service: loads what the first one wrote, finds every message
    fresh = SearchService(SearchConfig(), search_resolver(store))

    async def check() -> tuple[int, int]:
        found = reads = 0
        for a, acct in enumerate(accts):
            view = await acct.open_mailbox("INBOX")
            info = next(b for b in await acct.list_mailboxes() if b.name == "INBOX")
            idx = fresh._index_for(acct.id, info.id)
            assert idx is not None
            for i in range(a, n, 3):
                hits = await idx.search(Text("body", f"word{i}x"), view)
                assert len(hits) == 1, (i, list(hits))
                raw = await acct.read_message("INBOX", next(iter(hits)))
                assert f"word{i}x".encode() in raw
                found += 1
            reads += idx.stats["indexed"]
        return found, reads

    found, reindexed = run(check())
    assert found == n
    assert reindexed == 0  # every message was in the files already: nothing indexed again
    assert appended > 0  # and some of them through appends to an index not loaded
    run(fresh.close())


def test_read_messages_in_one_job(tmp_path: Path, run: Run, make_store: Callable[..., Store]) -> None:
    store = make_store()
    acct = run(store.account("u"))
    for i in range(4):
        run(store.deliver(spool(tmp_path, msg(i), f"s{i}"), [DeliveryTarget(acct)]))
    view = run(acct.open_mailbox("INBOX"))
    uids = [m.uid for m in view.messages]
    guid = next(b.id for b in run(acct.list_mailboxes()) if b.name == "INBOX")
    run(acct.store_flags("INBOX", [uids[1]], frozenset({"\\Seen"}), "add"))  # renamed file
    run(acct.expunge("INBOX", [uids[2]], only_deleted=False))
    got = run(acct.read_messages(guid, [*uids, 999]))
    assert sorted(got) == [uids[0], uids[1], uids[3]]
    for uid in got:
        assert got[uid] == msg(uids.index(uid))
    try:
        run(acct.read_messages("Mnope", uids))
    except MailboxNotFound:
        pass
    else:
        raise AssertionError("an unknown mailbox id must raise MailboxNotFound")


def test_account_root_is_the_one_derivation(tmp_path: Path, run: Run, make_store: Callable[..., Store]) -> None:
    assert account_root(tmp_path, 7, "mail/example.test/alice") == tmp_path / "mail/example.test/alice"
    assert account_root(str(tmp_path), 7, "") == tmp_path / "mail" / "7"
    assert account_root(tmp_path, "7", None) == tmp_path / "mail" / "7"
    store = make_store()
    acct = run(store.account("7"))  # no maildir from the directory: the default place
    assert acct.root == account_root(tmp_path, 7) and (acct.root / "new").is_dir()


def test_search_before_the_indexers_run_finds_the_delivery(tmp_path: Path, run: Run,
                                                            make_store: Callable[..., Store]) -> None:
    """Acknowledged, UID not yet assigned, search indexing not yet run: a search still finds it."""
    store = make_store(index_delay=30.0)  # the background indexer waits
    search = SearchService(SearchConfig(), search_resolver(store))
    store.add_observer(search)
    acct = run(store.account("u"))

    async def go() -> tuple[int, list[int]]:
        res = await store.deliver(spool(tmp_path, _body(5), "s5"), [DeliveryTarget(acct)], uids=False)
        assert res[0].status == "ok" and res[0].uid is None
        assert store.indexer.waiting == 1
        view = await acct.open_mailbox("INBOX")  # the reader indexes what waits in new/
        info = next(b for b in await acct.list_mailboxes() if b.name == "INBOX")
        idx = search.mailbox(acct.id, info.id, acct.root / "mailsrv-search",
                             lambda uid: acct.read_message("INBOX", uid))
        hits = await idx.search(Text("body", "word5x"), view)
        return view.messages[0].uid, list(hits)

    uid, hits = run(go())
    assert hits == [uid]
    run(search.close())


def _counting_resolver(store: Store, reads: list[list[int]]) -> Any:
    """The worker's resolver, its blocking batch reader recording the UIDs it is asked for."""
    inner = search_resolver(store)

    def resolve(account_id: str, mailbox_id: str) -> Any:
        found = inner(account_id, mailbox_id)
        if found is None:
            return None
        directory, read, read_many, read_many_blocking = found

        def counted(uids: Any) -> dict[int, bytes]:
            reads.append(list(uids))
            return read_many_blocking(uids)

        return directory, read, read_many, counted

    return resolve


def test_delivered_bytes_are_indexed_without_reading_the_file_back(
        tmp_path: Path, run: Run, make_store: Callable[..., Store], monkeypatch: Any) -> None:
    """A delivery that held the message (in memory, or read for its parse) hands the bytes to the
    search observer; a message above store.KEEP_RAW, or beyond the search's RAW_HELD_MAX, is read."""
    import mailsrv.search.service as service_mod
    import mailsrv.store.store as store_mod

    monkeypatch.setattr(store_mod, "KEEP_RAW", 2000)
    store = make_store(index_delay=0.001)
    reads: list[list[int]] = []
    search = SearchService(SearchConfig(), _counting_resolver(store, reads))
    store.add_observer(search)
    acct = run(store.account("u"))
    big = _body(3) + b"filler " * 300  # above KEEP_RAW: read back
    assert len(_body(1)) < 2000 < len(big)

    async def deliver(i: int, data: bytes, in_memory: bool) -> None:
        sp = tmp_path / f"s{i}"
        if not in_memory:
            sp.write_bytes(data)
        res = await store.deliver(sp, [DeliveryTarget(acct)], uids=False, data=data if in_memory else None)
        assert res[0].status == "ok"
        await store.indexer.flush()
        await search.idle()

    async def found(word: str) -> list[int]:
        view = await acct.open_mailbox("INBOX")
        info = next(b for b in await acct.list_mailboxes() if b.name == "INBOX")
        idx = search._index_for(acct.id, info.id)
        assert idx is not None
        return list(await idx.search(Text("body", word), view))

    run(deliver(1, _body(1), True))  # sealed in memory (the SMTP backend's spool)
    run(deliver(2, _body(2), False))  # a spool file, read by the delivery's parse
    assert reads == []
    run(deliver(3, big, True))
    assert reads == [[3]]
    monkeypatch.setattr(service_mod, "RAW_HELD_MAX", 100)  # a backlog: the bytes are not held
    run(deliver(4, _body(4), True))
    assert reads == [[3], [4]]
    assert search.raw_held == 0
    assert [run(found(f"word{i}x")) for i in (1, 2, 3, 4)] == [[1], [2], [3], [4]]
    run(search.close())


def test_bytes_held_for_the_indexer_are_bounded_per_process(
        tmp_path: Path, run: Run, make_store: Callable[..., Store], monkeypatch: Any) -> None:
    """Deliveries waiting for the indexer hold their bytes within store.RAW_HELD_MAX (an indexer
    that stalls while mail arrives must not grow memory without bound): beyond it a delivery holds
    none, search reads it back, and the budget is given back once the indexer took them."""
    import mailsrv.store.store as store_mod

    monkeypatch.setattr(store_mod, "RAW_HELD_MAX", 2 * len(_body(1)) + 10)
    store = make_store(index_delay=3600.0)  # the indexer waits: every delivery stays pending
    reads: list[list[int]] = []
    search = SearchService(SearchConfig(), _counting_resolver(store, reads))
    store.add_observer(search)
    acct = run(store.account("u"))
    before = store_mod._RAW_HELD.held

    async def deliver() -> list[bool]:
        for i in range(1, 5):
            res = await store.deliver(tmp_path / f"s{i}", [DeliveryTarget(acct)], uids=False, data=_body(i))
            assert res[0].status == "ok"
        return [p.raw is not None for p in acct.engine.pending.values()]

    assert run(deliver()) == [True, True, False, False]
    assert store_mod._RAW_HELD.held - before == len(_body(1)) + len(_body(2))

    async def drain() -> None:
        await store.indexer.flush()
        await search.idle()

    run(drain())
    assert acct.engine.pending == {}
    assert store_mod._RAW_HELD.held == before
    assert sorted(u for r in reads for u in r) == [3, 4]  # the two not held were read back
    run(search.close())


def test_a_deleted_mailbox_takes_its_search_files_along(tmp_path: Path, run: Run,
                                                        make_store: Callable[..., Store]) -> None:
    """Account.delete_mailbox tells the observers (mailbox_deleted): the search index files of the mailbox
    go, those of the others stay (they were left behind for good: nothing else removes them)."""
    store = make_store()
    search = SearchService(SearchConfig(), search_resolver(store))
    store.add_observer(search)
    acct = run(store.account("u"))

    async def setup() -> str:
        info = await acct.create_mailbox("Projects")
        for name in ("Projects", "INBOX"):
            await acct.append(name, msg(1))
        await search.idle()
        return info.id

    guid = run(setup())
    directory = acct.root / "mailsrv-search"
    inbox = next(b for b in run(acct.list_mailboxes()) if b.name == "INBOX").id
    assert {p.name.split(".")[0] for p in directory.iterdir()} >= {guid, inbox}  # both indexed
    run(acct.delete_mailbox("Projects"))
    assert not [p for p in directory.iterdir() if p.name.startswith(guid)]
    assert [p for p in directory.iterdir() if p.name.startswith(inbox)]
    run(search.close())


def test_one_mime_scan_per_delivery(tmp_path: Path, run: Run, make_store: Callable[..., Store],
                                    monkeypatch: Any) -> None:
    """A delivery held in memory is MIME-scanned once: the store's parse gives the index its structure
    and thread headers, and the search indexing after delivery its parts (no second scan), and the
    message is found by its body and subject."""
    from mailsrv import mime
    from mailsrv._speedups import mime as scanner

    scans: list[int] = []
    real = scanner.scan
    monkeypatch.setattr(mime._scanner, "scan", lambda raw, *a: scans.append(len(raw)) or real(raw, *a))
    store = make_store(index_delay=0.001)
    search = SearchService(SearchConfig(), search_resolver(store))
    store.add_observer(search)
    acct = run(store.account("u"))
    n = 6

    async def deliver() -> None:
        for i in range(n):
            body = _body(i)
            res = await store.deliver(spool(tmp_path, body, f"s{i}"), [DeliveryTarget(acct)], uids=False,
                                      data=body)
            assert res[0].status == "ok"
        await store.indexer.flush()
        await search.idle()

    run(deliver())
    assert len(scans) == n

    async def check() -> None:
        view = await acct.open_mailbox("INBOX")
        info = next(b for b in await acct.list_mailboxes() if b.name == "INBOX")
        idx = search._index_for(acct.id, info.id)
        assert idx is not None
        for i in range(n):
            assert len(await idx.search(Text("body", f"word{i}x"), view)) == 1
        assert len(await idx.search(Text("subject", "topic1"), view)) == 2

    run(check())
    assert search.stats["read_back"] == 0
    run(search.close())
