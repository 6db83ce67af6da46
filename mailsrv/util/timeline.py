"""Per-message timeline of the delivery path, a development instrument (off unless started).

``MAILSRV_TIMELINE=PREFIX`` (read by the worker, which calls :func:`start`) makes each worker keep
``time.monotonic_ns`` stamps in memory: per message (end of DATA seen -> spool ready -> joined a
group-commit round -> its work began in the pool -> answered on the loop -> the store returned ->
verdict -> reply written), per group-commit round (submitted, started in a pool thread, work done,
sync asked, sync began and ended, answered), per sync and per pool job (kind, queued, started,
ended). Nothing is logged in the measured window: the worker writes ``PREFIX.<pid>.json`` when it
exits (:func:`dump`); ``python -m mailsrv.util.timeline PREFIX.*.json`` prints the medians and p90
per stage (:func:`summarize`).
Off, each stamp site costs one global read.
"""

from __future__ import annotations

import contextvars
import json
import os
import threading
import time
from typing import Any

__all__ = ["on", "start", "begin", "mark", "finish", "current", "new_round", "new_sync", "new_job", "dump", "summarize"]

#: stamps are kept (set by :func:`start`): call sites test it before calling anything here
on = False
#: records kept at most per kind (about 100 bytes each): a long run keeps its first ones
MAX_RECORDS = 500_000
_prefix = ""
_now = time.monotonic_ns
_messages: list[dict[str, Any]] = []
_rounds: list[dict[str, Any]] = []
_syncs: list[dict[str, Any]] = []
_jobs: list[dict[str, Any]] = []
_lock = threading.Lock()
#: the message whose delivery the current task (or a pool job in its context) runs
_current: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("timeline", default=None)


def start(prefix: str) -> None:
    """Keep stamps from now on; :func:`dump` writes them to ``prefix.<pid>.json``."""
    global on, _prefix
    _prefix, on = prefix, True


def begin(stage: str = "eod") -> None:
    """A message's first stamp: this task's stamps go to a new record until :func:`finish`."""
    rec: dict[str, Any] = {stage: _now()}
    if len(_messages) < MAX_RECORDS:
        _messages.append(rec)
    _current.set(rec)


def mark(stage: str, value: Any = None) -> None:
    """Stamp ``stage`` (or set it to ``value``) on the current message, if any (first stamp kept)."""
    rec = _current.get()
    if rec is not None and stage not in rec:
        rec[stage] = _now() if value is None else value


def finish(stage: str) -> None:
    """The message's last stamp (its reply went out): later stamps of the task start a new record."""
    rec = _current.get()
    if rec is not None:
        rec.setdefault(stage, _now())
        _current.set(None)


def current() -> dict[str, Any] | None:
    return _current.get()


def _record(into: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    rec = dict(fields)
    with _lock:
        if len(into) < MAX_RECORDS:
            into.append(rec)
    return rec


def new_round(**fields: Any) -> dict[str, Any]:
    """A group-commit round's record (stamps are set on it by its owner)."""
    return _record(_rounds, id=len(_rounds), submit=_now(), **fields)


def new_sync(**fields: Any) -> dict[str, Any]:
    return _record(_syncs, id=len(_syncs), start=_now(), **fields)


def new_job(kind: str, **fields: Any) -> dict[str, Any]:
    """A pool job's record: queued now; its runner stamps ``start`` and ``end``."""
    return _record(_jobs, kind=kind, queued=_now(), **fields)


def dump() -> str | None:
    """Write the stamps kept to ``PREFIX.<pid>.json``; its path, or None when off."""
    if not on:
        return None
    path = f"{_prefix}.{os.getpid()}.json"
    with open(path, "w") as f:
        json.dump({"messages": _messages, "rounds": _rounds, "syncs": _syncs, "jobs": _jobs}, f)
    return path


#: a message's stamps in path order; with its round's: joined -> round submitted -> its job started
#: -> this message's work -> the round's work done -> its sync began / ended -> the job returned
#: -> the caller resumed. A message answered from its round's thread (``early``: mailsrv.smtp.early)
#: has its ``written`` between the job's return and its answer on the loop.
MESSAGE_STAGES = ("eod", "spool", "join", "work", "resumed", "stored", "verdict", "written")


#: a message's stages with its round (r) and sync (s): (name, (record, stamp) from, (record, stamp) to)
ROUND_STAGES = (
    ("eod->spool", ("m", "eod"), ("m", "spool")),
    ("spool->join", ("m", "spool"), ("m", "join")),
    ("join->round submit", ("m", "join"), ("r", "submit")),
    ("round submit->job start (pool queue)", ("r", "submit"), ("r", "start")),
    ("job start->my work", ("r", "start"), ("m", "work")),
    ("my work->round work done", ("m", "work"), ("r", "worked")),
    ("work done->sync start (gate)", ("r", "worked"), ("s", "start")),
    ("sync", ("s", "start"), ("s", "end")),
    ("sync end->job return", ("s", "end"), ("r", "synced")),
    ("job return->answered on loop", ("r", "synced"), ("r", "answered")),
    ("answered->caller resumed", ("r", "answered"), ("m", "resumed")),
    ("resumed->stored", ("m", "resumed"), ("m", "stored")),
    ("stored->verdict", ("m", "stored"), ("m", "verdict")),
    ("verdict->written", ("m", "verdict"), ("m", "written")),
)


def _median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2] if values else float("nan")


def _pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] if values else float("nan")


def summarize(paths: list[str], since: int = 0, until: int = 2**63) -> dict[str, Any]:
    """Medians (ms) per stage of the messages whose end of DATA fell in [since, until) (monotonic ns),
    over the dumps at ``paths`` (one per worker); their rounds', syncs' and pool jobs' figures."""
    stages: dict[str, list[float]] = {}
    rounds_n: list[float] = []
    rounds_ms: list[float] = []
    work_wall: list[float] = []
    work_cpu: list[float] = []
    inflight: list[float] = []
    sync_ms: list[float] = []
    sync_paths: list[float] = []  # paths per sync
    jobs: dict[str, list[tuple[float, float]]] = {}
    count = 0

    def add(name: str, a: int | None, b: int | None) -> None:
        if a is not None and b is not None:
            stages.setdefault(name, []).append((b - a) / 1e6)

    for path in paths:
        with open(path) as f:
            doc = json.load(f)
        rounds = {r["id"]: r for r in doc["rounds"]}
        syncs = {s["no"]: s for s in doc["syncs"]}
        for m in doc["messages"]:
            if not since <= m.get("eod", 0) < until or "written" not in m:
                continue
            count += 1
            add("total eod->written", m["eod"], m["written"])
            r = rounds.get(m.get("round", -1))
            if r is None:
                seq = [s for s in MESSAGE_STAGES if s in m]
                for a, b in zip(seq, seq[1:], strict=False):
                    add(f"{a}->{b}", m[a], m[b])
                continue
            s = syncs.get(r.get("sync_no", -1), {})
            of = {"m": m, "r": r, "s": s}
            for name, (a, ka), (b, kb) in ROUND_STAGES:
                if name != "verdict->written" or "early" not in m:
                    add(name, of[a].get(ka), of[b].get(kb))
            if "early" in m:  # its 250 went out from the round's thread (mailsrv.smtp.early)
                add("job return->written early", r.get("synced"), m["written"])
        for r in doc["rounds"]:
            if since <= r["submit"] < until and "answered" in r:
                rounds_n.append(r["n"])
                rounds_ms.append((r["answered"] - r["submit"]) / 1e6)
                inflight.append(r["inflight"])
                if "cpu" in r:
                    work_wall.append((r["worked"] - r["start"]) / 1e6 / r["n"])
                    work_cpu.append(r["cpu"] / 1e6 / r["n"])
        for s in doc["syncs"]:
            if since <= s["start"] < until and "end" in s:
                sync_ms.append((s["end"] - s["start"]) / 1e6)
                sync_paths.append(s["paths"])
        for j in doc["jobs"]:
            if since <= j["queued"] < until and "end" in j:
                jobs.setdefault(j["kind"], []).append(((j["start"] - j["queued"]) / 1e6, (j["end"] - j["start"]) / 1e6))
    return {
        "messages": count,
        "stages_ms": {k: (round(_median(v), 3), round(_pct(v, 0.9), 3)) for k, v in stages.items()},
        "rounds": {"count": len(rounds_n), "callers_median": _median(rounds_n),
                   "callers_mean": round(sum(rounds_n) / max(1, len(rounds_n)), 2),
                   "ms_median": round(_median(rounds_ms), 3), "inflight_median": _median(inflight),
                   "work_ms_per_msg_wall": round(_median(work_wall), 3),
                   "work_ms_per_msg_cpu": round(_median(work_cpu), 3)},
        "syncs": {"count": len(sync_ms), "ms_median": round(_median(sync_ms), 3), "paths_mean":
                  round(sum(sync_paths) / max(1, len(sync_paths)), 2),
                  "ms_p90": round(_pct(sync_ms, 0.9), 3), "busy_s": round(sum(sync_ms) / 1000, 3)},
        "jobs": {k: {"count": len(v), "queue_ms_median": round(_median([q for q, _ in v]), 3),
                     "queue_ms_p90": round(_pct([q for q, _ in v], 0.9), 3),
                     "run_ms_median": round(_median([d for _, d in v]), 3)} for k, v in jobs.items()},
    }


def main(argv: list[str]) -> int:
    """``python -m mailsrv.util.timeline FILE...``: the summary of the dumps, as text."""
    if not argv:
        print("usage: python -m mailsrv.util.timeline PREFIX.PID.json ...")
        return 2
    s = summarize(argv)
    print(f"{s['messages']} messages; stage: median / p90 ms")
    for name, (p50, p90) in s["stages_ms"].items():
        print(f"  {name:40s} {p50:8.3f} {p90:8.3f}")
    print("rounds:", s["rounds"])
    print("syncs:", s["syncs"])
    for kind, v in sorted(s["jobs"].items(), key=lambda kv: -kv[1]["count"]):
        print("pool job", kind, v)
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
