"""The store's account cache is bounded (LRU from [store] account_cache); evicted accounts stay usable."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

from mailsrv.config import StoreConfig
from mailsrv.store import DeliveryTarget, Store

from .conftest import msg, spool


def _open_conns(store: Store) -> int:
    accts = [*store._accounts.values(), *store._evicted.values()]
    return sum(1 for a in accts if a.engine.conn is not None)


def test_lru_bound_and_evicted_account_keeps_working(make_store, run, tmp_path: Path) -> None:
    store = make_store(account_cache=3)
    held = run(store.account("u0"))
    run(store.deliver(spool(tmp_path, msg(0), "s0"), [DeliveryTarget(held)]))
    view = run(held.open_mailbox("INBOX"))
    for i in range(1, 8):
        a = run(store.account(f"u{i}"))
        run(store.deliver(spool(tmp_path, msg(i), f"s{i}"), [DeliveryTarget(a)]))
    del a
    for task in list(store._hibernating):
        run(task)
    gc.collect()
    assert list(store._accounts) == ["u5", "u6", "u7"]
    assert held.engine.conn is None  # evicted while held: connection closed, object still valid
    assert _open_conns(store) == 3
    assert set(store._evicted) == {"u0"}  # the others were not held by anyone and are gone
    # the held account reopens on use and is the one store.account hands out again
    assert run(held.read_message("INBOX", 1)) == msg(0)
    run(store.deliver(spool(tmp_path, msg(100), "again"), [DeliveryTarget(held)]))
    ch = run(view.refresh())
    assert [m.uid for m in ch.added] == [2]
    assert run(store.account("u0")) is held
    assert list(store._accounts)[-1] == "u0" and len(store._accounts) == 3
    # an account dropped entirely is opened afresh with its mail intact
    again = run(store.account("u1"))
    assert [(i.name, i.messages) for i in run(again.list_mailboxes()) if i.name == "INBOX"] == [("INBOX", 1)]
    assert run(again.read_message("INBOX", 1)) == msg(1)


def test_concurrent_deliveries_to_more_accounts_than_the_cache(tmp_path: Path, run) -> None:
    store = Store(StoreConfig(account_cache=2), tmp_path, hostname="test.example")
    try:
        async def one(i: int) -> int | None:
            acct = await store.account(f"g{i % 12}")
            sp = spool(tmp_path, msg(i), f"c{i}")
            res = await store.deliver(sp, [DeliveryTarget(acct)])
            assert res[0].status == "ok", res
            return res[0].uid

        async def deliver_all() -> list[int | None]:
            return await asyncio.gather(*(one(i) for i in range(60)))

        uids = run(deliver_all())
        assert all(u is not None for u in uids)
        assert len(store._accounts) == 2

        async def check() -> list[int]:
            counts = []
            for g in range(12):
                acct = await store.account(f"g{g}")
                view = await acct.open_mailbox("INBOX")
                counts.append(len(view.messages))
                for m in view.messages:
                    assert (await acct.read_message("INBOX", m.uid)).startswith(b"From: ")
            return counts

        assert run(check()) == [5] * 12
    finally:
        run(store.close())


def test_warm_open_snapshots_bounded_in_messages_across_accounts(make_store, run, tmp_path: Path,
                                                                 monkeypatch) -> None:
    """The snapshots kept for warm opens hold at most SNAPSHOT_CACHE_MESSAGES messages per worker (all
    accounts together; least recently opened out first, the newest always kept); an evicted
    snapshot only costs its next open a cold read, with the same messages."""
    from mailsrv.store import store as store_mod

    monkeypatch.setattr(store_mod, "SNAPSHOT_CACHE_MESSAGES", 5)
    store = make_store()
    accts = [run(store.account(f"s{i}")) for i in range(3)]
    for i, a in enumerate(accts):
        for j in range(3):
            run(store.deliver(spool(tmp_path, msg(f"{i}-{j}"), f"s{i}-{j}"), [DeliveryTarget(a)]))
    run(accts[0].open_mailbox("INBOX"))
    assert store._snapshot_messages == 3 and "INBOX" in accts[0]._snaps
    run(accts[1].open_mailbox("INBOX"))  # 6 > 5: the older one (s0) goes
    assert list(store._snapshots) == [("s1", "INBOX")] and store._snapshot_messages == 3
    assert "INBOX" not in accts[0]._snaps and "INBOX" in accts[1]._snaps
    run(accts[1].open_mailbox("Archive"))  # empty: fits
    assert list(store._snapshots) == [("s1", "INBOX"), ("s1", "Archive")]
    # reopened cold: the same messages as a warm open would give
    view = run(accts[0].open_mailbox("INBOX"))
    assert [m.uid for m in view.messages] == [1, 2, 3]
    assert list(store._snapshots) == [("s1", "Archive"), ("s0", "INBOX")] and store._snapshot_messages == 3
    # one snapshot larger than the bound alone is still kept (the session that opened it reuses it)
    monkeypatch.setattr(store_mod, "SNAPSHOT_CACHE_MESSAGES", 2)
    run(accts[2].open_mailbox("INBOX"))
    assert list(store._snapshots) == [("s2", "INBOX")] and store._snapshot_messages == 3
    assert "INBOX" not in accts[0]._snaps and not accts[1]._snaps


def test_account_eviction_forgets_its_snapshots(make_store, run, tmp_path: Path) -> None:
    store = make_store(account_cache=1)
    a = run(store.account("e0"))
    run(store.deliver(spool(tmp_path, msg(0), "e0"), [DeliveryTarget(a)]))
    run(a.open_mailbox("INBOX"))
    assert store._snapshot_messages == 1
    b = run(store.account("e1"))  # evicts e0 and its snapshot
    assert store._snapshot_messages == 0 and not store._snapshots and not a._snaps
    run(b.open_mailbox("INBOX"))
    assert list(store._snapshots) == [("e1", "INBOX")] and store._snapshot_messages == 0
    for task in list(store._hibernating):
        run(task)
