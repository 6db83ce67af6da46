"""Fixtures: the JMAP application with file links on a real loopback socket (in-memory mail backends)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "jmap"))

from filetest import LinkServer, serving


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[LinkServer]:
    async with serving(tmp_path) as s:
        yield s


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session
