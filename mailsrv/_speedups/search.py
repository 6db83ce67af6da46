"""Selector for the search index hot loops: compiled ``search_c`` or its twin ``search_py``."""

from __future__ import annotations

from mailsrv._speedups import load

_mod = load("search", twin="mailsrv._speedups.search_py")

terms_containing = _mod.terms_containing
filter_containing = _mod.filter_containing
confirm = _mod.confirm
add_postings = _mod.add_postings
header_texts = _mod.header_texts
IMPL: str = "c" if _mod.__name__.endswith("_c") else "py"

__all__ = ["IMPL", "add_postings", "confirm", "filter_containing", "header_texts", "terms_containing"]
