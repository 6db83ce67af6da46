"""IMAP test fixtures (helpers live in imaptest.py, put on the path here for importlib mode)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from typing import Any

from imaptest import Raw, ServerHandle, serve_real_store, start_server


@pytest.fixture(autouse=True)
def _close_raw_clients() -> Iterator[None]:
    """A test that fails midway leaves its raw clients open: close them here, so their sockets'
    ResourceWarnings do not fail whichever test the garbage collector happens to run in."""
    yield
    for client in list(Raw.opened):
        client.close()


@pytest.fixture
def server() -> Iterator[ServerHandle]:
    handle, stop = start_server()
    try:
        yield handle
    finally:
        stop()


@pytest.fixture
def jobs() -> list[Any]:
    """The functions of the store pool jobs run by :func:`real_store` (the test may clear it)."""
    return []


@pytest.fixture
def real_store(tmp_path: Path, jobs: list[Any]) -> Iterator[ServerHandle]:
    """IMAP over a real maildir store in tmp_path (alice@example.test / wonderland)."""
    with serve_real_store(tmp_path, jobs) as handle:
        yield handle


@pytest.fixture
def raw(server: ServerHandle) -> Iterator[Raw]:
    client = Raw(server.host, server.port)
    try:
        yield client
    finally:
        client.close()
