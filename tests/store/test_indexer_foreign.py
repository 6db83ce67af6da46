"""Two processes (workers) delivering into the same mailbox: each background indexer takes only the
files it delivered (it holds their parse, and search their bytes), and leaves the other's young files
to it (``store.FOREIGN_GRACE``); files whose deliverer died are taken once they are older than that.

Two Store objects in one test process behave as two workers (each has its own pending deliveries,
engines and index connections); the kill -9 test uses a real forked deliverer.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from support.forked import read_pipe, spawn
from support.server import wait_until_async

from mailsrv.config import SearchConfig, StoreConfig
from mailsrv.search import SearchService, Text
from mailsrv.store import DeliveryTarget, Store
from mailsrv.store import store as store_mod
from mailsrv.worker import search_resolver

from .conftest import msg, spool

Run = Callable[[Awaitable[Any]], Any]
MSGID = re.compile(rb"Message-ID: <m([^@>]+)@")


def _files(root: Path, sub: str) -> list[str]:
    return [n for n in os.listdir(root / sub) if not n.startswith(".")]


def _uidlist_entries(root: Path) -> int:
    return len(re.findall(rb"^\d+ S", (root / "mailsrv-uidlist").read_bytes(), re.M))


def _recheck_now(run: Run, monkeypatch: pytest.MonkeyPatch, store: Store, acct: Any) -> list[str]:
    """Fire ``store``'s recheck of ``acct``'s INBOX (as its timer does) and wait for the round; the
    mailboxes its engine synced meanwhile."""
    syncs = _count_syncs(monkeypatch, acct)

    async def fire() -> None:
        store.indexer._recheck(acct, "INBOX")
        await store.indexer.flush()

    run(fire())
    return syncs


def _count_syncs(monkeypatch: pytest.MonkeyPatch, acct: Any) -> list[str]:
    """The mailboxes ``acct``'s engine syncs from now on (its index transactions), in order."""
    syncs: list[str] = []
    real_sync = acct.engine.sync
    monkeypatch.setattr(acct.engine, "sync", lambda name, **kw: syncs.append(name) or real_sync(name, **kw))
    return syncs


def test_each_indexer_takes_its_own_deliveries(tmp_path: Path, run: Run, make_store: Callable[..., Store],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_mod, "FOREIGN_GRACE", 60.0)
    a = make_store(index_delay=30.0)  # its round waits: its delivery stays in new/ meanwhile
    b = make_store(index_delay=0.0)
    acct_a = run(a.account("u"))
    acct_b = run(b.account("u"))  # opened before A delivers: nothing for B to adopt
    root = tmp_path / "mail" / "u"
    [ra] = run(a.deliver(spool(tmp_path, msg("a1"), "sa"), [DeliveryTarget(acct_a)], uids=False))
    [rb] = run(b.deliver(spool(tmp_path, msg("b1"), "sb"), [DeliveryTarget(acct_b)], uids=False))
    assert ra.status == rb.status == "ok"
    run(b.indexer.flush())
    # B indexed its own message only: A's file waits in new/ for A, unparsed by B
    assert len(_files(root, "new")) == 1 and len(_files(root, "cur")) == 1
    assert b.indexer.stats["added"] == 1 and b.indexer.stats["foreign"] == 0
    assert b.indexer.stats["foreign_left"] == 1
    assert (acct_b.id, "INBOX") in b.indexer._rechecks  # looked at again after the grace
    run(a.indexer.flush())
    assert _files(root, "new") == [] and len(_files(root, "cur")) == 2
    assert a.indexer.stats["added"] == 1 and a.indexer.stats["foreign"] == 0
    assert _uidlist_entries(root) == 2  # each indexed once
    # B's recheck finds nothing of another process waiting: it makes no index transaction
    assert _recheck_now(run, monkeypatch, b, acct_b) == [] and not b.indexer._rechecks
    view = run(acct_b.open_mailbox("INBOX"))
    assert sorted(m.uid for m in view.messages) == [1, 2]


def test_a_round_whose_deliveries_another_reader_indexed_makes_no_transaction(
        tmp_path: Path, run: Run, make_store: Callable[..., Store], monkeypatch: pytest.MonkeyPatch) -> None:
    a = make_store(index_delay=3600.0)
    b = make_store(index_delay=0.0)
    acct_a = run(a.account("u"))
    acct_b = run(b.account("u"))
    for i in range(3):
        run(a.deliver(spool(tmp_path, msg(f"r{i}"), f"s{i}"), [DeliveryTarget(acct_a)], uids=False))
    view = run(acct_b.open_mailbox("INBOX"))  # a reader in the other worker takes what waits in new/
    assert [m.uid for m in view.messages] == [1, 2, 3]
    assert len(acct_a.engine.pending) == 3  # A does not know
    syncs = _count_syncs(monkeypatch, acct_a)
    run(a.indexer.flush())
    assert syncs == [] and a.indexer.stats["added"] == 0  # no file of A's waits: no transaction
    assert acct_a.engine.pending == {}  # its deliveries are done with
    root = tmp_path / "mail" / "u"
    assert _files(root, "new") == [] and _uidlist_entries(root) == 3


def test_a_dead_deliverers_files_are_taken_after_the_grace(tmp_path: Path, run: Run,
                                                           make_store: Callable[..., Store],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_mod, "FOREIGN_GRACE", 60.0)
    a = make_store(index_delay=3600.0)  # "dies": its indexer never runs before B takes its files
    b = make_store(index_delay=0.0)
    acct_a = run(a.account("u"))
    acct_b = run(b.account("u"))
    root = tmp_path / "mail" / "u"
    for i in range(3):
        run(a.deliver(spool(tmp_path, msg(f"a{i}"), f"sa{i}"), [DeliveryTarget(acct_a)], uids=False))
    run(b.deliver(spool(tmp_path, msg("b1"), "sb"), [DeliveryTarget(acct_b)], uids=False))
    run(b.indexer.flush())
    assert len(_files(root, "new")) == 3 and b.indexer.stats["foreign_left"] == 3
    # the recheck's timer fires once the files are older than the grace (here: the grace shrinks)
    monkeypatch.setattr(store_mod, "FOREIGN_GRACE", 0.0)
    # files older than the grace wait: one index transaction takes them
    assert _recheck_now(run, monkeypatch, b, acct_b) == ["INBOX"]
    assert _files(root, "new") == [] and len(_files(root, "cur")) == 4
    assert b.indexer.stats["foreign"] == 3 and b.indexer.stats["added"] == 4  # parsed from their files
    assert not b.indexer._rechecks
    run(a.indexer.flush())  # A finds its deliveries indexed: nothing twice
    assert a.indexer.stats["added"] == 0
    assert _uidlist_entries(root) == 4
    view = run(acct_a.open_mailbox("INBOX"))
    assert sorted(m.uid for m in view.messages) == [1, 2, 3, 4]


def test_a_recheck_is_scheduled_once_and_takes_only_old_files(tmp_path: Path, run: Run,
                                                              make_store: Callable[..., Store],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_mod, "FOREIGN_GRACE", 0.3)
    a = make_store(index_delay=3600.0)
    b = make_store(index_delay=0.0)
    acct_a = run(a.account("u"))
    acct_b = run(b.account("u"))
    root = tmp_path / "mail" / "u"

    async def go() -> None:
        await a.deliver(spool(tmp_path, msg("a1"), "sa"), [DeliveryTarget(acct_a)], uids=False)
        await b.deliver(spool(tmp_path, msg("b1"), "sb"), [DeliveryTarget(acct_b)], uids=False)
        await b.indexer.flush()
        # the real timer (FOREIGN_GRACE later) takes A's file, whether B's first round left it or not
        await wait_until_async(lambda: not _files(root, "new"), limit=30)
        await b.indexer.flush()

    run(go())
    assert len(_files(root, "cur")) == 2 and _uidlist_entries(root) == 2
    assert b.indexer.stats["added"] == 2 and a.indexer.stats["added"] == 0


# --- kill -9 -------------------------------------------------------------------------------------


async def _child(data_dir: Path, wfd: int, go: int, ops: int) -> None:
    """Forked child: a worker that delivers ``ops`` messages (once told to on ``go``) and never gets
    to index them."""
    store = Store(StoreConfig(index_delay=3600.0), data_dir, hostname="dead.test")
    acct = await store.account("u")
    (data_dir / "spool").mkdir(exist_ok=True)
    os.write(wfd, b"R\n")
    os.read(go, 1)  # blocking: nothing else runs in this child
    for n in range(ops):
        sp = data_dir / "spool" / f"c{n}"
        sp.write_bytes(msg(f"c{n}").replace(b"body", f"body dead{n}word".encode()))
        [res] = await store.deliver(sp, [DeliveryTarget(acct)], uids=False)
        sp.unlink()
        assert res.status == "ok", res
        os.write(wfd, f"D c{n}\n".encode())


def test_sigkilled_workers_deliveries_are_indexed_once_and_searchable(
        tmp_path: Path, run: Run, make_store: Callable[..., Store], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_mod, "FOREIGN_GRACE", 0.5)
    go_r, go_w = os.pipe()
    pid, fd = spawn(lambda wfd: _child(tmp_path, wfd, go_r, 5), tmp_path / "child.err")  # before any thread
    os.close(go_r)
    assert read_pipe(fd, time.monotonic() + 60, lambda buf: b"R\n" in buf) == b"R\n"  # made the account
    b = make_store(index_delay=0.0)  # the surviving worker, with search wired as the worker does
    search = SearchService(SearchConfig(), search_resolver(b))
    b.add_observer(search)
    acct = run(b.account("u"))  # new/ empty: nothing to adopt
    root = tmp_path / "mail" / "u"
    os.write(go_w, b"g")
    os.close(go_w)
    lines = read_pipe(fd, time.monotonic() + 60, lambda buf: buf.count(b"D ") >= 5).decode().splitlines()
    os.kill(pid, signal.SIGKILL)
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) or os.WEXITSTATUS(status) == 0, (tmp_path / "child.err").read_text()
    acked = {ln.split()[1] for ln in lines if ln.startswith("D ")}
    assert len(acked) == 5 and len(_files(root, "new")) == 5  # acknowledged, none indexed

    async def go() -> list[int]:
        await b.deliver(spool(tmp_path, msg("b1"), "sb"), [DeliveryTarget(acct)], uids=False)
        await b.indexer.flush()
        await wait_until_async(lambda: not _files(root, "new"), limit=30)  # the recheck took them
        await b.indexer.flush()
        await search.idle()
        view = await acct.open_mailbox("INBOX")
        info = next(x for x in await acct.list_mailboxes() if x.name == "INBOX")
        idx = search._index_for(acct.id, info.id)
        assert idx is not None
        found = []
        for n in range(5):
            hits = await idx.search(Text("body", f"dead{n}word"), view)
            assert len(hits) == 1, (n, list(hits))
            found.extend(hits)
        return found

    found = run(go())
    assert len(set(found)) == 5
    # indexed by the rounds after delivery (the child's five read back: nobody held their bytes)
    assert search.stats["messages"] == 6 and search.stats["read_back"] == 5
    view = run(acct.open_mailbox("INBOX"))
    mids = [MSGID.search(run(acct.read_message("INBOX", m.uid))) for m in view.messages]
    ids = [m.group(1).decode() for m in mids if m is not None]
    assert sorted(ids) == sorted([*acked, "b1"])  # each exactly once
    assert _uidlist_entries(root) == 6 and len(_files(root, "cur")) == 6
    run(search.close())

