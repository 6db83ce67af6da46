"""A journaled group delivery's links are made after the journal's fdatasync (Store._deliver_journaled):
the record before the sync, the file and its new/ entries after it (fsio.After); a checkpoint waits for
those links; a link that fails after the sync keeps the record for replay and breaks the journal."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from support.forked import read_pipe, spawn
from support.server import wait_until_async

from mailsrv.config import StoreConfig
from mailsrv.store import DeliveryTarget, Store, journal
from mailsrv.store import store as store_mod
from mailsrv.store.account import Account
from mailsrv.util import fsio

from .conftest import msg

Run = Callable[[Awaitable[Any]], Any]


def _mail(root: Path) -> list[bytes]:
    """The contents of every file of an account's INBOX (new/ and cur/)."""
    return sorted(p.read_bytes() for sub in ("new", "cur") for p in (root / sub).iterdir())


def _started(run: Run, make_store: Callable[..., Store], **kw: Any) -> tuple[Store, journal.Journal]:
    store = make_store(journal_interval=3600.0, **kw)  # no checkpoint unless the test makes one
    run(store.start())
    assert store.journal is not None and store.fssync is not None
    (store.data_dir / "spool").mkdir(exist_ok=True)
    return store, store.journal


def _spool_files(store: Store) -> list[str]:
    return [n for n in os.listdir(store.data_dir / "spool") if n != ".reserve"]


def _answered(results: list[Any], err: OSError | None) -> None:
    """A durable hook, as SMTP's early 250 hands down (mailsrv.smtp.early): its caller is answered from
    the round's thread, so the links may come after the sync."""


def _deliver(store: Store, name: str, accts: list[Account], early: bool = True) -> Awaitable[list[Any]]:
    """The SMTP path: a sealed spool (consume, the bytes in memory), deferred index."""
    return store.deliver(store.data_dir / "spool" / name, [DeliveryTarget(a) for a in accts], uids=False,
                         data=msg(name), consume=True, durable=_answered if early else None)


def test_the_record_is_synced_before_the_links_exist(tmp_path: Path, run: Run, make_store: Callable[..., Store],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    store, jr = _started(run, make_store, index_delay=30.0)
    a, b = run(store.account("a")), run(store.account("b"))
    seen: list[tuple[int, list[str], list[str]]] = []  # at each journal sync: records, a's and b's new/
    real = jr.sync

    def sync() -> None:
        seen.append((jr.appended, os.listdir(a.root / "new"), os.listdir(b.root / "new")))
        real()

    monkeypatch.setattr(jr, "sync", sync)
    results = run(_deliver(store, "m1", [a, b]))
    assert [r.status for r in results] == ["ok", "ok"]
    assert seen == [(1, [], [])]  # the record is written before the sync, no link yet (before: both)
    assert _mail(a.root) == _mail(b.root) == [msg("m1")]  # linked after it, before the caller's return
    assert _spool_files(store) == []  # consumed: no spool file left
    assert store.fssync.syncs == 0 and store.fssync.journal_syncs == 1
    assert jr._files[0].unlinked == 0  # its links reported made
    run(store.indexer.flush())
    assert len(run(a.open_mailbox("INBOX")).messages) == 1 and len(run(b.open_mailbox("INBOX")).messages) == 1
    assert jr.checkpoint() and jr.checkpoints == 1


def test_a_checkpoint_waits_for_links_in_progress(tmp_path: Path, run: Run, make_store: Callable[..., Store],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    store, jr = _started(run, make_store)
    acct = run(store.account("u"))
    inside, release = threading.Event(), threading.Event()
    real_links = store._links_after_sync

    def held(*args: Any) -> Any:
        inside.set()
        assert release.wait(30)
        return real_links(*args)

    at_syncfs: list[list[bytes]] = []  # the account's files when the checkpoint's syncfs runs
    real_syncfs = fsio._syncfs_paths

    def syncfs(paths: list[str]) -> Any:
        if paths:  # (a journal round passes none)
            at_syncfs.append(_mail(acct.root))
        return real_syncfs(paths)

    monkeypatch.setattr(store, "_links_after_sync", held)
    monkeypatch.setattr(fsio, "_syncfs_paths", syncfs)
    old = jr._files[jr._active]
    checkpointer = threading.Thread(target=jr.checkpoint)

    async def go() -> list[Any]:
        task = asyncio.ensure_future(_deliver(store, "m1", [acct]))
        await wait_until_async(inside.is_set, 30)  # synced, its links held
        checkpointer.start()
        await wait_until_async(lambda: jr._active != 0, 30)  # switched, now waiting for the links
        with jr._lock:  # (taken once the checkpoint waits: it holds the lock until then)
            waiting = (checkpointer.is_alive(), old.gen, list(at_syncfs))
        release.set()
        out = await task
        assert waiting == (True, 1, [])
        return list(out)

    [r] = run(go())
    checkpointer.join(30)
    assert r.status == "ok" and not checkpointer.is_alive()
    assert at_syncfs == [[msg("m1")]]  # the syncfs came after the link
    assert old.gen == 2 and jr.checkpoints == 1 and jr.broken is None


def test_a_link_failing_after_the_sync_keeps_the_record_for_replay(
        tmp_path: Path, run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(StoreConfig(journal_interval=3600.0), tmp_path, hostname="test.example")
    try:
        run(store.start())
        jr = store.journal
        assert jr is not None and store.fssync is not None
        (tmp_path / "spool").mkdir()
        acct = run(store.account("u"))
        real = store_mod._link_or_copy

        def enospc(src: Any, to: str, move: bool = False) -> str:
            raise OSError(errno.ENOSPC, "No space left on device", to)

        monkeypatch.setattr(store_mod, "_link_or_copy", enospc)
        [r] = run(_deliver(store, "lost", [acct]))
        monkeypatch.setattr(store_mod, "_link_or_copy", real)
        assert r.status == "ok"  # acknowledged at its sync: the failure after it does not take that back
        assert _mail(acct.root) == [] and acct.engine.pending == {} and _spool_files(store) == []
        assert jr.broken is not None and "No space left" in str(jr.broken)
        assert not jr.checkpoint()  # its file is not restarted over the record
        assert jr.checkpoints == 0 and [s for s, _ in journal.records(jr._files[0].path.read_bytes())] == [0]
        [r] = run(_deliver(store, "next", [acct]))  # broken: back to the syncfs path
        assert r.status == "ok" and store.fssync.syncs == 1 and _mail(acct.root) == [msg("next")]
    finally:
        run(store.close())  # the journal's files stay (broken)
    assert len(os.listdir(tmp_path / "journal")) == 2
    again = Store(StoreConfig(journal=False), tmp_path, hostname="test.example")
    try:
        run(again.start())  # the next start's replay writes the lost copy back, once
    finally:
        run(again.close())
    assert _mail(acct.root) == sorted([msg("lost"), msg("next")])
    assert os.listdir(tmp_path / "journal") == []


def test_a_sync_failing_takes_nothing_back_and_is_a_temporary_failure(
        tmp_path: Path, run: Run, make_store: Callable[..., Store], monkeypatch: pytest.MonkeyPatch) -> None:
    store, jr = _started(run, make_store)
    acct = run(store.account("u"))

    def eio(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", eio)
    [r] = run(_deliver(store, "m1", [acct]))
    monkeypatch.undo()
    assert r.status == "tempfail" and "Input/output error" in (r.error or "")
    assert _mail(acct.root) == [] and acct.engine.pending == {} and jr._files[0].unlinked == 0
    assert [p.name for p in (store.data_dir / "spool").iterdir() if p.name != ".reserve"] == []


async def _child(data_dir: Path, wfd: int) -> None:
    """Forked child: five deliveries linked as usual, then one to two accounts whose links are held
    after its sync (the point its 250 goes out) until the parent kills it."""
    store = Store(StoreConfig(index_delay=0.0, journal_interval=3600.0), data_dir, hostname="crash.test")
    await store.start()
    (data_dir / "spool").mkdir(exist_ok=True)
    a, b = await store.account("a"), await store.account("b")
    for n in range(5):
        [r] = await _deliver(store, f"k{n}", [a])
        assert r.status == "ok", r
        os.write(wfd, f"D k{n}\n".encode())

    def held(*args: Any) -> Any:
        os.write(wfd, b"A held\n")  # synced: acknowledged
        threading.Event().wait()  # until killed

    store._links_after_sync = held  # type: ignore[method-assign]
    await _deliver(store, "held", [a, b])
    raise AssertionError("the held delivery returned")


def test_a_kill_after_the_acknowledgement_and_before_the_links_loses_nothing(tmp_path: Path) -> None:
    pid, fd = spawn(lambda wfd: _child(tmp_path, wfd), tmp_path / "child.err")
    try:
        out = read_pipe(fd, time.monotonic() + 60, lambda buf: b"A held\n" in buf)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)
    err = tmp_path / "child.err"
    assert b"A held\n" in out, err.read_text() if err.exists() else out
    acked = [ln.split()[1].decode() for ln in out.splitlines()]
    assert acked == ["k0", "k1", "k2", "k3", "k4", "held"]
    a, b = tmp_path / "mail" / "a", tmp_path / "mail" / "b"
    assert msg("held") not in _mail(a) and _mail(b) == []  # its links never made
    async def restart() -> None:  # the next start replays the dead process's journal
        store = Store(StoreConfig(journal=False), tmp_path, hostname="test.example")
        try:
            await store.start()
        finally:
            await store.close()

    asyncio.run(restart())
    assert _mail(a) == sorted(msg(m) for m in acked)  # every acknowledged message, byte for byte, once
    assert _mail(b) == [msg("held")]
    assert os.listdir(tmp_path / "journal") == []  # replayed, then removed


def test_parent_dir_is_paths_parent() -> None:
    """store._parent (the round's sync path and the journal's file system path) is str(Path.parent)."""
    from mailsrv.store.store import _parent

    for p in ["/var/spool/m.1", "/m", "m", "a/b", "/a/b/c.d"]:
        assert _parent(p) == _parent(Path(p)) == str(Path(p).parent), p


def test_a_caller_answered_on_the_loop_gets_its_links_before_the_sync(
        run: Run, make_store: Callable[..., Store], monkeypatch: pytest.MonkeyPatch) -> None:
    """No durable hook (a Sieve filing, several recipients: the loop answers after the round): the
    links are made before the journal's sync, and a link that fails is that copy's tempfail (the
    sender's or Sieve's queue retry), not an acknowledged copy left to the next start's replay."""
    store, jr = _started(run, make_store, index_delay=30.0)
    a = run(store.account("a"))
    seen: list[list[str]] = []
    real = jr.sync

    def sync() -> None:
        seen.append(os.listdir(a.root / "new"))
        real()

    monkeypatch.setattr(jr, "sync", sync)
    [r] = run(_deliver(store, "m1", [a], early=False))
    assert r.status == "ok" and seen and seen[0] != []  # linked before the sync
    real_link = os.rename

    def failing(src: Any, dst: Any, *args: Any, **kw: Any) -> None:
        if "/new/" in str(dst):
            raise OSError(errno.EPERM, "Operation not permitted")
        real_link(src, dst, *args, **kw)

    monkeypatch.setattr(os, "rename", failing)
    monkeypatch.setattr(os, "link", failing)
    [r] = run(_deliver(store, "m2", [a], early=False))
    assert r.status == "tempfail" and jr.broken is None  # retried by the sender; the journal goes on
