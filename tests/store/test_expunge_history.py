"""The expunge history is pruned (by count and age) and changes_since says when it no longer reaches back."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from mailsrv.store import DeliveryTarget, Store
from mailsrv.store.engine import INDEX_NAME, PRUNE_EVERY

from .conftest import msg, spool

Run = Callable[[Awaitable[Any]], Any]


def _history(tmp_path: Path, account: str = "alice") -> list[tuple[int, int]]:
    db = sqlite3.connect(tmp_path / "mail" / account / INDEX_NAME)
    try:
        return [(r[0], r[1]) for r in db.execute("SELECT uid, modseq FROM expunged ORDER BY uid")]
    finally:
        db.close()


def test_count_window_and_truncated_changes(make_store: Callable[..., Store], run: Run, tmp_path: Path) -> None:
    store = make_store(expunge_history=5)
    a = run(store.account("alice"))
    for i in range(30):
        run(store.deliver(spool(tmp_path, msg(i), f"s{i}"), [DeliveryTarget(a)]))
    start = run(a.open_mailbox("INBOX")).highestmodseq
    assert not run(a.changes_since("INBOX", start)).truncated
    marks = []
    for uid in range(1, 21):  # one expunge at a time: 20 records, pruned down to the window
        run(a.expunge("INBOX", [uid], only_deleted=False))
        marks.append(run(a.open_mailbox("INBOX")).highestmodseq)
    kept = _history(tmp_path)
    assert 5 <= len(kept) < 5 + min(PRUNE_EVERY, 6)
    assert [u for u, _ in kept] == list(range(21 - len(kept), 21))  # the newest ones
    # from before the window: every UID below UIDNEXT not in the mailbox, flagged truncated
    old = run(a.changes_since("INBOX", start))
    assert old.truncated and old.expunged == list(range(1, 21))
    assert {u for u, _ in kept} <= set(old.expunged_ids)
    # from inside the window: exact
    first_kept = kept[0][0]
    recent = run(a.changes_since("INBOX", marks[first_kept - 2]))  # the state just before first_kept went
    assert not recent.truncated and recent.expunged == list(range(first_kept, 21))
    # a session's snapshot older than the window still refreshes to the right messages
    view = run(a.open_mailbox("INBOX"))
    other = make_store(expunge_history=5)
    b = run(other.account("alice"))
    for uid in range(21, 29):
        run(b.expunge("INBOX", [uid], only_deleted=False))
    changes = run(view.refresh())
    assert changes.expunged == list(range(21, 29)) and [m.uid for m in view.messages] == [29, 30]


def test_age_window(make_store: Callable[..., Store], run: Run, tmp_path: Path) -> None:
    store = make_store(expunge_history=1000, expunge_history_days=1.0)
    a = run(store.account("alice"))
    for i in range(6):
        run(store.deliver(spool(tmp_path, msg(i), f"s{i}"), [DeliveryTarget(a)]))
    start = run(a.open_mailbox("INBOX")).highestmodseq
    run(a.expunge("INBOX", [1, 2], only_deleted=False))
    mid = run(a.open_mailbox("INBOX")).highestmodseq
    assert run(a.changes_since("INBOX", start)).expunged == [1, 2]
    db = sqlite3.connect(tmp_path / "mail" / "alice" / INDEX_NAME)
    db.execute("UPDATE expunged SET at = at - 2 * 86400")  # two days ago
    db.commit()
    db.close()
    a.engine._expunged_since_prune = PRUNE_EVERY  # prune at the next expunge
    run(a.expunge("INBOX", [3], only_deleted=False))
    assert [u for u, _ in _history(tmp_path)] == [3]
    old = run(a.changes_since("INBOX", start))
    assert old.truncated and old.expunged == [1, 2, 3]
    exact = run(a.changes_since("INBOX", mid))
    assert not exact.truncated and exact.expunged == [3]


def test_rebuilt_index_cannot_answer_older_states(make_store: Callable[..., Store], run: Run,
                                                  tmp_path: Path) -> None:
    store = make_store()
    a = run(store.account("alice"))
    for i in range(4):
        run(store.deliver(spool(tmp_path, msg(i), f"s{i}"), [DeliveryTarget(a)]))
    run(a.expunge("INBOX", [2], only_deleted=False))
    before = run(a.open_mailbox("INBOX"))
    run(store.close())
    for p in (tmp_path / "mail" / "alice").glob(INDEX_NAME + "*"):
        p.unlink()
    b = run(make_store().account("alice"))
    view = run(b.open_mailbox("INBOX"))
    assert view.uidvalidity == before.uidvalidity and view.highestmodseq > before.highestmodseq
    since = run(b.changes_since("INBOX", before.highestmodseq))
    assert since.truncated and since.expunged == [2]
