"""Per-domain quota usage: accounted on every store change, shared by processes, enforced, rebuildable."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from mailsrv.config import StoreConfig
from mailsrv.store import DeliveryTarget, OverQuota, QuotaLimits, QuotaUsage, Store
from mailsrv.store.engine import INDEX_NAME
from mailsrv.store.recalc import recalc_domain
from mailsrv.store.usage import BOOK_NAME, UsageBook

from .conftest import msg, spool

Run = Callable[[Awaitable[Any]], Any]


def _sum(*usages: QuotaUsage) -> QuotaUsage:
    return QuotaUsage(sum(u.storage for u in usages), sum(u.messages for u in usages))


def test_every_change_moves_the_domain_total(make_store: Callable[..., Store], run: Run, tmp_path: Path) -> None:
    store = make_store()
    a = run(store.account("1", domain="example.test"))
    b = run(store.account("2", domain="example.test"))
    c = run(store.account("3", domain="other.test"))
    sp = spool(tmp_path, msg(1))
    assert all(r.status == "ok" for r in run(store.deliver(sp, [DeliveryTarget(a), DeliveryTarget(b),
                                                                DeliveryTarget(c)])))
    book = store.usage

    def check() -> None:
        ua, ub, uc = run(a.quota_usage()), run(b.quota_usage()), run(c.quota_usage())
        assert book.domain_usage("example.test") == _sum(ua, ub)
        assert book.domain_usage("other.test") == uc
        assert run(a.domain_usage()) == _sum(ua, ub)

    check()
    assert book.domain_usage("example.test").messages == 2
    run(a.append("INBOX", msg(2)))  # append
    run(a.create_mailbox("Keep"))
    run(a.copy("INBOX", [1, 2], "Keep"))  # copy
    check()
    assert book.domain_usage("example.test").messages == 5
    run(a.move("Keep", [1], "Trash"))  # move: no change in usage
    check()
    run(a.expunge("INBOX", [1], only_deleted=False))  # expunge
    check()
    run(a.delete_mailbox("Keep"))  # delete folder
    check()
    assert book.domain_usage("example.test").messages == 3
    run(b.expunge("INBOX", None, only_deleted=False))
    check()
    book.forget("1")  # account deleted from the directory
    assert book.domain_usage("example.test") == run(b.quota_usage()) == QuotaUsage(0, 0)


def test_a_second_worker_sees_and_adds_to_the_same_total(make_store: Callable[..., Store], run: Run,
                                                          tmp_path: Path) -> None:
    one, two = make_store(), make_store()
    a1 = run(one.account("1", domain="example.test"))
    one.usage.flush()  # the report is written by a background thread: wait for it (or its running write)
    a2 = run(two.account("1"))  # the domain is learnt from the shared book
    assert a2.domain == "example.test"
    run(a1.append("INBOX", msg(1)))
    run(a2.append("INBOX", msg(2)))
    b2 = run(two.account("2", domain="example.test"))
    run(b2.append("INBOX", msg(3)))
    total = _sum(run(a1.quota_usage()), run(b2.quota_usage()))
    assert total.messages == 3
    assert run(a1.domain_usage()) == run(b2.domain_usage()) == total


def test_domain_limits_are_enforced(make_store: Callable[..., Store], run: Run, tmp_path: Path) -> None:
    store = make_store()
    a = run(store.account("1", domain="example.test"))
    b = run(store.account("2", domain="example.test"))
    body = msg(1)
    dom = QuotaLimits(storage=3 * len(body) + 10)
    sp = spool(tmp_path, body)
    res = run(store.deliver(sp, [DeliveryTarget(a, domain_limits=dom), DeliveryTarget(b, domain_limits=dom)]))
    assert [r.status for r in res] == ["ok", "ok"]
    assert run(b.quota_check(len(body), QuotaLimits(), dom)) == "ok"
    run(b.append("INBOX", body, domain_limits=dom))  # the third fits
    # the domain is full: the user's own limits are unlimited, the domain's refuse
    assert run(a.quota_check(len(body), QuotaLimits(), dom)) == "over_quota"
    assert run(a.quota_check(len(body), QuotaLimits())) == "ok"  # no source of domain limits: unlimited
    [r] = run(store.deliver(spool(tmp_path, body, "s2"), [DeliveryTarget(a, domain_limits=dom)]))
    assert r.status == "over_quota"
    with pytest.raises(OverQuota):
        run(a.append("INBOX", body, domain_limits=dom))
    with pytest.raises(OverQuota):
        run(b.copy("INBOX", [1], "Trash", domain_limits=dom))
    # limits from the store's source (the worker wires directory.domain_quota)
    asked: list[str] = []

    async def source(domain: str) -> tuple[int | None, int | None]:
        asked.append(domain)
        return (None, 3) if domain == "example.test" else (None, None)

    store.set_domain_quota_source(source)
    with pytest.raises(OverQuota) as exc:
        run(a.append("INBOX", body))
    assert exc.value.resource == "MESSAGE"
    assert run(a.domain_limits()) == QuotaLimits(None, 3)
    assert asked == ["example.test"]  # reused, not asked per call
    run(b.expunge("INBOX", [1], only_deleted=False))  # room again for the domain
    run(a.append("INBOX", body))
    assert store.usage.domain_usage("example.test").messages == 3


def test_reports_in_any_order_keep_the_newest(tmp_path: Path) -> None:
    book = UsageBook(tmp_path / BOOK_NAME)
    try:
        book.report("1", "d.test", "X1", 5, 500, 5)
        book.report("1", None, "X1", 4, 400, 4)  # late report of an older generation: ignored
        assert book.domain_usage("d.test") == QuotaUsage(500, 5)
        book.report("2", "d.test", "X9", 1, 10, 1)
        assert book.domain_usage("d.test") == QuotaUsage(510, 6)
        book.report("1", None, "X2", 1, 100, 1)  # a rebuilt index (new epoch) starts again at 1
        assert book.domain_usage("d.test") == QuotaUsage(110, 2)
        book.report("2", "e.test", "X9", 1, 10, 1)  # moved to another domain
        assert book.domain_usage("d.test") == QuotaUsage(100, 1)
        assert book.domains() == {"d.test": QuotaUsage(100, 1), "e.test": QuotaUsage(10, 1)}
        assert book.account_usage("2") == ("e.test", QuotaUsage(10, 1))
        assert book.reports == 5 and 1 <= book.flushes <= 5
    finally:
        book.close()


def test_a_lost_report_heals_at_next_open_and_recalc_rebuilds(make_store: Callable[..., Store], run: Run,
                                                              tmp_path: Path) -> None:
    store = make_store()
    a = run(store.account("1", domain="example.test"))
    b = run(store.account("2", domain="example.test"))
    run(a.append("INBOX", msg(1)))
    a.engine.usage = None  # a crash between the index commit and the book write
    run(a.append("INBOX", msg(2)))
    run(b.append("INBOX", msg(3)))
    assert store.usage.domain_usage("example.test").messages == 2
    b_storage = run(b.quota_usage()).storage
    run(store.close())
    other = make_store()
    a2 = run(other.account("1"))  # reopened by any worker: the account re-reports its usage
    assert run(a2.domain_usage()) == QuotaUsage(run(a2.quota_usage()).storage + b_storage, 3)
    run(other.close())
    # the book is lost and an index counter drifted: recalc recounts from the index rows
    for p in tmp_path.glob(BOOK_NAME + "*"):
        p.unlink()
    db = sqlite3.connect(tmp_path / "mail" / "1" / INDEX_NAME)
    db.execute("UPDATE quota SET storage = 1, messages = 77")
    db.commit()
    db.close()
    book = UsageBook(tmp_path / BOOK_NAME)
    try:
        book.report("9", "example.test", "X", 1, 5, 5)  # a user no longer in the domain
        roots = [(str(i), tmp_path / "mail" / str(i)) for i in (1, 2, 3)]  # 3 never got mail
        got = recalc_domain(book, "example.test", roots)
        sizes = sum(len(msg(i)) for i in (1, 2, 3))
        assert got == QuotaUsage(sizes, 3)
        assert book.account_usage("9") is None and book.account_usage("3") == ("example.test", QuotaUsage(0, 0))
    finally:
        book.close()
    fresh = make_store()
    a3 = run(fresh.account("1"))
    assert run(a3.quota_usage()) == QuotaUsage(len(msg(1)) + len(msg(2)), 2)  # the counter was fixed


def _worker(data_dir: str, account: str, n: int, start: Any) -> None:
    import asyncio

    async def go() -> None:
        store = Store(StoreConfig(), data_dir, hostname="test.example")
        acct = await store.account(account, domain="example.test")
        other = await store.account("shared", domain="example.test")
        for i in range(n):
            if i % 3 == 2:
                await other.append("INBOX", msg(f"{account}-{i}"))
            else:
                await acct.append("INBOX", msg(f"{account}-{i}"))
            if i % 5 == 4:
                await acct.expunge("INBOX", [(await acct.open_mailbox("INBOX")).messages[0].uid], only_deleted=False)
        await store.close()

    start.wait(30)
    asyncio.run(go())


def test_processes_changing_one_domain_concurrently_agree(tmp_path: Path, run: Run) -> None:
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), str(i), 20, start)) for i in range(4)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = Store(StoreConfig(), tmp_path, hostname="test.example")
    try:
        usages = [run(run(store.account(a)).quota_usage()) for a in ("0", "1", "2", "3", "shared")]
        assert sum(u.messages for u in usages) == 4 * (20 - 4)
        assert store.usage.domain_usage("example.test") == _sum(*usages)
    finally:
        run(store.close())
    assert os.path.exists(tmp_path / BOOK_NAME)
