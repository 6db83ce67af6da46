"""The outbound queue's MX routing over the shared resolver (mailsrv.net.dns), answered by the local DNS server."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from mailsrv.config import Config, PolicyConfig
from mailsrv.net.dns import Resolver
from mailsrv.queue.routing import NoRoute, Router, mx_resolver


async def test_mx_records_by_preference_and_fallbacks(dnsserver: Any, resolver: Resolver) -> None:
    dnsserver.add("multi.test", "MX", "20 backup.multi.test.")
    dnsserver.add("multi.test", "MX", "10 primary.multi.test.")
    dnsserver.add("nomx.test", "A", "192.0.2.7")
    dnsserver.add("null.test", "MX", "0 .")
    dnsserver.servfail.add("broken.test")
    resolve = mx_resolver(resolver)
    assert await resolve("multi.test") == [("primary.multi.test", 25), ("backup.multi.test", 25)]
    assert await resolve("nomx.test") == [("nomx.test", 25)]  # RFC 5321 §5.1 implicit MX
    with pytest.raises(NoRoute) as nx:
        await resolve("missing.test")
    assert nx.value.permanent and "5.1.2" in str(nx.value)
    with pytest.raises(NoRoute) as null:
        await resolve("null.test")
    assert null.value.permanent and "5.1.10" in str(null.value)
    with pytest.raises(NoRoute) as temp:
        await resolve("broken.test")
    assert not temp.value.permanent and "4.4.3" in str(temp.value)


async def test_router_uses_the_configured_servers_and_cache(dnsserver: Any) -> None:
    dnsserver.add("dest.test", "MX", "10 mx.dest.test.")
    cfg = replace(Config(), policy=PolicyConfig(nameservers=(dnsserver.address,), dns_timeout=1.0))
    router = Router(cfg)
    first = await router.destination("dest.test")
    assert first.hosts == [("mx.dest.test", 25)] and first.key == "mx.dest.test:25"
    asked = len(dnsserver.queries)
    again = await router.destination("DEST.test")
    assert again.hosts == first.hosts
    assert len(dnsserver.queries) == asked  # answered from the shared resolver's cache
