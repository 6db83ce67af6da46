"""Multi-line response byte-stuffing selector: the compiled ``linestuff_c`` or its twin ``linestuff_py``."""

from __future__ import annotations

from mailsrv._speedups import load

_impl = load("linestuff", twin="mailsrv._speedups.linestuff_py")

stuff = _impl.stuff
IMPLEMENTATION = "c" if _impl.__name__.endswith("_c") else "py"

__all__ = ["IMPLEMENTATION", "stuff"]
