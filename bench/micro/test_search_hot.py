"""Micro benchmarks of the search hot paths, compiled vs pure-Python twin (pytest-benchmark)."""

from __future__ import annotations

import struct

import pytest

from mailsrv._speedups import search_py, tokenize_py
from mailsrv.search.generate import Generator

try:
    from mailsrv._speedups import search_c, tokenize_c  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - make bench-micro builds them first
    search_c = tokenize_c = None

TOK = {"py": tokenize_py, "c": tokenize_c}
HOT = {"py": search_py, "c": search_c}
TEXT = tokenize_py.normalize(" ".join(Generator(3).words(__import__("random").Random(1), 2000)))
VOCAB = sorted(set(tokenize_py.terms(TEXT)))


@pytest.mark.parametrize("impl", ["py", "c"])
def test_terms(benchmark, impl: str) -> None:  # type: ignore[no-untyped-def]
    benchmark(TOK[impl].terms, TEXT)


@pytest.mark.parametrize("impl", ["py", "c"])
def test_normalize(benchmark, impl: str) -> None:  # type: ignore[no-untyped-def]
    benchmark(TOK[impl].normalize, TEXT)


@pytest.mark.parametrize("impl", ["py", "c"])
def test_terms_containing(benchmark, impl: str) -> None:  # type: ignore[no-untyped-def]
    benchmark(HOT[impl].terms_containing, "re", VOCAB * 50)


@pytest.mark.parametrize("impl", ["py", "c"])
def test_confirm(benchmark, impl: str) -> None:  # type: ignore[no-untyped-def]
    buf = bytearray()
    locs = {}
    for uid in range(1, 5001):
        parts = [b"", b"", TEXT[(uid * 7) % 5000 : (uid * 7) % 5000 + 1500].encode()]
        blob = struct.pack("<3I", *(len(p) for p in parts)) + b"".join(parts)
        locs[uid] = (len(buf), len(blob))
        buf += blob
    data = bytes(buf)
    benchmark(HOT[impl].confirm, data, range(1, 5001), locs, (2,), 3, "季度报告".encode())
