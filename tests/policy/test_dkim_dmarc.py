"""DKIM and ARC verification (dkimpy over our resolver) and DMARC evaluation, against the local DNS server."""

from __future__ import annotations

from typing import Any

import dkim
import pytest

from mailsrv.net.dns import Resolver
from mailsrv.policy import dmarc
from mailsrv.policy.dkimverify import DkimResult, verify_arc, verify_dkim
from mailsrv.policy.spf import SpfResult


async def test_dkim_pass_fail_none(dnsserver: Any, resolver: Resolver, dkim_key: Any, sign: Any,
                                   message: Any) -> None:
    dnsserver.add("sel._domainkey.sender.test", "TXT", dkim_key.txt)
    signed = sign(message(), "sender.test")
    [r] = await verify_dkim(resolver, signed)
    assert (r.result, r.domain, r.selector) == ("pass", "sender.test", "sel")
    tampered = signed.replace(b"lunch at noon", b"lunch at one")
    [r] = await verify_dkim(resolver, tampered)
    assert r.result == "fail"
    assert await verify_dkim(resolver, message()) == []


async def test_dkim_errors(dnsserver: Any, resolver: Resolver, dkim_key: Any, sign: Any, message: Any) -> None:
    # no key published: permerror (RFC 6376 §6.1.2 PERMFAIL)
    [r] = await verify_dkim(resolver, sign(message(), "nokey.test"))
    assert r.result == "permerror" and "no key" in r.reason
    # key lookup SERVFAIL: temperror
    dnsserver.servfail.add("sel._domainkey.tempfail.test")
    [r] = await verify_dkim(resolver, sign(message(), "tempfail.test"))
    assert r.result == "temperror"
    # a broken key record: permerror
    dnsserver.add("sel._domainkey.badkey.test", "TXT", "v=DKIM1; k=rsa; p=AAAA")
    [r] = await verify_dkim(resolver, sign(message(), "badkey.test"))
    assert r.result == "permerror"
    # a signature without d=: permerror
    broken = b"DKIM-Signature: v=1; a=rsa-sha256; s=sel; h=from; bh=x; b=y\r\n" + message()
    [r] = await verify_dkim(resolver, broken)
    assert r.result == "permerror"


async def test_two_signatures(dnsserver: Any, resolver: Resolver, dkim_key: Any, sign: Any, message: Any) -> None:
    dnsserver.add("sel._domainkey.sender.test", "TXT", dkim_key.txt)
    twice = sign(sign(message(), "sender.test"), "esp.test")
    results = await verify_dkim(resolver, twice)
    assert [(r.domain, r.result) for r in results] == [("esp.test", "permerror"), ("sender.test", "pass")]


async def test_arc_chain(dnsserver: Any, resolver: Resolver, dkim_key: Any, message: Any) -> None:
    dnsserver.add("arc._domainkey.forwarder.test", "TXT", dkim_key.txt)
    msg = b"Authentication-Results: lists.forwarder.test; spf=pass smtp.mailfrom=sender.test\r\n" + message()
    sealed = b"".join(dkim.arc_sign(msg, b"arc", b"forwarder.test", dkim_key.private_pem,
                                    b"lists.forwarder.test")) + msg
    res = await verify_arc(resolver, sealed)
    assert (res.result, res.instances, res.sealer) == ("pass", 1, "forwarder.test")
    broken = sealed.replace(b"lunch at noon", b"lunch at two")
    assert (await verify_arc(resolver, broken)).result == "fail"
    assert (await verify_arc(resolver, message())).result == "none"


def test_org_domain_is_offline_psl() -> None:
    assert dmarc.org_domain("mail.example.co.uk") == "example.co.uk"
    assert dmarc.org_domain("a.b.example.com") == "example.com"
    assert dmarc.org_domain("example.com") == "example.com"
    assert dmarc.org_domain("co.uk") == "co.uk"


@pytest.mark.parametrize(("text", "expected"), [
    ("v=DMARC1; p=reject", ("reject", "reject", "r", "r", 100)),
    ("v=DMARC1; p=quarantine; sp=none; adkim=s; aspf=s; pct=20", ("quarantine", "none", "s", "s", 20)),
    ("v=DMARC1; p=bogus; rua=mailto:x@y.test", ("none", "none", "r", "r", 100)),
    ("v=DMARC1;p=none;pct=500", ("none", "none", "r", "r", 100)),
])
def test_parse_record(text: str, expected: tuple[Any, ...]) -> None:
    rec = dmarc.parse_record(text, "d.test")
    assert rec is not None
    assert (rec.p, rec.sp, rec.adkim, rec.aspf, rec.pct) == expected


@pytest.mark.parametrize("text", ["v=DMARC2; p=reject", "p=reject; v=DMARC1", "v=DMARC1; p=bogus", "spf1"])
def test_parse_record_rejects(text: str) -> None:
    assert dmarc.parse_record(text, "d.test") is None


def spf_result(result: str, domain: str) -> SpfResult:
    return SpfResult(result, "mailfrom", domain)  # type: ignore[arg-type]


async def test_dmarc_evaluate(dnsserver: Any, resolver: Resolver) -> None:
    dnsserver.add("_dmarc.sender.test", "TXT", "v=DMARC1; p=reject; sp=quarantine")
    dnsserver.add("_dmarc.strict.test", "TXT", "v=DMARC1; p=reject; aspf=s")
    dnsserver.add("_dmarc.none.test", "TXT", "v=DMARC1; p=none")
    dnsserver.add("_dmarc.dup.test", "TXT", "v=DMARC1; p=reject")
    dnsserver.add("_dmarc.dup.test", "TXT", "v=DMARC1; p=none")
    dnsserver.servfail.add("_dmarc.broken.test")
    ok_dkim = [DkimResult("pass", "sender.test", "sel")]
    # aligned SPF (relaxed: a subdomain counts) or aligned DKIM pass
    r = await dmarc.evaluate(resolver, ["sender.test"], spf_result("pass", "bounces.sender.test"), [])
    assert r.result == "pass"
    r = await dmarc.evaluate(resolver, ["sender.test"], spf_result("fail", "sender.test"), ok_dkim)
    assert r.result == "pass"
    # spoof: nothing aligned
    r = await dmarc.evaluate(resolver, ["sender.test"], spf_result("pass", "evil.test"),
                             [DkimResult("pass", "evil.test", "s")])
    assert (r.result, r.disposition) == ("fail", "reject")
    # subdomain policy from the organizational domain's record
    r = await dmarc.evaluate(resolver, ["news.sender.test"], spf_result("fail", "evil.test"), [])
    assert (r.result, r.policy, r.disposition) == ("fail", "quarantine", "quarantine")
    # strict SPF alignment: a subdomain does not count
    r = await dmarc.evaluate(resolver, ["strict.test"], spf_result("pass", "mail.strict.test"), [])
    assert r.result == "fail"
    r = await dmarc.evaluate(resolver, ["none.test"], None, [])
    assert (r.result, r.disposition) == ("fail", "none")
    assert (await dmarc.evaluate(resolver, ["nodmarc.test"], None, [])).result == "none"
    assert (await dmarc.evaluate(resolver, ["dup.test"], None, [])).result == "none"  # two records: none
    assert (await dmarc.evaluate(resolver, ["broken.test"], None, [])).result == "temperror"
    # an SPF temperror with nothing aligned is a temperror, not a fail
    r = await dmarc.evaluate(resolver, ["sender.test"], spf_result("temperror", "sender.test"), [])
    assert r.result == "temperror"
    # no From domain: outside DMARC
    assert (await dmarc.evaluate(resolver, [], None, [])).result == "none"
    # several From domains: the strictest policy applies
    r = await dmarc.evaluate(resolver, ["none.test", "sender.test"], None, [])
    assert r.disposition == "reject"


async def test_dmarc_pct_sampling(dnsserver: Any, resolver: Resolver) -> None:
    import random

    dnsserver.add("_dmarc.half.test", "TXT", "v=DMARC1; p=reject; pct=50")
    rng = random.Random(7)
    seen = {(await dmarc.evaluate(resolver, ["half.test"], None, [], rng=rng)).disposition for _ in range(40)}
    assert seen == {"reject", "quarantine"}  # RFC 7489 §6.6.4: the unsampled get the next weaker policy
