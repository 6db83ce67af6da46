"""Fixtures for the MIME tests: both scanner implementations and the corpus messages."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from corpus_files import message_paths, normalise

from mailsrv import mime
from mailsrv._speedups import mime_py

try:
    from mailsrv._speedups import mime_c
except ImportError:  # reported by the impl fixture and the guard test
    mime_c = None  # type: ignore[assignment]

IMPLS = {"py": mime_py, "c": mime_c}


@pytest.fixture(params=["c", "py"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """The compiled scanner, then the pure-Python twin."""
    mod = IMPLS[request.param]
    if mod is None:
        pytest.fail("mailsrv._speedups.mime_c is not built: run `make build`")
    return mod


@pytest.fixture
def parse(impl: ModuleType) -> Callable[..., mime.MessageStructure]:
    """``parse(raw, limits=None)`` through the scanner of ``impl``."""

    def _parse(raw: bytes, limits: mime.MimeLimits | None = None) -> mime.MessageStructure:
        lim = limits or mime.MimeLimits()
        return mime.MessageStructure(impl.scan(raw, lim.max_depth, lim.max_parts, lim.max_value))

    return _parse


@pytest.fixture(scope="session")
def corpus_messages(corpus: Path) -> dict[str, bytes]:
    """Every corpus message, CRLF-normalised as it is stored after SMTP/APPEND."""
    return {rel: normalise((corpus / rel).read_bytes()) for rel in message_paths(corpus)}
