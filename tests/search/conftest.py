"""Fixtures for the search tests: a search service (closed after the test)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from mailsrv.config import SearchConfig
from mailsrv.search import SearchService


@pytest.fixture
async def service() -> AsyncIterator[SearchService]:
    svc = SearchService(SearchConfig(snapshot_every=50))
    yield svc
    await svc.close()

