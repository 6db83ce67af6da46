"""Processes opening a new quota usage book at the same moment (two workers at first start) all get it:
the switch to WAL and the schema retry SQLite's immediate SQLITE_BUSY instead of failing the index."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from mailsrv.store.usage import UsageBook

PROCESSES = 8
ROUNDS = 5


def _open_and_report(path: str, n: int, start: multiprocessing.synchronize.Event, out: multiprocessing.Queue) -> None:
    start.wait(30)
    try:
        book = UsageBook(Path(path))
        book.report(f"acct{n}", "example.test", "e", 1, 100 + n, 1)
        book.flush()
        book.close()
        out.put((n, None))
    except Exception as exc:
        out.put((n, f"{type(exc).__name__}: {exc}"))


def test_concurrent_first_opens_all_succeed(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    for r in range(ROUNDS):
        path = tmp_path / f"book{r}.sqlite"
        start = ctx.Event()
        out: multiprocessing.Queue = ctx.Queue()
        procs = [ctx.Process(target=_open_and_report, args=(str(path), n, start, out)) for n in range(PROCESSES)]
        for p in procs:
            p.start()
        start.set()
        results = dict(out.get(timeout=60) for _ in procs)
        for p in procs:
            p.join(30)
        assert results == {n: None for n in range(PROCESSES)}
        book = UsageBook(path)
        try:
            usage = book.domain_usage("example.test")
            assert usage.storage == sum(100 + n for n in range(PROCESSES))
            assert usage.messages == PROCESSES
        finally:
            book.close()
