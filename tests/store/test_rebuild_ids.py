"""A deleted index is rebuilt from the maildir with the same UIDs, email ids, thread ids and saved dates."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from mailsrv.store import DeliveryTarget, MessageInfo, Store
from mailsrv.store import engine as engine_mod
from mailsrv.store.engine import INDEX_NAME

from .conftest import msg, spool

Run = Callable[[Awaitable[Any]], Any]


def _drop_index(root: Path) -> None:
    for p in root.glob(INDEX_NAME + "*"):
        p.unlink()


def _all(run: Run, acct: Any) -> dict[tuple[str, int], MessageInfo]:
    out = {}
    for box in run(acct.list_mailboxes()):
        for m in run(acct.open_mailbox(box.name)).messages:
            out[(box.name, m.uid)] = m
    return out


def _ids(infos: dict[tuple[str, int], MessageInfo]) -> dict[tuple[str, int], tuple[str, str, float, str]]:
    return {k: (m.email_id, m.thread_id, m.saved_date, m.key) for k, m in infos.items()}


def test_ids_and_saved_dates_survive_an_index_rebuild(make_store: Callable[..., Store], run: Run,
                                                      tmp_path: Path) -> None:
    store = make_store()
    a = run(store.account("alice"))
    run(a.create_mailbox("Work"))
    # one delivery into two mailboxes (one email id), a thread of two, an append, a copy, a flag change
    first = msg(1, "plan")
    run(store.deliver(spool(tmp_path, first), [DeliveryTarget(a), DeliveryTarget(a, mailbox="Work")]))
    run(store.deliver(spool(tmp_path, msg(2, "Re: plan", "In-Reply-To: <m1@example.test>\r\n"), "s2"),
                      [DeliveryTarget(a)]))
    run(a.append("INBOX", msg(3, "other"), internal_date=1_000_000_000.0))
    run(a.copy("INBOX", [3], "Archive"))
    run(a.store_flags("INBOX", [1], frozenset({"\\Seen", "Work"}), "add"))
    run(a.expunge("INBOX", [3], only_deleted=False))
    before = _all(run, a)
    inbox = {m.uid: m for (box, _), m in before.items() if box == "INBOX"}
    assert inbox[1].thread_id == inbox[2].thread_id
    assert before[("Work", 1)].email_id == inbox[1].email_id
    run(store.close())

    _drop_index(tmp_path / "mail" / "alice")
    store2 = make_store()
    a2 = run(store2.account("alice"))
    after = _all(run, a2)
    assert _ids(after) == _ids(before)
    assert {k: (m.flags, m.internal_date, m.size) for k, m in after.items()} == \
        {k: (m.flags, m.internal_date, m.size) for k, m in before.items()}
    assert sorted(run(a2.find_email(inbox[1].email_id))) == [("INBOX", 1), ("Work", 1)]
    # threading goes on: a reply to the first message after the rebuild joins the old thread
    [r] = run(store2.deliver(spool(tmp_path, msg(4, "Re: plan", "References: <m1@example.test>\r\n"), "s4"),
                             [DeliveryTarget(a2)]))
    reply = run(a2.open_mailbox("INBOX")).by_uid(r.uid)
    assert reply is not None and reply.thread_id == inbox[1].thread_id


def test_compacted_uid_map_keeps_the_ids(make_store: Callable[..., Store], run: Run, tmp_path: Path,
                                         monkeypatch: Any) -> None:
    monkeypatch.setattr(engine_mod, "UIDLIST_COMPACT_MIN", 1)  # compact at the first chance
    store = make_store()
    a = run(store.account("alice"))
    for i in range(120):
        run(a.append("INBOX", msg(i)))
    uidlist_path = tmp_path / "mail" / "alice" / "mailsrv-uidlist"
    size = uidlist_path.stat().st_size
    run(a.expunge("INBOX", list(range(1, 119)), only_deleted=False))
    assert uidlist_path.stat().st_size < size  # rewritten without the expunged entries
    before = _ids(_all(run, a))
    run(store.close())
    _drop_index(tmp_path / "mail" / "alice")
    a2 = run(make_store().account("alice"))
    after = _ids(_all(run, a2))
    assert after == before and {uid for box, uid in after if box == "INBOX"} == {119, 120}
