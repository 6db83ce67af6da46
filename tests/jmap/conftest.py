"""Fixtures: a JMAP server on a real loopback socket over in-memory backends, and a client."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from jmaptest import Client, Server


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    s = Server(tmp_path)
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
async def client(server: Server) -> AsyncIterator[Client]:
    async with aiohttp.ClientSession() as http:
        yield Client(server, http)
