"""Store benchmark: a big mailbox (open cold/warm, list flags, index size) and durable delivery rate.

Baseline for delivery: the same machine's raw rate of fsync'd file creates
(write, fsync file, fsync directory) in the same file system, measured in the
same run. "Cold" open is a fresh Store (new SQLite connection, no cached
state); the OS page cache is not dropped (that would disturb other users of
the machine), so it is cold for mailsrv, warm for the kernel.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from mailsrv.config import StoreConfig
from mailsrv.store import DeliveryTarget, QuotaLimits, Store
from mailsrv.store.engine import INDEX_NAME, UIDLIST_NAME

from ._common import fill_new, in_process_meter, link_tree, message, seed_cache

SIZES = {"smoke": (200, 40), "full": (100_000, 1_000)}


def _message(n: int) -> bytes:
    return message(n, repeat=30, lines=3)


def _fill(new_dir: Path, n: int) -> None:
    """Drop n messages into new/ as another MDA would (no fsync: setup, not measured)."""
    new_dir.mkdir(parents=True, exist_ok=True)
    fill_new(new_dir, (_message(i) for i in range(n)))


def _link_new(new_dir: Path, n: int) -> None:
    """:func:`_fill`, from a seed built once (bench/_common.py :func:`seed_cache`) and hard-linked."""
    link_tree(seed_cache("store", n, _message(0) + _message(n - 1), _fill), new_dir)


def _raw_fsync_creates(d: Path, count: int, data: bytes) -> float:
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for i in range(count):
        p = d / f"raw{i}"
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(dfd)
        os.close(dfd)
    return count / (time.perf_counter() - t0)


async def _big_mailbox(base: Path, n: int) -> tuple[list[dict[str, Any]], list[str]]:
    results: list[dict[str, Any]] = []
    notes: list[str] = []
    store = Store(StoreConfig(), base)
    acct = await store.account("big")
    root = base / "mail" / "big"
    await asyncio.get_running_loop().run_in_executor(None, _link_new, root / "new", n)
    t0 = time.perf_counter()
    view = await acct.open_mailbox("INBOX")  # indexes all n (read + MIME parse + insert), one transaction
    t_import = time.perf_counter() - t0
    assert len(view.messages) == n, len(view.messages)
    # give a third of them flags, as a real mailbox has
    await acct.store_flags("INBOX", [m.uid for m in view.messages[::3]], frozenset({"\\Seen"}), "add")
    await store.close()
    results.append({"name": "index new messages (read, parse, insert)", "unit": "msg/s",
                    "value": n / t_import, "baseline": None, "ratio": None})
    notes.append(f"mailbox of {n} messages")

    store = Store(StoreConfig(), base)
    t0 = time.perf_counter()
    acct = await store.account("big")
    view = await acct.open_mailbox("INBOX")
    t_cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    view = await acct.open_mailbox("INBOX")
    t_warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    await view.refresh()
    flags = [(m.uid, " ".join(sorted(m.flags))) for m in view.messages]
    t_flags = time.perf_counter() - t0
    assert len(flags) == n
    t0 = time.perf_counter()
    since = await acct.changes_since("INBOX", 0)
    t_since = time.perf_counter() - t0
    assert len(since.changed) == n
    # JMAP Mailbox/get and IMAP LIST-STATUS: every call needs the unseen counts
    t0 = time.perf_counter()
    for _ in range(20):
        boxes = await acct.list_mailboxes()
    t_list = (time.perf_counter() - t0) / 20
    assert sum(b.messages for b in boxes) == n
    t0 = time.perf_counter()
    for _ in range(20):
        await acct.changes_since("INBOX", since.highestmodseq)
    t_since_none = (time.perf_counter() - t0) / 20
    # POP3 RETR / IMAP FETCH BODY[]: one message after another (warm: read once before)
    uids = [m.uid for m in view.messages[:500]]
    for uid in uids:
        await acct.read_message("INBOX", uid)
    t0 = time.perf_counter()
    for uid in uids:
        await acct.read_message("INBOX", uid)
    t_read = (time.perf_counter() - t0) / len(uids)
    await store.close()
    index_bytes = sum(
        (root / name).stat().st_size
        for name in (INDEX_NAME, INDEX_NAME + "-wal", UIDLIST_NAME)
        if (root / name).exists()
    )
    results += [
        {"name": "open mailbox cold (new Store)", "unit": "s", "value": t_cold, "baseline": None, "ratio": None},
        {"name": "open mailbox warm (same Store)", "unit": "s", "value": t_warm, "baseline": None, "ratio": None},
        {"name": "list all flags (refresh + FLAGS of every message)", "unit": "s", "value": t_flags,
         "baseline": None, "ratio": None},
        {"name": "changes since modseq 0 (all messages)", "unit": "s", "value": t_since, "baseline": None,
         "ratio": None},
        {"name": "list_mailboxes (6 mailboxes, with unseen counts)", "unit": "s", "value": t_list,
         "baseline": None, "ratio": None},
        {"name": "changes_since highestmodseq (nothing changed)", "unit": "s", "value": t_since_none,
         "baseline": None, "ratio": None},
        {"name": "read_message, one after another (4 KB, warm)", "unit": "s", "value": t_read,
         "baseline": None, "ratio": None},
        {"name": "index bytes per message (sqlite + wal + uidlist)", "unit": "B", "value": index_bytes / n,
         "baseline": None, "ratio": None},
    ]
    notes.append("baselines for open/flags/index size: none measured (no second implementation in this run)")
    return results, notes


#: limits far above what the bench delivers: every check runs, none refuses
ROOMY = QuotaLimits(storage=1 << 50, messages=1 << 40)


async def _delivery(base: Path, count: int, concurrency: int, mailboxes: int = 4,
                    quota: bool = False) -> tuple[float, dict[str, int]]:
    """``quota``: every target has user and domain limits (both quota roots checked, the per-domain
    usage book written after each index commit)."""
    store = Store(StoreConfig(), base)
    accts = [await store.account(f"rcpt{i}", domain="bench.test" if quota else None) for i in range(mailboxes)]
    limits = ROOMY if quota else QuotaLimits()
    data = _message(1)
    spool_dir = base / "spool"
    spool_dir.mkdir(exist_ok=True)
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            sp = spool_dir / f"s{i}"
            await store.io.run(sp.write_bytes, data)
            res = await store.deliver(sp, [DeliveryTarget(accts[i % len(accts)], limits=limits,
                                                          domain_limits=limits)])
            await store.io.run(sp.unlink)
            assert res[0].status == "ok", res

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    rate = count / (time.perf_counter() - t0)
    stats = {"dir_fsync_rounds": store.dirsync.rounds, "dir_fsyncs": store.dirsync.fsyncs,
             "usage_reports": store.usage.reports, "usage_flushes": store.usage.flushes}
    await store.close()
    return rate, stats


def run(size: str) -> dict[str, Any]:
    n, deliveries = SIZES[size]
    base = Path(tempfile.mkdtemp(prefix="mailsrv-bench-store-", dir=os.environ.get("MAILSRV_BENCH_DIR")))
    try:
        results, notes = asyncio.run(_big_mailbox(base / "big", n))
        raw = _raw_fsync_creates(base / "raw", max(50, deliveries // 2), _message(1))
        meter = in_process_meter("durable deliveries")
        rate, stats = asyncio.run(_delivery(base / "deliver", deliveries, 16))
        results.append({
            "name": "durable deliveries (16 concurrent, 4 mailboxes)", "unit": "msg/s", "value": rate,
            "baseline": {"name": "raw fsync'd file creates", "value": raw}, "ratio": rate / raw,
        })
        rate50, _ = asyncio.run(_delivery(base / "deliver50", deliveries, 50, 50))
        results.append({
            "name": "durable deliveries (50 concurrent, 50 mailboxes)", "unit": "msg/s", "value": rate50,
            "baseline": {"name": "raw fsync'd file creates", "value": raw}, "ratio": rate50 / raw,
        })
        rate1, _ = asyncio.run(_delivery(base / "deliver1", max(50, deliveries // 4), 1))
        meter.add(2 * deliveries + max(50, deliveries // 4))
        # both quota roots on every delivery (issue 3), against limit-free deliveries in this run
        plain, _ = asyncio.run(_delivery(base / "deliver-noq", deliveries, 16))
        rateq, qstats = asyncio.run(_delivery(base / "deliver-q", deliveries, 16, quota=True))
        results.append({
            "name": "durable deliveries with user + domain quota (16 concurrent, 4 mailboxes)", "unit": "msg/s",
            "value": rateq, "baseline": {"name": "the same without limits", "value": plain}, "ratio": rateq / plain,
        })
        notes.append(f"domain quota: {qstats['usage_reports']} usage reports written in "
                     f"{qstats['usage_flushes']} book transactions (coalesced)")
        servers = [meter.summary()]
        notes.append("measured in-process (a library); CPU is this process's over the three delivery runs")
        results.append({
            "name": "durable deliveries (one at a time)", "unit": "msg/s", "value": rate1,
            "baseline": {"name": "raw fsync'd file creates", "value": raw}, "ratio": rate1 / raw,
        })
        notes.append(f"delivery: {stats['dir_fsyncs']} new/ fsyncs for {deliveries} deliveries (one per delivery "
                     "and directory), plus the spool fsync, and a uidlist fsync and index commit shared by the "
                     "deliveries into one mailbox that overlap")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return {"scenario": "store", "results": results, "notes": notes, "servers": servers}
