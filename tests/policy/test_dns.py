"""The shared resolver against a local authoritative server: answers, cache, errors, timeouts."""

from __future__ import annotations

import time
from typing import Any as DnsServer

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailsrv.net.dns import DnsTempError, Resolver, parse_nameserver


async def test_answers_and_cache(dnsserver: DnsServer, resolver: Resolver) -> None:
    dnsserver.add("host.example.test", "A", "192.0.2.1")
    dnsserver.add("host.example.test", "AAAA", "2001:db8::1")
    dnsserver.add("example.test", "MX", "20 mx2.example.test.")
    dnsserver.add("example.test", "MX", "10 mx1.example.test.")
    dnsserver.add("1.2.0.192.in-addr.arpa", "PTR", "host.example.test.")
    assert sorted(await resolver.addresses("host.example.test")) == ["192.0.2.1", "2001:db8::1"]
    assert await resolver.mx("example.test") == ["mx1.example.test", "mx2.example.test"]
    assert await resolver.ptr("192.0.2.1") == ["host.example.test"]
    sent = resolver.queries
    assert await resolver.addresses("HOST.example.test.") == ["192.0.2.1", "2001:db8::1"]
    assert resolver.queries == sent  # served from the cache, case and final dot ignored


async def test_long_txt_is_joined(dnsserver: DnsServer, resolver: Resolver) -> None:
    long = "v=spf1 " + " ".join(f"ip4:192.0.2.{i}" for i in range(40)) + " -all"
    assert len(long) > 255
    dnsserver.add("long.example.test", "TXT", long)
    assert await resolver.txt("long.example.test") == [long]


async def test_big_answer_falls_back_to_tcp(dnsserver: DnsServer, resolver: Resolver) -> None:
    for i in range(60):
        dnsserver.add("many.example.test", "TXT", f"record number {i} " + "x" * 20)
    assert len(await resolver.txt("many.example.test")) == 60


async def test_nxdomain_nodata_are_cached_empty(dnsserver: DnsServer, resolver: Resolver) -> None:
    dnsserver.add("exists.example.test", "A", "192.0.2.7")
    ans = await resolver.query("nope.example.test", "A")
    assert not ans and ans.nxdomain
    nodata = await resolver.query("exists.example.test", "TXT")
    assert not nodata and not nodata.nxdomain
    n = len(dnsserver.queries)
    await resolver.query("nope.example.test", "A")
    assert len(dnsserver.queries) == n


async def test_servfail_and_timeout_are_temporary_and_not_cached(dnsserver: DnsServer) -> None:
    r = Resolver([dnsserver.address], timeout=0.3)
    dnsserver.servfail.add("broken.example.test")
    with pytest.raises(DnsTempError):
        await r.query("broken.example.test", "TXT")
    dnsserver.drop.add("slow.example.test")
    t0 = time.monotonic()
    with pytest.raises(DnsTempError):
        await r.query("slow.example.test", "TXT")
    assert time.monotonic() - t0 < 3
    dnsserver.servfail.clear()
    dnsserver.add("broken.example.test", "TXT", "ok now")
    assert await r.txt("broken.example.test") == ["ok now"]


async def test_concurrent_lookups_share_one_query(dnsserver: DnsServer, resolver: Resolver) -> None:
    import asyncio

    dnsserver.add("shared.example.test", "TXT", "one")
    results = await asyncio.gather(*(resolver.txt("shared.example.test") for _ in range(20)))
    assert all(r == ["one"] for r in results)
    assert dnsserver.queries.count(("shared.example.test", "TXT")) == 1


@pytest.mark.parametrize(("spec", "expected"), [
    ("127.0.0.1", ("127.0.0.1", 53)),
    ("127.0.0.1:5353", ("127.0.0.1", 5353)),
    ("[::1]:5300", ("::1", 5300)),
    ("::1", ("::1", 53)),
])
def test_parse_nameserver(spec: str, expected: tuple[str, int]) -> None:
    assert parse_nameserver(spec) == expected


@given(st.text(max_size=30))
def test_parse_nameserver_rejects_or_parses(spec: str) -> None:
    try:
        host, port = parse_nameserver(spec)
    except ValueError:
        return
    assert 0 < port < 65536 and host
