"""End-of-DATA work per message: the policy's spool rewrite (skipped when nothing changes), the spool's
in-memory copy, the Received date."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailsrv.config import PolicyConfig
from mailsrv.delivery.spool import FLUSH_AT, FileSpool
from mailsrv.net.dns import Resolver
from mailsrv.policy.pipeline import OUR_FIELDS, Policy, needs_rewrite, rewrite_spool
from mailsrv.policy.state import PolicyState
from mailsrv.smtp.session import _received_date

OUR_ID = "mx.example.test"

_field = st.sampled_from([
    b"Subject: hello\r\n",
    b"Received: from a by b; date\r\n",
    b"Authentication-Results: mx.example.test; spf=pass\r\n",
    b"Authentication-Results: other.test; spf=pass\r\n",
    b"authentication-results:mx.example.test;\r\n dkim=pass\r\n",
    b"X-Spam-Flag: YES\r\n",
    b"X-Virus-Status: Clean\r\n",
    b"X-Note: Authentication-Results: mx.example.test\r\n",
])


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60)
@given(st.lists(_field, max_size=6), st.booleans())
def test_needs_rewrite_agrees_with_the_rewrite(tmp_path: Path, fields: list[bytes], inbound: bool) -> None:
    message = b"".join(fields) + b"\r\nbody\r\n"
    drop = OUR_FIELDS if inbound else frozenset()
    spool = tmp_path / "spool"
    spool.write_bytes(message)
    assert needs_rewrite(message, OUR_ID, drop) == (rewrite_spool(spool, [], OUR_ID, drop=drop) > 0)


async def _decide(tmp_path: Path, message: bytes) -> tuple[bool, bytes]:
    """A trusted (loopback) session's end of DATA: (was the spool file replaced, its content)."""
    policy = Policy(PolicyConfig(), hostname=OUR_ID, resolver=Resolver(["127.0.0.1:1"]),
                    state=PolicyState(tmp_path / "p.db"))
    try:
        spool = tmp_path / "spool"
        spool.write_bytes(message)
        before = os.stat(spool).st_ino
        session = policy.session(client_ip="127.0.0.1")
        assert session.outbound  # 127.0.0.0/8 is in policy.skip_networks
        decision = await session.data(spool)
        assert decision.ok
        return os.stat(spool).st_ino != before, spool.read_bytes()
    finally:
        policy.close()


async def test_trusted_message_without_forged_results_is_not_rewritten(tmp_path: Path) -> None:
    message = b"Received: from a by b; date\r\nSubject: s\r\n\r\nbody\r\n"
    replaced, content = await _decide(tmp_path, message)
    assert not replaced and content == message


async def test_trusted_message_loses_forged_results(tmp_path: Path) -> None:
    message = b"Authentication-Results: mx.example.test; dkim=pass\r\nSubject: s\r\n\r\nbody\r\n"
    replaced, content = await _decide(tmp_path, message)
    assert replaced and content == b"Subject: s\r\n\r\nbody\r\n"


async def test_spool_keeps_a_small_message_in_memory(tmp_path: Path) -> None:
    small, big = FileSpool(tmp_path), FileSpool(tmp_path)
    await small.write(b"Subject: s\r\n\r\n")
    await small.write(b"body\r\n")
    assert small.content is None  # not before commit
    await small.commit()
    assert small.content == small.path.read_bytes() == b"Subject: s\r\n\r\nbody\r\n"
    await big.write(b"x" * (FLUSH_AT + 1))  # written out at once: no longer all in memory
    await big.write(b"tail")
    await big.commit()
    assert big.content is None and big.path.stat().st_size == FLUSH_AT + 5
    small.discard()
    big.discard()
    assert small.content is None


@given(st.lists(_field, max_size=5))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=25, deadline=None)
async def test_decision_is_the_same_with_the_content_given(tmp_path: Path, fields: list[bytes]) -> None:
    message = b"".join(fields) + b"\r\nbody\r\n"
    policy = Policy(PolicyConfig(), hostname=OUR_ID, resolver=Resolver(["127.0.0.1:1"]),
                    state=PolicyState(tmp_path / "p.db"))
    try:
        out = []
        for content in (None, message):
            spool = tmp_path / "spool"
            spool.write_bytes(message)
            decision = await policy.session(client_ip="127.0.0.1").data(spool, content)
            out.append((decision.action, spool.read_bytes()))
        assert out[0] == out[1]
    finally:
        policy.close()


@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
def test_received_date_is_the_rfc5322_date_of_that_second(now: float) -> None:
    expected = format_datetime(datetime.fromtimestamp(int(now), UTC))
    assert _received_date(now) == expected
    assert _received_date(now) == expected  # cached
