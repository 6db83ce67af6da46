"""The delivery journal (store/journal.py): its record format, rotation, replay rules, and the store's
group deliveries made durable through it."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from support.server import wait_until_async

from mailsrv.store import DeliveryTarget, Store, journal
from mailsrv.util import fsio

from .conftest import msg

Run = Callable[[Awaitable[Any]], Any]


def _folder(tmp_path: Path, name: str = "box") -> Path:
    f = tmp_path / name
    for sub in ("new", "cur", "tmp"):
        (f / sub).mkdir(parents=True)
    return f


def _files(folder: Path, sub: str) -> list[str]:
    return sorted(os.listdir(folder / sub))


def _journal(tmp_path: Path, size: int = 1 << 20) -> journal.Journal:
    jr = journal.Journal(tmp_path / "journal", size)
    jr.create()
    return jr


def _payload(folder: Path, name: str, body: bytes = b"hello\r\n", root: Path | None = None) -> bytes:
    return bytes(journal.encode([(str(root or folder.parent), str(folder), name, name)], body, 1_700_000_000.0))


def test_record_round_trip() -> None:
    targets = [("/r", "/r/.Sent", "1.M2P3Q4.h,S=9", "1.M2P3Q4.h,S=9"), ("/s", "/s", "é:2,S", "é")]
    payload = journal.encode(targets, b"message\r\n", 12.5)
    got, message, mtime = journal.decode(payload)
    assert (got, bytes(message), mtime) == (targets, b"message\r\n", 12.5)
    rec = journal.record(7, 0, payload)
    head = bytearray(journal.HEADER)
    head[:16] = journal._FILE_HEAD.pack(journal.FILE_MAGIC, 7)
    data = bytes(head) + rec + journal.record(7, 1, b"x" * 12) + bytes(100)
    assert [(s, bytes(p)) for s, p in journal.records(data)] == [(0, bytes(payload)), (1, b"x" * 12)]
    with pytest.raises(ValueError):
        journal.decode(payload[:20])  # a target cut short


def test_corrupt_or_torn_record_ends_replay(tmp_path: Path) -> None:
    jr = _journal(tmp_path)
    folder = _folder(tmp_path)
    for i in range(3):
        assert jr.append(_payload(folder, f"m{i}"), str(folder))
    jr.sync()
    path = jr._files[0].path
    data = bytearray(path.read_bytes())
    assert len(list(journal.records(data))) == 3
    second = journal.HEADER + len(journal.record(1, 0, _payload(folder, "m0")))
    data[second + 40] ^= 0xFF  # a flipped byte in the second record: its checksum fails
    assert [s for s, _ in journal.records(data)] == [0]
    torn = bytearray(path.read_bytes())
    end = second + len(journal.record(1, 1, _payload(folder, "m1")))
    torn[end - 3:end] = bytes(3)  # the second record's last bytes never written
    assert [s for s, _ in journal.records(torn)] == [0]
    jr.close()


def test_checkpoint_rotates_and_retires_old_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[list[str]] = []
    real = fsio._syncfs_paths
    monkeypatch.setattr(fsio, "_syncfs_paths", lambda paths: (synced.append(list(paths)), real(paths))[1])
    jr = _journal(tmp_path)
    folder = _folder(tmp_path)
    a, b = jr._files
    assert jr.append(_payload(folder, "m0"), str(folder))
    assert jr.checkpoint()
    assert synced == [[str(folder)]]  # a syncfs of the links' file system
    assert a.gen == 2 and list(journal.records(a.path.read_bytes())) == []  # stale generation: never replayed
    assert jr.append(_payload(folder, "m1"), str(folder))  # now into the other file
    jr.sync()
    assert [s for s, _ in journal.records(b.path.read_bytes())] == [0]
    assert jr.checkpoint() and jr._files[jr._active] is a and b.gen == 2
    assert not jr.checkpoint()  # nothing pending: no syncfs
    assert len(synced) == 2 and jr.checkpoints == 2
    jr.close()
    assert os.listdir(tmp_path / "journal") == []


def test_full_journal_takes_no_record(tmp_path: Path) -> None:
    jr = _journal(tmp_path, 4 * journal.HEADER)
    folder = _folder(tmp_path)
    big = _payload(folder, "m", b"x" * 5000)
    assert jr.append(big, str(folder)) and jr.append(big, str(folder))
    assert jr.urgent
    assert not jr.append(big, str(folder))  # no room until the next checkpoint: the caller syncs otherwise
    assert jr.checkpoint() and jr.append(big, str(folder))
    jr.close()


def _dead_journal(tmp_path: Path, payloads: list[bytes]) -> Path:
    """A journal file as a killed process leaves it (records synced, no checkpoint, lock free)."""
    jr = _journal(tmp_path)
    folder = tmp_path
    for p in payloads:
        assert jr.append(p, str(folder))
    jr.sync()
    path = jr._files[0].path
    keep = tmp_path / "dead.mj"
    shutil.copyfile(path, keep)
    jr.close()
    os.replace(keep, path)
    return path


def test_replay_restores_lost_files_once(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    (folder / "new" / "kept").write_bytes(b"kept\r\n")
    path = _dead_journal(tmp_path, [_payload(folder, "lost", b"lost body\r\n"), _payload(folder, "kept", b"kept\r\n")])
    twin = tmp_path / "twin.mj"
    shutil.copyfile(path, twin)
    assert journal.replay(tmp_path / "journal") == 1
    assert (folder / "new" / "lost").read_bytes() == b"lost body\r\n"
    assert os.stat(folder / "new" / "lost").st_mtime == 1_700_000_000.0  # the internal date
    assert os.listdir(tmp_path / "journal") == []  # replayed: removed
    os.replace(twin, path)  # the same records once more (a replay killed before its removal)
    assert journal.replay(tmp_path / "journal") == 0
    assert _files(folder, "new") == ["kept", "lost"] and _files(folder, "tmp") == []


def test_live_journal_is_not_adopted(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    jr = _journal(tmp_path)
    assert jr.append(_payload(folder, "lost"), str(folder))
    jr.sync()
    assert journal.replay(tmp_path / "journal") == 0  # its owner (this journal's flock) lives
    assert _files(folder, "new") == [] and len(os.listdir(tmp_path / "journal")) == 2
    jr.close()


def test_replay_after_failed_append_sync_keeps_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An fdatasync error breaks the journal: no more records, its files stay (closed) for replay."""
    folder = _folder(tmp_path)
    jr = _journal(tmp_path)
    assert jr.append(_payload(folder, "m"), str(folder))

    def eio(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", eio)
    with pytest.raises(OSError):
        jr.sync()
    monkeypatch.undo()
    assert not jr.ready and not jr.append(_payload(folder, "n"), str(folder))
    with pytest.raises(OSError):
        jr.sync()  # reported again: the descriptor would not
    jr.close()
    assert len(os.listdir(tmp_path / "journal")) == 2
    assert journal.replay(tmp_path / "journal") == 1


# --- through the store ------------------------------------------------------------------------


def test_group_deliveries_are_journaled(tmp_path: Path, run: Run, make_store: Callable[..., Store],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store(index_delay=0.0, journal_interval=0.05)
    run(store.start())
    assert store.journal is not None and store.fssync is not None
    accts = [run(store.account(f"u{i}")) for i in range(3)]
    syncfs_calls: list[str] = []
    real = fsio.syncfs
    monkeypatch.setattr(fsio, "syncfs", lambda p: (syncfs_calls.append(str(p)), real(p))[1])

    async def go(first: int, n: int) -> list[Any]:
        spool_dir = tmp_path / "spool"
        spool_dir.mkdir(exist_ok=True)
        out = await asyncio.gather(*(store.deliver(spool_dir / f"s{i}", [DeliveryTarget(accts[i % 3])], uids=False,
                                                   data=msg(i), consume=True) for i in range(first, first + n)))
        return [r for rs in out for r in rs]

    assert [r.status for r in run(go(0, 30))] == ["ok"] * 30
    assert store.journal.appended == 30 and store.fssync.journal_syncs >= 1
    assert store.fssync.syncs == 0 and syncfs_calls == []  # no syncfs on the acknowledgement path
    run(store.indexer.flush())
    for a in accts:
        assert len(run(a.open_mailbox("INBOX")).messages) == 10

    jr = store.journal
    run(wait_until_async(lambda: jr.checkpoints >= 1, 10))  # the checkpointer's syncfs within journal_interval
    assert syncfs_calls and not jr.pending
    big = b"x" * (store.config.journal_max_message + 1)
    [r] = run(store.deliver(tmp_path / "spool" / "big", [DeliveryTarget(accts[0])], uids=False, data=big))
    assert r.status == "ok" and store.journal.appended == 30 and store.fssync.syncs == 1  # too large: syncfs


def test_journal_off_or_not_started(tmp_path: Path, run: Run, make_store: Callable[..., Store]) -> None:
    off = make_store(journal=False)
    run(off.start())
    assert off.journal is None and not (tmp_path / "journal").exists()
    plain = make_store()  # never started (tools, tests): no journal
    acct = run(plain.account("u"))
    [r] = run(plain.deliver(tmp_path / "s", [DeliveryTarget(acct)], uids=False, data=msg(1)))
    assert r.status == "ok" and plain.journal is None and plain.fssync is not None and plain.fssync.syncs == 1


def test_failed_journal_sync_is_a_temporary_failure(tmp_path: Path, run: Run, make_store: Callable[..., Store],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store(index_delay=30.0)
    run(store.start())
    acct = run(store.account("u"))
    assert store.journal is not None

    def eio(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", eio)
    [r] = run(store.deliver(tmp_path / "s1", [DeliveryTarget(acct)], uids=False, data=msg(1)))
    assert r.status == "tempfail" and "Input/output error" in (r.error or "")
    assert os.listdir(acct.root / "new") == [] and acct.engine.pending == {}  # the link taken back
    monkeypatch.undo()
    [r] = run(store.deliver(tmp_path / "s2", [DeliveryTarget(acct)], uids=False, data=msg(2)))
    assert r.status == "ok" and store.fssync is not None and store.fssync.syncs == 1  # broken: back to syncfs


def test_records_hold_absolute_paths(tmp_path: Path, run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    from mailsrv.config import StoreConfig

    monkeypatch.chdir(tmp_path)
    store = Store(StoreConfig(journal_interval=3600), "data", hostname="test.example")  # a relative data_dir
    try:
        run(store.start())
        acct = run(store.account("u"))
        [r] = run(store.deliver(Path("data/s1"), [DeliveryTarget(acct)], uids=False, data=msg(1)))
        assert r.status == "ok" and store.journal is not None
        store.journal.sync()
        data = store.journal._files[store.journal._active].path.read_bytes()
        [(_, payload)] = list(journal.records(data))
        [(root, folder, name, key)] = journal.decode(payload)[0]
        assert root == folder == str(tmp_path / "data" / "mail" / "u") and name == key
        assert bytes(journal.decode(payload)[1]) == msg(1)
    finally:
        run(store.close())


def test_a_running_worker_adopts_a_dead_journal(tmp_path: Path, run: Run, make_store: Callable[..., Store],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker killed and not replaced: a sibling replays its journal (ADOPT_EVERY) and removes it."""
    from mailsrv.store import store as store_mod

    monkeypatch.setattr(store_mod, "ADOPT_EVERY", 0.05)
    folder = _folder(tmp_path, "x")
    path = _dead_journal(tmp_path, [_payload(folder, "lost", b"lost\r\n")])
    store = make_store()
    run(store.start())  # replays it at once (as a replacement worker)
    assert (folder / "new" / "lost").read_bytes() == b"lost\r\n" and not path.exists()
    os.unlink(folder / "new" / "lost")
    path = _dead_journal(tmp_path, [_payload(folder, "later", b"later\r\n")])  # another process dies later
    run(wait_until_async(lambda: not path.exists(), 10))
    assert (folder / "new" / "later").read_bytes() == b"later\r\n"
    assert store.journal is not None and len(os.listdir(tmp_path / "journal")) == 2  # its own


def test_a_sync_waits_for_the_running_fdatasync_that_took_its_record(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Two sync() calls at once (fsio's gate serializes them; the journal must not rely on it): the
    second finds nothing dirty, since the first took the file whose fdatasync covers its record, and
    must not return before that fdatasync is over."""
    import threading

    folder = _folder(tmp_path)
    jr = _journal(tmp_path)
    assert jr.append(_payload(folder, "m"), str(folder))
    real = os.fdatasync
    inside, release = threading.Event(), threading.Event()
    done: list[str] = []

    def slow(fd: int) -> None:
        inside.set()
        assert release.wait(30)
        real(fd)
        done.append("fdatasync")

    monkeypatch.setattr(os, "fdatasync", slow)
    first = threading.Thread(target=jr.sync)
    first.start()
    assert inside.wait(30)
    second = threading.Thread(target=lambda: (jr.sync(), done.append("second")))
    second.start()
    second.join(0.3)  # (a bound on a wrong answer: it must still be waiting)
    alive = second.is_alive()
    release.set()
    first.join(30)
    second.join(30)
    monkeypatch.undo()
    assert alive and done == ["fdatasync", "second"]
    jr.close()


def test_a_store_with_the_journal_off_still_replays_at_start(tmp_path: Path, run: Run,
                                                             make_store: Callable[..., Store]) -> None:
    """A worker started with ``[store] journal = false`` after a crash that left journals (written
    while it was on) replays them: turning the journal off must not drop their deliveries."""
    folder = _folder(tmp_path)
    _dead_journal(tmp_path, [_payload(folder, "lost", b"lost body\r\n")])
    store = make_store(journal=False)
    run(store.start())
    assert store.journal is None
    assert (folder / "new" / "lost").read_bytes() == b"lost body\r\n"
    assert os.listdir(tmp_path / "journal") == []


def test_a_target_that_fails_does_not_stop_the_others(tmp_path: Path) -> None:
    """One target cannot be written (its tmp/ is a file): the replay restores the others, makes them
    durable, raises and keeps the journal; once tmp/ is gone (made again) the next replay restores it."""
    bad, good = _folder(tmp_path, "bad"), _folder(tmp_path, "good")
    (bad / "tmp").rmdir()
    (bad / "tmp").write_bytes(b"")
    left = _dead_journal(tmp_path, [_payload(bad, "m1", b"one\r\n"), _payload(good, "m2", b"two\r\n")])
    with pytest.raises(NotADirectoryError):
        journal.replay(tmp_path / "journal")
    assert (good / "new" / "m2").read_bytes() == b"two\r\n" and _files(bad, "new") == []
    assert os.listdir(tmp_path / "journal") == [left.name]  # kept for the target that failed
    (bad / "tmp").unlink()  # tmp/ lost: replay makes it again
    assert journal.replay(tmp_path / "journal") == 1
    assert (bad / "new" / "m1").read_bytes() == b"one\r\n" and _files(bad, "tmp") == []
    assert os.listdir(tmp_path / "journal") == []
