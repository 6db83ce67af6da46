"""Selector for the search tokenizer: compiled ``tokenize_c`` or its twin ``tokenize_py``."""

from __future__ import annotations

from mailsrv._speedups import load

_mod = load("tokenize", twin="mailsrv._speedups.tokenize_py")

MAX_WORD: int = _mod.MAX_WORD
normalize = _mod.normalize
terms = _mod.terms
is_cjk = _mod.is_cjk
runs = _mod.runs
query_terms = _mod.query_terms
IMPL: str = "c" if _mod.__name__.endswith("_c") else "py"

__all__ = ["IMPL", "MAX_WORD", "is_cjk", "normalize", "query_terms", "runs", "terms"]
