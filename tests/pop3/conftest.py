"""POP3 test fixtures (helpers live in pop3fakes.py, put on the path here for importlib mode)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from pop3fakes import ALICE, BOB, FakeAuth, FakeChannel, MemoryDrops

from mailsrv.config import Pop3Config
from mailsrv.pop3.session import Session


@pytest.fixture
def drops() -> MemoryDrops:
    return MemoryDrops()


@pytest.fixture
def fake_auth() -> FakeAuth:
    return FakeAuth({"alice@example.test": ("secret", ALICE), "bob@example.test": ("hunter2", BOB)})


@pytest.fixture
def make_session(drops: MemoryDrops, fake_auth: FakeAuth) -> Any:
    def make(*, tls: bool = True, config: Pop3Config | None = None,
             starttls: bool = True) -> tuple[Session, FakeChannel]:
        ch = FakeChannel(tls=tls, starttls=starttls)
        s = Session(ch, auth=fake_auth, maildrops=drops, config=config or Pop3Config(),
                    hostname="mail.example.test")
        return s, ch
    return make
