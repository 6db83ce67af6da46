"""IMAP test fixtures (helpers live in imaptest.py, put on the path here for importlib mode)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from imaptest import Raw, ServerHandle, start_server


@pytest.fixture
def server() -> Iterator[ServerHandle]:
    handle, stop = start_server()
    try:
        yield handle
    finally:
        stop()


@pytest.fixture
def raw(server: ServerHandle) -> Iterator[Raw]:
    client = Raw(server.host, server.port)
    try:
        yield client
    finally:
        client.close()
