"""8-bit mail toward a hop without 8BITMIME (converted, DKIM still valid) or without SMTPUTF8 (bounced, 5.6.7)."""

from __future__ import annotations

import email
from pathlib import Path
from typing import Any

import dkim

from mailsrv.queue.dkim import keygen
from mailsrv.queue.enqueue import Enqueuer
from mailsrv.queue.runner import QueueRunner
from mailsrv.queue.store import QRcpt, queue_dir

from .conftest import SinkHandler, run_scenario, wait_for

TEXT = "Grüße aus Zürich — ünïcödé body, € 5\r\n" * 40
MSG = (b"Return-Path: <alice@example.test>\r\nFrom: alice@example.test\r\nTo: bob@remote.test\r\n"
       b"Subject: 8bit\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
       b"Content-Transfer-Encoding: 8bit\r\n\r\n" + TEXT.encode())


def _verify(data_dir: Path, message: bytes) -> bool:
    _, record = keygen(data_dir, "example.test", "mail")
    txt = record.split('"')[1].encode()
    return bool(dkim.verify(message, dnsfunc=lambda name, timeout=5: txt))


def _deliver(tmp_path: Path, sink: SinkHandler, *, body: str = "8BITMIME", smtputf8: bool = False,
             home: SinkHandler | None = None, sender: str = "alice@example.test") -> None:
    keygen(tmp_path / "data", "example.test", "mail")

    async def scenario(cfg: Any, runner: QueueRunner) -> None:
        await Enqueuer(cfg.server.data_dir).enqueue(MSG, sender, [QRcpt("bob@remote.test")],
                                                    body=body, smtputf8=smtputf8)
        await wait_for(lambda: queue_dir(cfg.server.data_dir).ids() == [] and
                       (len(sink.received) == 1 or (home is not None and len(home.received) == 1)))
        assert list(queue_dir(cfg.server.data_dir).tmp.iterdir()) == []  # the converted copy is gone

    routes = {"remote.test": sink} | ({"example.test": home} if home is not None else {})
    import asyncio

    asyncio.run(run_scenario(tmp_path, routes, scenario))


def test_downgraded_for_hop_without_8bitmime_and_signature_valid(tmp_path: Path) -> None:
    sink = SinkHandler(hide=("8BITMIME",))
    _deliver(tmp_path, sink)
    got = sink.received[0].data
    assert got.isascii() and b"Content-Transfer-Encoding: quoted-printable" in got
    assert b"BODY=8BITMIME" not in " ".join(sink.mail_options[0]).encode()
    assert _verify(tmp_path / "data", got)  # signed after the conversion
    part = email.message_from_bytes(got)
    assert part.get_payload(decode=True).decode("utf-8").replace("\r\n", "\n") == TEXT.replace("\r\n", "\n")


def test_8bit_passes_unchanged_to_8bitmime_hop(tmp_path: Path) -> None:
    sink = SinkHandler()
    _deliver(tmp_path, sink)
    got = sink.received[0].data
    assert "BODY=8BITMIME" in sink.mail_options[0]
    assert got.endswith(TEXT.encode()) and b"quoted-printable" not in got
    assert _verify(tmp_path / "data", got)


def test_undeclared_8bit_body_is_also_converted(tmp_path: Path) -> None:
    sink = SinkHandler(hide=("8BITMIME",))
    _deliver(tmp_path, sink, body="7BIT")  # the client sent 8-bit bytes without BODY=8BITMIME
    assert sink.received[0].data.isascii()
    assert _verify(tmp_path / "data", sink.received[0].data)


def test_smtputf8_to_hop_without_it_bounces_5_6_7(tmp_path: Path) -> None:
    sink = SinkHandler()  # aiosmtpd does not announce SMTPUTF8 unless asked
    home = SinkHandler()  # the sender's MTA lacks SMTPUTF8 too: the bounce must still reach it
    _deliver(tmp_path, sink, smtputf8=True, home=home)
    assert sink.received == []
    raw = home.received[0].data.decode()
    assert home.received[0].sender == "" and "Action: failed" in raw and "Status: 5.6.7" in raw
    assert "SMTPUTF8" not in home.mail_options[0]  # an ASCII sender needs no SMTPUTF8 for its bounce


def test_bounce_to_utf8_sender_keeps_smtputf8(tmp_path: Path) -> None:
    sink = SinkHandler(rcpt_script={"bob@remote.test": ["550 5.1.1 no such user"]}, smtputf8=True)
    home = SinkHandler(smtputf8=True)
    _deliver(tmp_path, sink, smtputf8=True, home=home, sender="\u7528\u6237@example.test")
    assert home.received[0].rcpts == ["\u7528\u6237@example.test"] and "Status: 5.1.1" in home.received[0].data.decode()
    assert "SMTPUTF8" in home.mail_options[0]  # RFC 6531: a UTF-8 address needs it
