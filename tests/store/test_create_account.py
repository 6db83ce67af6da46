"""Creating a new account: few syncs, atomic under SIGKILL, one account when two processes race.

The account's whole skeleton (folders, uidlists, index) is built beside it and renamed into
place (``folders.make_skeleton``). Syncs are counted with strace, which sees SQLite's own
fdatasync calls as well as ours. Children are forked (no exec) as in test_crash.py.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import re
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support.forked import spawn

from mailsrv.config import StoreConfig
from mailsrv.store import DeliveryTarget, Store, engine, folders
from mailsrv.store.types import SPECIAL_USE

from .conftest import msg, spool

#: syncs (fsync, fdatasync, syncfs) per new account opened through the Store; it was 53 before
#: make_skeleton. syncfs: one syncfs + the parent's fsync; without: an fsync per file and folder.
MAX_SYNCS = {"syncfs": 2, "fsync": 14}

_COUNT_SCRIPT = """
import asyncio, sys
from pathlib import Path
from mailsrv.config import StoreConfig
from mailsrv.store import Store

async def main(data_dir, n, use_syncfs):
    store = Store(StoreConfig(syncfs=use_syncfs), data_dir, hostname="count.test")
    await store.account("warm@example.test", data_dir / "mail" / "example.test" / "warm")
    for i in range(n):
        await store.account(f"u{i}", data_dir / "mail" / "example.test" / f"u{i}")
    await store.close()

asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "syncfs"))
"""

_SYNC_CALLS = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(fsync|fdatasync|syncfs)\s*$", re.M)


def _syncs(data_dir: Path, n: int, mode: str) -> int:
    out = subprocess.run(
        ["strace", "-f", "-c", "-e", "trace=fsync,fdatasync,syncfs", sys.executable, "-c", _COUNT_SCRIPT,
         str(data_dir), str(n), mode],
        capture_output=True, text=True, timeout=300, check=True)
    assert "Traceback" not in out.stderr, out.stderr
    return sum(int(m.group(1)) for m in _SYNC_CALLS.finditer(out.stderr))


@pytest.mark.parametrize("mode", ["syncfs", "fsync"])
def test_syncs_per_new_account(tmp_path: Path, mode: str) -> None:
    # the difference between 5 and 25 new accounts leaves out the process's fixed costs
    few = _syncs(tmp_path / "few", 5, mode)
    many = _syncs(tmp_path / "many", 25, mode)
    per_account = (many - few) / 20
    print(f"\n{mode}: {per_account:.2f} syncs per new account")
    assert 1 <= per_account <= MAX_SYNCS[mode], (few, many)
    _assert_complete(tmp_path / "many" / "mail" / "example.test" / "u24")


def _assert_complete(root: Path) -> None:
    """Every folder with cur/new/tmp and its uidlist, the index with a row per folder."""
    for name in SPECIAL_USE:
        folder = root if name == "INBOX" else root / f".{name}"
        for sub in ("cur", "new", "tmp"):
            assert (folder / sub).is_dir(), folder / sub
        assert (folder / folders.UIDLIST_NAME).stat().st_size > 0
    conn = sqlite3.connect(root / engine.INDEX_NAME)
    try:
        rows = dict(conn.execute("SELECT name, special_use FROM mailboxes").fetchall())
        meta = dict(conn.execute("SELECT k, v FROM meta").fetchall())
    finally:
        conn.close()
    assert rows == SPECIAL_USE
    assert meta["schema"] == str(engine.SCHEMA_VERSION) and meta["epoch"]


def test_new_index_schema_equals_migrated_one(tmp_path: Path) -> None:
    """The one-transaction schema of a new index is the schema an old index is migrated to."""
    old = sqlite3.connect(tmp_path / "old.sqlite", isolation_level=None)
    old.executescript(engine._SCHEMA)
    engine._migrate(old)
    new = sqlite3.connect(tmp_path / "new.sqlite", isolation_level=None)
    new.execute("BEGIN")
    engine._create_schema(new)
    new.execute("COMMIT")
    try:
        for table in ("mailboxes", "messages", "expunged", "quota", "meta"):
            assert (old.execute(f"PRAGMA table_info({table})").fetchall()
                    == new.execute(f"PRAGMA table_info({table})").fetchall()), table
        schema = "SELECT type, name, sql FROM sqlite_master ORDER BY name"
        assert old.execute(schema).fetchall() == new.execute(schema).fetchall()
    finally:
        old.close()
        new.close()


async def _deliver_and_read(data_dir: Path, name: str, text: str) -> list[bytes]:
    """Open ``name`` (creating it if needed), deliver one message, return every INBOX message."""
    store = Store(StoreConfig(), data_dir, hostname="check.test")
    try:
        acct = await store.account(name)
        names = {m.name for m in await acct.list_mailboxes()}
        assert names == set(SPECIAL_USE), names
        res = await store.deliver(spool(data_dir, msg(text), name=f"spool-{text}"), [DeliveryTarget(acct)])
        assert res[0].status == "ok", res
        view = await acct.open_mailbox("INBOX")
        return [await acct.read_message("INBOX", m.uid) for m in view.messages]
    finally:
        await store.close()


async def _creator(data_dir: Path, wfd: int) -> None:
    """Forked child: creates accounts a0, a1, ... until killed."""
    store = Store(StoreConfig(), data_dir, hostname="crash.test")
    os.write(wfd, b"R")
    for i in range(10_000):
        await store.account(f"a{i}")


def test_sigkill_during_creation_leaves_no_account_or_a_complete_one(tmp_path: Path) -> None:
    rng = random.Random(5)
    killed = 0
    for trial in range(12):
        data_dir = tmp_path / f"d{trial}"
        data_dir.mkdir()
        pid, r = spawn(functools.partial(_creator, data_dir), data_dir / "creator.err")
        assert select.select([r], [], [], 30)[0], "child did not start"
        assert os.read(r, 1) == b"R"
        os.close(r)
        time.sleep(rng.uniform(0.0, 0.25))  # the random crash point (not synchronisation)
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        killed += os.WIFSIGNALED(status)
        assert not (data_dir / "creator.err").exists(), (data_dir / "creator.err").read_text()
        mail = data_dir / "mail"
        accounts = sorted((p for p in mail.iterdir() if not p.name.startswith(".")),
                          key=lambda p: int(p.name[1:])) if mail.is_dir() else []
        for root in accounts:  # whatever exists is complete
            _assert_complete(root)
        # the last account made and the one being made (maybe half built in the staging dir)
        n = len(accounts)
        for name in {f"a{max(n - 1, 0)}", f"a{n}"}:
            got = asyncio.run(_deliver_and_read(data_dir, name, f"t{trial}{name}"))
            assert [m for m in got if f"<mt{trial}{name}@".encode() in m] and len(got) == 1
        _assert_complete(mail / f"a{n}")
    assert killed >= 10  # the children were killed mid-way, not finished


def test_abandoned_build_is_removed_later_and_never_an_account(tmp_path: Path) -> None:
    mail = tmp_path / "mail"
    staging = mail / folders.STAGING
    staging.mkdir(parents=True)
    old = staging / "x.1.M1P1Q1.crashed"
    (old / ".Sent" / "cur").mkdir(parents=True)
    fresh = staging / "y.2.M2P2Q2.building"
    fresh.mkdir()
    past = time.time() - folders.STAGING_MAX_AGE - 60
    os.utime(old, (past, past))
    got = asyncio.run(_deliver_and_read(tmp_path, "u", "one"))
    assert len(got) == 1
    assert not old.exists()  # abandoned by a crashed creator: removed
    assert fresh.is_dir()  # maybe a live build of another process: left alone
    assert sorted(p.name for p in mail.iterdir()) == [folders.STAGING, "u"]


def _racer(data_dir: Path, name: str, go: int, wfd: int, text: str) -> None:
    """Forked child: waits for the start byte, then opens ``name`` and delivers; never returns."""
    code = 0
    try:
        assert os.read(go, 1) == b"G"
        asyncio.run(_deliver_and_read(data_dir, name, text))
        os.write(wfd, b"D")
    except BaseException:
        import traceback

        (data_dir / f"racer-{text}.err").write_text(traceback.format_exc())
        code = 3
    finally:
        os._exit(code)


def test_two_processes_create_the_same_account(tmp_path: Path) -> None:
    for rnd in range(6):
        name = f"shared{rnd}"
        go_r, go_w = os.pipe()
        done_r, done_w = os.pipe()
        pids = []
        for side in ("a", "b"):
            pid = os.fork()
            if pid == 0:
                os.close(go_w)
                os.close(done_r)
                _racer(tmp_path, name, go_r, done_w, f"{side}{rnd}")
            pids.append(pid)
        os.close(go_r)
        os.close(done_w)
        os.write(go_w, b"GG")  # both start at once
        os.close(go_w)
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            errs = [p.read_text() for p in tmp_path.glob("racer-*.err")]
            assert os.waitstatus_to_exitcode(status) == 0, errs
        assert os.read(done_r, 2) == b"DD"
        os.close(done_r)
        root = tmp_path / "mail" / name
        _assert_complete(root)
        got = asyncio.run(_deliver_and_read(tmp_path, name, f"c{rnd}"))
        assert sorted(m.split(b"Message-ID: <m")[1].split(b"@")[0] for m in got) == sorted(
            [f"a{rnd}".encode(), f"b{rnd}".encode(), f"c{rnd}".encode()])
        assert not any((tmp_path / "mail" / folders.STAGING).iterdir())  # the loser cleaned up
    assert sorted(p.name for p in (tmp_path / "mail").iterdir()) == sorted(
        [folders.STAGING, *(f"shared{r}" for r in range(6))])


def test_concurrent_creations_share_a_syncfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Callers that arrive while a syncfs runs share the next one (it started after their writes)."""
    shared = folders._SharedSyncfs()
    calls: list[tuple[float, float]] = []  # (start, end) of each syncfs
    first_in, release = threading.Event(), threading.Event()

    def fake_syncfs(path: Path) -> None:
        start = time.monotonic()
        if not calls and not first_in.is_set():
            first_in.set()
            assert release.wait(30)
        calls.append((start, time.monotonic()))

    monkeypatch.setattr(folders.fsio, "syncfs", fake_syncfs)
    spans: list[tuple[float, float]] = []  # (arrival, return) of each caller

    def caller() -> None:
        t0 = time.monotonic()
        shared.sync(tmp_path)
        spans.append((t0, time.monotonic()))

    first = threading.Thread(target=caller)
    first.start()
    assert first_in.wait(30)
    others = [threading.Thread(target=caller) for _ in range(10)]
    for t in others:
        t.start()
    deadline = time.monotonic() + 30
    while len(shared._cond._waiters) < 10:  # type: ignore[attr-defined]  # all queued behind the first
        assert time.monotonic() < deadline, "callers did not queue"
        time.sleep(0.001)  # polling with a deadline
    release.set()
    for t in (first, *others):
        t.join(30)
    assert len(spans) == 11 and len(calls) == 2  # 11 callers, the ten late ones share one syncfs
    for arrived, returned in spans:  # each covered by a syncfs that started after it arrived
        assert any(arrived <= s and e <= returned for s, e in calls), (arrived, returned, calls)
