"""Fixtures for directory tests: a fresh SQLite directory in a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailsrv.directory import Directory, SyncDirectory


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "directory.sqlite3"


@pytest.fixture
def sd(db_path: Path):
    d = SyncDirectory(db_path)
    d.add_domain("example.test")
    yield d
    d.close()


@pytest.fixture
async def ad(db_path: Path, sd: SyncDirectory):
    d = Directory(db_path, threads=2)
    yield d
    await d.close()
