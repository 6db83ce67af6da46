"""Selector for the MIME scanner: compiled ``mime_c`` or its twin ``mime_py``."""

from __future__ import annotations

from mailsrv._speedups import load

_mod = load("mime", twin="mailsrv._speedups.mime_py")

scan = _mod.scan
parse_params = _mod.parse_params
parse_content_type = _mod.parse_content_type
IMPL: str = "c" if _mod.__name__.endswith("_c") else "py"

__all__ = ["IMPL", "parse_content_type", "parse_params", "scan"]
