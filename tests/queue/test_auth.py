"""Outbound AUTH toward a smarthost: mechanism choice, SCRAM client, no credentials over plain text."""

from __future__ import annotations

import asyncio
import base64
import ssl
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword
from hypothesis import given
from hypothesis import strategies as st

from mailsrv.auth import sasl
from mailsrv.auth.passwords import make_scram
from mailsrv.config import RouteConfig
from mailsrv.queue.enqueue import Enqueuer
from mailsrv.queue.runner import QueueRunner
from mailsrv.queue.sasl_client import LoginClient, PlainClient, SaslError, ScramClient, choose
from mailsrv.queue.store import QRcpt

from .conftest import SinkHandler, make_config, wait_for

MSG = b"From: alice@example.test\r\nTo: z@anywhere.test\r\nSubject: relay\r\n\r\nbody\r\n"
PASSWORD = "relay-secret"


def test_choose_prefers_scram_then_plain_then_login() -> None:
    assert isinstance(choose("LOGIN PLAIN SCRAM-SHA-256", "u", "p"), ScramClient)
    assert isinstance(choose("login plain", "u", "p"), PlainClient)
    assert isinstance(choose("CRAM-MD5 LOGIN", "u", "p"), LoginClient)
    assert choose("CRAM-MD5 XOAUTH2", "u", "p") is None
    assert choose("", "u", "p") is None


def _scram_exchange(password: str, server_password: str, user: str = "relay,user=1") -> tuple[Any, ScramClient]:
    client = ScramClient(user, password)
    server = sasl.Scram(plus=False, binding=None, plus_offered=False)
    first = client.start()
    assert first is not None
    need = server.step(first)
    assert isinstance(need, sasl.NeedVerifier) and need.username == user  # saslname escaping round-trips
    challenge = server.provide(make_scram(server_password))
    assert isinstance(challenge, sasl.Challenge)
    return server.step(client.step(challenge.data)), client


def test_scram_client_against_our_server() -> None:
    outcome, client = _scram_exchange(PASSWORD, PASSWORD)
    assert isinstance(outcome, sasl.Verified)
    assert client.step(outcome.data) == b""  # server-final verified, answered empty (RFC 4954 §4)
    client.done(None)


def test_scram_wrong_password_and_forged_server_final() -> None:
    outcome, client = _scram_exchange("wrong", PASSWORD)
    assert isinstance(outcome, sasl.Failure)
    # a server that does not know the verifier cannot produce the signature
    with pytest.raises(SaslError):
        client.step(b"v=" + base64.b64encode(b"\0" * 32))
    fresh = ScramClient("u", "p")
    fresh.start()
    with pytest.raises(SaslError):  # nonce not extending ours
        fresh.step(b"r=other,s=c2FsdA==,i=4096")
    with pytest.raises(SaslError):  # success claimed without any server-final
        ScramClient("u", "p").done(None)


@given(st.binary(max_size=300))
def test_scram_client_rejects_garbage_only_with_sasl_error(data: bytes) -> None:
    client = ScramClient("u", "p", nonce=b"n" * 18)
    client.start()
    try:
        answer = client.step(data)
    except SaslError:
        return
    # only a challenge that extends our nonce with a salt and a sane count is answered
    assert data.startswith(b"r=" + base64.b64encode(b"n" * 18)) and answer.startswith(b"c=biws,r=")


class ScramSMTP(SMTP):
    """aiosmtpd with SCRAM-SHA-256 (server side from mailsrv.auth.sasl) besides its PLAIN and LOGIN."""

    async def auth_SCRAM__SHA__256(self, _: Any, args: list[str]) -> AuthResult:
        server = sasl.Scram(plus=False, binding=None, plus_offered=False)
        step = server.step(base64.b64decode(args[1]) if len(args) > 1 else None)
        while True:
            if isinstance(step, sasl.NeedVerifier):
                step = server.provide(make_scram(PASSWORD))
            elif isinstance(step, sasl.Challenge):
                answer = await self.challenge_auth(step.data)
                if answer is MISSING:
                    return AuthResult(success=False, handled=True)
                assert isinstance(answer, bytes)
                step = server.step(answer)
            elif isinstance(step, sasl.Verified):
                final = await self.challenge_auth(step.data)
                self.mechanisms_used.append("SCRAM-SHA-256")
                return AuthResult(success=final == b"", auth_data=step.username)
            else:
                return AuthResult(success=False)

    mechanisms_used: list[str] = []


async def _relay_scenario(tmp_path: Path, server_factory: Any, route: RouteConfig, until: Any,
                          sink: SinkHandler) -> QueueRunner:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(server_factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cfg = make_config(tmp_path / "data", {}, retry_schedule=(3600.0,))
    cfg = replace(cfg, queue=replace(cfg.queue, route={"*": replace(route, smarthost=f"127.0.0.1:{port}")}))
    runner = QueueRunner(cfg, is_local=None, signer=None)
    stop = asyncio.Event()
    task = asyncio.ensure_future(runner.run(stop))
    try:
        await Enqueuer(cfg.server.data_dir).enqueue(MSG, "alice@example.test", [QRcpt("z@anywhere.test")])
        await wait_for(lambda: until(runner))
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        server.close()
        await server.wait_closed()
    return runner


# the sinks are plain text on loopback on purpose; aiosmtpd warns about AUTH without TLS
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
@pytest.mark.parametrize(("exclude", "expected"), [
    ((), "SCRAM-SHA-256"),
    (("SCRAM-SHA-256",), "PLAIN"),
    (("SCRAM-SHA-256", "PLAIN"), "LOGIN"),
])
def test_smarthost_auth_uses_best_offered(tmp_path: Path, exclude: tuple[str, ...], expected: str) -> None:
    sink = SinkHandler()
    used: list[str] = []
    ScramSMTP.mechanisms_used = used

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        used.append(mechanism)
        ok = (bytes(data.login), bytes(data.password)) == (b"relay-user", PASSWORD.encode())
        return AuthResult(success=ok, handled=False)

    def factory() -> SMTP:
        return ScramSMTP(sink, hostname="relay.test", authenticator=authenticator, auth_required=True,
                         auth_require_tls=False, auth_exclude_mechanism=list(exclude))

    route = RouteConfig(tls="none", username="relay-user", password=PASSWORD, auth_plaintext=True)
    asyncio.run(_relay_scenario(tmp_path, factory, route, lambda r: len(sink.received) == 1, sink))
    assert used == [expected]
    assert sink.received[0].rcpts == ["z@anywhere.test"]


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
def test_no_credentials_over_plain_text_unless_allowed(tmp_path: Path) -> None:
    sink = SinkHandler()
    attempts: list[str] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        attempts.append(mechanism)
        return AuthResult(success=True)

    def factory() -> SMTP:
        return SMTP(sink, hostname="relay.test", authenticator=authenticator, auth_required=True,
                    auth_require_tls=False)

    route = RouteConfig(tls="opportunistic", username="relay-user", password=PASSWORD)  # no STARTTLS offered
    runner = asyncio.run(_relay_scenario(
        tmp_path, factory, route,
        lambda r: any(e.attempts >= 1 for e in r.entries.values()), sink))
    [env] = runner.entries.values()
    assert env.rcpts[0].status == "pending" and "plain text" in env.rcpts[0].diag  # deferred, not bounced
    assert attempts == [] and sink.received == []


def test_auth_after_starttls_and_failure_defers(tmp_path: Path) -> None:
    ca = trustme.CA()
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(sctx)
    sink = SinkHandler()
    seen: list[tuple[str, bool]] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        seen.append((mechanism, server._tls_protocol is not None))
        ok = bytes(data.password) == PASSWORD.encode()
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd sends the 535

    def factory() -> SMTP:
        return SMTP(sink, hostname="relay.test", authenticator=authenticator, auth_required=True,
                    tls_context=sctx, require_starttls=True)

    good = RouteConfig(tls="required", username="relay-user", password=PASSWORD)
    asyncio.run(_relay_scenario(tmp_path / "a", factory, good, lambda r: len(sink.received) == 1, sink))
    assert seen == [("PLAIN", True)]
    bad = RouteConfig(tls="required", username="relay-user", password="wrong")
    runner = asyncio.run(_relay_scenario(
        tmp_path / "b", factory, bad, lambda r: any(e.attempts >= 1 for e in r.entries.values()), sink))
    [env] = runner.entries.values()
    # a rejected password is the operator's to fix: the mail waits (454 4.7.0), it does not bounce
    assert env.rcpts[0].status == "pending" and env.rcpts[0].diag.startswith("454 4.7.0 AUTH PLAIN")
    assert len(sink.received) == 1
