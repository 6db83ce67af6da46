"""Search engine at scale: index size and speed, query latency beside a brute-force scan.

A seeded mailbox of realistic messages (Zipf-distributed Chinese and Latin
vocabularies, CJK text without spaces between words, RFC 2047
headers, QP/base64 bodies, HTML, attachments; ``mailsrv.search.generate``) is
indexed through the public API (``MailboxIndex.search`` indexes what it finds
missing), then each query class runs with varying parameters. The baseline
is a brute-force scan of the same run: ``mailsrv.search.matches`` over every
message's already-decoded Document held in memory (the cheapest scan there is;
a server without an index would also have to read and parse each file).
"""

from __future__ import annotations

import asyncio
import datetime
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyroaring import BitMap

from mailsrv._speedups import search as hot
from mailsrv._speedups import tokenize as tok
from mailsrv.config import SearchConfig
from mailsrv.search import (
    And,
    Day,
    Document,
    Flag,
    Not,
    Or,
    Query,
    SearchService,
    Size,
    SortKey,
    Text,
    matches,
)
from mailsrv.search.generate import CJK, CN_NAMES, FIRST, LAST, LATIN, FakeInfo, FakeView, Generator

from ._common import in_process_meter

SIZES = {"smoke": (300, 4, 1), "full": (100_000, 60, 3)}  # messages, runs/class, baseline runs


def _rss_mib() -> float:
    """Current resident set size (not the peak)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def _query_makers(rng: random.Random) -> dict[str, Callable[[], Query]]:
    def date_range() -> Query:
        d = datetime.date(2017, 1, 1) + datetime.timedelta(days=rng.randrange(3000))
        return And(Day("internal", "since", d), Day("internal", "before", d + datetime.timedelta(days=30)))

    def cjk_phrase() -> Query:
        a = rng.choice([w for w in CJK if len(w) >= 2])
        return Text("body", a[: rng.choice([2, 3, 4])] if len(a) > 2 else a)

    return {
        "flag": lambda: rng.choice([Flag("\\Flagged"), Flag("\\Seen"), Not(Flag("\\Seen")), Flag("$Junk")]),
        "date range": date_range,
        "from": lambda: Text("from", rng.choice([*FIRST, *LAST, *CN_NAMES]).lower()),
        "subject": lambda: Text("subject", rng.choice(LATIN)),
        "body word": lambda: Text("body", rng.choice(LATIN)),
        "body cjk phrase": cjk_phrase,
        "nested or/not": lambda: Or(
            And(Text("subject", rng.choice(LATIN)), Not(Flag("\\Seen"))),
            And(Text("body", rng.choice(CJK)), Size("larger", rng.randrange(2000, 8000))),
            Not(Or(Text("from", rng.choice(FIRST).lower()), Flag("\\Answered"))),
        ),
    }


async def _run(n: int, runs: int, base_runs: int, workdir: Path) -> dict:
    results: list[dict] = []
    notes: list[str] = [
        f"{n} messages, seed 1; tokenizer={tok.IMPL} term-scan={hot.IMPL}; {os.cpu_count()} cores",
    ]
    meter = in_process_meter("messages indexed (the queries' CPU included)")
    gen = Generator(1)
    raws: dict[int, bytes] = {}
    view = FakeView()
    t0 = time.perf_counter()
    infos = []
    for i in range(n):
        raw, when, flags = gen.message(i)
        uid = i + 1
        raws[uid] = raw
        infos.append(FakeInfo(uid, flags, uid, when, len(raw)))
    view.messages = infos
    view.highestmodseq = n
    raw_bytes = sum(len(r) for r in raws.values())
    notes.append(f"generated in {time.perf_counter() - t0:.1f}s, {raw_bytes / n:.0f} bytes/message on average")
    notes.append(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (wall times include contention)")

    async def read(uid: int) -> bytes:
        return raws[uid]

    directory = workdir / "mailsrv-search"
    svc = SearchService(SearchConfig(snapshot_every=5000, batch=500))
    idx = svc.mailbox("acct", "M1", directory, read)
    rss0 = _rss_mib()
    t0 = time.perf_counter()
    first = await idx.search(Flag("\\Seen"), view)
    t_index = time.perf_counter() - t0
    rss1 = _rss_mib()
    assert len(first) > 0
    results.append({"name": "indexing (extract + index + journal)", "unit": "messages/s",
                    "value": n / t_index, "baseline": None,
                    "note": "no baseline: a scanning server does not index"})
    results.append({"name": "index memory per message (RSS growth while indexing)", "unit": "bytes",
                    "value": (rss1 - rss0) * 2**20 / n, "baseline": None})
    await idx.flush()
    files = {p.suffix: p.stat().st_size for p in directory.iterdir() if p.is_file()}
    index_bytes = files.get(".snap", 0) + files.get(".log", 0)
    results.append({"name": "index bytes per message (snapshot + journal)", "unit": "bytes",
                    "value": index_bytes / n, "baseline": {"name": "raw message bytes", "value": raw_bytes / n},
                    "ratio": index_bytes / raw_bytes})
    results.append({"name": "text cache bytes per message", "unit": "bytes",
                    "value": files.get(".text", 0) / n, "baseline": {"name": "raw message bytes", "value": raw_bytes / n},
                    "ratio": files.get(".text", 0) / raw_bytes})

    # reopen from disk (a new worker)
    svc2 = SearchService(SearchConfig(snapshot_every=5000))
    idx2 = svc2.mailbox("acct", "M1", directory, read)
    t0 = time.perf_counter()
    await idx2.search(Flag("\\Seen"), view)
    results.append({"name": "open index from snapshot (new worker)", "unit": "ms",
                    "value": (time.perf_counter() - t0) * 1e3, "baseline": None})
    await svc2.close()

    # the brute-force reference over the very same decoded documents
    core = idx.core
    docs = {u: Document.from_columns(idx._text_of(u), core.cols[u]) for u in core.indexed}
    by_uid = {m.uid: m for m in view.messages}

    def brute(q: Query) -> BitMap:
        return BitMap(u for u, m in by_uid.items() if matches(q, docs[u], m))

    rng = random.Random(42)
    for name, make in _query_makers(rng).items():
        lat: list[float] = []
        cpu: list[float] = []
        hits: list[int] = []
        base_lat: list[float] = []
        for r in range(runs):
            q = make()
            c0 = time.process_time()
            t0 = time.perf_counter()
            got = await idx.search(q, view)
            lat.append((time.perf_counter() - t0) * 1e3)
            cpu.append((time.process_time() - c0) * 1e3)
            hits.append(len(got))
            if r < base_runs:
                t0 = time.perf_counter()
                want = brute(q)
                base_lat.append((time.perf_counter() - t0) * 1e3)
                if want != got:
                    raise AssertionError(f"index and brute force disagree on {q!r}")
        base = statistics.median(base_lat)
        results.append({"name": f"SEARCH {name} p50", "unit": "ms", "value": _pct(lat, 50),
                        "baseline": {"name": "brute-force scan median", "value": base},
                        "ratio": base / max(_pct(lat, 50), 1e-9),
                        "hits_median": statistics.median(hits), "hits_max": max(hits)})
        results.append({"name": f"SEARCH {name} p99", "unit": "ms", "value": _pct(lat, 99),
                        "baseline": {"name": "brute-force scan median", "value": base},
                        "ratio": base / max(_pct(lat, 99), 1e-9)})
        results.append({"name": f"SEARCH {name} CPU time p99", "unit": "ms", "value": _pct(cpu, 99),
                        "baseline": None, "note": "CPU seconds of the process: less sensitive to other load"})

    # SORT (RFC 5256) / JMAP Email/query sort of a whole mailbox
    lat = []
    for col in ("arrival", "date", "subject", "from"):
        t0 = time.perf_counter()
        await idx.sort(Not(Flag("\\Deleted")), [SortKey(col, reverse=True)], view)
        lat.append((time.perf_counter() - t0) * 1e3)
    results.append({"name": "SORT whole mailbox, one key, first (arrival/date/subject/from) max",
                    "unit": "ms", "value": max(lat), "baseline": None})
    lat = []
    for r in range(runs):
        q = Text("body", rng.choice(LATIN)) if r % 2 else Not(Flag("\\Seen"))
        t0 = time.perf_counter()
        await idx.sort(q, [SortKey("arrival", reverse=True)], view)
        lat.append((time.perf_counter() - t0) * 1e3)
    results.append({"name": "SORT REVERSE ARRIVAL (JMAP receivedAt desc) of a search, warm p99",
                    "unit": "ms", "value": _pct(lat, 99), "baseline": None})
    t0 = time.perf_counter()
    await idx.sort(Not(Flag("\\Deleted")), [SortKey("subject"), SortKey("date", reverse=True)], view)
    results.append({"name": "SORT whole mailbox, two keys (SUBJECT REVERSE DATE)", "unit": "ms",
                    "value": (time.perf_counter() - t0) * 1e3, "baseline": None})

    # indexing right after delivery: one message at a time on a full index
    extra = max(20, runs)
    lat = []
    for i in range(extra):
        raw, when, flags = gen.message(n + i)
        uid = n + i + 1
        raws[uid] = raw
        view.messages = [*view.messages, FakeInfo(uid, flags, uid, when, len(raw))]
        view.highestmodseq = uid
        t0 = time.perf_counter()
        await idx.index_uids([uid])
        lat.append((time.perf_counter() - t0) * 1e3)
    results.append({"name": "index one new message (after delivery) p99", "unit": "ms",
                    "value": _pct(lat, 99), "baseline": None, "p50": _pct(lat, 50)})
    notes.append(f"candidates confirmed against the text cache during the run: {idx.stats['confirmed']}")
    notes.append("measured in-process (a library: the search service and its threads); CPU and peak RSS "
                 "are this process's, generating the corpus included")
    meter.add(n + extra)
    servers = [meter.summary()]
    await svc.close()
    return {"scenario": "search", "results": results, "notes": notes, "servers": servers}


def run(size: str) -> dict:
    n, runs, base_runs = SIZES[size]
    workdir = Path(tempfile.mkdtemp(prefix="mailsrv-bench-search-"))
    try:
        return asyncio.run(_run(n, runs, base_runs, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# --- indexing at delivery: CPU per message (issue 5) --------------------------------------------


def delivered_body(n: int, kind: str) -> bytes:
    """A 4 KB message as the server stores it: ``probe`` is bench/smtp.py's load (lines of x),
    ``words`` a plain-text message of ordinary words."""
    from . import smtp
    from ._common import message

    head = (f"Return-Path: <load@remote.test>\r\nReceived: from client (localhost [127.0.0.1])\r\n"
            f"\tby mx.example.test (mailsrv) with ESMTP id Q{n:08d}\r\n\tfor <load{n % 50}@example.test>;"
            f" Fri, 27 Nov 2026 13:00:00 +0000\r\n").encode()
    return head + (smtp._body(4096) if kind == "probe" else message(n, repeat=8, lines=8))


async def delivery_cpu(workdir: Path, count: int, mailboxes: int, per_round: int, kind: str = "probe",
                       interval: float = 0.02, profile: Any = None) -> dict[str, float]:
    """CPU per message of indexing after delivery, fed as the store's indexer rounds feed it:
    ``per_round`` deliveries every ``interval`` s, round-robin over ``mailboxes`` mailboxes (each
    its account's own index directory), the delivered bytes handed over (``raw=``). Each mailbox's
    index exists (one message indexed) before the clock starts. ``profile``: a cProfile.Profile run
    around the pool jobs, which then run on the loop thread (for a breakdown, not for timing)."""
    import resource

    bodies = [delivered_body(i, kind) for i in range(64)]
    dirs = {f"M{m}": workdir / f"a{m}" / "mailsrv-search" for m in range(mailboxes)}

    async def read(uid: int) -> bytes:
        return bodies[uid % len(bodies)]

    def read_many_blocking(uids: Any) -> dict[int, bytes]:
        return {u: bodies[u % len(bodies)] for u in uids}

    async def read_many(uids: Any) -> dict[int, bytes]:
        return read_many_blocking(uids)

    svc = SearchService(SearchConfig(), lambda a, m: (dirs[m], read, read_many, read_many_blocking))
    if profile is not None:
        async def inline(fn: Callable[..., Any], *args: Any) -> Any:
            profile.enable()
            try:
                return fn(*args)
            finally:
                profile.disable()
        svc.run = inline  # type: ignore[method-assign]
    uid = {m: 0 for m in dirs}
    infos = {}

    def deliver(m: str) -> None:
        uid[m] += 1
        info = FakeInfo(uid[m], frozenset(), uid[m], 1.7e9, 4096)
        infos[m] = info
        svc.message_added("acct", m, info, None, raw=bodies[(uid[m] * 7 + len(m)) % len(bodies)])

    for m in dirs:
        deliver(m)
    await svc.idle()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    loop0 = time.thread_time()
    t0 = time.perf_counter()
    names = list(dirs)
    k = 0
    while k < count:
        for _ in range(min(per_round, count - k)):
            deliver(names[k % len(names)])
            k += 1
        await asyncio.sleep(interval)
    await svc.idle()
    wall = time.perf_counter() - t0
    loop_cpu = time.thread_time() - loop0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    await svc.close()
    user = ru1.ru_utime - ru0.ru_utime
    system = ru1.ru_stime - ru0.ru_stime
    return {"user_ms": 1000 * user / count, "system_ms": 1000 * system / count,
            "loop_ms": 1000 * loop_cpu / count, "cpu_ms": 1000 * (user + system) / count,
            "wall_s": wall}


def _delivery_main() -> None:
    import argparse
    import cProfile
    import pstats

    ap = argparse.ArgumentParser(description="search indexing at delivery: CPU per message")
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--mailboxes", type=int, nargs="+", default=[1, 50])
    ap.add_argument("--per-round", type=int, default=50)
    ap.add_argument("--interval", type=float, default=0.02, help="seconds between the store's rounds")
    ap.add_argument("--kind", default="probe", choices=("probe", "words"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    for mb in a.mailboxes:
        for r in range(a.repeat):
            work = Path(tempfile.mkdtemp(prefix="mailsrv-bench-search-"))
            prof = cProfile.Profile() if a.profile else None
            try:
                out = asyncio.run(delivery_cpu(work, a.count, mb, a.per_round, a.kind, a.interval, profile=prof))
            finally:
                shutil.rmtree(work, ignore_errors=True)
            print(f"{a.kind} mailboxes={mb} run {r}: " + " ".join(f"{k}={v:.4f}" for k, v in out.items()))
            if prof is not None:
                pstats.Stats(prof).sort_stats("tottime").print_stats(25)
                pstats.Stats(prof).sort_stats("cumulative").print_stats(30)


if __name__ == "__main__":
    _delivery_main()
