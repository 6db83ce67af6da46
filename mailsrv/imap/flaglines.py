"""FETCH FLAGS lines and flag SEARCH selector: the compiled ``_speedups.flaglines_c`` or its twin ``flaglines_py``."""

from __future__ import annotations

from mailsrv._speedups import load

_impl = load("flaglines", twin="mailsrv.imap.flaglines_py")

flags_text = _impl.flags_text
fetch_flags_lines = _impl.fetch_flags_lines
flag_positions = _impl.flag_positions
search_numbers = _impl.search_numbers
IMPLEMENTATION = "c" if _impl.__name__.endswith("_c") else "py"

__all__ = ["flags_text", "fetch_flags_lines", "flag_positions", "search_numbers", "IMPLEMENTATION"]
