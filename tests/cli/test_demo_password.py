"""``mailsrv init --demo`` passwords are safe to put on a command line (swaks, curl): never "-" first."""

from __future__ import annotations

import secrets

import pytest

from mailsrv.cli.directory import demo_password


def test_demo_passwords_never_start_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = iter(["-abcdefghijklmno", "_abcdefghijklmno", "Xabcdefghijklmno"])
    monkeypatch.setattr(secrets, "token_urlsafe", lambda n: next(tokens))
    assert demo_password() == "Xabcdefghijklmno"


def test_demo_passwords_are_16_url_safe_characters() -> None:
    for _ in range(200):
        p = demo_password()
        assert len(p) == 16 and p[0].isalnum()
        assert all(c.isalnum() or c in "-_" for c in p)
