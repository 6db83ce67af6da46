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
import tempfile
import time
from pathlib import Path
from typing import Any

from mailsrv.config import StoreConfig
from mailsrv.store import DeliveryTarget, QuotaLimits, Store
from mailsrv.store.engine import INDEX_NAME, UIDLIST_NAME

from ._common import (
    durable_loop,
    fill_new,
    fsync_create,
    in_process_meter,
    link_tree,
    message,
    remove_tree,
    seed_cache,
    settle_after_removal,
)

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
    return durable_loop(lambda name: fsync_create(d, name, data), count=count)[0]


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


#: (messages, concurrent sessions, recipients) of the delivery-half measurement
HALF = {"smoke": (60, 8, 4), "full": (3000, 50, 50)}


def _hit_rate(cache: Any) -> float:
    """Share of RCPT resolutions served from LocalDelivery's cache (0 without one)."""
    if cache is None:
        return 0.0
    return float(cache.hits / max(1, cache.hits + cache.misses))


def _counted(fn: Any, counts: dict[str, int], key: str) -> Any:
    """``fn`` (an awaitable-returning pool call) counting its calls into ``counts[key]``."""

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        counts[key] += 1
        return await fn(*args, **kwargs)

    return wrapper


class _Spans:
    """Wall-time spans of pool jobs by kind (a job's start and end, any thread), for a timeline."""

    def __init__(self) -> None:
        import threading

        self.spans: list[tuple[str, float, float]] = []
        self._lock = threading.Lock()

    def wrap(self, kind: str, fn: Any) -> Any:
        def job(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self.spans.append((kind, t0, time.perf_counter()))
        return job

    def overlaps(self, kinds: tuple[str, ...], t0: float, t1: float) -> bool:
        return any(k in kinds and b > t0 and a < t1 for k, a, b in self.spans)


def _pct(values: list[float], p: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(p * len(v) / 100))] if v else 0.0


async def _delivery_half(base: Path, count: int, concurrency: int, users: int) -> dict[str, float]:
    """What one local message costs after the SMTP session: the RCPT check (directory, quota),
    ``LocalDelivery.deliver`` (link + group-commit syncfs), the background indexer (UIDs) and the
    search indexing after delivery, in one process with the worker's wiring. Each message is
    also spooled as the SMTP front end does: held in memory and written by the store's delivery
    round (``deliver(data=...)``), removed after; writing and removing the same spool files
    without delivery is measured apart (``spool_cpu_ms``), and the write is included in ``cpu_ms``.

    Returns CPU ms per message (user, system), pool jobs, syncs and index transactions per message;
    the latency of ``LocalDelivery.deliver`` (p50/p99 ms), and the p99 of the group-commit rounds that
    overlapped a background index job (the store's batch or the search round after delivery) against
    those that did not (the one-session tail: ``_delivery_half(..., concurrency=1, users=1)``).
    """
    import resource

    from mailsrv.config import Config, ServerConfig
    from mailsrv.delivery.local import LocalDelivery
    from mailsrv.directory import open_directory, open_sync
    from mailsrv.search import SearchService
    from mailsrv.search import service as search_mod
    from mailsrv.store import store as store_mod
    from mailsrv.util import fsio
    from mailsrv.worker import search_resolver

    cfg = Config(server=ServerConfig(data_dir=base, hostname="mx.bench.test"))

    def users_setup() -> None:
        base.mkdir(parents=True, exist_ok=True)
        sd = open_sync(cfg.directory, base)
        sd.add_domain("bench.test")
        for i in range(users):
            sd.add_user(f"u{i}@bench.test")
        sd.close()
        (base / "spool").mkdir(exist_ok=True)

    users_setup()
    directory = open_directory(cfg.directory, base)
    store = Store(cfg.store, base, hostname="mx.bench.test", mime=cfg.mime)
    search = SearchService(cfg.search, search_resolver(store))
    store.add_observer(search)
    local = LocalDelivery(directory, store, base)
    bodies = [message(i, repeat=8, lines=8) for i in range(64)]  # 4 KB, realistic words to index
    spool = base / "spool"
    loop = asyncio.get_running_loop()
    counts = {"store": 0, "search": 0, "directory": 0}
    for i in range(users):  # accounts opened (created) before the clock starts
        acct = (await directory.resolve(f"u{i}@bench.test")).account
        assert acct is not None
        await local.store_account(acct)
    store.io.run = _counted(store.io.run, counts, "store")  # type: ignore[method-assign]
    search.run = _counted(search.run, counts, "search")  # type: ignore[method-assign]
    directory.run = _counted(directory.run, counts, "directory")  # type: ignore[method-assign]
    spans, lat = _Spans(), []
    saved = (store_mod._index_batch, search_mod.SearchService._index_round, fsio._GroupCommit._round_job)
    store_mod._index_batch = spans.wrap("index", store_mod._index_batch)
    search_mod.SearchService._index_round = staticmethod(spans.wrap("search", saved[1]))  # type: ignore[method-assign]
    fsio._GroupCommit._round_job = lambda gc, batch: spans.wrap("round", saved[2])(gc, batch)  # type: ignore[method-assign,assignment]

    def usage() -> tuple[float, float]:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime, ru.ru_stime

    async def session(k: int, deliver: bool) -> None:
        for i in range(k, count, concurrency):
            addr = f"u{i % users}@bench.test"
            chk = await local.check(addr, sender="load@remote.test", size=4096, authenticated=None,
                                    may_relay=False)
            assert chk.code == 250 and chk.resolution is not None, chk
            p = spool / f"{int(deliver)}.{i}"
            body = bodies[i % len(bodies)]
            if deliver:
                # as the SMTP backend's sealed spool: the message is in memory and the store's
                # delivery round writes the file (no spool job of its own)
                t0 = time.perf_counter()
                out = await local.deliver(p, [(addr, chk.resolution)], data=body)
                lat.append(time.perf_counter() - t0)
                assert out.delivered == 1, out
            else:
                await loop.run_in_executor(None, p.write_bytes, body)
            await loop.run_in_executor(None, p.unlink)

    u0, s0 = usage()
    await asyncio.gather(*(session(k, False) for k in range(concurrency)))
    u1, s1 = usage()
    spool_cpu = (u1 - u0) + (s1 - s0)
    for k in counts:
        counts[k] = 0
    rounds0, batches0 = store.indexer.rounds, store.indexer.batches
    syncs0 = store.fssync.syncs if store.fssync is not None else 0
    t0 = time.perf_counter()
    u0, s0 = usage()
    try:
        await asyncio.gather(*(session(k, True) for k in range(concurrency)))
        await store.indexer.flush()
        await search.idle()
    finally:
        store_mod._index_batch, search_mod.SearchService._index_round, fsio._GroupCommit._round_job = saved  # type: ignore[method-assign]
    u1, s1 = usage()
    wall = time.perf_counter() - t0
    rounds = [(a, b) for k, a, b in spans.spans if k == "round"]
    beside = [b - a for a, b in rounds if spans.overlaps(("index", "search"), a, b)]
    alone = [b - a for a, b in rounds if not spans.overlaps(("index", "search"), a, b)]
    out = {
        "cpu_ms": 1000 * ((u1 - u0) + (s1 - s0)) / count,
        "user_ms": 1000 * (u1 - u0) / count,
        "system_ms": 1000 * (s1 - s0) / count,
        "spool_cpu_ms": 1000 * spool_cpu / count,
        "msgs_per_s": count / wall,
        "store_jobs": counts["store"] / count,
        "search_jobs": counts["search"] / count,
        "directory_jobs": counts["directory"] / count,
        "index_txns": (store.indexer.batches - batches0) / count,
        "indexer_rounds": store.indexer.rounds - rounds0,
        "syncfs": ((store.fssync.syncs if store.fssync is not None else 0) - syncs0) / count,
        "resolve_hits": _hit_rate(getattr(local, "resolver", None)),
        "deliver_p50_ms": 1000 * _pct(lat, 50),
        "deliver_p99_ms": 1000 * _pct(lat, 99),
        "round_alone_p99_ms": 1000 * _pct(alone, 99),
        "round_beside_index_p99_ms": 1000 * _pct(beside, 99),
        "rounds_beside_index": len(beside) / max(1, len(rounds)),
    }
    await search.close()
    await store.close()
    await directory.close()
    return out


#: (messages, concurrent sessions, mailboxes) of the store-only measurement
STORE_ONLY = {"smoke": (200, 8, 8), "full": (5000, 50, 50)}


async def _store_only(base: Path, count: int, concurrency: int, users: int, spool_dirs: int = 1,
                      **config: Any) -> dict[str, float]:
    """The store's share of a local delivery, alone: ``deliver(data=..., uids=False)`` of a 4 KB message
    as the SMTP front end calls it (group-commit round: spool write, parse, link; syncfs) and the
    background indexer's transactions, no search and no directory. Thread CPU (``time.thread_time``)
    of each phase where it runs, and the process's user and system CPU, per message.
    """
    import resource
    import threading

    from mailsrv.store import store as store_mod
    from mailsrv.util import fsio

    cpu: dict[str, float] = {"round": 0.0, "syncfs": 0.0, "indexer": 0.0}
    wall: dict[str, float] = dict.fromkeys(cpu, 0.0)
    lock = threading.Lock()

    def timed(fn: Any, key: str) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t, w = time.thread_time(), time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with lock:
                    cpu[key] += time.thread_time() - t
                    wall[key] += time.perf_counter() - w
        return wrapper

    store = Store(StoreConfig(**config), base, hostname="mx.bench.test")
    accts = [await store.account(f"u{i}") for i in range(users)]
    bodies = [message(i, repeat=8, lines=8) for i in range(64)]
    spools = [base / "spool" / str(j) for j in range(spool_dirs)]
    for d in spools:
        d.mkdir(parents=True)
    patched = [(store_mod, "_index_batch", "indexer"), (fsio, "syncfs", "syncfs")]
    saved = [getattr(mod, name) for mod, name, _ in patched]
    for mod, name, key in patched:
        setattr(mod, name, timed(getattr(mod, name), key))
    store._deliver_job = timed(store._deliver_job, "round")  # type: ignore[method-assign]

    async def session(k: int) -> None:
        for i in range(k, count, concurrency):
            p = spools[i % spool_dirs] / str(i)
            [r] = await store.deliver(p, [DeliveryTarget(accts[i % users])], uids=False, data=bodies[i % 64])
            assert r.status == "ok", r
            await store.io.run(os.unlink, p)

    assert store.fssync is not None, "Linux: syncfs group commit"
    try:
        batches0, rounds0, syncs0 = store.indexer.batches, store.fssync.rounds, store.fssync.syncs
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        await asyncio.gather(*(session(k) for k in range(concurrency)))
        await store.indexer.flush()
        elapsed = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        for (mod, name, _), fn in zip(patched, saved, strict=True):
            setattr(mod, name, fn)
    rounds, syncs = store.fssync.rounds - rounds0, store.fssync.syncs - syncs0
    out = {
        "msgs_per_s": count / elapsed,
        "user_ms": 1000 * (ru1.ru_utime - ru0.ru_utime) / count,
        "system_ms": 1000 * (ru1.ru_stime - ru0.ru_stime) / count,
        **{f"{k}_ms": 1000 * v / count for k, v in cpu.items()},
        "index_txns": (store.indexer.batches - batches0) / count,
        "syncfs": syncs / count,
        "callers_per_round": count / max(1, rounds),
        # wall time of one round's work (the job's deliveries), of one syncfs, and the share of the
        # run during which a syncfs was running (the gate lets one run at a time)
        "round_work_wall_ms": 1000 * wall["round"] / max(1, rounds),
        "syncfs_wall_ms": 1000 * wall["syncfs"] / max(1, syncs),
        "syncfs_busy": wall["syncfs"] / elapsed,
        # per delivery, its wait in the store's round from call to answer; per round, the gate's wait
        # with its sync and the sync alone (``FsSyncer.stats``: what a worker logs as store.rounds)
        **{f"round_{k}": v for k, v in store.fssync.stats().items() if k.endswith("_ms")},
    }
    await store.close()
    return out


def run(size: str) -> dict[str, Any]:
    n, deliveries = SIZES[size]
    base = Path(tempfile.mkdtemp(prefix="mailsrv-bench-store-", dir=os.environ.get("MAILSRV_BENCH_DIR")))
    try:
        results, notes = asyncio.run(_big_mailbox(base / "big", n))  # hard links and renames: few inodes made
        # python -m bench all: smtp has just removed its tree; the creates from here on (raw fsync'd creates,
        # deliveries) wait for its freed inodes to age, while the big mailbox above took its time (smoke: no wait)
        waited = settle_after_removal() if size == "full" else 0.0
        notes.append(f"before the first file create {waited:.0f} s of waiting for the previous scenario's freed "
                     f"inodes to age (bench/README.md)")
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
        only_n, only_c, only_u = STORE_ONLY[size]
        only = asyncio.run(_store_only(base / "only", only_n, only_c, only_u))
        results.append({
            "name": f"store only: CPU per local delivery (deliver + syncfs + UID; {only_c} sessions, "
                    f"{only_u} mailboxes)", "unit": "ms", "value": only["user_ms"] + only["system_ms"],
            "baseline": None, "ratio": None, **{k: round(v, 4) for k, v in only.items()},
        })
        notes.append(
            f"store only per message: {only['user_ms']:.3f} ms user + {only['system_ms']:.3f} ms system; thread "
            f"CPU: delivery round jobs {only['round_ms']:.3f} + their syncfs {only['syncfs_ms']:.3f}, index "
            f"transactions {only['indexer_ms']:.3f} ms ({only['index_txns']:.3f} per message); "
            f"{only['msgs_per_s']:.0f} msgs/s")
        half_n, half_c, half_u = HALF[size]
        half = asyncio.run(_delivery_half(base / "half", half_n, half_c, half_u))
        results.append({
            "name": f"delivery half: CPU per local message (check + deliver + UID + search index; "
                    f"{half_c} sessions, {half_u} mailboxes)",
            "unit": "ms", "value": half["cpu_ms"],
            "baseline": {"name": "spooling the same message (write + unlink, no delivery)",
                         "value": half["spool_cpu_ms"]},
            "ratio": half["cpu_ms"] / half["spool_cpu_ms"] if half["spool_cpu_ms"] else None,
            **{k: round(v, 4) for k, v in half.items()},
        })
        notes.append(
            f"delivery half per message: {half['user_ms']:.3f} ms user + {half['system_ms']:.3f} ms system CPU "
            f"({half['spool_cpu_ms']:.3f} ms of it is the spool write itself, measured apart), "
            f"{half['store_jobs']:.2f} store pool jobs, {half['search_jobs']:.2f} search pool jobs, "
            f"{half['directory_jobs']:.2f} directory queries, {half['index_txns']:.3f} index transactions "
            f"(each: one uidlist fsync + one SQLite commit), {half['syncfs']:.3f} syncfs; "
            f"{half['indexer_rounds']} indexer rounds; {half['msgs_per_s']:.0f} msgs/s")
        notes.append(f"delivery: {stats['dir_fsyncs']} new/ fsyncs for {deliveries} deliveries (one per delivery "
                     "and directory), plus the spool fsync, and a uidlist fsync and index commit shared by the "
                     "deliveries into one mailbox that overlap")
    finally:
        remove_tree(base)  # remembered: a scenario after this one that creates files waits for its freed inodes
    return {"scenario": "store", "results": results, "notes": notes, "servers": servers}
