"""DMARC (RFC 7489): policy discovery, identifier alignment, and the resulting disposition.

The organizational domain (RFC 7489 §3.2) comes from the Public Suffix List
shipped inside the ``publicsuffixlist`` package: no download at run time.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from publicsuffixlist import PublicSuffixList

from mailsrv.net.dns import DnsTempError, Resolver
from mailsrv.policy.dkimverify import DkimResult
from mailsrv.policy.headers import tag_list
from mailsrv.policy.spf import SpfResult

Policy = Literal["none", "quarantine", "reject"]
_POLICIES = ("none", "quarantine", "reject")


@lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


@lru_cache(maxsize=4096)
def org_domain(domain: str) -> str:
    """RFC 7489 §3.2: the public suffix plus one label (the domain itself when it is a suffix)."""
    domain = domain.lower().rstrip(".")
    return _psl().privatesuffix(domain) or domain


@dataclass(frozen=True)
class DmarcRecord:
    p: Policy
    sp: Policy
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100
    domain: str = ""  # where the record was found


@dataclass(frozen=True)
class DmarcResult:
    result: Literal["pass", "fail", "none", "temperror", "permerror"]
    from_domain: str = ""
    policy: Policy = "none"  # the policy published for this From domain
    disposition: Policy = "none"  # what to do after pct sampling
    reason: str = ""


def parse_record(text: str, domain: str) -> DmarcRecord | None:
    """RFC 7489 §6.3/§6.6.3: None when this is not a usable DMARC record."""
    if not text.startswith("v=DMARC1"):
        return None
    tags = tag_list(text)
    if tags.get("v") != "DMARC1":
        return None
    p = tags.get("p", "").lower()
    if p not in _POLICIES:
        # RFC 7489 §6.6.3 step 6: a record with an invalid or missing p= but a valid rua= is p=none;
        # without rua= it is not a valid record.
        if "rua" not in tags:
            return None
        p = "none"
    sp = tags.get("sp", p).lower()
    if sp not in _POLICIES:
        sp = p
    try:
        pct = min(max(int(tags.get("pct", "100")), 0), 100)
    except ValueError:
        pct = 100
    adkim = "s" if tags.get("adkim", "r").lower() == "s" else "r"
    aspf = "s" if tags.get("aspf", "r").lower() == "s" else "r"
    return DmarcRecord(p, sp, adkim, aspf, pct, domain)  # type: ignore[arg-type]


class InvalidRecord(Exception):
    """The domain publishes a DMARC record (``v=DMARC1``) that cannot be used (RFC 7489 §11.2 permerror)."""


async def _fetch(resolver: Resolver, domain: str) -> DmarcRecord | None:
    txts = await resolver.txt(f"_dmarc.{domain}")
    recs = [r for t in txts if (r := parse_record(t, domain)) is not None]
    # RFC 7489 §6.6.3 step 5: more than one record -> no policy
    if len(recs) == 1:
        return recs[0]
    if not recs and any(re.match(r"v\s*=\s*DMARC1\s*(;|$)", t) for t in txts):
        raise InvalidRecord(f"_dmarc.{domain}: unusable DMARC record")
    return None


async def discover(resolver: Resolver, from_domain: str) -> DmarcRecord | None:
    """RFC 7489 §6.6.3: the From domain's record, else its organizational domain's.

    Raises DnsTempError, or InvalidRecord when the record found is not usable.
    """
    rec = await _fetch(resolver, from_domain)
    if rec is None:
        org = org_domain(from_domain)
        if org != from_domain:
            rec = await _fetch(resolver, org)
    return rec


async def warm(resolver: Resolver, from_domains: Sequence[str]) -> None:
    """Ask for the From domains' ``_dmarc`` records that :func:`evaluate` reads first, so that they are cached
    (or in flight, then shared) when it reads them: started beside DKIM verification, the DMARC lookup costs
    no round trip of its own. No extra query (the organizational domain's record, asked only when the
    domain has none, is left to :func:`evaluate`); failures are left to :func:`evaluate` to meet."""

    async def one(domain: str) -> None:
        try:
            await resolver.txt(f"_dmarc.{domain}")
        except Exception:
            pass

    await asyncio.gather(*(one(d) for d in sorted(set(from_domains))))


def aligned(a: str, b: str, mode: str) -> bool:
    """RFC 7489 §3.1: strict = identical, relaxed = same organizational domain."""
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    return a == b if mode == "s" else org_domain(a) == org_domain(b)


async def evaluate(resolver: Resolver, from_domains: Sequence[str], spf: SpfResult | None,
                   dkim_results: Sequence[DkimResult], *, rng: random.Random | None = None) -> DmarcResult:
    """The DMARC result for a message whose RFC5322.From domains are ``from_domains``."""
    distinct = sorted(set(from_domains))
    if not distinct:
        # RFC 7489 §6.6.1: messages without a usable From are out of DMARC's scope
        return DmarcResult("none", reason="no From domain")
    if len(distinct) > 1:
        # RFC 7489 §6.6.1: multiple From domains; we apply the strictest of their policies
        results = [await evaluate(resolver, [d], spf, dkim_results, rng=rng) for d in distinct]
        return max(results, key=lambda r: (_POLICIES.index(r.disposition), r.result == "fail"))
    from_domain = distinct[0]
    try:
        rec = await discover(resolver, from_domain)
    except DnsTempError as exc:
        return DmarcResult("temperror", from_domain, reason=str(exc))
    except InvalidRecord as exc:
        return DmarcResult("permerror", from_domain, reason=str(exc))
    if rec is None:
        return DmarcResult("none", from_domain, reason="no DMARC record")
    # RFC 7489 §6.6.2: SPF counts when it passed for an aligned MAIL FROM domain
    spf_ok = spf is not None and spf.result == "pass" and aligned(spf.domain, from_domain, rec.aspf)
    dkim_ok = any(r.result == "pass" and aligned(r.domain, from_domain, rec.adkim) for r in dkim_results)
    policy: Policy = rec.sp if rec.domain != from_domain else rec.p
    if spf_ok or dkim_ok:
        return DmarcResult("pass", from_domain, policy, "none", "aligned " + ("dkim" if dkim_ok else "spf"))
    spf_temp = spf is not None and spf.result == "temperror"
    if spf_temp or any(r.result == "temperror" for r in dkim_results):
        # an identifier could not be checked: do not apply a policy on a guess (retry later)
        return DmarcResult("temperror", from_domain, policy, "none", "authentication temperror")
    disposition = policy
    # RFC 7489 §6.6.4: pct sampling; the unsampled get the next weaker policy
    if rec.pct < 100 and (rng or random).randrange(100) >= rec.pct:
        disposition = "quarantine" if policy == "reject" else "none"
    return DmarcResult("fail", from_domain, policy, disposition, "no aligned pass")
