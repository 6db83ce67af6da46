"""The maildrop lock across processes: exclusive, released on release and on process death."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mailsrv.pop3.lock import InUse, MaildropLock

HOLDER = """
import sys
from pathlib import Path
from mailsrv.pop3.lock import MaildropLock
lock = MaildropLock.acquire(Path(sys.argv[1]), sys.argv[2])
print("locked", flush=True)
sys.stdin.read()
"""


def test_exclusive_within_one_process(tmp_path: Path) -> None:
    a = MaildropLock.acquire(tmp_path, "42")
    with pytest.raises(InUse):
        MaildropLock.acquire(tmp_path, "42")
    b = MaildropLock.acquire(tmp_path, "43")  # other accounts are independent
    a.release()
    a.release()  # idempotent
    c = MaildropLock.acquire(tmp_path, "42")
    assert c.held and not a.held
    b.release()
    c.release()


def test_names_are_sanitised(tmp_path: Path) -> None:
    lock = MaildropLock.acquire(tmp_path / "locks", "../../etc/passwd")
    assert lock.path.parent == tmp_path / "locks"
    lock.release()


def test_login_time_round_trip(tmp_path: Path) -> None:
    lock = MaildropLock.acquire(tmp_path, "7")
    assert lock.last_login() is None
    lock.record_login(1234.5)
    lock.release()
    lock = MaildropLock.acquire(tmp_path, "7")
    assert lock.last_login() == 1234.5
    lock.release()


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_held_across_processes_and_released_when_holder_dies(tmp_path: Path, how: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), "9"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"locked\n"
        with pytest.raises(InUse):
            MaildropLock.acquire(tmp_path, "9")
    finally:
        if how == "kill":
            os.kill(proc.pid, signal.SIGKILL)
        else:
            assert proc.stdin is not None
            proc.stdin.close()
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()
        if proc.stdin is not None and not proc.stdin.closed:
            proc.stdin.close()
    MaildropLock.acquire(tmp_path, "9").release()


def test_retrieved_record_round_trip_and_bad_lines(tmp_path: Path) -> None:
    lock = MaildropLock.acquire(tmp_path, "5")
    assert lock.retrieved() == {}
    lock.save_retrieved({(7, 1): 1000.0, (7, 3): 2000.0})
    assert lock.retrieved() == {(7, 1): 1000.0, (7, 3): 2000.0}
    lock.retrieved_path.write_text("7 1 1000\ngarbage\n7 x 5\n\n7 4 3000\n")
    assert lock.retrieved() == {(7, 1): 1000.0, (7, 4): 3000.0}
    lock.release()
    with pytest.raises(AssertionError):
        lock.save_retrieved({})
