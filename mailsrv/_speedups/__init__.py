"""Compiled hot paths, each with a pure-Python twin that is its specification.

Convention (STYLE.md §5): for a module ``name`` there is
``mailsrv/_speedups/name_c.pyx`` (compiled by setup.py) and a pure-Python
twin ``name_py.py`` (here or in the package that owns the public API).
The selector calls :func:`load` and re-exports what it returns.

``MAILSRV_NO_SPEEDUPS=1`` forces the twins. ``MAILSRV_REQUIRE_SPEEDUPS=1``
turns a compiled module that fails to import into an ImportError instead of
a silent fallback (the guard tests set it).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

__all__ = ["load", "speedups_disabled", "loaded"]

#: name -> "c" or "py": which implementation each selector picked.
loaded: dict[str, str] = {}


def speedups_disabled() -> bool:
    """True when the environment asks for the pure-Python twins."""
    return os.environ.get("MAILSRV_NO_SPEEDUPS", "") not in ("", "0")


def load(name: str, twin: str | None = None) -> ModuleType:
    """Return the compiled module ``mailsrv._speedups.<name>_c`` or its twin.

    ``twin`` is the dotted path of the pure-Python module; by default
    ``mailsrv._speedups.<name>_py``.
    """
    twin = twin or f"mailsrv._speedups.{name}_py"
    if not speedups_disabled():
        try:
            mod = importlib.import_module(f"mailsrv._speedups.{name}_c")
        except ImportError:
            if os.environ.get("MAILSRV_REQUIRE_SPEEDUPS", "") not in ("", "0"):
                raise
        else:
            loaded[name] = "c"
            return mod
    loaded[name] = "py"
    return importlib.import_module(twin)
