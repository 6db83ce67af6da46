"""COPY and MOVE make their sources' data durable before they are acknowledged, and a mailbox's messages
are made durable before its folder is renamed: a delivery acknowledged through the delivery journal has
its file's blocks on disk only at the journal's next checkpoint, and after a power cut the journal's
replay restores the delivered key in the folder it was delivered to, not a copy's new key nor a renamed
folder (store/messages.py ``_sync_sources``, store/folders.py ``rename_mailbox``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mailsrv.util import fsio

from .conftest import msg


def _record(monkeypatch: pytest.MonkeyPatch) -> tuple[list[Path], list[Path]]:
    files: list[Path] = []
    fss: list[Path] = []
    real_file, real_fs = fsio.fsync_file, fsio.syncfs

    def fsync_file(p: Any) -> None:
        files.append(Path(p))
        real_file(p)

    def syncfs(p: Any) -> None:
        fss.append(Path(p))
        real_fs(p)

    monkeypatch.setattr(fsio, "fsync_file", fsync_file)
    monkeypatch.setattr(fsio, "syncfs", syncfs)
    return files, fss


def test_copy_fsyncs_each_staged_file(make_store, run, monkeypatch) -> None:
    store = make_store()
    a = run(store.account("alice"))
    for i in range(3):
        run(a.append("INBOX", msg(i)))
    files, fss = _record(monkeypatch)
    assert run(a.copy("INBOX", [1, 3], "Archive")) == [(1, 1), (3, 2)]
    staged = [p for p in files if p.parent.name == "tmp"]
    assert len(staged) == 2 and len(set(staged)) == 2  # each staged link, before it was renamed into cur/
    assert all("Archive" in str(p) for p in staged)
    assert fss == []
    assert run(a.read_message("Archive", 2)) == msg(2)


def test_move_fsyncs_each_staged_file(make_store, run, monkeypatch) -> None:
    store = make_store()
    a = run(store.account("alice"))
    n = 20
    for i in range(n):
        run(a.append("INBOX", msg(i)))
    files, fss = _record(monkeypatch)
    mapping = run(a.move("INBOX", list(range(1, n + 1)), "Trash"))
    assert len(mapping) == n
    staged = {p for p in files if p.parent.name == "tmp" and "Trash" in str(p)}
    assert len(staged) == n
    assert fss == []  # not a syncfs: its wait grows with other writers' dirty data
    assert run(a.read_message("Trash", n)) == msg(n - 1)


def test_rename_syncs_before_the_folder_moves(make_store, run, monkeypatch) -> None:
    store = make_store()
    a = run(store.account("alice"))
    run(a.create_mailbox("Projects"))
    run(a.append("Projects", msg(1)))
    seen: list[bool] = []
    real = fsio.syncfs

    def syncfs(p: Any) -> None:
        seen.append((Path(p) / ".Projects").is_dir())  # still under its old name
        real(p)

    monkeypatch.setattr(fsio, "syncfs", syncfs)
    run(a.rename_mailbox("Projects", "Done"))
    assert seen == [True]
    assert run(a.read_message("Done", 1)) == msg(1)
