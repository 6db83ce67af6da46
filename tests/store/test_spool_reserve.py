"""The spool reserve (store/reserve.py): a consuming delivery writes into an empty file made ahead of need
instead of creating its spool file (no O_CREAT in its round), and falls back to creating it as before."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from support.forked import spawn
from support.server import wait_until, wait_until_async
from support.spool import spool_files

from mailsrv.config import StoreConfig
from mailsrv.delivery import spool as spool_mod
from mailsrv.store import DeliveryTarget, Store, reserve
from mailsrv.store.account import Account

from .conftest import msg

Run = Callable[[Awaitable[Any]], Any]


def _new(tmp_path: Path, account: str) -> list[Path]:
    """The account's INBOX files (new/ and, once indexed, cur/)."""
    root = tmp_path / "mail" / account
    return sorted([*(root / "new").iterdir(), *(root / "cur").iterdir()])


def _deliver(run: Run, store: Store, acct: Account, spool_dir: Path, names: list[str]) -> None:
    """Deliver ``names`` at once, then let the indexer finish (no file moves from new/ to cur/ after)."""
    async def go() -> list[Any]:
        return await asyncio.gather(*(store.deliver(spool_dir / n, [DeliveryTarget(acct)], uids=False,
                                                    data=msg(n), consume=True) for n in names))
    assert [r.status for rs in run(go()) for r in rs] == ["ok"] * len(names)
    run(store.indexer.flush())


def _full(store: Store, spool_dir: Path) -> reserve.Reserve:
    """The store's reserve for ``spool_dir``, once its refill has made it full."""
    res = store._reserves[str(spool_dir)]
    wait_until(lambda: len(res._free) == reserve.SIZE, 20)
    return res


@pytest.fixture
def journaled(tmp_path: Path, run: Run, make_store: Callable[..., Store]) -> tuple[Store, Account, Path]:
    store = make_store(index_delay=0.0)
    run(store.start())
    assert store.journal is not None and store.fssync is not None  # the SMTP path: a group round
    sdir = tmp_path / "spool"
    sdir.mkdir()
    return store, run(store.account("u")), sdir


def test_a_round_writes_a_reserved_file_and_creates_none(
        tmp_path: Path, run: Run, journaled: tuple[Store, Account, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    store, acct, sdir = journaled
    _deliver(run, store, acct, sdir, ["m0"])  # the first one finds the reserve empty: created as before
    res = _full(store, sdir)
    assert (res.missed, res.taken) == (1, 0)
    reserved = set(res._free)
    opens: list[tuple[str, int]] = []  # the files the delivery jobs open
    real_open = os.open
    in_job = threading.local()

    def record(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        if getattr(in_job, "on", False):
            opens.append((str(path), flags))
        return real_open(path, flags, *args, **kw)

    def marked(real: Any) -> Any:
        def job(*args: Any, **kw: Any) -> Any:
            in_job.on = True
            try:
                return real(*args, **kw)
            finally:
                in_job.on = False
        return job

    monkeypatch.setattr(os, "open", record)
    # the job, and its part after the round's sync (the file and its links, after the journal's record)
    monkeypatch.setattr(store, "_deliver_job", marked(store._deliver_job))
    monkeypatch.setattr(store, "_links_after_sync", marked(store._links_after_sync))
    _deliver(run, store, acct, sdir, [f"m{i}" for i in range(1, 6)])
    monkeypatch.undo()
    assert res.taken == 5 and res.missed == 1
    assert [p for p, f in opens if f & os.O_CREAT] == []  # before: one O_CREAT per message
    written = [p for p, f in opens if p in reserved]
    assert len(written) == 5 and all(not f & os.O_CREAT for p, f in opens if p in reserved)
    got = sorted(p.read_bytes() for p in _new(tmp_path, "u"))
    assert got == sorted(msg(f"m{i}") for i in range(6))
    assert not any(os.path.exists(p) for p in written) and spool_files(sdir) == []
    assert store.journal is not None and store.journal.appended == 6  # durable through the journal, as before


def test_the_reserve_refills_in_the_background_and_closes_empty(tmp_path: Path, run: Run) -> None:
    store = Store(StoreConfig(index_delay=0.0), tmp_path, hostname="test.example")  # closed here
    run(store.start())
    acct = run(store.account("u"))
    sdir = tmp_path / "spool"
    sdir.mkdir()
    _deliver(run, store, acct, sdir, ["first"])
    res = _full(store, sdir)
    n = reserve.SIZE - reserve.LOW + 5  # below the low-water mark
    _deliver(run, store, acct, sdir, [f"m{i}" for i in range(n)])
    assert res.taken == n
    wait_until(lambda: len(res._free) == reserve.SIZE, 20)  # made up again by the reserve's thread
    assert res.made >= reserve.SIZE + n - 1
    assert sorted(os.listdir(res.directory)) == sorted(os.path.basename(p) for p in res._free)
    assert all(os.stat(p).st_size == 0 for p in res._free)
    assert len(_new(tmp_path, "u")) == n + 1
    run(store.close())
    assert os.listdir(res.directory) == []  # a stopping store removes its reserve


def test_a_reserved_file_removed_underneath_falls_back_to_creating(
        tmp_path: Path, run: Run, journaled: tuple[Store, Account, Path]) -> None:
    store, acct, sdir = journaled
    _deliver(run, store, acct, sdir, ["first"])
    res = _full(store, sdir)
    for name in os.listdir(res.directory):  # e.g. a clean by another process of a reused pid
        os.unlink(os.path.join(res.directory, name))
    _deliver(run, store, acct, sdir, ["after"])
    assert res.taken == 1  # taken, found gone: the round created its spool file
    assert sorted(p.read_bytes() for p in _new(tmp_path, "u")) == sorted([msg("first"), msg("after")])
    assert spool_files(sdir) == []


def test_threads_taking_at_once_never_get_the_same_file(tmp_path: Path) -> None:
    res = reserve.Reserve(str(tmp_path))
    assert res.take() is None  # empty: the caller creates its file; the refill starts
    wait_until(lambda: len(res._free) == reserve.SIZE, 20)
    res._closed = True  # (no refill: every file is taken once, then the reserve is empty)
    got: list[str | None] = []
    start = threading.Barrier(8)

    def taker() -> None:
        start.wait()
        mine = [res.take() for _ in range(reserve.SIZE // 8 + 2)]
        got.extend(mine)

    threads = [threading.Thread(target=taker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    paths = [p for p in got if p is not None]
    assert len(paths) == len(set(paths)) == reserve.SIZE and got.count(None) == 16


def test_concurrent_rounds_use_distinct_files(tmp_path: Path, run: Run,
                                              journaled: tuple[Store, Account, Path]) -> None:
    store, acct, sdir = journaled
    _deliver(run, store, acct, sdir, ["first"])
    res = _full(store, sdir)
    names = [f"c{i}" for i in range(40)]
    _deliver(run, store, acct, sdir, names)  # one gather: rounds in several lanes at once
    files = _new(tmp_path, "u")
    assert sorted(p.read_bytes() for p in files) == sorted([msg("first"), *(msg(n) for n in names)])
    assert len({p.stat().st_ino for p in files}) == 41 and res.taken + res.missed == 41


def test_a_forked_child_does_not_take_its_parents_files(tmp_path: Path) -> None:
    res = reserve.Reserve(str(tmp_path))
    res.take()
    wait_until(lambda: len(res._free) == reserve.SIZE, 20)
    pid = os.fork()
    if pid == 0:  # the child: nothing to take, no refill
        os._exit(0 if res.take() is None and not res._free else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(res._free) == reserve.SIZE  # the parent's reserve is untouched
    res.close()
    assert os.listdir(res.directory) == []


async def _child(data_dir: Path, wfd: int) -> None:
    """Forked child: deliveries through the reserve until killed, each acknowledgement reported."""
    store = Store(StoreConfig(index_delay=0.0), data_dir, hostname="crash.test")
    await store.start()
    acct = await store.account("u")
    res = None
    for n in range(100_000):
        mid = f"k{n}"
        [r] = await store.deliver(data_dir / "spool" / mid, [DeliveryTarget(acct)], uids=False, data=msg(mid),
                                  consume=True)
        assert r.status == "ok", r
        res = store._reserves[str(data_dir / "spool")]
        os.write(wfd, f"D {mid} {res.taken}\n".encode())
        if res.taken > 20:
            break
    # Back-to-back deliveries may drain the reserve (its refill gives way to them): stop delivering
    # until the refill has made files again, so the kill finds some to leave behind.
    assert res is not None
    await wait_until_async(lambda: len(res._free) >= 8, 60)
    os.write(wfd, b"R\n")
    await asyncio.Event().wait()  # until killed


def test_a_killed_worker_leaves_empty_reserved_files_that_the_next_start_removes(tmp_path: Path) -> None:
    (tmp_path / "spool").mkdir()
    pid, fd = spawn(lambda wfd: _child(tmp_path, wfd), tmp_path / "child.err")
    lines: list[str] = []
    buf = b""
    deadline = time.monotonic() + 60
    while "R" not in lines:  # the reserve served its deliveries, then refilled
        assert time.monotonic() < deadline, (tmp_path / "child.err").read_text()
        chunk = os.read(fd, 4096)
        assert chunk, (tmp_path / "child.err").read_text()
        buf += chunk
        *done, buf = buf.split(b"\n")
        lines += [d.decode() for d in done]
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(fd)
    rdir = tmp_path / "spool" / reserve.DIRECTORY
    left = list(rdir.iterdir())
    assert left and all(p.name.startswith(f"{pid}.") for p in left)
    assert sum(p.stat().st_size > 0 for p in left) <= 1  # at most the message whose round the kill cut
    assert any(int(ln.split()[2]) > 20 for ln in lines if ln != "R")
    acked = {ln.split()[1] for ln in lines if ln != "R"}
    have = {p.read_bytes() for p in _new(tmp_path, "u")}
    assert {msg(m) for m in acked} <= have
    live = rdir / f"{os.getpid()}.1"  # a live process's reserved file is not a leftover
    live.touch()
    assert spool_mod.clean(tmp_path / "spool") == len(left)  # what a worker's start runs
    assert list(rdir.iterdir()) == [live]
