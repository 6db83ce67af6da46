"""Per-connection address checks (listener trusted_networks, policy skip_networks) are remembered per
address: the same answers as parsing each time, for IPv4, IPv6 and garbage, within a fixed bound."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from mailsrv.config import Config, ListenerConfig, PolicyConfig
from mailsrv.net.dns import Resolver
from mailsrv.net.service import ServiceContext
from mailsrv.policy import pipeline
from mailsrv.policy.pipeline import Policy
from mailsrv.smtp import server
from mailsrv.smtp.server import SmtpService

from .conftest import FakeBackend

NETS = ("192.0.2.0/24", "2001:db8::/32")
ADDRESSES = st.one_of(st.ip_addresses().map(str), st.sampled_from(["192.0.2.9", "2001:db8::1", "x", "", "1.2.3"]))


def _inside(ip: str, nets: tuple[str, ...]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in ipaddress.ip_network(n) for n in nets)


def _service(tmp_path: Path) -> SmtpService:
    lcfg = ListenerConfig(protocol="smtp", bind=("127.0.0.1:0",), tls="none", trusted_networks=NETS)
    ctx = ServiceContext(config=Config(), name="smtp", listener=lcfg, ssl_context=None)
    return SmtpService(ctx, backend=FakeBackend(tmp_path), sasl=None)


@given(st.lists(ADDRESSES, max_size=30))
def test_trusted_networks_answers_are_those_of_a_parse(addresses: list[str]) -> None:
    svc = _service(Path("/nonexistent"))
    for ip in addresses + addresses:  # the second time from what was remembered
        assert svc._is_trusted(ip) == _inside(ip, NETS)


@given(st.lists(ADDRESSES, max_size=30))
def test_skip_networks_answers_are_those_of_a_parse(addresses: list[str]) -> None:
    policy = Policy(PolicyConfig(skip_networks=NETS), hostname="mx.test", resolver=Resolver(()), state=None)
    for ip in addresses + addresses:
        assert policy.skipped(ip) == _inside(ip, NETS)


def test_remembered_addresses_stay_bounded(tmp_path: Path) -> None:
    svc = _service(tmp_path)
    policy = Policy(PolicyConfig(skip_networks=NETS), hostname="mx.test", resolver=Resolver(()), state=None)
    for i in range(3 * server.MAX_KNOWN_IPS):
        ip = str(ipaddress.ip_address(0xC0000000 + i))  # 192.0.0.0 onwards: crosses 192.0.2.0/24
        assert svc._is_trusted(ip) == policy.skipped(ip) == _inside(ip, NETS)
        assert len(svc._trusted_ips) <= server.MAX_KNOWN_IPS
        assert len(policy._skipped) <= pipeline.MAX_KNOWN_IPS
