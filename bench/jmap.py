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
"""

from __future__ import annotations

import asyncio
import base64
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

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
                body = {"using": USING, "methodCalls": [
                    ["Email/query", {"accountId": account_id, "filter": {"inMailbox": inbox},
                                     "sort": [{"property": "receivedAt", "isAscending": False}], "limit": 50,
                                     "collapseThreads": False}, "q"],
                    ["Email/get", {"accountId": account_id,
                                   "#ids": {"resultOf": "q", "name": "Email/query", "path": "/ids"},
                                   "properties": ["subject", "from", "receivedAt", "keywords", "preview"]}, "g"]]}
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
                lat_struct, lat_raw = [], []
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
