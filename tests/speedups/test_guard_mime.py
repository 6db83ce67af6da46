"""Guard: the compiled MIME scanner loads when required, and the selector picks what it should."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.speedups

CODE = "import mailsrv._speedups.mime as m; print(m.IMPL, m.scan.__module__)"


def _run(env_extra: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSRV_")}
    env.update(env_extra)
    proc = subprocess.run(
        [sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_compiled_scanner_loads_when_required() -> None:
    if os.environ.get("MAILSRV_NO_SPEEDUPS", "") not in ("", "0"):
        assert _run({"MAILSRV_NO_SPEEDUPS": "1"}).split()[0] == "py"
        return
    # MAILSRV_REQUIRE_SPEEDUPS=1 turns a failed import into an error, so this fails loudly
    assert _run({"MAILSRV_REQUIRE_SPEEDUPS": "1"}) == "c mailsrv._speedups.mime_c"


def test_no_speedups_forces_the_twin() -> None:
    assert _run({"MAILSRV_NO_SPEEDUPS": "1"}) == "py mailsrv._speedups.mime_py"


def test_current_process_selection_matches_environment() -> None:
    import mailsrv._speedups.mime as m

    wanted = "py" if os.environ.get("MAILSRV_NO_SPEEDUPS", "") not in ("", "0") else "c"
    if os.environ.get("MAILSRV_REQUIRE_SPEEDUPS", "") not in ("", "0") or wanted == "py":
        assert m.IMPL == wanted
    else:
        assert m.IMPL in ("c", "py")
