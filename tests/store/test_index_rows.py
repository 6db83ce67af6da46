"""The index batch's shortcuts give what the general path gives: ``rows.new_info`` is
``MessageInfo(...)``, a blob bound as a bytearray is the structure the index reads back, and the
UID map line of a batch's shared save date is the one ``format_entry`` makes for that float."""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailsrv.store import DeliveryTarget, Store, uidlist
from mailsrv.store.engine import parse_structure
from mailsrv.store.folders import UIDLIST_NAME
from mailsrv.store.rows import _SETTERS, new_info
from mailsrv.store.types import BadMailboxName, MailboxNotFound, MessageInfo

from .conftest import spool

Run = Callable[[Awaitable[Any]], Any]

_text = st.text(max_size=30)
_float = st.floats(allow_nan=True, allow_infinity=True)


def test_new_info_sets_every_field() -> None:
    assert len(_SETTERS) == len(fields(MessageInfo)) == 9


@given(st.integers(), _text, st.frozensets(_text, max_size=4), st.integers(), _float, _float, st.integers(),
       _text, _text)
def test_new_info_is_the_dataclass(uid: int, key: str, flags: frozenset[str], modseq: int, internal: float,
                                   saved: float, size: int, eid: str, tid: str) -> None:
    fast = new_info(uid, key, flags, modseq, internal, saved, size, eid, tid)
    slow = MessageInfo(uid, key, flags, modseq, internal, saved, size, eid, tid)
    assert type(fast) is MessageInfo
    assert repr(fast) == repr(slow)
    if not (math.isnan(internal) or math.isnan(saved)):
        assert fast == slow and hash(fast) == hash(slow)


def _plain(uid: int, base: str, size: int, meta: uidlist.Meta) -> bytes:
    """format_entry as it was before the save date's text was kept (each float's repr made anew)."""
    eid, tid, saved = meta
    ext = f" S{size} e{eid} t{tid}"
    if saved is not None and saved >= 0 and math.isfinite(saved):
        ext += f" d{saved!r}"
    return f"{uid}{ext} :{base}\n".encode()


@given(st.lists(st.floats(min_value=-1.0, max_value=4e9) | st.sampled_from([0.0, -0.0, math.inf, math.nan]),
                min_size=1, max_size=6))
def test_format_entry_saved_text_per_float(saved: list[float]) -> None:
    # the same float object twice, then equal ones of other objects (0.0 after -0.0: "0.0", not "-0.0")
    for i, s in enumerate(saved + saved + [float(repr(s)) for s in saved]):
        meta = ("E1", "T1", s)
        assert uidlist.format_entry(i + 1, "k", 10, meta) == _plain(i + 1, "k", 10, meta)


def test_a_batch_stores_the_structure_and_one_save_date(tmp_path: Path, run: Run, corpus: Path,
                                                       make_store: Callable[..., Store]) -> None:
    raws = [p.read_bytes() for p in sorted(corpus.rglob("*.eml"))[:40]]
    assert len(raws) >= 20
    store = make_store(index_delay=3600.0)  # one batch: flush indexes every delivery in one transaction
    acct = run(store.account("rows"))
    for i, raw in enumerate(raws):
        [r] = run(store.deliver(spool(tmp_path, raw, f"r{i}"), [DeliveryTarget(acct)], uids=False))
        assert r.status == "ok"
    t0 = time.time()
    before = store.indexer.batches
    run(store.indexer.flush())
    t1 = time.time()
    assert store.indexer.batches - before == 1
    db = sqlite3.connect(acct.root / "mailsrv-index.sqlite")
    try:
        rows = db.execute("SELECT uid, key, saved_date, structure, typeof(structure) FROM messages"
                          " ORDER BY uid").fetchall()
    finally:
        db.close()
    assert len(rows) == len(raws)
    for _, _, saved, blob, kind in rows:
        assert kind == "blob" and type(blob) is bytes
        assert t0 <= saved <= t1
    assert len({r[2] for r in rows}) == 1  # saved by one transaction
    # each blob is the general path's parse of one of the messages (UIDs follow the files' mtimes)
    assert sorted(r[3] for r in rows) == sorted(parse_structure(raw) for raw in raws)
    # the UID map's lines give each message its save date back, exactly
    ul = uidlist.parse((acct.root / UIDLIST_NAME).read_bytes())
    for uid, key, saved, _, _ in rows:
        assert ul.uids[key] == uid
        assert ul.meta[key][2] == saved
    view = run(acct.open_mailbox("INBOX"))
    assert sorted(m.saved_date for m in view.messages) == [r[2] for r in rows]


def test_thread_headers_stay_a_frozen_record() -> None:
    from mailsrv.store.headers import ThreadHeaders, thread_headers

    th = thread_headers(b"Message-ID: <a@x>\r\nReferences: <p@x>\r\nSubject: Re: Plan\r\n\r\nbody\r\n")
    assert th == ThreadHeaders(message_id="a@x", parents=("p@x",), subject="plan")
    assert (th.message_id, th.parents, th.subject) == ("a@x", ("p@x",), "plan")
    assert hash(th) == hash(ThreadHeaders("a@x", ("p@x",), "plan"))
    with pytest.raises(AttributeError):
        th.subject = "other"  # type: ignore[misc]


def test_a_sync_reads_its_mailbox_row_once(tmp_path: Path, run: Run, make_store: Callable[..., Store]) -> None:
    store = make_store(index_delay=3600.0)
    acct = run(store.account("once"))
    [r] = run(store.deliver(spool(tmp_path, b"Subject: x\r\n\r\nbody\r\n", "o1"), [DeliveryTarget(acct)],
                            uids=False))
    assert r.status == "ok"
    eng = acct.engine
    seen: list[str] = []
    eng.db.set_trace_callback(seen.append)
    try:
        res = eng.sync("INBOX", lazy_commit=True)
    finally:
        eng.db.set_trace_callback(None)
    assert len(res.added) == 1
    rows = [q for q in seen if "FROM mailboxes" in q and q.lstrip().upper().startswith("SELECT")]
    assert len(rows) == 1, rows  # (two before: by name, then by id inside the transaction)


def test_a_sync_adopts_a_folder_another_program_made(tmp_path: Path, run: Run,
                                                     make_store: Callable[..., Store]) -> None:
    from mailsrv.store import maildir

    store = make_store(index_delay=3600.0)
    acct = run(store.account("adopt"))
    folder = acct.root / maildir.folder_dir("Other")
    for d in ("cur", "new", "tmp"):
        (folder / d).mkdir(parents=True)
    (folder / "new" / "1700000000.M1P1.elsewhere").write_bytes(b"Subject: made elsewhere\r\n\r\nhi\r\n")
    acct.engine.sync("Other")  # no row: adopted (and its new/ indexed) the long way, as before
    _, infos = acct.engine.snapshot("Other")
    assert [m.uid for m in infos] == [1]
    assert not any((folder / "new").iterdir()) and len(list((folder / "cur").iterdir())) == 1
    (folder / "new" / "1700000001.M2P1.elsewhere").write_bytes(b"Subject: again\r\n\r\nhi\r\n")
    res = acct.engine.sync("Other")  # its row now: read once in the transaction
    assert [a.info.uid for a in res.added] == [2]
    with pytest.raises(MailboxNotFound):
        acct.engine.sync("Missing")
    with pytest.raises(BadMailboxName):
        acct.engine.sync("bad\x00name")
