"""Replay of a killed process's delivery journal (store/journal.py): a child process delivers through
the journal, gets its acknowledgements and is killed with SIGKILL before any checkpoint; the links a
power cut would not have kept are then removed, and replay must bring back exactly those, never a
message a reader took, expunged or moved meanwhile."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from mailsrv.store import DeliveryTarget, Store, journal
from mailsrv.util import fsio

from .conftest import msg

Run = Callable[[Awaitable[Any]], Any]

CHILD = textwrap.dedent("""
    import asyncio, os, signal, sys
    from pathlib import Path
    from mailsrv.config import StoreConfig
    from mailsrv.store import DeliveryTarget, Store

    def msg(n):
        return (f"From: a@example.test\\r\\nTo: b@example.test\\r\\nSubject: hello\\r\\n"
                f"Message-ID: <m{n}@example.test>\\r\\n\\r\\nbody {n}\\r\\n").encode()

    async def main():
        base, n = Path(sys.argv[1]), int(sys.argv[2])
        # no checkpoint and no indexing before the kill
        store = Store(StoreConfig(index_delay=3600, journal_interval=3600), base, hostname="test.example")
        await store.start()
        assert store.journal is not None
        acct = await store.account("u")
        (base / "spool").mkdir(exist_ok=True)
        for i in range(n):
            [r] = await store.deliver(base / "spool" / f"s{i}", [DeliveryTarget(acct)], uids=False, data=msg(i),
                                      consume=True)
            assert r.status == "ok", r
        print("acked", store.journal.appended, store.journal.checkpoints, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(main())
""")


def _deliver_and_die(base: Path, n: int) -> None:
    out = subprocess.run([sys.executable, "-c", CHILD, str(base), str(n)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == -9, out.stderr
    assert out.stdout.split() == ["acked", str(n), "0"]
    assert len(os.listdir(journal.journal_dir(base))) == 2  # left by the dead process


def _new(base: Path) -> dict[str, bytes]:
    new = base / "mail" / "u" / "new"
    return {n: (new / n).read_bytes() for n in os.listdir(new)}


def test_replay_restores_exactly_the_lost_links(tmp_path: Path) -> None:
    _deliver_and_die(tmp_path, 6)
    before = _new(tmp_path)
    assert len(before) == 6
    lost = sorted(before)[1::2]
    for n in lost:  # links a power cut did not keep
        os.unlink(tmp_path / "mail" / "u" / "new" / n)
    assert journal.replay(journal.journal_dir(tmp_path)) == len(lost)
    assert _new(tmp_path) == before  # the same names and bytes
    assert os.listdir(journal.journal_dir(tmp_path)) == []
    assert journal.replay(journal.journal_dir(tmp_path)) == 0


def test_replay_at_start_keeps_taken_expunged_and_moved(tmp_path: Path, run: Run,
                                                        make_store: Callable[..., Store]) -> None:
    _deliver_and_die(tmp_path, 5)
    store = make_store(journal=False)  # a reader of another process, before the replay
    acct = run(store.account("u"))
    view = run(acct.open_mailbox("INBOX"))  # takes all five into cur/
    assert [m.uid for m in view.messages] == [1, 2, 3, 4, 5] and os.listdir(acct.root / "new") == []
    run(acct.store_flags("INBOX", [1], frozenset({"\\Deleted"}), "add"))
    assert run(acct.expunge("INBOX", [1])) == [1]  # expunged (as a POP3 DELE is)
    run(acct.move("INBOX", [2], "Trash"))  # moved out
    run(acct.store_flags("INBOX", [3], frozenset({"\\Seen"}), "add"))  # renamed in cur/
    lost_cur = run(acct.message_path("INBOX", 4))
    body4 = lost_cur.read_bytes()
    run(store.close())
    os.unlink(lost_cur)  # taken into cur/ and indexed, but the rename was lost with the link (power cut)

    again = make_store(index_delay=0.0)
    run(again.start())  # the worker's start replays the dead process's journal
    assert again.journal is not None and len(os.listdir(journal.journal_dir(tmp_path))) == 2  # its own only
    acct = run(again.account("u"))
    view = run(acct.open_mailbox("INBOX"))
    assert [m.uid for m in view.messages] == [3, 4, 5]  # nothing resurrected, nothing duplicated
    assert run(acct.read_message("INBOX", 4)) == body4
    assert len(run(acct.open_mailbox("Trash")).messages) == 1
    assert sorted(os.listdir(acct.root / "new")) == []
    assert msg(1).split(b"\r\n\r\n")[1] in run(acct.read_message("Trash", 1))  # UID 2 held message 1


def test_index_of_an_older_mailsrv_gains_the_gone_table(tmp_path: Path, run: Run,
                                                        make_store: Callable[..., Store]) -> None:
    import sqlite3

    from mailsrv.store.engine import INDEX_NAME

    first = make_store()
    acct = run(first.account("u"))
    [r] = run(first.deliver(tmp_path / "s1", [DeliveryTarget(acct)], data=msg(1)))
    assert r.uid == 1
    run(first.close())
    conn = sqlite3.connect(acct.root / INDEX_NAME)
    conn.executescript("DROP TRIGGER gone_del; DROP TRIGGER gone_moved; DROP TABLE gone;")  # as before the table
    conn.close()
    again = make_store()
    acct = run(again.account("u"))
    run(acct.store_flags("INBOX", [1], frozenset({"\\Deleted"}), "add"))
    assert run(acct.expunge("INBOX")) == [1]
    conn = sqlite3.connect(acct.root / INDEX_NAME)
    rows = conn.execute("SELECT key FROM gone").fetchall()
    conn.close()
    assert len(rows) == 1 and rows[0][0].endswith(f",S={len(msg(1))}")  # the expunged message's key


@pytest.mark.parametrize("on", [True, False])
def test_master_replays_before_workers_serve(tmp_path: Path, on: bool) -> None:
    """``mailsrv serve`` after a crash: the master replays the journal a dead worker left before it
    forks the workers (no reader can take, expunge or index anything first); also when the server
    comes back with ``[store] journal = false`` (the files were left while it was on)."""
    import tomllib

    from support.server import ServerProcess, init_setup

    cfg = init_setup(tmp_path / "srv", workers=2)
    if not on:
        assert "[store]" not in cfg.read_text()
        cfg.write_text(cfg.read_text() + "\n[store]\njournal = false\n")
    data_dir = cfg.parent / tomllib.loads(cfg.read_text())["server"].get("data_dir", "data")
    folder = data_dir / "mail" / "lost"
    for sub in ("new", "cur", "tmp"):
        (folder / sub).mkdir(parents=True)
    jr = journal.Journal(journal.journal_dir(data_dir), 1 << 20)
    jr.create()
    name = "1764340000.M1P2Q3.mail.example.test,S=9"
    assert jr.append(journal.meta([(str(folder), str(folder), name, name)], 1_700_000_000.0), str(folder),
                     b"message\r\n")
    jr.sync()
    dead = [(f.path, f.path.read_bytes()) for f in jr._files]
    jr.close()
    for path, data in dead:  # as its killed owner left them: records synced, no checkpoint
        path.write_bytes(data)
    srv = ServerProcess(cfg).wait_ready()
    try:
        srv.wait_for(r"worker\.ready")  # (master.ready may be logged before a worker's line)
        replayed = [i for i, ln in enumerate(srv.lines) if "journal.replayed" in ln and "restored=1" in ln]
        ready = [i for i, ln in enumerate(srv.lines) if "worker.ready" in ln]
        assert replayed and ready and replayed[0] < ready[0]
        assert (folder / "new" / name).read_bytes() == b"message\r\n"
        assert not any(p.exists() for p, _ in dead)
        assert len(os.listdir(journal.journal_dir(data_dir))) == (4 if on else 0)  # the two workers' own
    finally:
        assert srv.stop() == 0
    assert os.listdir(journal.journal_dir(data_dir)) == []  # a clean stop removes them


def test_replay_makes_the_files_it_finds_durable_before_removing_the_journal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A killed worker's links are in the page cache (no power cut): every one is found, none is
    restored, and the journal may go only after a syncfs of their file system (a power cut after the
    replay would lose them with the journal that stood for them)."""
    _deliver_and_die(tmp_path, 3)
    real = fsio.syncfs
    synced: list[tuple[str, int]] = []

    def syncfs(path: Any) -> None:
        synced.append((os.fspath(path), len(os.listdir(journal.journal_dir(tmp_path)))))
        real(path)

    monkeypatch.setattr(fsio, "syncfs", syncfs)
    assert journal.replay(journal.journal_dir(tmp_path)) == 0
    assert synced == [(str(tmp_path / "mail" / "u"), 2)]  # before its two files were removed
    assert os.listdir(journal.journal_dir(tmp_path)) == []


def _damage(path: Path, how: str) -> None:
    """What a power cut leaves of a file whose links were never synced (journal-less ext4: its name
    and size reach the disk without its data blocks, or only part of them)."""
    size = path.stat().st_size
    if how == "zeros":
        path.write_bytes(bytes(size))
    elif how == "short":
        os.truncate(path, size // 2)
    else:
        os.truncate(path, 0)


def test_replay_rewrites_files_a_power_cut_left_without_their_bytes(tmp_path: Path, run: Run,
                                                                    make_store: Callable[..., Store]) -> None:
    _deliver_and_die(tmp_path, 8)
    store = make_store(journal=False)  # a reader took four into cur/ (its index commit kept)
    acct = run(store.account("u"))
    new = acct.root / "new"
    names = sorted(os.listdir(new))
    bodies = {n.split(":")[0]: (new / n).read_bytes() for n in names}
    for n in names[:4]:
        os.rename(new / n, acct.root / "cur" / f"{n}:2,")
    run(acct.open_mailbox("INBOX"))  # indexes the four (and takes the other four into cur/)
    run(store.close())
    cur = acct.root / "cur"
    files = {n.split(":")[0]: n for n in os.listdir(cur)}
    assert sorted(files) == sorted(bodies)
    # put four back into new/ as a reader never took them (their names are what replay looks for)
    for k in sorted(files)[4:]:
        os.rename(cur / files[k], new / k)
    damaged = {sorted(files)[0]: "zeros", sorted(files)[1]: "short", sorted(files)[4]: "empty",
               sorted(files)[5]: "zeros"}
    where = {k: (cur / files[k] if k in sorted(files)[:4] else new / k) for k in files}
    inodes = {k: p.stat().st_ino for k, p in where.items()}
    for k, how in damaged.items():
        _damage(where[k], how)
    assert journal.replay(journal.journal_dir(tmp_path)) == len(damaged)
    for k, p in where.items():
        assert p.read_bytes() == bodies[k], (k, damaged.get(k))
        assert (p.stat().st_ino == inodes[k]) == (k not in damaged)  # untouched files are not rewritten
    assert os.listdir(acct.root / "tmp") == []
    assert sorted(os.listdir(new)) == sorted(files)[4:] and len(os.listdir(cur)) == 4


def test_a_corrupt_index_does_not_stop_the_replay(tmp_path: Path) -> None:
    """One account's index is not a database (its next open rebuilds it): the replay restores that
    account's lost file as if it had no index, and every other account's too."""
    from mailsrv.store.engine import INDEX_NAME

    folders = []
    for user in ("bad", "good"):
        folder = tmp_path / "mail" / user
        for sub in ("new", "cur", "tmp"):
            (folder / sub).mkdir(parents=True)
        folders.append(folder)
    (folders[0] / INDEX_NAME).write_bytes(b"not a database\n" * 512)
    jr = journal.Journal(journal.journal_dir(tmp_path), 1 << 20)
    jr.create()
    name = "1764340000.M1P2Q3.mail.example.test,S=9"
    assert jr.append(journal.meta([(str(f), str(f), name, name) for f in folders], 1_700_000_000.0),
                     str(tmp_path), b"message\r\n")
    jr.sync()
    dead = [(f.path, f.path.read_bytes()) for f in jr._files]
    jr.close()
    for path, data in dead:  # as its killed owner left them
        path.write_bytes(data)
    assert journal.replay(journal.journal_dir(tmp_path)) == 2
    assert [(f / "new" / name).read_bytes() for f in folders] == [b"message\r\n"] * 2
    assert os.listdir(journal.journal_dir(tmp_path)) == []
