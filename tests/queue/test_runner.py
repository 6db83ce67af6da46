"""Outbound queue: delivery, retries, bounces, expiry, DSN, DKIM — against aiosmtpd sinks on 127.0.0.1."""

from __future__ import annotations

import asyncio
import email
import email.policy
from pathlib import Path
from typing import Any

import dkim
import pytest

from mailsrv.queue.dkim import keygen
from mailsrv.queue.enqueue import Enqueuer
from mailsrv.queue.runner import QueueRunner
from mailsrv.queue.store import QRcpt, queue_dir

from .conftest import SinkHandler, local_example, make_config, run_scenario, start_sink, wait_for

MSG = (b"Return-Path: <alice@example.test>\r\nReceived: from x by y; Thu, 26 Nov 2026 00:00:00 +0000\r\n"
       b"From: alice@example.test\r\nTo: bob@remote.test\r\nSubject: hello\r\n"
       b"Date: Thu, 26 Nov 2026 00:00:00 +0000\r\nMessage-ID: <1@example.test>\r\n\r\n.starts with dot\r\nbody\r\n")


def test_delivery_to_two_sinks_with_dkim(tmp_path: Path) -> None:
    a, b = SinkHandler(), SinkHandler()
    keygen(tmp_path / "data", "example.test", "mail")

    async def body(cfg: Any, runner: QueueRunner) -> None:
        spool = tmp_path / "spool"
        spool.write_bytes(MSG)
        enq = Enqueuer(cfg.server.data_dir)
        qid = await enq.enqueue(spool, "alice@example.test",
                                [QRcpt("bob@remote.test"), QRcpt("carol@other.test"), QRcpt("dan@remote.test")])
        await wait_for(lambda: len(a.received) == 1 and len(b.received) == 1)
        # the runner drops its entry in the loop turn after the files' removal (done in a thread)
        await wait_for(lambda: queue_dir(cfg.server.data_dir).ids() == [] and qid not in runner.entries)
        assert queue_dir(cfg.server.data_dir).ids() == []  # and nothing was queued again after

    asyncio.run(run_scenario(tmp_path, {"remote.test": a, "other.test": b}, body))
    got = a.received[0]
    assert got.sender == "alice@example.test" and sorted(got.rcpts) == ["bob@remote.test", "dan@remote.test"]
    assert b.received[0].rcpts == ["carol@other.test"]
    assert b"Return-Path" not in got.data  # stripped when relaying
    assert got.data.startswith(b"DKIM-Signature:")
    assert b"\r\n.starts with dot\r\n" in got.data  # dot-stuffing undone by the sink
    # the signature verifies against the generated key
    _, record = keygen(tmp_path / "data", "example.test", "mail")
    txt = record.split('"')[1].encode()
    assert dkim.verify(got.data, dnsfunc=lambda name, timeout=5: txt)


def test_4xx_then_success(tmp_path: Path) -> None:
    a = SinkHandler(rcpt_script={"bob@remote.test": ["451 4.3.0 try again later", "250"]})

    async def body(cfg: Any, runner: QueueRunner) -> None:
        enq = Enqueuer(cfg.server.data_dir)
        await enq.enqueue(MSG, "alice@example.test", [QRcpt("bob@remote.test")])
        await wait_for(lambda: len(a.received) == 1)
        await wait_for(lambda: queue_dir(cfg.server.data_dir).ids() == [])

    asyncio.run(run_scenario(tmp_path, {"remote.test": a}, body))
    assert a.rcpt_script["bob@remote.test"] == []  # both scripted replies were used: a retry happened


def _parts(data: bytes) -> dict[str, Any]:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    parts = {p.get_content_type(): p for p in msg.iter_parts()}
    return {"msg": msg, **parts}


def test_5xx_bounces_to_sender(tmp_path: Path) -> None:
    a = SinkHandler(rcpt_script={"bad@remote.test": ["550 5.1.1 no such user here"]})
    home = SinkHandler()  # stands in for our own MTA listener (local domain example.test)

    async def body(cfg: Any, runner: QueueRunner) -> None:
        enq = Enqueuer(cfg.server.data_dir)
        await enq.enqueue(MSG, "alice@example.test", [QRcpt("bad@remote.test", orcpt="rfc822;bad@remote.test"),
                                                      QRcpt("good@remote.test")], envid="env-1")
        await wait_for(lambda: len(home.received) == 1 and len(a.received) == 1)
        await wait_for(lambda: queue_dir(cfg.server.data_dir).ids() == [])

    asyncio.run(run_scenario(tmp_path, {"remote.test": a, "example.test": home}, body))
    bounce = home.received[0]
    assert bounce.sender == "" and bounce.rcpts == ["alice@example.test"]
    parts = _parts(bounce.data)
    status = parts["message/delivery-status"].as_string() if "message/delivery-status" in parts else ""
    raw = bounce.data.decode()
    assert "Final-Recipient: rfc822; bad@remote.test" in raw
    assert "Action: failed" in raw and "Status: 5.1.1" in raw
    assert "Original-Envelope-Id: env-1" in raw
    assert "good@remote.test" not in raw.split("Content-Type: message/delivery-status")[1].split("--=_")[0]
    assert "Subject: hello" in raw  # the original comes back
    assert status is not None


def test_null_sender_never_bounces(tmp_path: Path) -> None:
    a = SinkHandler(rcpt_script={"bad@remote.test": ["550 5.1.1 nope"]})
    home = SinkHandler()

    async def body(cfg: Any, runner: QueueRunner) -> None:
        enq = Enqueuer(cfg.server.data_dir)
        await enq.enqueue(MSG, "", [QRcpt("bad@remote.test")])
        await wait_for(lambda: queue_dir(cfg.server.data_dir).ids() == [])
        # a second message proves the runner kept going and the home sink would have seen a bounce by now
        await enq.enqueue(MSG, "alice@example.test", [QRcpt("ok@remote.test")])
        await wait_for(lambda: len(a.received) == 1)

    asyncio.run(run_scenario(tmp_path, {"remote.test": a, "example.test": home}, body))
    assert home.received == []


def test_expiry_bounces(tmp_path: Path) -> None:
    a = SinkHandler(rcpt_script={"slow@remote.test": ["451 4.2.0 busy"] * 1000})
    home = SinkHandler()

    async def body(cfg: Any, runner: QueueRunner) -> None:
        enq = Enqueuer(cfg.server.data_dir)
        await enq.enqueue(MSG, "alice@example.test", [QRcpt("slow@remote.test")])
        await wait_for(lambda: len(home.received) == 1)

    asyncio.run(run_scenario(tmp_path, {"remote.test": a, "example.test": home}, body,
                             lifetime=0.3, delay_notice_after=0.0))
    raw = home.received[0].data.decode()
    assert "Action: failed" in raw and "4.4.7" in raw and "expired" in raw
    assert len(a.rcpt_script["slow@remote.test"]) < 1000  # it was retried


def test_delay_notice_then_delivery(tmp_path: Path) -> None:
    a = SinkHandler(rcpt_script={"slow@remote.test": ["451 4.2.0 busy", "451 4.2.0 busy", "250"]})
    home = SinkHandler()

    async def body(cfg: Any, runner: QueueRunner) -> None:
        enq = Enqueuer(cfg.server.data_dir)
        await enq.enqueue(MSG, "alice@example.test", [QRcpt("slow@remote.test")])
        await wait_for(lambda: len(a.received) == 1)
        await wait_for(lambda: queue_dir(cfg.server.data_dir).ids() == [])

    asyncio.run(run_scenario(tmp_path, {"remote.test": a, "example.test": home}, body,
                             delay_notice_after=0.0001))
    assert len(home.received) == 1  # exactly one delay notice
    assert "Action: delayed" in home.received[0].data.decode()


def test_dsn_notify_success(tmp_path: Path) -> None:
    a = SinkHandler()
    home = SinkHandler()

    async def body(cfg: Any, runner: QueueRunner) -> None:
        enq = Enqueuer(cfg.server.data_dir)
        await enq.enqueue(MSG, "alice@example.test", [QRcpt("bob@remote.test", notify=["SUCCESS"]),
                                                      QRcpt("eve@remote.test", notify=["NEVER"])])
        await wait_for(lambda: len(home.received) == 1 and len(a.received) == 1)
        await wait_for(lambda: queue_dir(cfg.server.data_dir).ids() == [])

    asyncio.run(run_scenario(tmp_path, {"remote.test": a, "example.test": home}, body))
    raw = home.received[0].data.decode()
    # the sink does not offer DSN, so we report "relayed" (RFC 3461 §5.2.2.1)
    assert "Action: relayed" in raw and "bob@remote.test" in raw and "eve@remote.test" not in raw


def test_hold_release_delete(tmp_path: Path) -> None:
    a = SinkHandler()

    async def body(cfg: Any, runner: QueueRunner) -> None:
        qd = queue_dir(cfg.server.data_dir)
        enq = Enqueuer(cfg.server.data_dir)
        # held before the runner sees it: written straight to disk, runner rescans on poke
        qid = await enq.enqueue(MSG, "alice@example.test", [QRcpt("x@nowhere.test")])
        qd.update(qid, held=True)
        qd.poke(b"reload " + qid.encode())
        await wait_for(lambda: runner.entries.get(qid) is not None and runner.entries[qid].held)
        assert qd.remove(qid)
        qd.poke()
        await wait_for(lambda: qid not in runner.entries)
        qid2 = await enq.enqueue(MSG, "alice@example.test", [QRcpt("b@remote.test")])
        await wait_for(lambda: len(a.received) == 1)
        await wait_for(lambda: qid2 not in qd.ids())  # the runner removes it after the 250 (and its outcome record)

    asyncio.run(run_scenario(tmp_path, {"remote.test": a}, body, retry_schedule=(3600.0,)))


def test_connection_reuse_per_destination(tmp_path: Path) -> None:
    a = SinkHandler()

    async def body(cfg: Any, runner: QueueRunner) -> None:
        enq = Enqueuer(cfg.server.data_dir)
        for i in range(4):
            await enq.enqueue(MSG, "alice@example.test", [QRcpt(f"r{i}@remote.test")])
        await wait_for(lambda: len(a.received) == 4)
        await wait_for(lambda: queue_dir(cfg.server.data_dir).ids() == [])

    asyncio.run(run_scenario(tmp_path, {"remote.test": a}, body, max_per_destination=1))
    assert sorted(r.rcpts[0] for r in a.received) == [f"r{i}@remote.test" for i in range(4)]
    assert a.connections == 1  # one session carried all four transactions


def test_per_destination_concurrency_limit(tmp_path: Path) -> None:
    """8 messages to one host with max_per_destination=2: never more than 2 sessions, and they are reused."""
    a = SinkHandler(data_gate=asyncio.Event())
    other = SinkHandler(data_gate=a.data_gate)

    async def body(cfg: Any, runner: QueueRunner) -> None:
        enq = Enqueuer(cfg.server.data_dir)
        for i in range(8):
            await enq.enqueue(MSG, "alice@example.test", [QRcpt(f"r{i}@remote.test")])
        await enq.enqueue(MSG, "alice@example.test", [QRcpt("x@other.test")])
        # every attempt has started; two hold the destination's sessions, six wait for one
        await wait_for(lambda: a.in_data_now == 2 and len(runner.inflight) == 9)
        # the limit is per destination: another host is not held up by the busy one
        await wait_for(lambda: other.in_data_now == 1)
        assert a.open_now == 2
        assert a.data_gate is not None
        a.data_gate.set()
        await wait_for(lambda: len(a.received) == 8 and len(other.received) == 1)
        await wait_for(lambda: queue_dir(cfg.server.data_dir).ids() == [])

    asyncio.run(run_scenario(tmp_path, {"remote.test": a, "other.test": other}, body, max_per_destination=2))
    assert a.open_peak == 2
    assert a.connections == 2  # the waiting six reused the two sessions (RSET, next transaction)
    assert sorted(r.rcpts[0] for r in a.received) == [f"r{i}@remote.test" for i in range(8)]


def test_mx_resolver_override_fallback_and_null_mx(tmp_path: Path) -> None:
    """MX routing through an injected resolver (never real DNS): dead first MX -> next; null MX -> bounce."""
    from mailsrv.queue.routing import NoRoute

    a, home = SinkHandler(), SinkHandler()

    async def scenario() -> None:
        server, port = await start_sink(a)
        hserver, hport = await start_sink(home)
        dead = __import__("socket").socket()
        dead.bind(("127.0.0.1", 0))  # bound, not listening: connection refused
        dead_port = dead.getsockname()[1]

        async def resolver(domain: str) -> list[tuple[str, int]]:
            if domain == "mx.test":
                return [("127.0.0.1", dead_port), ("127.0.0.1", port)]
            raise NoRoute(f"5.1.10 domain {domain} accepts no mail (null MX)", True)

        cfg = make_config(tmp_path / "data", {}, local_relay=f"127.0.0.1:{hport}")
        runner = QueueRunner(cfg, resolver=resolver, is_local=local_example, signer=None)
        stop = asyncio.Event()
        task = asyncio.ensure_future(runner.run(stop))
        try:
            enq = Enqueuer(cfg.server.data_dir)
            await enq.enqueue(MSG, "alice@example.test", [QRcpt("x@mx.test"), QRcpt("y@nullmx.test")])
            await wait_for(lambda: len(a.received) == 1 and len(home.received) == 1)
            await wait_for(lambda: queue_dir(cfg.server.data_dir).ids() == [])
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
            for s in (server, hserver):
                s.close()
                await s.wait_closed()
            dead.close()

    asyncio.run(scenario())
    assert a.received[0].rcpts == ["x@mx.test"]
    raw = home.received[0].data.decode()
    assert "Final-Recipient: rfc822; y@nullmx.test" in raw and "Status: 5.1.10" in raw


def test_dkim_keygen_cli(tmp_path: Path) -> None:
    import subprocess
    import sys

    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n')
    out = subprocess.run([sys.executable, "-m", "mailsrv", "-c", str(cfg), "dkim", "keygen", "Example.TEST"],
                         capture_output=True, text=True, check=True).stdout
    assert 'mail._domainkey.example.test. IN TXT "v=DKIM1; k=rsa; p=' in out
    key = tmp_path / "data" / "dkim" / "example.test.mail.key"
    assert key.exists() and key.stat().st_mode & 0o777 == 0o600
    again = subprocess.run([sys.executable, "-m", "mailsrv", "-c", str(cfg), "dkim", "keygen", "example.test"],
                           capture_output=True, text=True, check=True).stdout
    assert again.splitlines()[1] == out.splitlines()[1]  # the existing key is kept


def test_outbound_starttls_required_and_opportunistic(tmp_path: Path) -> None:
    import ssl

    import trustme
    from aiosmtpd.smtp import SMTP

    from mailsrv.config import RouteConfig

    ca = trustme.CA()
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(sctx)
    tls_sink, plain_sink = SinkHandler(), SinkHandler()
    seen_tls: list[bool] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()

        class TlsSMTP(SMTP):
            async def smtp_DATA(self, arg: str) -> None:
                seen_tls.append(self._tls_protocol is not None)
                await super().smtp_DATA(arg)

        s1 = await loop.create_server(lambda: TlsSMTP(tls_sink, hostname="tls.test", tls_context=sctx,
                                                      require_starttls=True), "127.0.0.1", 0)
        s2, p2 = await start_sink(plain_sink)
        p1 = s1.sockets[0].getsockname()[1]
        cfg = make_config(tmp_path / "data", {}, retry_schedule=(3600.0,))
        from dataclasses import replace

        cfg = replace(cfg, queue=replace(cfg.queue, route={
            "tls.test": RouteConfig(smarthost=f"127.0.0.1:{p1}", tls="required"),
            "plain.test": RouteConfig(smarthost=f"127.0.0.1:{p2}", tls="required"),
            "opp.test": RouteConfig(smarthost=f"127.0.0.1:{p1}", tls="opportunistic"),
        }))
        runner = QueueRunner(cfg, is_local=local_example, signer=None)
        stop = asyncio.Event()
        task = asyncio.ensure_future(runner.run(stop))
        try:
            enq = Enqueuer(cfg.server.data_dir)
            await enq.enqueue(MSG, "alice@example.test", [QRcpt("a@tls.test"), QRcpt("b@opp.test")])
            qid = await enq.enqueue(MSG, "alice@example.test", [QRcpt("c@plain.test")])
            await wait_for(lambda: len(tls_sink.received) == 2)
            await wait_for(lambda: qid in runner.entries and runner.entries[qid].attempts >= 1)
            env = runner.entries[qid]
            assert env.rcpts[0].status == "pending" and "STARTTLS" in env.rcpts[0].diag
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
            for s in (s1, s2):
                s.close()
                await s.wait_closed()

    asyncio.run(scenario())
    assert seen_tls == [True, True]
    assert plain_sink.received == []  # required TLS never falls back to plain text


# the sink is plain text on loopback on purpose; aiosmtpd warns about AUTH without TLS
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
def test_smarthost_auth(tmp_path: Path) -> None:
    from dataclasses import replace

    from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

    from mailsrv.config import RouteConfig

    sink = SinkHandler()
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        login, password = bytes(data.login), bytes(data.password)
        logins.append((login, password))
        return AuthResult(success=password == b"relay-secret")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(sink, hostname="relay.test", authenticator=authenticator, auth_required=True,
                         auth_require_tls=False), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        cfg = make_config(tmp_path / "data", {})
        cfg = replace(cfg, queue=replace(cfg.queue, route={"*": RouteConfig(
            smarthost=f"127.0.0.1:{port}", tls="none", username="relay-user", password="relay-secret",
            auth_plaintext=True)}))
        runner = QueueRunner(cfg, is_local=local_example, signer=None)
        stop = asyncio.Event()
        task = asyncio.ensure_future(runner.run(stop))
        try:
            await Enqueuer(cfg.server.data_dir).enqueue(MSG, "alice@example.test", [QRcpt("z@anywhere.test")])
            await wait_for(lambda: len(sink.received) == 1)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())
    assert logins == [(b"relay-user", b"relay-secret")]
    assert sink.received[0].rcpts == ["z@anywhere.test"]
