"""``store.deliver(..., consume=True)``: the caller has no further use for the spool file, so the
delivery's job moves it into the last target's ``new/`` (a rename, not a link and an unlink later)
or removes it; whatever the outcome, no file is left at the spool's path once the job has run."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from support.forked import spawn
from support.spool import spool_files

from mailsrv.config import StoreConfig
from mailsrv.store import DeliveryTarget, QuotaLimits, Store
from mailsrv.store.store import CLOSING

from .conftest import msg, spool
from .test_deliver_deferred import _read_lines, _state

Run = Callable[[Awaitable[Any]], Any]


def _new(tmp_path: Path, account: str) -> list[Path]:
    return sorted((tmp_path / "mail" / account / "new").iterdir())


def test_a_sealed_spool_is_written_then_moved_into_the_last_target(tmp_path: Path, run: Run,
                                                                  make_store: Callable[..., Store]) -> None:
    store = make_store()
    a, b = run(store.account("a")), run(store.account("b"))
    (tmp_path / "spool").mkdir()
    path = tmp_path / "spool" / "sealed"  # no file: the job writes it from data
    data = msg(1)
    res = run(store.deliver(path, [DeliveryTarget(a), DeliveryTarget(b)], uids=False, data=data, consume=True))
    assert [r.status for r in res] == ["ok", "ok"]
    assert not path.exists() and spool_files(tmp_path / "spool") == []
    [fa], [fb] = _new(tmp_path, "a"), _new(tmp_path, "b")
    assert fa.read_bytes() == fb.read_bytes() == data
    assert fa.stat().st_ino == fb.stat().st_ino and fa.stat().st_nlink == 2  # one file, two names
    run(store.indexer.flush())
    assert run(b.open_mailbox("INBOX")).messages[0].uid == 1


def test_a_file_the_caller_wrote_is_moved_too(tmp_path: Path, run: Run, make_store: Callable[..., Store]) -> None:
    store = make_store()
    a = run(store.account("a"))
    path = spool(tmp_path, msg(2))
    ino = path.stat().st_ino
    [r] = run(store.deliver(path, [DeliveryTarget(a)], uids=False, consume=True))
    assert r.status == "ok" and not path.exists()
    [f] = _new(tmp_path, "a")
    assert f.stat().st_ino == ino and f.stat().st_nlink == 1 and f.read_bytes() == msg(2)


def test_without_consume_the_file_stays_for_the_caller(tmp_path: Path, run: Run,
                                                      make_store: Callable[..., Store]) -> None:
    store = make_store()
    a = run(store.account("a"))
    path = spool(tmp_path, msg(3))
    [r] = run(store.deliver(path, [DeliveryTarget(a)], uids=False))
    assert r.status == "ok" and path.exists() and path.stat().st_nlink == 2


def test_no_target_took_it_and_it_is_removed(tmp_path: Path, run: Run, make_store: Callable[..., Store]) -> None:
    store = make_store()
    a = run(store.account("a"))
    (tmp_path / "spool").mkdir()
    path = tmp_path / "spool" / "sealed"
    full = QuotaLimits(storage=10)  # a quota: the job of old (links, fsync, index), not a group round
    [r] = run(store.deliver(path, [DeliveryTarget(a, limits=full)], uids=False, data=msg(4), consume=True))
    assert r.status == "over_quota"
    assert not path.exists() and _new(tmp_path, "a") == []


def test_a_quota_bound_target_is_linked_fsynced_and_the_spool_removed(tmp_path: Path, run: Run,
                                                                      make_store: Callable[..., Store]) -> None:
    store = make_store()
    a, b = run(store.account("a")), run(store.account("b"))
    path = spool(tmp_path, msg(5))
    res = run(store.deliver(path, [DeliveryTarget(a, limits=QuotaLimits(storage=1 << 20)), DeliveryTarget(b)],
                            uids=False, consume=True))
    assert [(r.status, r.uid) for r in res] == [("ok", 1), ("ok", None)]  # a's indexed in the job (quota)
    assert not path.exists()
    run(store.indexer.flush())
    assert run(a.read_message("INBOX", 1)) == run(b.read_message("INBOX", 1)) == msg(5)


def test_a_closing_store_leaves_the_file(tmp_path: Path, run: Run, make_store: Callable[..., Store]) -> None:
    store = make_store()
    a = run(store.account("a"))
    path = spool(tmp_path, msg(6))
    run(store.close())
    [r] = run(store.deliver(path, [DeliveryTarget(a)], uids=False, consume=True))
    assert (r.status, r.error) == ("tempfail", CLOSING)
    assert path.exists()  # the job never ran: the caller removes it


def test_across_file_systems_the_copy_is_made_and_the_spool_removed(tmp_path: Path, run: Run,
                                                                    make_store: Callable[..., Store],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store()
    a, b = run(store.account("a")), run(store.account("b"))
    path = spool(tmp_path, msg(7))
    real_link, real_rename = os.link, os.rename

    def exdev(real: Callable[..., None]) -> Callable[..., None]:
        def call(src: Any, dst: Any, *args: Any, **kw: Any) -> None:
            if Path(src) == path:  # the spool is on another file system than the maildirs
                raise OSError(errno.EXDEV, "cross-device link")
            real(src, dst, *args, **kw)
        return call

    monkeypatch.setattr(os, "link", exdev(real_link))
    monkeypatch.setattr(os, "rename", exdev(real_rename))
    res = run(store.deliver(path, [DeliveryTarget(a), DeliveryTarget(b)], uids=False, consume=True))
    assert [r.status for r in res] == ["ok", "ok"] and not path.exists()
    [fa], [fb] = _new(tmp_path, "a"), _new(tmp_path, "b")
    assert fa.read_bytes() == fb.read_bytes() == msg(7) and fa.stat().st_ino != fb.stat().st_ino


async def _consuming_child(data_dir: Path, wfd: int, ops: int) -> None:
    """Forked child: sealed spools (no file) delivered with consume, each acknowledgement reported."""
    store = Store(StoreConfig(index_delay=3600.0), data_dir, hostname="crash.test")
    acct = await store.account("u")
    (data_dir / "spool").mkdir(exist_ok=True)
    os.write(wfd, b"R\n")
    for n in range(ops):
        mid = f"c{n}"
        [res] = await store.deliver(data_dir / "spool" / mid, [DeliveryTarget(acct)], uids=False, data=msg(mid),
                                    consume=True)
        assert res.status == "ok", res
        os.write(wfd, f"D {mid}\n".encode())


def test_sigkill_loses_nothing_acknowledged_and_leaves_whole_files(tmp_path: Path) -> None:
    """The maildir promise with the spool renamed into new/: what was acknowledged is there after a kill -9,
    once, whole; the spool holds at most the one message whose round the kill interrupted."""
    pid, fd = spawn(lambda wfd: _consuming_child(tmp_path, wfd, 100_000), tmp_path / "child.err")
    lines = _read_lines(fd, 30, time.monotonic() + 60)
    os.kill(pid, signal.SIGKILL)
    lines += _read_lines(fd, None, time.monotonic() + 5)
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status), (tmp_path / "child.err").read_text() if (tmp_path / "child.err").exists() else ""
    acked = [ln.split()[1] for ln in lines if ln.startswith("D ")]
    assert len(acked) >= 30
    after = asyncio.run(_state(tmp_path))  # every file in new/ and cur/ is one indexed message
    mids = list(after.values())
    assert len(mids) == len(set(mids)) and set(acked) <= set(mids)
    assert len(spool_files(tmp_path / "spool")) <= 1

    async def contents() -> dict[str, bytes]:
        store = Store(StoreConfig(), tmp_path, hostname="check.test")
        try:
            acct = await store.account("u")
            return {mid: await acct.read_message("INBOX", uid) for uid, mid in after.items()}
        finally:
            await store.close()

    assert all(raw == msg(mid) for mid, raw in asyncio.run(contents()).items())
