"""DNSBL end to end over real SMTP: clients on 127.0.0.2 / 127.0.0.3 (the whole 127/8 is local), a config
that exempts only 127.0.0.1, and the local DNS server answering the blocklist zone."""

from __future__ import annotations

import smtplib
from typing import Any

import pytest

ZONE = "bl.example.net"


def send_from(source: str, port: int, data: bytes) -> Any:
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(source, 0)) as c:
        c.ehlo("mail.sender.test")
        return c.sendmail("alice@sender.test", ["bob@example.test"], data)


def exempt_only_localhost(**kw: Any) -> dict[str, Any]:
    return {"dnsbl_zones": (ZONE,), "skip_networks": ("127.0.0.1/32",),
            "dnsbl_skip_networks": ("127.0.0.1/32",), **kw}


def test_listed_client_refused_with_zone_named(policy_server: Any, dnsserver: Any, message: Any) -> None:
    srv = policy_server(**exempt_only_localhost(dnsbl_reject=True))
    dnsserver.add(f"2.0.0.127.{ZONE}", "A", "127.0.0.2")
    with pytest.raises(smtplib.SMTPSenderRefused) as exc:
        send_from("127.0.0.2", srv.port, message())
    assert exc.value.smtp_code == 554
    assert exc.value.smtp_error.decode().startswith("5.7.1") and ZONE in exc.value.smtp_error.decode()
    assert (f"2.0.0.127.{ZONE}", "A") in dnsserver.queries
    # not listed: accepted and delivered
    send_from("127.0.0.3", srv.port, message())
    assert len(srv.backend.delivered) == 1
    assert (f"3.0.0.127.{ZONE}", "A") in dnsserver.queries
    # the exempt address is never looked up (and skips the inbound checks)
    send_from("127.0.0.1", srv.port, message())
    assert len(srv.backend.delivered) == 2
    assert not any(name.startswith("1.0.0.127.") for name, _ in dnsserver.queries)


def test_listing_only_scores_without_dnsbl_reject(policy_server: Any, dnsserver: Any, message: Any) -> None:
    srv = policy_server(**exempt_only_localhost(junk_score=4.0))
    dnsserver.add(f"2.0.0.127.{ZONE}", "A", "127.0.0.4")
    send_from("127.0.0.2", srv.port, message())
    data = srv.backend.delivered[0].data
    assert f"DNSBL_LISTED({ZONE})".encode() in data.replace(b"\r\n\t", b"")
    assert srv.backend.delivered[0].junk


def test_default_skip_networks_never_look_up_loopback(policy_server: Any, dnsserver: Any, message: Any) -> None:
    srv = policy_server(dnsbl_zones=(ZONE,), dnsbl_reject=True)  # skip_networks=() but default DNSBL skips
    dnsserver.add(f"2.0.0.127.{ZONE}", "A", "127.0.0.2")
    send_from("127.0.0.2", srv.port, message())
    assert len(srv.backend.delivered) == 1
    assert not any(name.endswith(ZONE) for name, _ in dnsserver.queries)
