"""mailsrv.sieve.scripts: an account's Sieve scripts on disk (layout, limits, names, atomic switch)."""

from __future__ import annotations

import os
import threading
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailsrv.sieve import scripts
from mailsrv.sieve.scripts import (
    BadName,
    NoSuchScript,
    ScriptActive,
    ScriptExists,
    ScriptTooBig,
    TooManyScripts,
)

RULE = 'require "fileinto";\nif header :contains "subject" "report" { fileinto "Reports"; }\n'


def test_put_get_list_and_layout(tmp_path: Path) -> None:
    assert scripts.list_scripts(tmp_path) == []
    assert scripts.active_script(tmp_path) is None
    scripts.put_script(tmp_path, "rules", RULE)
    scripts.put_script(tmp_path, "vacation", "keep;\n")
    assert (tmp_path / "sieve" / "rules.sieve").read_text() == RULE
    assert oct((tmp_path / "sieve" / "rules.sieve").stat().st_mode & 0o777) == "0o600"
    assert scripts.list_scripts(tmp_path) == [("rules", False), ("vacation", False)]
    assert scripts.get_script(tmp_path, "rules") == RULE
    assert scripts.active_script(tmp_path) is None
    # replacing keeps one file, no temp files left behind
    scripts.put_script(tmp_path, "rules", "keep;\n")
    assert scripts.get_script(tmp_path, "rules") == "keep;\n"
    assert sorted(os.listdir(tmp_path / "sieve")) == [".lock", "rules.sieve", "vacation.sieve"]


def test_activate_switch_deactivate(tmp_path: Path) -> None:
    scripts.put_script(tmp_path, "a", "keep;\n")
    scripts.put_script(tmp_path, "b", "discard;\n")
    scripts.set_active(tmp_path, "a")
    assert os.readlink(tmp_path / "sieve" / ".active") == "a.sieve"
    assert scripts.active_script(tmp_path) == ("a", "keep;\n")
    assert scripts.active_path(tmp_path) == tmp_path / "sieve" / "a.sieve"
    scripts.set_active(tmp_path, "b")
    assert scripts.active_script(tmp_path) == ("b", "discard;\n")
    assert scripts.list_scripts(tmp_path) == [("a", False), ("b", True)]
    # replacing the active script's text is seen at once
    scripts.put_script(tmp_path, "b", "stop;\n")
    assert scripts.active_script(tmp_path) == ("b", "stop;\n")
    scripts.set_active(tmp_path, None)
    assert scripts.active_script(tmp_path) is None
    assert scripts.active_path(tmp_path) is None
    scripts.set_active(tmp_path, None)  # idempotent
    with pytest.raises(NoSuchScript):
        scripts.set_active(tmp_path, "c")
    assert scripts.active_script(tmp_path) is None


def test_delete_and_rename(tmp_path: Path) -> None:
    scripts.put_script(tmp_path, "a", "keep;\n")
    scripts.put_script(tmp_path, "b", "discard;\n")
    scripts.set_active(tmp_path, "a")
    with pytest.raises(ScriptActive) as e:
        scripts.delete_script(tmp_path, "a")
    assert e.value.code == "ACTIVE"
    with pytest.raises(NoSuchScript) as e2:
        scripts.delete_script(tmp_path, "zz")
    assert e2.value.code == "NONEXISTENT"
    with pytest.raises(ScriptExists) as e3:
        scripts.rename_script(tmp_path, "a", "b")
    assert e3.value.code == "ALREADYEXISTS"
    with pytest.raises(NoSuchScript):
        scripts.rename_script(tmp_path, "zz", "c")
    scripts.rename_script(tmp_path, "a", "main")  # the active one stays active under its new name
    assert scripts.active_script(tmp_path) == ("main", "keep;\n")
    assert scripts.list_scripts(tmp_path) == [("b", False), ("main", True)]
    scripts.rename_script(tmp_path, "b", "c")
    assert scripts.list_scripts(tmp_path) == [("c", False), ("main", True)]
    scripts.delete_script(tmp_path, "c")
    assert scripts.list_scripts(tmp_path) == [("main", True)]
    with pytest.raises(NoSuchScript):
        scripts.get_script(tmp_path, "c")


def test_invalid_script_is_refused_with_its_line(tmp_path: Path) -> None:
    scripts.put_script(tmp_path, "ok", RULE)
    with pytest.raises(scripts.InvalidScript) as e:
        scripts.put_script(tmp_path, "ok", 'require "fileinto";\nif true {\n  frobnicate;\n}\n')
    assert e.value.line == 3 and e.value.code == ""
    assert str(e.value).startswith("line 3: ")
    assert scripts.get_script(tmp_path, "ok") == RULE  # the stored one is untouched
    with pytest.raises(scripts.InvalidScript):
        scripts.put_script(tmp_path, "ext", 'fileinto "x";\n')  # fileinto without require
    with pytest.raises(scripts.InvalidScript):
        scripts.validate("keep;\ud800")  # a lone surrogate is no UTF-8
    assert scripts.list_scripts(tmp_path) == [("ok", False)]


def test_limits(tmp_path: Path) -> None:
    with pytest.raises(ScriptTooBig) as e:
        scripts.put_script(tmp_path, "big", "#" * 101 + "\n", max_size=100)
    assert e.value.code == "QUOTA/MAXSIZE"
    scripts.put_script(tmp_path, "fits", "#" * 99 + "\n", max_size=100)
    for i in range(2):
        scripts.put_script(tmp_path, f"s{i}", "keep;\n", max_scripts=3)
    with pytest.raises(TooManyScripts) as e2:
        scripts.put_script(tmp_path, "s3", "keep;\n", max_scripts=3)
    assert e2.value.code == "QUOTA/MAXSCRIPTS"
    scripts.put_script(tmp_path, "s1", "stop;\n", max_scripts=3)  # replacing needs no new slot
    scripts.check_space(tmp_path, "s1", 10, max_scripts=3)
    with pytest.raises(TooManyScripts):
        scripts.check_space(tmp_path, "new", 10, max_scripts=3)
    with pytest.raises(ScriptTooBig):
        scripts.check_space(tmp_path, "s1", scripts.MAX_SCRIPT_SIZE + 1)
    # the default size limit counts UTF-8 bytes, not characters
    with pytest.raises(ScriptTooBig):
        scripts.validate("#" + "é" * (scripts.MAX_SCRIPT_SIZE // 2) + "\n")


@pytest.mark.parametrize("name", ["", "a/b", "tab\there", "nul\x00", "del\x7f", "c1\x85",
                                  "line\u2028sep", "x" * 129, unicodedata.normalize("NFD", "café")])
def test_bad_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(BadName):
        scripts.put_script(tmp_path, name, "keep;\n")
    with pytest.raises(BadName):
        scripts.get_script(tmp_path, name)
    assert not (tmp_path / "sieve").exists() or scripts.list_scripts(tmp_path) == []


@pytest.mark.parametrize("name", ["x" * 128, "café", "邮件规则", ".active", "..", "-n", "a b"])
def test_good_names(tmp_path: Path, name: str) -> None:
    scripts.put_script(tmp_path, name, "keep;\n")
    scripts.set_active(tmp_path, name)
    assert scripts.active_script(tmp_path) == (name, "keep;\n")
    assert scripts.list_scripts(tmp_path) == [(name, True)]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=140))
def test_check_name_total(name: str) -> None:
    """check_name either accepts a name usable as a file name part or raises BadName, nothing else."""
    try:
        scripts.check_name(name)
    except BadName:
        return
    assert 0 < len(name) <= 128 and "/" not in name
    assert all(ord(c) >= 0x20 and ord(c) != 0x7F for c in name)
    assert len((name + ".sieve").encode()) <= 255
    assert unicodedata.normalize("NFC", name) == name


def test_foreign_active_marker_is_ignored(tmp_path: Path) -> None:
    """An .active that is a plain file or points outside the directory activates nothing."""
    scripts.put_script(tmp_path, "a", "keep;\n")
    (tmp_path / "sieve" / ".active").write_text("a.sieve")
    assert scripts.active_script(tmp_path) is None
    os.unlink(tmp_path / "sieve" / ".active")
    os.symlink("../../etc/passwd.sieve", tmp_path / "sieve" / ".active")
    assert scripts.active_script(tmp_path) is None
    scripts.set_active(tmp_path, "a")  # renamed over whatever was there
    assert scripts.active_script(tmp_path) == ("a", "keep;\n")


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths fsync(2) is called on, in order."""
    paths: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return paths


def test_changes_are_fsynced(tmp_path: Path, synced: list[str]) -> None:
    """Each change fsyncs the file it wrote and the script directory before returning."""
    d = str(tmp_path / "sieve")
    scripts.put_script(tmp_path, "a", "keep;\n")
    assert any(p.startswith(d + "/.a.sieve.") for p in synced) and synced[-1] == d
    for change in (lambda: scripts.set_active(tmp_path, "a"),
                   lambda: scripts.rename_script(tmp_path, "a", "b"),
                   lambda: scripts.set_active(tmp_path, None),
                   lambda: scripts.delete_script(tmp_path, "b")):
        synced.clear()
        change()
        assert synced and synced[-1] == d


def test_first_script_of_an_account_without_mail(tmp_path: Path, synced: list[str]) -> None:
    """The maildir root does not exist yet: it is made, and every new directory's entry is fsync'd."""
    root = tmp_path / "mail" / "7"
    (tmp_path / "mail").mkdir()
    scripts.put_script(root, "a", "keep;\n")
    assert str(tmp_path / "mail") in synced and str(root) in synced
    assert scripts.list_scripts(root) == [("a", False)]


def test_switch_is_atomic_for_readers(tmp_path: Path) -> None:
    """A reader polling while the active script flips between two never sees none."""
    scripts.put_script(tmp_path, "a", "keep;\n")
    scripts.put_script(tmp_path, "b", "discard;\n")
    scripts.set_active(tmp_path, "a")
    stop = threading.Event()
    seen: set[object] = set()

    def reader() -> None:
        while not stop.is_set():
            seen.add(scripts.active_script(tmp_path))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(200):
            scripts.set_active(tmp_path, "b" if i % 2 == 0 else "a")
            if i % 50 == 0:
                scripts.rename_script(tmp_path, "b", "b2")
                scripts.rename_script(tmp_path, "b2", "b")
    finally:
        stop.set()
        t.join()
    assert None not in seen
    assert ("a", "keep;\n") in seen
