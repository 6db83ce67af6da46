"""The making of a journal file (store/journal.py ``Journal.create``) against a replay of another
process running at the same moment: the file is made under a name replay does not read and gets its
``.mj`` name only once it is locked, zero-filled and has its header; a file left half-made by a
process that died making it is removed once its lock is free and it is old."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mailsrv.store import journal


def _replays_at(monkeypatch: pytest.MonkeyPatch, module: Any, name: str, directory: Path) -> list[list[str]]:
    """Make the first call of ``module.name`` (by Journal.create) run a replay of ``directory`` first,
    as another process's replay running at that moment would; the listings it saw."""
    real = getattr(module, name)
    seen: list[list[str]] = []

    def hooked(*args: Any) -> Any:
        if not seen:
            seen.append(sorted(os.listdir(directory)))
            assert journal.replay(directory) == 0  # (another open file description: another process's lock)
            seen.append(sorted(os.listdir(directory)))
        return real(*args)

    monkeypatch.setattr(module, name, hooked)
    return seen


def _check_made(jr: journal.Journal) -> None:
    names = sorted(os.listdir(jr.directory))
    assert names == sorted(f.path.name for f in jr._files) and len(names) == 2
    for f in jr._files:
        assert f.path.name.endswith(journal.SUFFIX)
        assert os.stat(f.path).st_ino == os.fstat(f.fd).st_ino and os.fstat(f.fd).st_nlink == 1
        assert os.stat(f.path).st_size == jr.size
    assert journal.replay(jr.directory) == 0 and sorted(os.listdir(jr.directory)) == names  # locked: left


@pytest.mark.parametrize("at", ["flock", "fsync"])
def test_a_replay_while_a_file_is_made_leaves_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at: str) -> None:
    """A replay between the file's creation and its lock (flock), or while it is zero-filled and not
    yet durable (fsync), neither removes it nor makes the owner write to a file no replay finds."""
    directory = tmp_path / "journal"
    directory.mkdir()
    seen = _replays_at(monkeypatch, fcntl if at == "flock" else os, at, directory)
    jr = journal.Journal(directory, 1 << 20)
    jr.create()
    monkeypatch.undo()
    assert len(seen) == 2 and seen[0] == seen[1] and len(seen[0]) == 1  # the half-made file stayed
    assert not seen[0][0].endswith(journal.SUFFIX)  # under a name replay does not read
    _check_made(jr)
    folder = tmp_path / "box"
    for sub in ("new", "cur", "tmp"):
        (folder / sub).mkdir(parents=True)
    assert jr.append(journal.meta([(str(folder), str(folder), "m", "m")], 1.0), str(folder), b"x\r\n")
    jr.sync()
    dead = [(f.path, f.path.read_bytes()) for f in jr._files]
    jr.close()
    for path, data in dead:  # its owner killed: its record is found
        path.write_bytes(data)
    assert journal.replay(directory) == 1 and (folder / "new" / "m").read_bytes() == b"x\r\n"


def test_a_file_left_half_made_is_removed_once_stale(tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    directory.mkdir()
    # a child that dies (SIGKILL) while it zero-fills its first file
    child = ("import os, signal, sys\n"
             "from mailsrv.store import journal\n"
             "real = os.pwrite\n"
             "def pwrite(fd, data, off):\n"
             "    if off >= 1 << 20:\n"
             "        os.kill(os.getpid(), signal.SIGKILL)\n"
             "    return real(fd, data, off)\n"
             "os.pwrite = pwrite\n"
             "journal.Journal(sys.argv[1], 4 << 20).create()\n")
    out = subprocess.run([sys.executable, "-c", child, str(directory)], capture_output=True, text=True, timeout=60)
    assert out.returncode == -9, out.stderr
    [left] = os.listdir(directory)
    assert left.endswith(journal.SUFFIX + journal.TEMP)
    assert journal.replay(directory) == 0 and os.listdir(directory) == [left]  # fresh: its maker may live
    held = os.open(directory / left, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)  # as its live maker holds it
    old = time.time() - journal.STALE - 10
    os.utime(directory / left, (old, old))
    try:
        assert journal.replay(directory) == 0 and os.listdir(directory) == [left]  # locked: left
    finally:
        os.close(held)
    assert journal.replay(directory) == 0 and os.listdir(directory) == []  # old, lock free: removed
