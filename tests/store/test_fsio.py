"""mailsrv.util.fsio: durable writes and the group commit of directory fsyncs."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from mailsrv.util import fsio


def test_durable_write_replaces_atomically(tmp_path: Path) -> None:
    target = tmp_path / "f"
    fsio.durable_write(target, b"one")
    fsio.durable_write(target, b"two" * 1000)
    assert target.read_bytes() == b"two" * 1000
    assert os.listdir(tmp_path) == ["f"]  # no temp file left behind


def test_durable_write_failure_keeps_old_content(tmp_path: Path) -> None:
    target = tmp_path / "f"
    fsio.durable_write(target, b"old")
    with pytest.raises(OSError):
        fsio.durable_write(target, b"new", tmp_dir=tmp_path / "missing")
    assert target.read_bytes() == b"old"


def test_unique_names_differ() -> None:
    names = {fsio.unique_name("h/x:y") for _ in range(1000)}
    assert len(names) == 1000
    assert all("/" not in n and ":" not in n for n in names)


def test_group_commit_batches_concurrent_callers(tmp_path: Path) -> None:
    async def main() -> tuple[int, int]:
        io = fsio.FileIO(2)
        syncer = fsio.DirSyncer(io, delay=0.001)
        dirs = [tmp_path / f"d{i % 3}" for i in range(60)]
        for d in dirs:
            d.mkdir(exist_ok=True)
        await asyncio.gather(*(syncer.sync(d) for d in dirs))
        io.shutdown()
        return syncer.rounds, syncer.fsyncs

    rounds, fsyncs = asyncio.run(main())
    assert rounds <= 3  # 60 callers, a handful of rounds
    assert fsyncs <= 3 * rounds


def test_group_commit_reports_errors_to_each_caller(tmp_path: Path) -> None:
    async def main() -> list[object]:
        io = fsio.FileIO(2)
        syncer = fsio.DirSyncer(io)
        out = await asyncio.gather(syncer.sync(tmp_path), syncer.sync(tmp_path / "nope"),
                                   return_exceptions=True)
        io.shutdown()
        return out

    ok, err = asyncio.run(main())
    assert ok is None
    assert isinstance(err, FileNotFoundError)


def test_fileio_runs_off_the_loop_thread() -> None:
    import threading

    async def main() -> bool:
        io = fsio.FileIO(1)
        tid = await io.run(threading.get_ident)
        io.shutdown()
        return tid != threading.get_ident()

    assert asyncio.run(main())
