"""Micro-benchmarks of the MIME engine (``make bench-micro``): scan, cache, IMAP output."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mailsrv import mime
from mailsrv._speedups import mime_py

try:
    from mailsrv._speedups import mime_c
except ImportError:  # pragma: no cover - reported by tests/speedups/test_guard_mime.py
    mime_c = None  # type: ignore[assignment]

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"
SAMPLE = CORPUS / "stalwart-mail-parser" / "eml" / "legacy" / "000.eml"
MULTI = CORPUS / "cpython-test_email" / "msg_02.txt"


def load(path: Path) -> bytes:
    return re.sub(rb"\r\n|\r|\n", b"\r\n", path.read_bytes())


@pytest.fixture(params=["c", "py"])
def scanner(request: pytest.FixtureRequest):
    mod = mime_c if request.param == "c" else mime_py
    if mod is None:
        pytest.fail("mime_c not built")
    return mod


@pytest.mark.parametrize("path", [SAMPLE, MULTI], ids=["single", "digest"])
def test_scan(benchmark, scanner, path: Path) -> None:
    raw = load(path)
    tree = benchmark(scanner.scan, raw)
    assert tree[2] == len(raw)


def test_from_cache(benchmark) -> None:
    blob = mime.parse(load(MULTI)).to_cache()
    s = benchmark(mime.MessageStructure.from_cache, blob)
    assert s.size > 0


def test_bodystructure_from_cache(benchmark) -> None:
    blob = mime.parse(load(MULTI)).to_cache()
    out = benchmark(lambda: mime.MessageStructure.from_cache(blob).imap_bodystructure())
    assert out.startswith(b"(")


def test_envelope_from_cache(benchmark) -> None:
    blob = mime.parse(load(MULTI)).to_cache()
    out = benchmark(lambda: mime.MessageStructure.from_cache(blob).imap_envelope())
    assert out.startswith(b"(")
