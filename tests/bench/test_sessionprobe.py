"""bench/_sessionprobe.py --kind: each command of bench/imap.py's mix runs against a real server, and
one tiny strace run counts a STORE's calls end to end."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench import _common as C  # noqa: E402
from bench import _sessionprobe as S  # noqa: E402
from bench import imap as B  # noqa: E402


def test_every_kind_runs_its_command_and_store_alternates(tmp_path: Path) -> None:
    B._fill_maildir(tmp_path / "seed", 4)
    with C.Mailsrv(tmp_path / "srv", seeds={"u": tmp_path / "seed"}, workers=1,
                   config={"listener": {"imap": {"tls": "none"}}}) as srv:
        port = srv.ports["imap"]
        for kind in S.KINDS:
            run = S._Commands(port, kind, 4)
            try:
                run(port, False)  # Client.cmd raises unless the tagged reply is OK
                run(port, False)
                if kind == "store":  # +FLAGS on message 1, -FLAGS on message 2 (a new view: SELECT)
                    run.loop.run_until_complete(run.c.cmd("SELECT INBOX"))
                    out = run.loop.run_until_complete(run.c.cmd("FETCH 1:2 (FLAGS)"))
                    assert b"\\Flagged" in out[0] and b"\\Flagged" not in out[1]
                if kind == "uid-fetch-flags":  # the second SELECT left no \Recent, as in the bench
                    out = run.loop.run_until_complete(run.c.cmd("UID FETCH 1:* (FLAGS)"))
                    assert len(out) == 5 and not any(b"\\Recent" in ln for ln in out)
            finally:
                run.close()


def test_a_tiny_strace_run_counts_store_calls(capsys: pytest.CaptureFixture[str]) -> None:
    before = set(Path(tempfile.gettempdir()).glob("sessionprobe-*"))
    assert S.main(["--mode", "syscalls", "--kind", "store", "--messages", "6", "--sessions", "4",
                   "--warm", "2", "--top", "40"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("4 store commands, ")
    calls = {ln.split()[1]: float(ln.split()[0]) for ln in out.splitlines()[1:]}
    assert calls.get("rename", 0) > 0  # half of them flag a message: its maildir file is renamed
    assert set(Path(tempfile.gettempdir()).glob("sessionprobe-*")) == before  # its tree is removed
