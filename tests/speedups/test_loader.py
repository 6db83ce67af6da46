"""Every Cython module is built and loads; the environment switches choose the twin."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mailsrv import _speedups

pytestmark = pytest.mark.speedups

SPEEDUPS = Path(_speedups.__file__).parent
MODULES = sorted(p.name[: -len("_c.pyx")] for p in SPEEDUPS.glob("*_c.pyx"))


def _twin(name: str) -> str:
    """The twin a selector names for NAME (``load("NAME", twin="...")`` somewhere in mailsrv/)."""
    pattern = re.compile(rf"""load\(["']{re.escape(name)}["'],\s*twin=["']([\w.]+)["']\)""")
    for path in sorted(SPEEDUPS.parent.rglob("*.py")):
        m = pattern.search(path.read_text())
        if m:
            return m.group(1)
    return f"mailsrv._speedups.{name}_py"


@pytest.mark.parametrize("name", MODULES or ["<none>"])
def test_compiled_module_loads_when_required(name: str) -> None:
    """Guard: `make test` builds every extension; a silent fallback would hide a broken build."""
    if name == "<none>":
        assert MODULES == []
        return
    if _speedups.speedups_disabled():
        # The twin run: the compiled module must NOT be what the selector picks.
        env = {**os.environ}
        code = f"from mailsrv import _speedups as s; m = s.load({name!r}, {_twin(name)!r}); print(m.__name__)"
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert not out.stdout.strip().endswith("_c")
        return
    mod = importlib.import_module(f"mailsrv._speedups.{name}_c")
    assert mod.__file__ and mod.__file__.endswith((".so", ".pyd")), mod.__file__


def test_no_speedups_env_forces_twin(tmp_path: Path) -> None:
    (tmp_path / "pkgtwin_py.py").write_text("KIND = 'py'\n")
    code = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
        "from mailsrv import _speedups as s\n"
        "m = s.load('nosuchmodule', twin='pkgtwin_py'); print(m.KIND, s.loaded['nosuchmodule'])\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSRV_")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["py", "py"]
    # with the guard on, a missing compiled module is an ImportError, not a silent fallback
    env["MAILSRV_REQUIRE_SPEEDUPS"] = "1"
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert res.returncode != 0 and "ModuleNotFoundError" in res.stderr
