"""The unseen counter over inserts is kept by the engine (one update per batch slice), not by an
INSERT trigger on ``messages`` (which made every inserted row pay a statement journal); an index
made with that trigger loses it at open, so that its inserts are not counted twice."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from mailsrv.store import DeliveryTarget, Store
from mailsrv.store.engine import GIVE_WAY_EVERY, INDEX_NAME

from .conftest import msg, spool
from .test_counters import SEEN, _check_all

Run = Callable[[Awaitable[Any]], Any]

#: flags of the batch's deliveries, in turn: unseen, seen, unseen with a keyword, seen and flagged
FLAGS = [frozenset(), SEEN, frozenset({"$Work"}), frozenset({"\\Seen", "\\Flagged"})]


def _batch(tmp_path: Path, run: Run, store: Store, acct: Any, n: int, first: int = 0) -> int:
    """Deliver ``n`` messages for the background indexer and index them in one batch; how many are unseen."""
    before = store.indexer.batches
    for i in range(first, first + n):
        flags = FLAGS[i % len(FLAGS)]
        [r] = run(store.deliver(spool(tmp_path, msg(i), f"s{i}"), [DeliveryTarget(acct, flags=flags)], uids=False))
        assert r.status == "ok"
    run(store.indexer.flush())
    assert store.indexer.batches - before == 1  # one transaction, several slices
    return sum("\\Seen" not in FLAGS[i % len(FLAGS)] for i in range(first, first + n))


def _insert_triggers(path: Path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"
                                         " AND tbl_name = 'messages' AND sql LIKE '%INSERT ON messages%'")]
    finally:
        db.close()


def test_batch_counts_unseen_per_slice(tmp_path: Path, run: Run, make_store: Callable[..., Store]) -> None:
    store = make_store(index_delay=3600.0)
    acct = run(store.account("alice"))
    n = 2 * GIVE_WAY_EVERY + 5  # three slices of rows, each with its unseen update
    unseen = _batch(tmp_path, run, store, acct, n)
    assert _check_all(run, acct)["INBOX"] == unseen == 19
    run(acct.append("INBOX", msg(900)))  # one insert outside a batch
    run(acct.append("INBOX", msg(901), flags=SEEN))
    assert _check_all(run, acct)["INBOX"] == unseen + 1
    assert _insert_triggers(tmp_path / "mail" / "alice" / INDEX_NAME) == []


def test_old_index_drops_its_insert_trigger(tmp_path: Path, run: Run, make_store: Callable[..., Store]) -> None:
    store = make_store(index_delay=3600.0)
    acct = run(store.account("alice"))
    unseen = _batch(tmp_path, run, store, acct, 6)
    run(store.close())
    index = tmp_path / "mail" / "alice" / INDEX_NAME
    db = sqlite3.connect(index)  # the trigger the index had before the engine counted its inserts
    db.execute("CREATE TRIGGER unseen_ins AFTER INSERT ON messages WHEN instr(NEW.flags, '\\Seen') = 0"
               " BEGIN UPDATE mailboxes SET unseen = unseen + 1 WHERE id = NEW.mailbox; END")
    db.commit()
    db.close()
    assert _insert_triggers(index) == ["unseen_ins"]
    store = make_store(index_delay=3600.0)
    acct = run(store.account("alice"))
    assert _insert_triggers(index) == []
    unseen += _batch(tmp_path, run, store, acct, 2 * GIVE_WAY_EVERY, first=100)
    assert _check_all(run, acct)["INBOX"] == unseen  # each insert counted once
