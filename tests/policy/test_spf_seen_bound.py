"""A session keeps the MAIL FROM SPF results of at most SPF_SEEN_MAX senders, least recently used first out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailsrv.config import PolicyConfig
from mailsrv.net.dns import Resolver
from mailsrv.policy import pipeline
from mailsrv.policy.pipeline import SPF_SEEN_MAX, Policy
from mailsrv.policy.spf import SpfResult
from mailsrv.policy.state import PolicyState


@pytest.fixture
async def evaluated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Policy, list[str]]]:
    """A policy whose SPF evaluations are counted (senders evaluated, in order), never reaching DNS."""
    calls: list[str] = []

    async def fake(resolver: Any, ip: str, domain: str, sender: str, *, helo: str = "", receiver: str = "",
                   identity: str = "mailfrom") -> SpfResult:
        if identity == "mailfrom":
            calls.append(sender)
        return SpfResult("pass", identity, domain)

    monkeypatch.setattr(pipeline.spf, "check_host", fake)
    policy = Policy(PolicyConfig(dmarc=False), hostname="mx.example.test", resolver=Resolver(["127.0.0.1:1"]),
                    state=PolicyState(tmp_path / "p.db"))
    try:
        yield policy, calls
    finally:
        policy.close()


async def test_many_senders_keep_a_bounded_cache(evaluated: tuple[Policy, list[str]]) -> None:
    policy, calls = evaluated
    ps = policy.session(client_ip="192.0.2.7", listener="smtp")
    assert (await ps.helo("client.test")).ok
    for i in range(SPF_SEEN_MAX * 10):
        assert (await ps.mail(f"s{i}@d.test")).ok
        assert len(ps._spf_seen) <= SPF_SEEN_MAX
    assert len(calls) == SPF_SEEN_MAX * 10 and len(ps._spf_seen) == SPF_SEEN_MAX


async def test_the_least_recently_used_sender_goes_first(evaluated: tuple[Policy, list[str]]) -> None:
    policy, calls = evaluated
    ps = policy.session(client_ip="192.0.2.7", listener="smtp")
    assert (await ps.helo("client.test")).ok
    for i in range(SPF_SEEN_MAX):
        assert (await ps.mail(f"s{i}@d.test")).ok
    calls.clear()
    assert (await ps.mail("s0@d.test")).ok  # kept: used again, so now the most recent
    assert (await ps.mail("new@d.test")).ok  # pushes out s1, the least recently used
    assert (await ps.mail("s0@d.test")).ok
    assert (await ps.mail("s1@d.test")).ok  # gone: evaluated again
    assert calls == ["new@d.test", "s1@d.test"]
    assert ps.tx.spf is not None and ps.tx.spf.result == "pass"


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=40, deadline=None)
@given(st.lists(st.integers(0, SPF_SEEN_MAX + 8), min_size=SPF_SEEN_MAX + 8, max_size=200))
async def test_evaluations_are_those_of_an_lru_cache(evaluated: tuple[Policy, list[str]], picks: list[int]) -> None:
    policy, calls = evaluated
    calls.clear()
    ps = policy.session(client_ip="192.0.2.7", listener="smtp")
    assert (await ps.helo("client.test")).ok
    model: list[str] = []  # least recently used first
    expected: list[str] = []
    for n in picks:
        sender = f"s{n}@d.test"
        if sender in model:
            model.remove(sender)
        else:
            expected.append(sender)
            if len(model) == SPF_SEEN_MAX:
                model.pop(0)
        model.append(sender)
        assert (await ps.mail(sender)).ok
    assert calls == expected
    assert list(ps._spf_seen) == model
