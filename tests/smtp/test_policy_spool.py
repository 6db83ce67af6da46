"""End-of-DATA work per message: the policy's spool rewrite (skipped when nothing changes), the spool's
in-memory copy, the Received date."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.spool import no_spool_left

from mailsrv.config import PolicyConfig, SmtpConfig
from mailsrv.delivery.spool import FLUSH_AT, FileSpool
from mailsrv.net.dns import Resolver
from mailsrv.policy.pipeline import OUR_FIELDS, Policy, needs_rewrite, rewrite_spool
from mailsrv.policy.state import PolicyState
from mailsrv.smtp.backend import SessionInfo, Verdict
from mailsrv.smtp.grammar import SmtpError
from mailsrv.smtp.session import Session, State, Step, _received_date

from .conftest import FakeBackend

OUR_ID = "mx.example.test"

_field = st.sampled_from([
    b"Subject: hello\r\n",
    b"Received: from a by b; date\r\n",
    b"Authentication-Results: mx.example.test; spf=pass\r\n",
    b"Authentication-Results: other.test; spf=pass\r\n",
    b"authentication-results:mx.example.test;\r\n dkim=pass\r\n",
    b"AUTHENTICATION-RESULTS: mx.example.test; spf=pass\r\n",  # the name in any case (needs_rewrite lowers)
    b"X-Spam-Flag: YES\r\n",
    b"X-Virus-Status: Clean\r\n",
    b"X-Note: Authentication-Results: mx.example.test\r\n",
])


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60)
@given(st.lists(_field, max_size=6), st.booleans(), st.lists(_field, max_size=3))
def test_needs_rewrite_agrees_with_the_rewrite(tmp_path: Path, fields: list[bytes], inbound: bool,
                                               body: list[bytes]) -> None:
    # the body may quote fields (a forwarded message): only the header block counts
    message = b"".join(fields) + b"\r\nbody\r\n" + b"".join(body)
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


# -- judged before the spool file is written -----------------------------------------------------------

_inbound_field = st.sampled_from([
    b"Subject: hello\r\n",
    b"Subject: =?utf-8?b?RlJFRSBNT05FWSEhIQ==?= viagra casino\r\n",
    b"Authentication-Results: mx.example.test; spf=pass\r\n",
    b"Authentication-Results: other.test; spf=pass\r\n",
    b"X-Spam-Flag: YES\r\n",
    b"X-Spam-Score: -100\r\n",
    b"X-Virus-Status: Clean\r\n",
    b"Content-Type: text/html\r\n",
])


def _policy(tmp_path: Path, **cfg: Any) -> Policy:
    return Policy(PolicyConfig(spf=False, dmarc=False, **cfg), hostname=OUR_ID, resolver=Resolver(["127.0.0.1:1"]),
                  state=PolicyState(tmp_path / "p.db"))


async def _inbound(tmp_path: Path, policy: Policy, backend_type: type[FakeBackend] = FakeBackend,
                   ) -> tuple[Session, FakeBackend]:
    """A port-25 session from 192.0.2.7 judged by ``policy``, past EHLO, spooling into ``tmp_path/spool``."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    backend = backend_type(spool_dir)
    info = SessionInfo(sid="s1", hostname=OUR_ID, listener="smtp", peer_ip="192.0.2.7")
    session = Session(info, SmtpConfig(), backend, policy=policy.session(client_ip="192.0.2.7", listener="smtp"))
    await session.command(b"EHLO client.test\r\n")
    return session, backend


async def _message(session: Session, message: bytes) -> Step:
    """MAIL, RCPT, DATA and ``message`` into the spool; returns the end of DATA's step."""
    for line in (b"MAIL FROM:<a@remote.test>\r\n", b"RCPT TO:<alice@example.test>\r\n"):
        await session.command(line)
    assert (await session.command(b"DATA\r\n")).then == "data"
    assert session.spool is not None
    await session.spool.write(message)
    return await session.data_end(bare_newline=False, too_big=False)


@given(st.lists(_inbound_field, max_size=6), st.sampled_from(["127.0.0.1", "192.0.2.7"]),
       st.sampled_from([b"hi\r\n", b"<html><a href='http://192.0.2.1/'>CLICK HERE FREE</a></html>\r\n"]))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=30, deadline=None)
async def test_in_memory_judgement_is_the_file_judgement(tmp_path: Path, fields: list[bytes], ip: str,
                                                         body: bytes) -> None:
    message = (b"Return-Path: <a@remote.test>\r\nReceived: from c ([192.0.2.7]) by mx; date\r\n"
               + b"".join(fields) + b"\r\n" + body)
    policy = _policy(tmp_path)
    try:
        spool = tmp_path / "spool"
        spool.write_bytes(message)
        session = policy.session(client_ip=ip)
        assert session.judges_in_memory(len(message))
        on_file = await session.data(spool)
        in_memory, rewritten = await policy.session(client_ip=ip).data_held(message)
        assert (in_memory.action, in_memory.code, in_memory.score) == (on_file.action, on_file.code, on_file.score)
        assert rewritten == spool.read_bytes()
        assert rewritten.startswith(b"Return-Path: <a@remote.test>\r\nReceived: ")
    finally:
        policy.close()


def test_not_in_memory_with_a_virus_scanner_or_beyond_the_scan_size(tmp_path: Path) -> None:
    from mailsrv.policy.clamd import Clamd

    policy = _policy(tmp_path)
    try:
        session = policy.session(client_ip="192.0.2.7")
        assert session.judges_in_memory(policy.cfg.max_scan_size)
        assert not session.judges_in_memory(policy.cfg.max_scan_size + 1)
        policy.clamd = Clamd(str(tmp_path / "clamd.sock"))
        assert not session.judges_in_memory(10)
    finally:
        policy.close()


async def test_an_inbound_message_is_written_once_with_our_fields(tmp_path: Path, monkeypatch: Any) -> None:
    """End of DATA on port 25: the policy judges the held message, the spool file is written once
    (no read-back, no rewrite), and what is delivered carries our fields without the forged ones."""
    from mailsrv.policy import pipeline

    def no_rewrite(*args: Any, **kwargs: Any) -> int:
        raise AssertionError("the spool file was rewritten")

    monkeypatch.setattr(pipeline, "rewrite_spool", no_rewrite)
    jobs: list[Any] = []
    policy = _policy(tmp_path)
    session, backend = await _inbound(tmp_path, policy)
    original = FileSpool._run

    async def counting(self: FileSpool, data: bytes, close: bool) -> None:
        jobs.append(len(data))
        await original(self, data, close)

    monkeypatch.setattr(FileSpool, "_run", counting)
    try:
        step = await _message(session, b"X-Spam-Flag: YES\r\nAuthentication-Results: mx.example.test; dkim=pass\r\n"
                                       b"Subject: s\r\n\r\nbody\r\n")
    finally:
        policy.close()
    assert step.reply.startswith(b"250 ")
    [d] = backend.delivered
    assert len(jobs) == 1 and jobs[0] == len(d.data)  # one thread job wrote the file, as delivered
    assert d.data.startswith(b"Return-Path: <a@remote.test>\r\nReceived: from client.test ([192.0.2.7])")
    assert b"\r\nAuthentication-Results: mx.example.test;" in d.data and b"dkim=pass" not in d.data
    assert b"X-Spam-Flag: NO\r\n" in d.data and b"X-Spam-Flag: YES" not in d.data
    assert d.data.endswith(b"\r\nSubject: s\r\n\r\nbody\r\n")


async def test_spf_of_a_sender_is_evaluated_once_per_session(tmp_path: Path, monkeypatch: Any) -> None:
    """A session's next message from the same sender reuses its MAIL FROM SPF result (not a DNS error),
    and a new HELO name evaluates everything anew."""
    from mailsrv.policy import pipeline
    from mailsrv.policy.spf import SpfResult

    calls: list[tuple[str, str, str]] = []

    async def fake(resolver: Any, ip: str, domain: str, sender: str, *, helo: str = "", receiver: str = "",
                   identity: str = "mailfrom") -> SpfResult:
        calls.append((identity, sender, helo))
        return SpfResult("temperror" if sender.startswith("t@") else "pass", identity, domain)

    monkeypatch.setattr(pipeline.spf, "check_host", fake)
    policy = Policy(PolicyConfig(dmarc=False), hostname=OUR_ID, resolver=Resolver(["127.0.0.1:1"]),
                    state=PolicyState(tmp_path / "p.db"))
    try:
        ps = policy.session(client_ip="192.0.2.7", listener="smtp")
        assert (await ps.helo("client.test")).ok
        for sender in ("a@d.test", "a@d.test", "b@d.test", "t@d.test", "t@d.test", "a@d.test"):
            assert (await ps.mail(sender)).ok
            assert ps.tx.spf is not None and ps.tx.spf.result == ("temperror" if sender[0] == "t" else "pass")
        assert [c[1] for c in calls] == ["postmaster@client.test", "a@d.test", "b@d.test", "t@d.test", "t@d.test"]
        calls.clear()
        assert (await ps.helo("other.test")).ok
        assert (await ps.mail("a@d.test")).ok
        assert calls == [("helo", "postmaster@other.test", "other.test"), ("mailfrom", "a@d.test", "other.test")]
    finally:
        policy.close()


async def test_recipient_lists_are_read_at_rcpt_only(tmp_path: Path) -> None:
    """The end of DATA uses what each recipient's lists said at RCPT (an allowed network stays allowed)."""
    asked: list[str] = []

    class Source:
        async def policy_lists(self, scopes: list[str]) -> list[tuple[str, str, str]]:
            asked.extend(scopes)
            return [(s, "allow", "192.0.2.0/24") for s in scopes if s == "bob@example.test"]

    policy = Policy(PolicyConfig(spf=False, dmarc=False), hostname=OUR_ID, resolver=Resolver(["127.0.0.1:1"]),
                    state=PolicyState(tmp_path / "p.db"), lists=Source())
    try:
        ps = policy.session(client_ip="192.0.2.7", listener="smtp")
        assert (await ps.mail("a@remote.test")).ok
        assert (await ps.rcpt("bob@example.test")).ok
        assert await ps._all_allowed()
        assert (await ps.rcpt("alice@example.test")).ok
        before = list(asked)
        assert not await ps._all_allowed()  # alice's lists allow nothing
        decision, _message = await ps.data_held(b"Subject: s\r\n\r\nbody\r\n")
        assert decision.ok and asked == before  # no list read after RCPT
        assert "bob@example.test" in before and "alice@example.test" in before
    finally:
        policy.close()


async def test_a_write_error_after_judging_in_memory_is_451_and_leaves_nothing(tmp_path: Path,
                                                                             disk_full: list[bool]) -> None:
    """ENOSPC (or EIO) when the judged message is written: 451 4.3.0, nothing delivered, no spool file
    left, and the session can take the next message."""
    policy = _policy(tmp_path)
    try:
        session, backend = await _inbound(tmp_path, policy)
        assert session.policy is not None and session.policy.judges_in_memory(100)  # the in-memory path
        with pytest.raises(SmtpError) as err:
            await _message(session, b"Subject: s\r\n\r\nbody\r\n")
        assert (err.value.code, err.value.enh) == (451, "4.3.0")
        assert backend.delivered == [] and session.state is State.READY and session.spool is None
        await asyncio.get_running_loop().run_in_executor(None, no_spool_left, backend.spool_dir)
        disk_full[0] = False
        assert (await _message(session, b"Subject: s\r\n\r\nbody\r\n")).reply.startswith(b"250 ")
        assert len(backend.delivered) == 1
    finally:
        policy.close()


async def test_the_in_memory_copy_is_not_offered_after_the_policy_rewrote_the_file(tmp_path: Path) -> None:
    """Judged on the file (here: beyond max_scan_size; with clamd too), the policy may rewrite the spool
    file with its fields: the spool's in-memory copy (``content``, what a consumer may parse instead of
    reading the file) is then stale and must not be offered, even when its length happens to match."""
    seen: list[tuple[bytes | None, bytes]] = []

    class Backend(FakeBackend):
        async def deliver(self, info: Any, tx: Any, spool: Any) -> Verdict:
            seen.append((spool.content, spool.path.read_bytes()))
            return Verdict(250, "2.0.0", "OK")

    policy = _policy(tmp_path, max_scan_size=64)
    try:
        session, _backend = await _inbound(tmp_path, policy, Backend)
        assert session.policy is not None and not session.policy.judges_in_memory(65)  # judged on the file
        assert (await _message(session, b"Subject: s\r\n\r\n" + b"body line\r\n" * 20)).reply.startswith(b"250 ")
    finally:
        policy.close()
    [(content, on_disk)] = seen
    assert b"X-Spam-Flag: " in on_disk  # the policy rewrote the file
    assert content is None or content == on_disk


async def test_a_trusted_clients_envelope_skips_the_policy_until_it_authenticates(tmp_path: Path,
                                                                                  monkeypatch: Any) -> None:
    """skip_networks (loopback): MAIL and RCPT cost no policy call, whose outbound checks need a user; an
    untrusted client's envelope is checked, and so is a trusted client's once it has authenticated."""
    from mailsrv.policy.pipeline import PolicySession

    calls: list[str] = []
    for name in ("mail", "rcpt"):
        real = getattr(PolicySession, name)

        async def spy(self: PolicySession, address: str, _real: Any = real, _name: str = name) -> Any:
            calls.append(_name)
            return await _real(self, address)

        monkeypatch.setattr(PolicySession, name, spy)
    policy = _policy(tmp_path)
    try:
        spool_dir = tmp_path / "spool"
        spool_dir.mkdir()
        for ip, want in (("127.0.0.1", []), ("192.0.2.7", ["mail", "rcpt"])):
            calls.clear()
            info = SessionInfo(sid="s1", hostname=OUR_ID, listener="smtp", peer_ip=ip)
            session = Session(info, SmtpConfig(), FakeBackend(spool_dir), policy=policy.session(client_ip=ip))
            await session.command(b"EHLO client.test\r\n")
            assert (await _message(session, b"Subject: s\r\n\r\nbody\r\n")).reply.startswith(b"250")
            assert calls == want
        trusted = policy.session(client_ip="127.0.0.1")
        assert not trusted.envelope_checked
        trusted.authenticated("alice@example.test")
        assert trusted.envelope_checked  # its sending limits apply again
        assert not Policy(PolicyConfig(enabled=False), hostname=OUR_ID, resolver=Resolver(["127.0.0.1:1"]),
                          state=None).session(client_ip="192.0.2.7").envelope_checked
    finally:
        policy.close()
