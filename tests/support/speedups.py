"""Guard tests of the compiled modules: what a fresh interpreter selects under an environment."""

from __future__ import annotations

import os
import subprocess
import sys


def selected(code: str, **env: str) -> str:
    """The output of ``code`` (it prints the selected IMPLEMENTATION and module) in a fresh interpreter
    under ``env``, with every other MAILSRV_ variable removed."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MAILSRV_")} | env
    done = subprocess.run([sys.executable, "-c", code], env=clean, capture_output=True, text=True, timeout=60,
                          check=True)
    return done.stdout.strip()
