"""Message file reads selector: ``read_files`` from the compiled ``fileread_c`` or its twin
``fileread_py``; ``read_range`` (one file, one range) is the twin's everywhere."""

from __future__ import annotations

from mailsrv._speedups import load
from mailsrv._speedups.fileread_py import read_range

_impl = load("fileread")

read_files = _impl.read_files
IMPLEMENTATION = "c" if _impl.__name__.endswith("_c") else "py"

__all__ = ["IMPLEMENTATION", "read_files", "read_range"]
