"""JMAP benchmark: Email/query + Email/get requests per second on a big mailbox, and push latency.

The server is ``mailsrv serve`` from a fresh ``mailsrv init`` (bench/_common.Mailsrv:
master, a worker per core, queue runner) with the big mailbox as a user's
store, its plain-HTTP JMAP listener on 127.0.0.1 driven from this process by
aiohttp with 4 concurrent clients (Basic authentication). Baseline for the
request rate: Core/echo through the same HTTP stack and authentication in the
same run (what a request costs before it touches mail). Push latency is
measured from a message sent over SMTP to the same server (end of DATA, and
its ``250``: the copy is durable) to the StateChange read by an EventSource
client; the change reaches the worker holding the EventSource through the
store's cross-process notification (inotify) when another worker delivered.

``python -m bench.jmap [--kind KIND] [--profile] [--src DIR]``: a request's CPU in one worker,
for A/B on a loaded machine: instructions per request under valgrind callgrind (as
``bench._irprobe`` for SMTP), or cProfile's Python calls per request; a 2 000-message mailbox,
one sequential client, 30 requests of warm-up, then ``--requests`` (100) measured. Kinds: the
query+get request (default), the same with text bodies (``body``), ``mailbox`` (Mailbox/get),
``changes`` (Email/changes + Mailbox/changes, nothing changed), ``echo`` (Core/echo).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from . import _common
from ._common import PASSWORD, Mailsrv, fill_new, message, seed_cache, smtp_deliver

SIZES = {"smoke": (200, 0.4, 2), "full": (100_000, 6.0, 30)}
USING = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"]


def _message(n: int) -> bytes:
    return message(n, repeat=20, lines=3)


def _fill(maildir: Path, n: int) -> None:
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    fill_new(maildir / "new", (_message(i) for i in range(n)))


async def _rate(http: aiohttp.ClientSession, url: str, headers: dict[str, str], body: dict[str, Any],
                seconds: float, concurrency: int = 4) -> float:
    done = 0
    end = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < end:
            async with http.post(url, json=body, headers=headers) as r:
                data = await r.json()
                assert r.status == 200 and data["methodResponses"][0][0] != "error", data
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - t0)


def _query_get(account_id: str, inbox: str, get: dict[str, Any] | None = None) -> dict[str, Any]:
    """The measured request: Email/query (inMailbox, receivedAt descending, 50) + Email/get of its ids
    (``get``: other Email/get arguments than the properties of a mailbox list)."""
    return {"using": USING, "methodCalls": [
        ["Email/query", {"accountId": account_id, "filter": {"inMailbox": inbox},
                         "sort": [{"property": "receivedAt", "isAscending": False}], "limit": 50,
                         "collapseThreads": False}, "q"],
        ["Email/get", {"accountId": account_id,
                       "#ids": {"resultOf": "q", "name": "Email/query", "path": "/ids"},
                       **(get or {"properties": ["subject", "from", "receivedAt", "keywords", "preview"]})}, "g"]]}


#: the probe's request kinds (``--kind``): what a client asks most (a mailbox list page, the messages it
#: opens, its folder list, its polls for changes)
KINDS = ("query-get", "body", "mailbox", "changes", "echo")


def _probe_body(kind: str, account_id: str, inbox: str, states: dict[str, str]) -> dict[str, Any]:
    """The request of a probe kind; ``states``: the Email and Mailbox states (for ``changes``)."""
    if kind == "body":  # the 50 messages opened: their text bodies' values
        return _query_get(account_id, inbox, {"properties": ["subject", "from", "to", "sentAt", "textBody",
                                                             "bodyValues"], "fetchTextBodyValues": True})
    if kind == "mailbox":
        return {"using": USING, "methodCalls": [["Mailbox/get", {"accountId": account_id}, "m"]]}
    if kind == "echo":  # what a request costs before it touches mail (the HTTP layer, authentication, accounts)
        return {"using": USING, "methodCalls": [["Core/echo", {"x": 1}, "e"]]}
    if kind == "changes":  # a client's poll when nothing changed
        return {"using": USING, "methodCalls": [
            ["Email/changes", {"accountId": account_id, "sinceState": states["Email"]}, "e"],
            ["Mailbox/changes", {"accountId": account_id, "sinceState": states["Mailbox"]}, "m"]]}
    return _query_get(account_id, inbox)


async def _main(size: str) -> dict[str, Any]:
    n, seconds, pushes = SIZES[size]
    results: list[dict[str, Any]] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-jmap-", dir=os.environ.get("BENCH_TMP")) as tmp:
        base = Path(tmp)
        seed = await asyncio.get_running_loop().run_in_executor(
            None, seed_cache, "jmap", n, _message(0) + _message(n - 1), _fill)  # built once, linked
        srv = Mailsrv(base / "srv", seeds={"bench": seed}, config={"listener": {"jmap": {"tls": "none"}}})
        url = f"http://127.0.0.1:{srv.ports['jmap']}"
        headers = {"Authorization": "Basic " + base64.b64encode(f"bench@example.test:{PASSWORD}".encode()).decode()}
        try:
            meter = srv.meter("JMAP requests")
            counter = aiohttp.TraceConfig()

            async def count(*_: Any) -> None:
                meter.add(1)

            counter.on_request_end.append(count)
            timeout = aiohttp.ClientTimeout(total=600)
            async with aiohttp.ClientSession(trace_configs=[counter], timeout=timeout) as http:
                async with http.get(url + "/jmap/session", headers=headers) as r:
                    account_id = (await r.json())["primaryAccounts"]["urn:ietf:params:jmap:mail"]
                mget = {"using": USING, "methodCalls": [["Mailbox/get", {"accountId": account_id}, "m"]]}
                async with http.post(url + "/jmap/api", json=mget, headers=headers) as r:
                    boxes = (await r.json())["methodResponses"][0][1]["list"]
                inbox = next(m["id"] for m in boxes if m["role"] == "inbox")
                t0 = time.perf_counter()
                first = {"using": USING, "methodCalls": [
                    ["Email/query", {"accountId": account_id, "filter": {"inMailbox": inbox}, "limit": 1,
                                     "calculateTotal": True}, "q"]]}
                async with http.post(url + "/jmap/api", json=first, headers=headers) as r:
                    assert (await r.json())["methodResponses"][0][1]["total"] == n
                notes.append(f"mailbox of {n} messages indexed by the server in {time.perf_counter() - t0:.1f} s "
                             "at the first request (setup, not measured)")
                body = _query_get(account_id, inbox)
                echo = {"using": USING, "methodCalls": [["Core/echo", {"x": 1}, "e"]]}
                await _rate(http, url + "/jmap/api", headers, body, 0.5)  # warm caches
                qps = await _rate(http, url + "/jmap/api", headers, body, seconds)
                eps = await _rate(http, url + "/jmap/api", headers, echo, min(seconds, 3.0))
                results.append({"name": "Email/query (inMailbox, sort receivedAt, limit 50) + Email/get 50",
                                "unit": "req/s", "value": qps, "baseline": {"name": "Core/echo", "value": eps},
                                "ratio": qps / eps})
                # pages all over the mailbox: the per-message caches mostly miss
                qpos = dict(body["methodCalls"][0][1])
                rand_rates = []
                for pos in range(0, n, max(50, n // 20)):
                    qpos["position"] = pos
                    b2 = {"using": USING, "methodCalls": [["Email/query", qpos, "q"], body["methodCalls"][1]]}
                    rand_rates.append(await _rate(http, url + "/jmap/api", headers, b2, seconds / 20, 1))
                results.append({"name": "same, one client, 20 pages spread over the mailbox (cold message caches)",
                                "unit": "req/s", "value": statistics.median(rand_rates), "baseline": None,
                                "ratio": None})
                # a first (cold) request per page: without preview the properties come from the index's
                # cached MIME structures (no message file read); baseline: the same with preview
                props = ["subject", "from", "sentAt", "receivedAt", "keywords"]  # not cached by the phase above
                qpos2 = dict(body["methodCalls"][0][1])
                lat_struct: list[float] = []
                lat_raw: list[float] = []
                for pos in range(n // 40, n - 100, max(100, n // 40)):
                    for extra, out in ((["preview"], lat_raw), ([], lat_struct)):
                        qpos2["position"] = pos + (50 if extra else 0)
                        get = {**body["methodCalls"][1][1], "properties": props + extra}
                        b3 = {"using": USING, "methodCalls": [["Email/query", qpos2, "q"], ["Email/get", get, "g"]]}
                        t1 = time.perf_counter()
                        async with http.post(url + "/jmap/api", json=b3, headers=headers) as r:
                            assert r.status == 200 and (await r.json())["methodResponses"][1][0] == "Email/get"
                        out.append(time.perf_counter() - t1)
                ms_s, ms_r = statistics.median(lat_struct) * 1000, statistics.median(lat_raw) * 1000
                results.append({"name": "cold page: Email/query + Email/get 50 (subject, from, sentAt, receivedAt, keywords)",
                                "unit": "ms", "value": ms_s,
                                "baseline": {"name": "same + preview (reads the 50 files)", "value": ms_r},
                                "ratio": ms_s / ms_r, "pages": len(lat_struct)})
                # the first query with a header filter (cold facts for every message): from the index's
                # cached structures; baseline: a body filter, which reads every message file
                async def once(filt: dict[str, Any]) -> float:
                    q = {"using": USING, "methodCalls": [["Email/query", {"accountId": account_id,
                                                                          "filter": filt, "limit": 50}, "q"]]}
                    t1 = time.perf_counter()
                    async with http.post(url + "/jmap/api", json=q, headers=headers) as r:
                        assert r.status == 200 and (await r.json())["methodResponses"][0][0] == "Email/query"
                    return time.perf_counter() - t1

                t_from = await once({"inMailbox": inbox, "from": "sender7@"})
                t_body = await once({"inMailbox": inbox, "body": "consectetur"})
                results.append({"name": f"first Email/query filter from (cold facts, {n} messages)", "unit": "s",
                                "value": t_from, "baseline": {"name": "first Email/query filter body (reads every file)",
                                                              "value": t_body}, "ratio": t_from / t_body})
                after_250, from_start = [], []
                for i in range(pushes):
                    async with http.get(url + "/jmap/eventsource?types=Email&closeafter=state&ping=0",
                                        headers=headers) as es:
                        stamps: dict[str, float] = {}

                        async def deliver(stamps: dict[str, float] = stamps, i: int = i) -> None:
                            sent: dict[str, float] = {}
                            acked = await smtp_deliver(srv.ports["smtp"], ["bench@example.test"],
                                                       _message(n + 1 + i), 1, sent)
                            stamps["start"], stamps["250"] = sent["bench@example.test"], acked["bench@example.test"]

                        task = asyncio.create_task(deliver())
                        await es.read()
                        t_event = time.perf_counter()
                        await task
                        after_250.append(t_event - stamps["250"])
                        from_start.append(t_event - stamps["start"])
                results.append({"name": "push latency: SMTP end of DATA -> EventSource StateChange",
                                "unit": "ms", "value": statistics.median(from_start) * 1000, "baseline": None,
                                "ratio": None, "max_ms": max(from_start) * 1000})
                results.append({"name": "push latency: durable delivery (SMTP 250) -> StateChange (<0: before)",
                                "unit": "ms", "value": statistics.median(after_250) * 1000, "baseline": None,
                                "ratio": None, "max_ms": max(after_250) * 1000})
                notes.append(f"push latency: median of {pushes} deliveries; no baseline measured (no other "
                             "push implementation in this run)")
                notes.append("the query rate repeats one query: its result list is cached per Email state "
                             "(exact: a new state recomputes it)")
                servers = [meter.summary()]
        finally:
            srv.stop()
    return {"scenario": "jmap", "results": results, "notes": notes, "servers": servers}


def run(size: str) -> dict[str, Any]:
    return asyncio.run(_main(size))


_PROFILE_SITE = """import cProfile, os, signal, time
_p = []
def _on(*a):
    _p.append(cProfile.Profile(time.process_time)); _p[-1].enable(); _mark('on')
def _off(*a):
    if _p:
        _p[-1].disable(); _p.pop().dump_stats({out!r} + '/prof.%d' % os.getpid())
    _mark('off')
signal.signal(signal.SIGRTMIN + 3, _on)
signal.signal(signal.SIGRTMIN + 4, _off)
"""


def probe(argv: list[str] | None = None) -> int:
    """CPU of the query+get request in one worker, for A/B on a loaded machine: instructions per
    request (valgrind callgrind, as bench._irprobe for SMTP) or cProfile call counts per request."""
    from . import _irprobe as ir

    ap = argparse.ArgumentParser(prog="python -m bench.jmap", description=probe.__doc__)
    ap.add_argument("--requests", type=int, default=100, help="measured requests (sequential, one client)")
    ap.add_argument("--messages", type=int, default=2000, help="messages in the mailbox")
    ap.add_argument("--kind", choices=KINDS, default="query-get",
                    help="the request measured: Email/query + Email/get 50 of a mailbox list (subject, from, "
                    "receivedAt, keywords, preview), the same with text bodies (textBody, bodyValues), "
                    "Mailbox/get, Email/changes + Mailbox/changes with nothing changed, or Core/echo")
    ap.add_argument("--profile", action="store_true", help="cProfile (call counts) instead of callgrind")
    ap.add_argument("--src", default="", help="a directory holding the mailsrv package to measure")
    ap.add_argument("--out", default="", help="keep the callgrind or profile files here")
    ap.add_argument("--top", type=int, default=20)
    a = ap.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="jmapprobe-", dir=os.environ.get("BENCH_TMP")))
    out = Path(a.out) if a.out else scratch / "out"
    out.mkdir(parents=True, exist_ok=True)
    if a.profile:
        site = scratch / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(ir.MARK.format(marks=str(site)) + _PROFILE_SITE.format(out=str(out)))
    else:
        site = ir._site(scratch)
    popen = subprocess.Popen

    def wrapped(args: Any, *k: Any, **kw: Any) -> Any:  # only `mailsrv serve` is measured
        if "serve" in args:
            src = ["-P"] if a.src else []  # as bench._irprobe: this tree's mailsrv must not come first
            args = ([*(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}/cg.%p"]
                       if not a.profile else []), args[0], *src, *args[1:]])
            kw["env"] = {**kw.get("env", os.environ), "PYTHONPATH": os.pathsep.join(filter(None, [a.src, str(site)]))}
        return popen(args, *k, **kw)

    n = a.messages
    seed = seed_cache("jmap", n, _message(0) + _message(n - 1), _fill)
    _common.subprocess.Popen = wrapped  # type: ignore[assignment, misc]
    try:
        srv = Mailsrv(scratch / "srv", seeds={"bench": seed}, workers=1, config={"listener": {"jmap": {"tls": "none"}}})
    finally:
        _common.subprocess.Popen = popen  # type: ignore[misc]
    url = f"http://127.0.0.1:{srv.ports['jmap']}"
    headers = {"Authorization": "Basic " + base64.b64encode(f"bench@example.test:{PASSWORD}".encode()).decode()}

    async def drive() -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
            async with http.get(url + "/jmap/session", headers=headers) as r:
                aid = (await r.json())["primaryAccounts"]["urn:ietf:params:jmap:mail"]
            mget = {"using": USING, "methodCalls": [["Mailbox/get", {"accountId": aid}, "m"],
                                                    ["Email/get", {"accountId": aid, "ids": []}, "e"]]}
            async with http.post(url + "/jmap/api", json=mget, headers=headers) as r:
                got = (await r.json())["methodResponses"]
            inbox = next(m["id"] for m in got[0][1]["list"] if m["role"] == "inbox")
            body = _probe_body(a.kind, aid, inbox, {"Mailbox": got[0][1]["state"], "Email": got[1][1]["state"]})

            async def requests(k: int) -> None:
                for _ in range(k):
                    async with http.post(url + "/jmap/api", json=body, headers=headers) as r:
                        resp = (await r.json())["methodResponses"]
                        assert r.status == 200 and all(m[0] != "error" for m in resp), resp
                        assert a.kind not in ("query-get", "body") or len(resp[1][1]["list"]) == 50

            await requests(30)  # warm: the mailbox indexed, the query and the derived properties cached
            kids = [p for p in srv.pids() if p != srv.proc.pid]
            await asyncio.to_thread(ir.switch, kids, ir.ON, site)
            await requests(a.requests)
            await asyncio.to_thread(ir.switch, kids, ir.OFF, site)  # every dump or profile written

    try:
        asyncio.run(drive())
    finally:
        srv.stop()
    k = a.requests
    if a.profile:
        stats = [pstats.Stats(str(f)) for f in out.glob("prof.*")]
        if not stats:
            print("jmap probe: no profile written", file=sys.stderr)
            return 1
        st = max(stats, key=lambda s: s.total_calls)  # type: ignore[attr-defined]
        calls, tt = st.total_calls, st.total_tt  # type: ignore[attr-defined]
        print(f"{k} {a.kind} requests: {calls / k:,.0f} Python calls per request "
              f"(cProfile, CPU time {tt / k * 1000:.2f} ms per request under the profiler)")
        st.sort_stats("tottime").print_stats(a.top)
    elif not ir.report(out, k, f"{a.kind} requests", a.top, "jmap probe"):
        return 1
    shutil.rmtree(scratch, ignore_errors=True)  # the server's tree (and the counts, unless --out put them elsewhere)
    return 0


if __name__ == "__main__":
    sys.exit(probe())
