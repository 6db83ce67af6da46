"""What a speedups guard test does for any module: run its selector in a fresh interpreter under a
given environment, and list the implementations to compare (the twin, and the compiled one unless
MAILSRV_NO_SPEEDUPS is set)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from types import ModuleType


def speedups_off() -> bool:
    return os.environ.get("MAILSRV_NO_SPEEDUPS", "") not in ("", "0")


def selector_output(code: str, env_extra: dict[str, str]) -> str:
    """stdout of ``python -c code`` with this environment's MAILSRV_* replaced by ``env_extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSRV_")}
    env.update(env_extra)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def implementations(name: str, twin: str | None = None) -> list[ModuleType]:
    """The twin (``mailsrv._speedups.<name>_py`` by default), then ``<name>_c`` unless speedups are off."""
    out = [importlib.import_module(twin or f"mailsrv._speedups.{name}_py")]
    if not speedups_off():
        out.append(importlib.import_module(f"mailsrv._speedups.{name}_c"))
    return out
