"""FileSpool.path: built by pathlib's child constructor (no parse of the name), the same Path as ``/``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mailsrv.delivery import spool as spool_mod
from mailsrv.delivery.spool import FileSpool


@pytest.mark.parametrize("child", ["pathlib's", "joinpath"])
async def test_the_spool_path_is_the_directory_joined_with_its_name(tmp_path: Path, child: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    if child == "joinpath":  # a Python whose pathlib has no child constructor
        monkeypatch.setattr(spool_mod, "_child", Path.joinpath)
    directory = tmp_path / "spool"
    directory.mkdir()
    sp = FileSpool(directory, lazy=True)
    name = sp.path.name
    assert "/" not in name and name.count(".") == 2
    assert sp.path == directory / name and hash(sp.path) == hash(directory / name)
    assert str(sp.path) == os.fspath(sp.path) == f"{directory}/{name}"
    assert sp.path.parent == directory and sp.path.parts == (*directory.parts, name)
    assert isinstance(sp.path, type(directory))
    assert sp.path.with_name(name + ".archive") == directory / (name + ".archive")
    # the file the spool writes is at that path
    assert sp.buffer(b"Subject: s\r\n\r\nbody\r\n")
    await sp.commit()
    assert os.listdir(directory) == [name]
    assert (directory / name).read_bytes() == b"Subject: s\r\n\r\nbody\r\n"
    sp.discard()


def test_each_spool_has_its_own_name(tmp_path: Path) -> None:
    names = {FileSpool(tmp_path, lazy=True).path for _ in range(1000)}
    assert len(names) == 1000


def test_a_spool_name_is_the_clock_the_pid_the_prefix_and_a_count(tmp_path: Path) -> None:
    import re
    import time

    before = time.time_ns()
    a, b = FileSpool(tmp_path).path.name, FileSpool(tmp_path).path.name
    pattern = rf"([0-9a-f]+)\.{os.getpid()}\.{spool_mod._PREFIX}([0-9a-f]+)"
    ma, mb = re.fullmatch(pattern, a), re.fullmatch(pattern, b)
    assert ma is not None and mb is not None
    assert before <= int(ma.group(1), 16) <= int(mb.group(1), 16) <= time.time_ns()
    assert int(mb.group(2), 16) == int(ma.group(2), 16) + 1
    # a forked child names its files with its own pid
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(w, FileSpool(tmp_path).path.name.encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    with os.fdopen(r, "rb") as f:
        child = f.read().decode()
    assert re.fullmatch(rf"[0-9a-f]+\.{pid}\.{spool_mod._PREFIX}[0-9a-f]+", child)
