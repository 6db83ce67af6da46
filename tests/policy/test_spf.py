"""SPF (RFC 7208) check_host over the local DNS server: every result, mechanisms, limits, macros."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailsrv.net.dns import Resolver
from mailsrv.policy import spf
from mailsrv.policy.spf import _Ctx, _expand, check_host


def zone(d: Any) -> None:
    """RFC 7208 Appendix A's example.com, plus records for the cases below."""
    d.add("example.com", "MX", "10 mail-a.example.com.")
    d.add("example.com", "MX", "20 mail-b.example.com.")
    d.add("example.com", "A", "192.0.2.10")
    d.add("example.com", "A", "192.0.2.11")
    d.add("amy.example.com", "A", "192.0.2.65")
    d.add("bob.example.com", "A", "192.0.2.66")
    d.add("mail-a.example.com", "A", "192.0.2.129")
    d.add("mail-b.example.com", "A", "192.0.2.130")
    d.add("mail-c.example.org", "A", "192.0.2.140")
    d.add("example.org", "TXT", "v=spf1 include:example.com -all")


async def result(resolver: Resolver, record: str | None, ip: str, d: Any, domain: str = "example.com",
                 sender: str = "user@example.com") -> str:
    if record is not None:
        d.add(domain, "TXT", record)
    zone(d)
    return (await check_host(resolver, ip, domain, sender, helo="mx.sender.test")).result


# RFC 7208 Appendix A.1-A.4 cases, as (record, client ip, expected)
APPENDIX_A = [
    ("v=spf1 +all", "192.0.2.200", "pass"),
    ("v=spf1 a -all", "192.0.2.10", "pass"),
    ("v=spf1 a -all", "192.0.2.65", "fail"),
    ("v=spf1 a:example.org -all", "192.0.2.10", "fail"),  # example.org has no A record
    ("v=spf1 mx -all", "192.0.2.129", "pass"),
    ("v=spf1 mx -all", "192.0.2.10", "fail"),
    ("v=spf1 mx:mail-c.example.org -all", "192.0.2.140", "fail"),  # no MX there: a void lookup
    ("v=spf1 ip4:192.0.2.128/28 -all", "192.0.2.130", "pass"),
    ("v=spf1 ip4:192.0.2.128/28 -all", "192.0.2.65", "fail"),
    ("v=spf1 a/30 -all", "192.0.2.9", "pass"),
    ("v=spf1 a:amy.example.com/31 ~all", "192.0.2.64", "pass"),
    ("v=spf1 a:amy.example.com ~all", "192.0.2.64", "softfail"),
    ("v=spf1 ?all", "192.0.2.1", "neutral"),
    ("v=spf1", "192.0.2.1", "neutral"),
    ("v=spf1 ip6:2001:db8::/32 -all", "2001:db8::cb01", "pass"),
    ("v=spf1 ip6:2001:db8::/32 -all", "192.0.2.1", "fail"),
    ("v=spf1 ip4:192.0.2.1 -all", "::ffff:192.0.2.1", "pass"),  # IPv4-mapped is IPv4 (RFC 7208 §5)
]


@pytest.mark.parametrize(("record", "ip", "expected"), APPENDIX_A)
async def test_appendix_a(dnsserver: Any, resolver: Resolver, record: str, ip: str, expected: str) -> None:
    assert await result(resolver, record, ip, dnsserver) == expected


async def test_none_without_record(dnsserver: Any, resolver: Resolver) -> None:
    assert await result(resolver, None, "192.0.2.1", dnsserver) == "none"
    dnsserver.add("other.example.com", "TXT", "some unrelated text")
    assert await result(resolver, None, "192.0.2.1", dnsserver, domain="other.example.com") == "none"
    # not a domain name at all (RFC 7208 §4.3)
    assert (await check_host(resolver, "192.0.2.1", "localhost", "x@localhost")).result == "none"


async def test_include_and_redirect(dnsserver: Any, resolver: Resolver) -> None:
    dnsserver.add("example.com", "TXT", "v=spf1 ip4:192.0.2.0/26 -all")
    dnsserver.add("redir.test", "TXT", "v=spf1 redirect=example.com")
    dnsserver.add("inc.test", "TXT", "v=spf1 include:example.com ~all")
    assert await result(resolver, None, "192.0.2.5", dnsserver, domain="example.org") == "pass"
    assert await result(resolver, None, "192.0.2.99", dnsserver, domain="example.org") == "fail"
    assert await result(resolver, None, "192.0.2.5", dnsserver, domain="redir.test") == "pass"
    assert await result(resolver, None, "192.0.2.99", dnsserver, domain="redir.test") == "fail"
    # an include that fails does not match: the outer ~all decides (RFC 7208 §5.2)
    assert await result(resolver, None, "192.0.2.99", dnsserver, domain="inc.test") == "softfail"


async def test_exists_with_macros(dnsserver: Any, resolver: Resolver) -> None:
    dnsserver.add("5.2.0.192.in-addr._spf.example.com", "A", "127.0.0.2")
    record = "v=spf1 exists:%{ir}.%{v}._spf.%{d2} -all"
    assert await result(resolver, record, "192.0.2.5", dnsserver) == "pass"
    assert await result(resolver, None, "192.0.2.6", dnsserver) == "fail"


@pytest.mark.parametrize(("record", "why"), [
    ("v=spf1 -all", None),
    ("v=spf1 foo:bar -all", "unknown mechanism"),
    ("v=spf1 ip4:192.0.2.300 -all", "bad ip4"),
    ("v=spf1 include -all", "include needs"),
    ("v=spf1 redirect=a.test redirect=b.test", "twice"),
    ("v=spf1 include:nothing.test -all", "no SPF record"),
    ("v=spf1 a:%{x}.test -all", "bad macro"),
    ("v=spf1 ip4:192.0.2.0/33 -all", "bad ip4"),
])
async def test_permerror(dnsserver: Any, resolver: Resolver, record: str, why: str | None) -> None:
    dnsserver.add("perm.test", "TXT", record)
    if why is None:
        dnsserver.add("perm.test", "TXT", "v=spf1 +all")  # two records
        why = "more than one"
    res = await check_host(resolver, "192.0.2.1", "perm.test", "a@perm.test")
    assert res.result == "permerror"
    assert why in res.detail


async def test_lookup_limits(dnsserver: Any, resolver: Resolver) -> None:
    # RFC 7208 §4.6.4: the 11th DNS-querying term is a permerror
    dnsserver.add("loop.test", "TXT", "v=spf1 " + " ".join(f"a:h{i}.loop.test" for i in range(11)) + " -all")
    for i in range(11):
        dnsserver.add(f"h{i}.loop.test", "A", "198.51.100.1")
    res = await check_host(resolver, "192.0.2.1", "loop.test", "a@loop.test")
    assert res.result == "permerror" and "too many DNS lookups" in res.detail
    # include loops end at the limit too
    dnsserver.add("self.test", "TXT", "v=spf1 include:self.test -all")
    assert (await check_host(resolver, "192.0.2.1", "self.test", "a@self.test")).result == "permerror"
    # more than two void lookups
    dnsserver.add("void.test", "TXT", "v=spf1 a:v1.test a:v2.test a:v3.test -all")
    res = await check_host(resolver, "192.0.2.1", "void.test", "a@void.test")
    assert res.result == "permerror" and "void" in res.detail


async def test_temperror(dnsserver: Any, resolver: Resolver) -> None:
    dnsserver.servfail.add("temp.test")
    assert (await check_host(resolver, "192.0.2.1", "temp.test", "a@temp.test")).result == "temperror"
    dnsserver.add("inc-temp.test", "TXT", "v=spf1 include:temp.test -all")
    assert (await check_host(resolver, "192.0.2.1", "inc-temp.test", "a@inc-temp.test")).result == "temperror"


async def test_ptr_and_exp(dnsserver: Any, resolver: Resolver) -> None:
    dnsserver.add("7.2.0.192.in-addr.arpa", "PTR", "mail.ptr.test.")
    dnsserver.add("mail.ptr.test", "A", "192.0.2.7")
    dnsserver.add("ptr.test", "TXT", "v=spf1 ptr -all exp=explain.ptr.test")
    dnsserver.add("explain.ptr.test", "TXT", "%{i} is not one of %{d}'s hosts")
    assert (await check_host(resolver, "192.0.2.7", "ptr.test", "a@ptr.test")).result == "pass"
    res = await check_host(resolver, "192.0.2.8", "ptr.test", "a@ptr.test")
    assert res.result == "fail"
    assert res.explanation == "192.0.2.8 is not one of ptr.test's hosts"


def ctx(ip: str = "192.0.2.3") -> _Ctx:
    return _Ctx(ipaddress.ip_address(ip), "strong-bad@email.example.com", "mx.example.org", "")


# RFC 7208 §7.4 macro examples
MACROS = [
    ("%{s}", "strong-bad@email.example.com"),
    ("%{o}", "email.example.com"),
    ("%{d}", "email.example.com"),
    ("%{d4}", "email.example.com"),
    ("%{d3}", "email.example.com"),
    ("%{d2}", "example.com"),
    ("%{d1}", "com"),
    ("%{dr}", "com.example.email"),
    ("%{d2r}", "example.email"),
    ("%{l}", "strong-bad"),
    ("%{l-}", "strong.bad"),
    ("%{lr}", "strong-bad"),
    ("%{lr-}", "bad.strong"),
    ("%{l1r-}", "strong"),
    ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
    ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
    ("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"),
    ("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", "3.2.0.192.in-addr.strong.lp._spf.example.com"),
    ("%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"),
    ("a%%b%_c%-d", "a%b c%20d"),
]


@pytest.mark.parametrize(("spec", "expected"), MACROS)
def test_macro_examples(spec: str, expected: str) -> None:
    assert _expand(spec, ctx(), "email.example.com") == expected


def test_macro_ipv6() -> None:
    assert _expand("%{ir}.%{v}._spf.%{d2}", ctx("2001:db8::cb01"), "email.example.com") == (
        "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com")


@given(st.text(max_size=60))
def test_expand_never_crashes(spec: str) -> None:
    try:
        out = _expand(spec, ctx(), "email.example.com")
    except spf.PermError:
        return
    assert isinstance(out, str)


_TERMS = st.sampled_from(["+all", "-all", "~all", "?all", "a", "mx", "ptr", "ip4:192.0.2.0/24", "ip6:2001:db8::/32",
                          "include:inc.fuzz.test", "exists:%{i}.fuzz.test", "redirect=red.fuzz.test",
                          "exp=e.fuzz.test", "a/24", "mx:x.fuzz.test//64", "foo=bar", "bogus", "ip4:1.2.3",
                          "%{l}", "a:%{d2}", "v=spf1"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_TERMS, max_size=8))
async def test_any_record_gives_a_result(dnsserver: Any, resolver: Resolver, terms: list[str]) -> None:
    """Hypothesis: any record built from real terms yields one of the seven results, never an exception."""
    dnsserver.records.pop("fuzz.test", None)
    dnsserver.add("fuzz.test", "TXT", "v=spf1 " + " ".join(terms))
    dnsserver.add("inc.fuzz.test", "TXT", "v=spf1 ip4:192.0.2.0/25 -all")
    resolver.clear()
    res = await check_host(resolver, "192.0.2.1", "fuzz.test", "u@fuzz.test")
    assert res.result in ("none", "neutral", "pass", "fail", "softfail", "temperror", "permerror")
