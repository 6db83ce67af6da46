"""fsio.syncfs reports writeback errors: one descriptor per file system and process, kept open.

syncfs(2) reports a writeback error once per open file description, and a description opened
after someone saw the error never reports it (Linux errseq). A descriptor opened per call, as
before, let a worker acknowledge a delivery whose pages another worker's syncfs had already seen
fail (checked on a loop device whose backing store ran out of space). These tests hold the parts
that do not need a failing disk: the descriptor is kept, an error is raised twice, a forked child
opens its own.
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path
from typing import Any

import pytest

from mailsrv.util import fsio


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_syncfs_keeps_one_descriptor_per_file_system(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    fsio.syncfs(tmp_path)
    fs = fsio._fs[os.stat(tmp_path).st_dev]
    before = _open_fds()
    for _ in range(50):
        fsio.syncfs(tmp_path / "a")  # another directory of the same file system: the same descriptor
    assert fsio._fs[os.stat(tmp_path).st_dev] is fs
    assert _open_fds() == before
    with pytest.raises(FileNotFoundError):
        fsio.syncfs(tmp_path / "missing")


def test_a_syncfs_error_is_raised_by_the_next_sync_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The failed writeback may have covered writes of a caller that joined the next sync, and
    the kernel reports the error to one call per descriptor: the next sync raises it as well."""
    fsio.watch_fs(tmp_path)
    results = [-1, 0, 0]
    calls: list[int] = []

    def fake(fd: int) -> int:
        calls.append(fd)
        out = results[len(calls) - 1]
        if out:
            ctypes.set_errno(errno.EIO)
        return out

    monkeypatch.setattr(fsio, "_syncfs", fake)
    for _ in range(2):
        with pytest.raises(OSError) as info:
            fsio.syncfs(tmp_path)
        assert info.value.errno == errno.EIO
    fsio.syncfs(tmp_path)  # reported twice, then no more
    assert len(set(calls)) == 1 and len(calls) == 3  # the kept descriptor each time


def test_a_forked_child_opens_its_own_descriptor(tmp_path: Path) -> None:
    """A description shared with the parent shares its error cursor: whichever process synced
    first would hide the error from the other."""
    fsio.syncfs(tmp_path)
    assert fsio._fs
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: nothing inherited, its own descriptor at its first sync
        code = 1
        try:
            inherited = len(fsio._fs)
            fsio.syncfs(tmp_path)
            os.write(w, f"{inherited} {len(fsio._fs)}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out: Any = f.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert out == "0 1"
