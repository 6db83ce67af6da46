"""An SPF record is the sender's to write (found while fixing what fuzz/ found: str.isdigit() is true
for "²"): a CIDR length in non-ASCII digits is a permerror (RFC 7208 §5.6), not an exception."""

from __future__ import annotations

from typing import Any

import pytest

from mailsrv.net.dns import Resolver
from mailsrv.policy.spf import check_host


@pytest.mark.parametrize("record", ["v=spf1 ip4:192.0.2.0/\u00b2 -all", "v=spf1 a//\u00b9\u00b2 -all"])
async def test_a_superscript_cidr_length_is_a_permerror(dnsserver: Any, resolver: Resolver, record: str) -> None:
    dnsserver.add("example.com", "TXT", record)
    dnsserver.add("example.com", "A", "192.0.2.10")
    res = await check_host(resolver, "192.0.2.10", "example.com", "user@example.com", helo="mx.sender.test")
    assert res.result == "permerror", res
