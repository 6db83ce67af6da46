"""One index transaction over many delivered files (the background indexer's batch) threads them as
one transaction per message does: a reply finds a parent indexed earlier in the same transaction."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from mailsrv.store import DeliveryTarget, Store

from .conftest import msg, spool

Run = Callable[[Awaitable[Any]], Any]

#: (message number, subject, extra header) in delivery order
THREADED = [
    (100, "Plan", ""),
    (101, "Re: Plan", "In-Reply-To: <m100@example.test>\r\n"),
    (102, "Other", ""),
    (103, "RE: [list] Plan", "References: <unknown@x>\r\n"),
    (104, "Re: Other", "References: <m999@x> <m102@example.test>\r\n"),
    (105, "Plan", ""),  # a new thread with the same base subject: later replies by subject go there
    (106, "Re: Plan", "References: <gone@x>\r\n"),
    (100, "Plan", ""),  # the same Message-ID again: the first thread keeps it
    (107, "Re: again", "In-Reply-To: <m100@example.test>\r\n"),
]


def _threads(tmp_path: Path, run: Run, store: Store, name: str, batched: bool) -> list[str]:
    acct = run(store.account(name))
    for i, (n, subject, extra) in enumerate(THREADED):
        sp = spool(tmp_path, msg(n, subject, extra), f"{name}{i}")
        [r] = run(store.deliver(sp, [DeliveryTarget(acct)], uids=False))
        assert r.status == "ok"
        if not batched:
            run(store.indexer.flush())  # one transaction per message
    before = store.indexer.batches
    run(store.indexer.flush())
    assert store.indexer.batches - before == (1 if batched else 0)
    view = run(acct.open_mailbox("INBOX"))
    return [m.thread_id for m in sorted(view.messages, key=lambda m: m.uid)]


def test_batched_rows_thread_as_one_by_one(tmp_path: Path, run: Run, make_store: Callable[..., Store]) -> None:
    store = make_store(index_delay=3600.0)  # nothing indexed before flush: the batch is one transaction
    one = _threads(tmp_path, run, store, "one", batched=False)
    many = _threads(tmp_path, run, store, "many", batched=True)
    assert len(one) == len(many) == len(THREADED)

    def shape(tids: list[str]) -> list[int]:  # thread ids are random: compare which messages share one
        first: dict[str, int] = {}
        return [first.setdefault(t, i) for i, t in enumerate(tids)]

    assert shape(many) == shape(one)
    assert shape(one) == [0, 0, 2, 0, 2, 5, 5, 7, 0]
