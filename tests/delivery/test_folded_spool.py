"""A message judged in memory is written by the store's delivery job (one pool job), not by a spool commit first.

Real directory, store and queue (the ``site`` fixture) behind a port-25 session judged by a real policy.
"""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path
from typing import Any

import pytest
from support.spool import no_spool_left

from mailsrv.config import PolicyConfig, SmtpConfig
from mailsrv.delivery import spool as spool_mod
from mailsrv.delivery.spool import FileSpool
from mailsrv.net.dns import Resolver
from mailsrv.policy.pipeline import Policy
from mailsrv.policy.state import PolicyState
from mailsrv.queue.store import queue_dir
from mailsrv.smtp.backend import SessionInfo
from mailsrv.smtp.grammar import SmtpError
from mailsrv.smtp.session import Session
from mailsrv.smtp.wiring import DirectoryBackend
from mailsrv.store import store as store_mod

BODY = b"Subject: folded\r\n\r\nwritten once\r\n"


class _FullDisk:
    """``os`` as a module sees it on a full disk: files are created, every write fails with ENOSPC."""

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    @staticmethod
    def write(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def smtp(site: Any, tmp_path: Path) -> Any:
    """(run, backend): ``run(rcpts)`` sends BODY through a policy-judged session; returns its end-of-DATA step."""
    policy = Policy(PolicyConfig(spf=False, dmarc=False), hostname="mx.example.test",
                    resolver=Resolver(["127.0.0.1:1"]), state=PolicyState(tmp_path / "p.db"))
    backend = site.loop.run(_backend(site))

    async def send(rcpts: list[str]) -> Any:
        info = SessionInfo(sid="s1", hostname="mx.example.test", listener="smtp", peer_ip="192.0.2.7")
        session = Session(info, SmtpConfig(), backend, policy=policy.session(client_ip="192.0.2.7", listener="smtp"))
        await session.command(b"EHLO client.test\r\n")
        await session.command(b"MAIL FROM:<a@remote.test>\r\n")
        for r in rcpts:
            assert (await session.command(f"RCPT TO:<{r}>\r\n".encode())).reply.startswith(b"250 ")
        assert (await session.command(b"DATA\r\n")).then == "data"
        assert session.spool is not None and session.policy is not None
        assert session.policy.judges_in_memory(len(BODY) + 1000)  # the in-memory path
        await session.spool.write(BODY)
        return await session.data_end(bare_newline=False, too_big=False)

    yield (lambda rcpts: site.loop.run(send(rcpts))), backend
    policy.close()


async def _backend(site: Any) -> DirectoryBackend:
    return DirectoryBackend(site.directory, site.store, site.data_dir)


def test_a_local_message_is_written_by_the_delivery_job_and_durable_before_250(
        site: Any, smtp: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    run, backend = smtp
    events: list[str] = []
    spool_jobs: list[int] = []
    store_jobs: list[str] = []
    real_create, real_run, real_io = store_mod._create_spool, FileSpool._run, site.store.io.queue
    real_express = site.store.io.express
    real_fsync, real_syncfs = store_mod.fsio.fsync_file, store_mod.fsio.syncfs

    def create(path: Path, data: bytes) -> None:
        real_create(path, data)
        events.append("written")

    async def spool_run(self: FileSpool, data: bytes, close: bool) -> None:
        spool_jobs.append(len(data))
        await real_run(self, data, close)

    def io_queue(fn: Any) -> Any:  # every pool job of the store's (io.run's)
        store_jobs.append(store_mod.fsio._job_kind(fn).rpartition(".")[2])
        return real_io(fn)

    def io_express(fn: Any, done: Any) -> None:  # and every round's job
        store_jobs.append(store_mod.fsio._job_kind(fn).rpartition(".")[2])
        real_express(fn, done)

    def fsync_file(path: Any) -> None:
        real_fsync(path)
        events.append("synced")

    def syncfs(path: Any) -> None:
        real_syncfs(path)
        events.append("synced")

    monkeypatch.setattr(store_mod, "_create_spool", create)
    monkeypatch.setattr(FileSpool, "_run", spool_run)
    monkeypatch.setattr(site.store.io, "queue", io_queue)
    monkeypatch.setattr(site.store.io, "express", io_express)
    monkeypatch.setattr(store_mod.fsio, "fsync_file", fsync_file)
    monkeypatch.setattr(store_mod.fsio, "syncfs", syncfs)
    step = run(["alice@example.test", "bob@example.test"])
    assert step.reply.startswith(b"250 ")
    assert spool_jobs == []  # no spool commit job: the delivery job wrote the file
    # one pool job: the group-commit round writes the file, links it for both and runs the syncfs
    assert store_jobs.count("_round_job") == 1 and "_deliver_job" not in store_jobs
    # the file and its links synced before the 250 (a new account's skeleton may be synced before)
    assert events.count("written") == 1 and "synced" in events[events.index("written") + 1:]
    alice, bob = site.inbox("alice@example.test"), site.inbox("bob@example.test")
    assert len(alice) == 1 and alice == bob and alice[0].endswith(BODY)
    assert alice[0].startswith(b"Return-Path: <a@remote.test>\r\nReceived: from client.test")
    no_spool_left(backend.spool_dir)


def test_local_and_remote_recipients_both_get_the_file(site: Any, smtp: Any) -> None:
    """team = alice + bob + partner@remote.test: the delivery job writes the file, the queue then links it."""
    run, backend = smtp
    assert run(["team@example.test"]).reply.startswith(b"250 ")
    [stored] = site.inbox("alice@example.test")
    assert site.inbox("bob@example.test") == [stored]
    qd = queue_dir(site.data_dir)
    [env] = qd.all()
    assert [r.addr for r in env.rcpts] == ["partner@remote.test"]
    assert qd.message_path(env.id).read_bytes() == stored
    no_spool_left(backend.spool_dir)


def test_a_remote_only_message_is_written_for_the_queue(site: Any, smtp: Any) -> None:
    """A group whose only member is outside: no local delivery job, so the spool writes its file for the queue."""
    site.directory_sync.add_group("ext@example.test")
    site.directory_sync.add_member("ext@example.test", "partner@remote.test")
    run, backend = smtp
    assert run(["ext@example.test"]).reply.startswith(b"250 ")
    qd = queue_dir(site.data_dir)
    [env] = qd.all()
    assert [r.addr for r in env.rcpts] == ["partner@remote.test"]
    data = qd.message_path(env.id).read_bytes()
    assert data.startswith(b"Return-Path: <a@remote.test>\r\n") and data.endswith(BODY)
    no_spool_left(backend.spool_dir)


def test_a_full_disk_in_the_delivery_job_is_451_and_leaves_nothing(
        site: Any, smtp: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC while the delivery job writes the spool file: 451 4.3.0, no copy, nothing queued, no spool file
    left; the next message, with space again, is delivered."""
    run, backend = smtp
    created: list[Path] = []
    real_create = store_mod._create_spool

    def create(path: Path, data: bytes) -> None:
        try:
            real_create(path, data)
        finally:
            created.append(path)

    monkeypatch.setattr(store_mod, "_create_spool", create)
    with monkeypatch.context() as full:
        full.setattr(store_mod, "os", _FullDisk())
        full.setattr(spool_mod, "os", _FullDisk())
        with pytest.raises(SmtpError) as err:
            run(["alice@example.test"])
    assert (err.value.code, err.value.enh) == (451, "4.3.0")
    assert len(created) == 1  # the delivery job did try to write it
    no_spool_left(backend.spool_dir)
    assert site.inbox("alice@example.test") == [] and queue_dir(site.data_dir).all() == []
    assert run(["alice@example.test"]).reply.startswith(b"250 ")
    [stored] = site.inbox("alice@example.test")
    assert stored.endswith(BODY)


async def test_seal_only_a_lazy_spool_still_in_memory(tmp_path: Path) -> None:
    plain = FileSpool(tmp_path)
    await plain.write(b"x")
    assert not plain.seal()  # not lazy: committed as before
    big = FileSpool(tmp_path, lazy=True)
    await big.write(b"y" * spool_mod.FLUSH_AT)  # a part went to the file already
    assert not big.seal()
    await big.commit()
    lazy = FileSpool(tmp_path, lazy=True)
    await lazy.write(b"a")
    await lazy.write(b"b")
    assert lazy.seal() and lazy.sealed and lazy.content == b"ab" and not lazy.path.exists()
    assert not lazy.seal()  # once
    for s in (plain, big, lazy):
        s.discard()


async def test_materialize_writes_once_and_discard_removes_whoever_wrote(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path, lazy=True)
    await spool.write(b"message")
    assert spool.seal()
    await spool.materialize()
    assert spool.path.read_bytes() == b"message" and not spool.sealed
    made = FileSpool(tmp_path, lazy=True)  # a delivery job made this one's file
    await made.write(b"other")
    assert made.seal()
    made.path.write_bytes(b"other")
    await made.materialize()
    assert made.path.read_bytes() == b"other"
    spool.discard()
    made.discard()
    await asyncio.get_running_loop().run_in_executor(None, no_spool_left, tmp_path)
