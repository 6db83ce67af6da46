"""A group delivery (``uids=False``, deferred index) answers before its MIME parse: the round links,
syncs and returns; whoever indexes one of its copies first (the index batch, or a reader) parses it,
once for all its targets, and the index holds what a delivery parsed in its job holds."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from mailsrv.store import DeliveryTarget, Store
from mailsrv.store import engine as engine_mod
from mailsrv.store import store as store_mod

from .conftest import msg, spool

Run = Callable[[Awaitable[Any]], Any]

FIRST = msg(0, subject="plans", extra="Content-Type: text/plain\r\n")
REPLY = msg(1, subject="Re: plans", extra="In-Reply-To: <m0@example.test>\r\nContent-Type: text/plain\r\n")


class Parses(list[tuple[int, bool]]):
    """(size, in a delivery's job) of each message parse_for_index parsed, wherever it was called."""

    def __init__(self) -> None:
        super().__init__()
        self.in_job = threading.local()

    def watch(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> Store:
        real = store._deliver_job

        def job(*a: Any) -> Any:
            self.in_job.on = True
            try:
                return real(*a)
            finally:
                self.in_job.on = False

        monkeypatch.setattr(store, "_deliver_job", job)
        return store

    def sizes(self) -> list[int]:
        return sorted(n for n, _ in self)


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> Parses:
    calls = Parses()
    real = engine_mod.parse_for_index

    def counted(raw: bytes, *a: Any) -> Any:
        calls.append((len(raw), getattr(calls.in_job, "on", False)))
        return real(raw, *a)

    monkeypatch.setattr(store_mod, "parse_for_index", counted)
    monkeypatch.setattr(engine_mod, "parse_for_index", counted)
    return calls


def _index(run: Run, acct: Any) -> dict[str, tuple[Any, ...]]:
    """Message-ID line -> (structure blob, thread id, email id) of the account's INBOX."""
    view = run(acct.open_mailbox("INBOX"))
    uids = [m.uid for m in view.messages]
    blobs = acct.engine.structures("INBOX", uids)
    out = {}
    for m in view.messages:
        raw = run(acct.read_message("INBOX", m.uid))
        mid = next(line for line in raw.split(b"\r\n") if line.startswith(b"Message-ID"))
        out[mid.decode()] = (blobs[m.uid], m.thread_id, m.email_id)
    return out


def test_the_round_does_not_parse_and_the_message_is_parsed_once(
        tmp_path: Path, run: Run, parses: Parses, make_store: Callable[..., Store],
        monkeypatch: pytest.MonkeyPatch) -> None:
    store = parses.watch(make_store(index_delay=30.0), monkeypatch)  # the indexer waits: the test flushes it
    assert store.fssync is not None  # group rounds
    a, b = run(store.account("a")), run(store.account("b"))
    for i, body in enumerate((FIRST, REPLY)):
        res = run(store.deliver(spool(tmp_path, body, f"s{i}"), [DeliveryTarget(a), DeliveryTarget(b)],
                                uids=False, data=body))
        assert [r.status for r in res] == ["ok", "ok"]
    assert parses == []  # answered: nothing parsed on the way to a reply
    run(store.indexer.flush())
    assert [in_job for _, in_job in parses] == [False, False]  # nothing parsed on the way to a reply
    assert parses.sizes() == sorted([len(FIRST), len(REPLY)])  # once per delivery for both of its targets
    assert a.engine.files_parsed == b.engine.files_parsed == 0  # none counted as another process's file
    got_a, got_b = _index(run, a), _index(run, b)

    # the same as a delivery that parsed in its job (uids=True)
    ref = run(store.account("ref"))
    for i, body in enumerate((FIRST, REPLY)):
        res = run(store.deliver(spool(tmp_path, body, f"r{i}"), [DeliveryTarget(ref)], data=body))
        assert res[0].uid is not None
    want = _index(run, ref)
    for got in (got_a, got_b):
        assert {k: v[0] for k, v in got.items()} == {k: v[0] for k, v in want.items()}
        assert got["Message-ID: <m0@example.test>"][0] is not None
        assert got["Message-ID: <m0@example.test>"][1] == got["Message-ID: <m1@example.test>"][1]  # the reply
    for mid in got_a:
        assert got_a[mid][2] == got_b[mid][2]  # one delivery, one email id for its copies


def test_a_reader_before_the_batch_parses_it_once(tmp_path: Path, run: Run, parses: Parses,
                                             make_store: Callable[..., Store]) -> None:
    store = make_store(index_delay=30.0)
    a, b = run(store.account("a")), run(store.account("b"))
    for i, body in enumerate((FIRST, REPLY)):
        run(store.deliver(spool(tmp_path, body, f"s{i}"), [DeliveryTarget(a), DeliveryTarget(b)],
                          uids=False, data=body))
    got = _index(run, a)  # opening the mailbox indexes what waits in new/
    assert len(parses) == 2
    assert all(v[0] is not None for v in got.values())
    assert len({v[1] for v in got.values()}) == 1
    run(store.indexer.flush())  # b's copies: the readers' parse, not a second one
    assert len(parses) == 2
    assert {k: v[:1] for k, v in _index(run, b).items()} == {k: v[:1] for k, v in got.items()}


def test_a_message_not_kept_in_memory_is_read_for_its_parse(tmp_path: Path, run: Run, parses: Parses,
                                                            make_store: Callable[..., Store],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_mod, "KEEP_RAW", 16)  # larger than the store keeps: the file is read back
    store = make_store(index_delay=30.0)
    a = run(store.account("a"))
    run(store.deliver(spool(tmp_path, REPLY, "s"), [DeliveryTarget(a)], uids=False))  # no data: on file only
    assert parses == []
    run(store.indexer.flush())
    assert parses == [(len(REPLY), False)]
    (blob, _, _), = _index(run, a).values()
    assert blob == engine_mod.parse_for_index(REPLY)[0]
