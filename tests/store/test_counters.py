"""Unseen counters kept by the index (listing is O(mailboxes)), and ids of expunged messages."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from mailsrv.store import DeliveryTarget
from mailsrv.store.engine import INDEX_NAME

from .conftest import msg, spool

SEEN = frozenset({"\\Seen"})


def _truth(run, acct, name: str) -> int:
    view = run(acct.open_mailbox(name))
    return sum(1 for m in view.messages if "\\Seen" not in m.flags)


def _check_all(run, acct) -> dict[str, int]:
    out = {}
    for info in run(acct.list_mailboxes()):
        assert info.unseen == _truth(run, acct, info.name), info.name
        assert run(acct.mailbox_status(info.name)).unseen == info.unseen
        out[info.name] = info.unseen
    return out


def test_unseen_counter_follows_every_change(make_store, run, tmp_path: Path) -> None:
    store = make_store()
    a = run(store.account("alice"))
    root = tmp_path / "mail" / "alice"
    for i in range(6):
        run(store.deliver(spool(tmp_path, msg(i), f"s{i}"), [DeliveryTarget(a, flags=SEEN if i == 5 else frozenset())]))
    assert _check_all(run, a)["INBOX"] == 5
    run(a.append("Archive", msg(10), flags=SEEN))
    run(a.append("Archive", msg(11)))
    assert _check_all(run, a)["Archive"] == 1
    run(a.store_flags("INBOX", [1, 2], SEEN, "add"))
    assert _check_all(run, a)["INBOX"] == 3
    run(a.store_flags("INBOX", [1], SEEN, "remove"))
    run(a.store_flags("INBOX", [3], frozenset({"\\Seen", "\\Deleted"}), "replace"))
    run(a.store_flags("INBOX", [3], frozenset({"\\Seen", "\\Deleted"}), "replace"))  # no change
    assert _check_all(run, a)["INBOX"] == 3
    assert run(a.expunge("INBOX")) == [3]
    run(a.expunge("INBOX", [4], only_deleted=False))
    assert _check_all(run, a)["INBOX"] == 2
    run(a.copy("INBOX", [1, 2, 5, 6], "Trash"))
    run(a.move("INBOX", [1, 2], "Junk"))
    counts = _check_all(run, a)
    assert (counts["INBOX"], counts["Trash"], counts["Junk"]) == (1, 2, 1)
    # mutt marks a message seen behind our back; the reconcile keeps the counter right
    path = run(a.message_path("INBOX", 5))
    os.rename(path, path.parent / (path.name.split(":2,")[0] + ":2,S"))
    os.utime(path.parent, ns=(1, 1))
    run(a.open_mailbox("INBOX"))
    assert _check_all(run, a)["INBOX"] == 0
    run(a.create_mailbox("Work"))
    run(a.move("Trash", [1, 2], "Work"))
    run(a.rename_mailbox("Work", "Work2"))
    assert _check_all(run, a)["Work2"] == 1
    run(a.delete_mailbox("Work2"))
    assert "Work2" not in _check_all(run, a)
    # the counter survives a new Store (read from the index, not recounted)
    b = run(make_store().account("alice"))
    assert {i.name: i.unseen for i in run(b.list_mailboxes())} == _check_all(run, a)
    assert root.is_dir()


def test_old_index_gets_counters_and_expunge_ids(make_store, run, tmp_path: Path) -> None:
    store = make_store()
    a = run(store.account("alice"))
    for i in range(4):
        run(store.deliver(spool(tmp_path, msg(i), f"s{i}"), [DeliveryTarget(a)]))
    run(a.store_flags("INBOX", [1], SEEN, "add"))
    run(store.close())
    # an index as the first release of the store made it: no counter column, triggers or ids
    db = sqlite3.connect(tmp_path / "mail" / "alice" / INDEX_NAME)
    for trig in ("unseen_ins", "unseen_del", "unseen_upd"):
        db.execute(f"DROP TRIGGER IF EXISTS {trig}")
    db.execute("ALTER TABLE mailboxes DROP COLUMN unseen")
    db.execute("ALTER TABLE expunged DROP COLUMN email_id")
    db.execute("ALTER TABLE expunged DROP COLUMN thread_id")
    db.commit()
    db.close()
    b = run(make_store().account("alice"))
    assert _check_all(run, b)["INBOX"] == 3
    run(b.store_flags("INBOX", [2], SEEN, "add"))
    assert _check_all(run, b)["INBOX"] == 2
    run(b.expunge("INBOX", [3], only_deleted=False))
    since = run(b.changes_since("INBOX", 0))
    assert since.expunged == [3] and set(since.expunged_ids) == {3}


def test_changes_since_reports_ids_of_messages_expunged_elsewhere(make_store, run, tmp_path: Path) -> None:
    one, other = make_store(), make_store()  # two workers
    a = run(one.account("alice"))
    for i in range(3):
        run(one.deliver(spool(tmp_path, msg(i), f"s{i}"), [DeliveryTarget(a)]))
    view = run(a.open_mailbox("INBOX"))
    ids = {m.uid: (m.email_id, m.thread_id) for m in view.messages}
    mark = view.highestmodseq
    b = run(other.account("alice"))
    assert run(b.expunge("INBOX", [1, 3], only_deleted=False)) == [1, 3]
    since = run(a.changes_since("INBOX", mark))
    assert since.expunged == [1, 3]
    assert since.expunged_ids == {1: ids[1], 3: ids[3]}
    assert all(e.startswith("E") and t.startswith("T") for e, t in since.expunged_ids.values())
    assert run(a.changes_since("INBOX", since.highestmodseq)).expunged_ids == {}


def test_concurrent_deliveries_share_commits_and_get_distinct_uids(make_store, run, tmp_path: Path) -> None:
    import asyncio

    store = make_store()
    a = run(store.account("alice"))
    b = run(store.account("bob"))

    async def one(i: int) -> list:
        sp = spool(tmp_path, msg(i), f"c{i}")
        return await store.deliver(sp, [DeliveryTarget(a), DeliveryTarget(a, "Archive"), DeliveryTarget(b)])

    async def all_() -> list:
        return await asyncio.gather(*(one(i) for i in range(40)))

    results = run(all_())
    for col, (acct, box) in enumerate([(a, "INBOX"), (a, "Archive"), (b, "INBOX")]):
        uids = [r[col].uid for r in results]
        assert all(r[col].status == "ok" for r in results)
        assert sorted(uids) == list(range(1, 41))
        for i, uid in enumerate(uids):
            assert run(acct.read_message(box, uid)) == msg(i)
        assert run(acct.mailbox_status(box)).unseen == 40
    # one email id per delivery, shared by its copies
    va, vb = run(a.open_mailbox("INBOX")), run(b.open_mailbox("INBOX"))
    ids_a = {m.uid: m.email_id for m in va.messages}
    ids_b = {m.uid: m.email_id for m in vb.messages}
    assert all(ids_a[r[0].uid] == ids_b[r[2].uid] for r in results)
    assert len(set(ids_a.values())) == 40
