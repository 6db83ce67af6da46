"""Fixtures for auth tests: a directory with users and an Authenticator with fast argon2 parameters."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailsrv.auth import Authenticator
from mailsrv.auth.passwords import Hasher
from mailsrv.config import AuthConfig
from mailsrv.directory import Directory, SyncDirectory

#: Small argon2 parameters keep the suite fast; the algorithm and code path are the real ones.
FAST = AuthConfig(argon2_memory_kib=1024, argon2_time_cost=1, throttle_delay=0.0,
                  account_failures=3, ip_throttle_failures=5, ip_block_failures=8)
PASSWORD = "correct horse battery"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "directory.sqlite3"


@pytest.fixture
def sd(db_path: Path):
    d = SyncDirectory(db_path)
    d.add_domain("example.test")
    h, s = Hasher(FAST).make(PASSWORD)
    d.add_user("alice@example.test", password_hash=h, scram=s)
    d.add_user("bob@example.test", password_hash=h, scram=s)
    d.add_alias("al@example.test", "alice@example.test")
    yield d
    d.close()


@pytest.fixture
async def directory(db_path: Path, sd: SyncDirectory):
    d = Directory(db_path, threads=2)
    yield d
    await d.close()


@pytest.fixture
async def auth(directory: Directory):
    a = Authenticator(directory, FAST)
    yield a
    await a.close()
