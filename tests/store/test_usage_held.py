"""Usage reports made while a background index job runs (UsageBook.held) reach the per-domain book in
one transaction after it, not one per mailbox transaction; reads in the process still see them at once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from mailsrv.store import DeliveryTarget, Store
from mailsrv.store.types import QuotaUsage
from mailsrv.store.usage import UsageBook
from tests.support.server import wait_until

from .conftest import msg, spool

Run = Callable[[Awaitable[Any]], Any]


def test_reports_inside_held_wake_the_writer_once_at_the_end(tmp_path: Path) -> None:
    book = UsageBook(tmp_path / "book.sqlite")
    try:
        with book.held():
            with book.held():  # nested (two index jobs at once): the last one out wakes the writer
                for n in range(3):
                    book.report(f"acct{n}", "example.test", "e", 1, 100 * (n + 1), 1)
            assert book.flushes == 0  # the writer was not woken
        wait_until(lambda: book.flushes == 1)
        assert book.domain_usage("example.test") == QuotaUsage(600, 3)
        with book.held():
            book.report("acct0", "example.test", "e", 2, 50, 1)
            assert book.domain_usage("example.test") == QuotaUsage(550, 3)  # a read flushes the queue itself
            flushes = book.flushes
        assert book.flushes == flushes  # nothing queued at the end: no wake-up, no transaction
    finally:
        book.close()


def test_an_index_batch_over_many_mailboxes_writes_the_book_once(tmp_path: Path, run: Run,
                                                                  make_store: Callable[..., Store]) -> None:
    store = make_store(index_delay=3600.0)  # nothing indexed before flush: one batch
    accts = [run(store.account(f"u{n}", domain="example.test")) for n in range(6)]
    for n, acct in enumerate(accts):
        [r] = run(store.deliver(spool(tmp_path, msg(n), f"s{n}"), [DeliveryTarget(acct)], uids=False))
        assert r.status == "ok"
    wait_until(lambda: not store.usage._queue)  # the opens' reports written
    flushes, reports = store.usage.flushes, store.usage.reports
    run(store.indexer.flush())
    assert store.indexer.stats["added"] == 6
    assert store.usage.reports - reports == 6  # one per mailbox transaction
    wait_until(lambda: store.usage.flushes > flushes)
    assert store.usage.flushes - flushes <= store.indexer.INDEX_JOBS  # one per job, not one per mailbox
    usage = store.usage.domain_usage("example.test")
    assert usage.messages == 6
