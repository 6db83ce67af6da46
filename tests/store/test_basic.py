"""Store operations end to end on real files: delivery, append, flags, expunge, copy/move, folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mailsrv.store import (
    DeliveryTarget,
    MailboxExists,
    MailboxNotFound,
    MessageGone,
    OverQuota,
    QuotaLimits,
)
from mailsrv.store.engine import UIDLIST_NAME

from .conftest import msg, spool


def test_first_use_creates_special_folders(make_store, run, tmp_path: Path) -> None:
    store = make_store()
    acct = run(store.account("alice"))
    boxes = {b.name: b for b in run(acct.list_mailboxes())}
    assert set(boxes) == {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"}
    assert boxes["Sent"].special_use == "\\Sent"
    assert boxes["INBOX"].special_use is None
    root = tmp_path / "mail" / "alice"
    for d in ("cur", "new", "tmp", ".Sent/cur", ".Archive/new"):
        assert (root / d).is_dir(), d
    assert boxes["INBOX"].subscribed


def test_deliver_many_targets_hard_links(make_store, run, tmp_path: Path) -> None:
    store = make_store()
    a = run(store.account("alice"))
    b = run(store.account("bob"))
    data = msg(1)
    sp = spool(tmp_path, data)
    res = run(store.deliver(sp, [DeliveryTarget(a), DeliveryTarget(b), DeliveryTarget(a, "Archive")]))
    assert [r.status for r in res] == ["ok", "ok", "ok"]
    assert [r.uid for r in res] == [1, 1, 1]
    view = run(a.open_mailbox("INBOX"))
    assert [m.uid for m in view.messages] == [1]
    assert run(a.read_message("INBOX", 1)) == data
    assert run(a.read_message("INBOX", 1, 6, 2)) == data[6:8]
    # the file is a hard link to the spool: one inode
    path = run(a.message_path("INBOX", 1))
    assert os.stat(path).st_ino == os.stat(sp).st_ino
    assert path.parent.name == "cur"
    # the same email id for every copy of one delivery
    va = run(a.open_mailbox("Archive"))
    vb = run(b.open_mailbox("INBOX"))
    assert view.messages[0].email_id == va.messages[0].email_id == vb.messages[0].email_id
    assert run(a.quota_usage()).messages == 2
    assert run(a.quota_usage()).storage == 2 * len(data)


def test_deliver_over_quota_and_missing_mailbox(make_store, run, tmp_path: Path) -> None:
    store = make_store()
    a = run(store.account("alice"))
    data = msg(1)
    sp = spool(tmp_path, data)
    res = run(store.deliver(sp, [
        DeliveryTarget(a, limits=QuotaLimits(storage=len(data) - 1)),
        DeliveryTarget(a, "NoSuchFolder"),
    ]))
    assert [r.status for r in res] == ["over_quota", "ok"]
    assert res[1].uid == 1  # fell back to INBOX
    res = run(store.deliver(sp, [DeliveryTarget(a, limits=QuotaLimits(messages=1))]))
    assert [r.status for r in res] == ["over_quota"]
    assert run(a.quota_check(10, QuotaLimits(messages=2))) == "ok"
    assert run(a.quota_check(10, QuotaLimits(messages=1))) == "over_quota"


def test_append_flags_store_expunge(make_store, run, tmp_path: Path) -> None:
    store = make_store()
    a = run(store.account("alice"))
    uids = [run(a.append("INBOX", msg(i), frozenset({"\\seen"}) if i % 2 else frozenset(),
                         internal_date=1_700_000_000 + i)) for i in range(5)]
    assert uids == [1, 2, 3, 4, 5]
    view = run(a.open_mailbox("INBOX"))
    assert view.messages[1].flags == frozenset({"\\Seen"})
    assert view.messages[0].internal_date == 1_700_000_000
    hms = view.highestmodseq
    modified, failed = run(a.store_flags("INBOX", [1, 2], frozenset({"\\Deleted", "$Junk"}), "add"))
    assert [m.uid for m in modified] == [1, 2] and failed == []
    assert all(m.modseq > hms for m in modified)
    # file names carry the flags (mutt reads them); keywords by dovecot-keywords letters
    assert run(a.message_path("INBOX", 2)).name.endswith(":2,STa")
    assert (tmp_path / "mail" / "alice" / "dovecot-keywords").read_bytes() == b"0 $Junk\n"
    # CONDSTORE: UNCHANGEDSINCE older than the change fails for those uids
    modified, failed = run(a.store_flags("INBOX", [1, 3], frozenset({"\\Flagged"}), "add", unchanged_since=hms))
    assert [m.uid for m in modified] == [3] and failed == [1]
    changes = run(view.refresh())
    assert sorted(m.uid for m in changes.flags) == [1, 2, 3]
    assert view.by_uid(1).flags == frozenset({"\\Deleted", "$Junk"})
    assert run(a.expunge("INBOX", [2, 4])) == [2]
    assert run(a.expunge("INBOX")) == [1]
    changes = run(view.refresh())
    assert changes.expunged == [1, 2]
    assert [m.uid for m in view.messages] == [3, 4, 5]
    since = run(a.changes_since("INBOX", hms))
    assert since.expunged == [1, 2]
    assert {m.uid for m in since.changed} == {3}
    with pytest.raises(MessageGone):
        run(a.read_message("INBOX", 1))
    assert run(a.expunge("INBOX", [5], only_deleted=False)) == [5]
    assert run(a.quota_usage()).messages == 2
    # UIDs are never reused
    assert run(a.append("INBOX", msg(9))) == 6


def test_append_quota(make_store, run) -> None:
    store = make_store()
    a = run(store.account("alice"))
    run(a.append("INBOX", msg(1)))
    with pytest.raises(OverQuota):
        run(a.append("INBOX", msg(2), limits=QuotaLimits(messages=1)))


def test_copy_move_uidplus(make_store, run) -> None:
    store = make_store()
    a = run(store.account("alice"))
    for i in range(3):
        run(a.append("INBOX", msg(i), frozenset({"\\Flagged"})))
    run(a.append("Archive", msg(9)))
    mapping = run(a.copy("INBOX", [1, 3, 99], "Archive"))
    assert mapping == [(1, 2), (3, 3)]
    src = run(a.open_mailbox("INBOX"))
    arch = run(a.open_mailbox("Archive"))
    assert arch.by_uid(2).flags == frozenset({"\\Flagged"})
    assert arch.by_uid(2).email_id == src.by_uid(1).email_id
    assert run(a.read_message("Archive", 3)) == msg(2)
    mapping = run(a.move("INBOX", [2], "Trash"))
    assert mapping == [(2, 1)]
    ch = run(src.refresh())
    assert ch.expunged == [2]
    assert run(a.quota_usage()).messages == 6
    # copy into the same mailbox gets a new uid
    assert run(a.copy("Archive", [1], "Archive")) == [(1, 4)]


def test_folders(make_store, run, tmp_path: Path) -> None:
    store = make_store()
    a = run(store.account("alice"))
    info = run(a.create_mailbox("Projects/2026 ü.x"))
    assert info.name == "Projects/2026 ü.x"
    with pytest.raises(MailboxExists):
        run(a.create_mailbox("Projects/2026 ü.x"))
    run(a.create_mailbox("Projects"))
    run(a.append("Projects/2026 ü.x", msg(1)))
    mid = info.id
    run(a.rename_mailbox("Projects", "Old"))
    names = {b.name: b for b in run(a.list_mailboxes())}
    assert "Old/2026 ü.x" in names and "Projects" not in names
    assert names["Old/2026 ü.x"].id == mid
    assert run(a.read_message("Old/2026 ü.x", 1)) == msg(1)
    run(a.subscribe("Old", True))
    assert {b.name: b.subscribed for b in run(a.list_mailboxes())}["Old"]
    run(a.delete_mailbox("Old/2026 ü.x"))
    with pytest.raises(MailboxNotFound):
        run(a.open_mailbox("Old/2026 ü.x"))
    assert run(a.quota_usage()).messages == 0
    # on disk: Maildir++ names that Dovecot/mutt understand
    assert (tmp_path / "mail" / "alice" / ".Old").is_dir()
    assert (tmp_path / "mail" / "alice" / ".Old" / UIDLIST_NAME).exists()


def test_external_delivery_and_mutt_flag_change(make_store, run, tmp_path: Path) -> None:
    store = make_store()
    a = run(store.account("alice"))
    root = tmp_path / "mail" / "alice"
    view = run(a.open_mailbox("INBOX"))
    (root / "tmp" / "ext1").write_bytes(msg(1))
    os.rename(root / "tmp" / "ext1", root / "new" / "ext1")
    ch = run(view.refresh())
    assert [m.uid for m in ch.added] == [1]
    # mutt marks it seen by renaming the file
    path = run(a.message_path("INBOX", 1))
    os.rename(path, path.parent / (path.name.split(":2,")[0] + ":2,S"))
    os.utime(path.parent, ns=(1, 1))  # make sure the directory change is seen even within one tick
    ch = run(view.refresh())
    assert [m.flags for m in ch.flags] == [frozenset({"\\Seen"})]
    # and deletes it behind our back
    os.unlink(run(a.message_path("INBOX", 1)))
    os.utime(path.parent, ns=(2, 2))
    ch = run(view.refresh())
    assert ch.expunged == [1]


def test_structure_and_threads(make_store, run, corpus: Path) -> None:
    from mailsrv.mime import MessageStructure, parse

    store = make_store()
    a = run(store.account("alice"))
    files = sorted(p for p in corpus.rglob("*") if p.is_file() and p.suffix in (".txt", ".eml", ".msg"))[:20]
    assert files
    uids = [run(a.append("INBOX", p.read_bytes())) for p in files]
    structs = run(a.structures("INBOX", uids))
    for uid, p in zip(uids, files, strict=True):
        assert isinstance(structs[uid], MessageStructure)
        assert structs[uid] == parse(p.read_bytes())
    u1 = run(a.append("INBOX", msg(100, "Plan")))
    u2 = run(a.append("INBOX", msg(101, "Re: Plan", "In-Reply-To: <m100@example.test>\r\n")))
    u3 = run(a.append("INBOX", msg(102, "Other")))
    u4 = run(a.append("INBOX", msg(103, "RE: [list] Plan", "References: <unknown@x>\r\n")))
    v = run(a.open_mailbox("INBOX"))
    t = {u: v.by_uid(u).thread_id for u in (u1, u2, u3, u4)}
    assert t[u1] == t[u2] == t[u4] != t[u3]
    assert run(a.find_email(v.by_uid(u1).email_id)) == [("INBOX", u1)]


class _Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def message_added(self, account_id, mailbox_id, info, structure) -> None:  # type: ignore[no-untyped-def]
        self.events.append(("added", (account_id, info.uid, structure.size)))

    def messages_expunged(self, account_id, mailbox_id, uids) -> None:  # type: ignore[no-untyped-def]
        self.events.append(("expunged", (account_id, list(uids))))

    def flags_changed(self, account_id, mailbox_id, infos) -> None:  # type: ignore[no-untyped-def]
        self.events.append(("flags", (account_id, [(i.uid, sorted(i.flags)) for i in infos])))


class _Broken:
    def message_added(self, *a: object) -> None:
        raise RuntimeError("observer bug")

    messages_expunged = flags_changed = message_added


def test_observers_see_every_change_once(make_store, run, tmp_path: Path) -> None:
    store = make_store()
    rec = _Recorder()
    store.add_observer(_Broken())  # a failing observer is logged and does not stop the others
    store.add_observer(rec)
    a = run(store.account("alice"))
    inbox_id = {b.name: b.id for b in run(a.list_mailboxes())}["INBOX"]
    data = msg(1)
    run(store.deliver(spool(tmp_path, data), [DeliveryTarget(a)]))
    run(a.append("INBOX", msg(2)))
    run(a.store_flags("INBOX", [1], frozenset({"\\Seen"}), "add"))
    run(a.expunge("INBOX", [2], only_deleted=False))
    run(a.open_mailbox("INBOX"))  # nothing new: no events
    assert rec.events == [
        ("added", ("alice", 1, len(data))),
        ("added", ("alice", 2, len(msg(2)))),
        ("flags", ("alice", [(1, ["\\Seen"])])),
        ("expunged", ("alice", [2])),
    ]
    assert inbox_id.startswith("M")


def test_warm_open_sees_changes_made_meanwhile(make_store, run, tmp_path: Path) -> None:
    store = make_store()
    other = make_store()  # a second Store on the same files stands in for another worker
    a = run(store.account("alice"))
    b = run(other.account("alice"))
    for i in range(3):
        run(a.append("INBOX", msg(i)))
    first = run(a.open_mailbox("INBOX"))
    run(b.expunge("INBOX", [2], only_deleted=False))
    run(b.store_flags("INBOX", [3], frozenset({"\\Seen"}), "add"))
    run(b.append("INBOX", msg(9)))
    second = run(a.open_mailbox("INBOX"))  # served from the cached snapshot plus changes
    assert [m.uid for m in second.messages] == [1, 3, 4]
    assert second.by_uid(3).flags == frozenset({"\\Seen"})
    assert second.seq_of(4) == 3 and second.seq_of(2) is None
    assert [m.uid for m in first.messages] == [1, 2, 3]  # a session's view moves only on refresh
    fresh = run(make_store().account("alice"))
    assert [(m.uid, m.flags) for m in run(fresh.open_mailbox("INBOX")).messages] == \
        [(m.uid, m.flags) for m in second.messages]


def test_status_special_use_subscriptions_and_shared_open(make_store, run) -> None:
    import asyncio

    store = make_store()

    async def both():  # type: ignore[no-untyped-def]
        return await asyncio.gather(store.account("carol"), store.account("carol"))

    a, b = run(both())
    assert a is b
    info = run(a.create_mailbox("Receipts", special_use="\\Archive"))
    assert info.special_use == "\\Archive" and not info.subscribed
    run(a.subscribe("Receipts"))
    run(a.subscribe("Junk", False))
    subs = {m.name: m.subscribed for m in run(a.list_mailboxes())}
    assert subs["Receipts"] and not subs["Junk"] and subs["INBOX"]
    run(a.append("Receipts", msg(1), frozenset({"\\Seen"})))
    run(a.append("Receipts", msg(2)))
    st = run(a.mailbox_status("Receipts"))
    assert (st.messages, st.unseen, st.uidnext, st.size) == (2, 1, 3, len(msg(1)) + len(msg(2)))
    with pytest.raises(MailboxNotFound):
        run(a.mailbox_status("Nope"))
