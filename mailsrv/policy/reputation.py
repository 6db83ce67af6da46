"""Connection-time reputation of the client: DNS blocklists, forward-confirmed reverse DNS, HELO sanity."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from mailsrv.config import PolicyConfig
from mailsrv.net.dns import DnsTempError, Resolver
from mailsrv.policy.spf import valid_domain

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: Client networks never looked up in a DNSBL by default (RFC 5782 lists public addresses only);
#: ``policy.dnsbl_skip_networks`` replaces them.
LOCAL_NETS: tuple[Network, ...] = tuple(ipaddress.ip_network(n) for n in PolicyConfig().dnsbl_skip_networks)

#: PTR names of one client that are checked forward (RFC 8601 §3: iprev; bounded like RFC 7208 §4.6.4).
MAX_PTR_NAMES = 10


def dnsbl_name(ip: str, zone: str) -> str:
    """RFC 5782 §2.1 (IPv4: reversed octets) / §2.4 (IPv6: reversed nibbles) + zone."""
    addr = ipaddress.ip_address(ip)
    if addr.version == 4:
        rev = ".".join(reversed(str(addr).split(".")))
    else:
        rev = ".".join(reversed(addr.exploded.replace(":", "")))
    return f"{rev}.{zone.strip('.')}"


@dataclass(frozen=True)
class DnsblHit:
    zone: str
    codes: tuple[str, ...]  # 127.0.0.x return codes


async def dnsbl(resolver: Resolver, ip: str, zones: Sequence[str],
                skip: Sequence[Network] = LOCAL_NETS) -> list[DnsblHit]:
    """Zones listing ``ip`` (never looked up when it is in ``skip``). RFC 5782 §2.1: only 127.0.0.0/8
    answers mean "listed" (others are errors, e.g. Spamhaus' 127.255.255.x "query refused"), and
    lookup failures count as not listed."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return []
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
        ip = str(addr)
    if any(addr in net for net in skip if net.version == addr.version):
        return []

    async def one(zone: str) -> DnsblHit | None:
        try:
            ans = await resolver.query(dnsbl_name(ip, zone), "A")
        except DnsTempError:
            return None
        codes = tuple(r for r in ans.records if r.startswith("127.") and not r.startswith("127.255.255."))
        return DnsblHit(zone, codes) if codes else None

    hits = await asyncio.gather(*(one(z) for z in zones))
    return [h for h in hits if h is not None]


async def fcrdns(resolver: Resolver, ip: str) -> tuple[str, str]:
    """RFC 8601 §3 iprev: (``pass``|``fail``|``temperror``, the confirmed name or "")."""
    try:
        names = await resolver.ptr(ip)
    except (DnsTempError, ValueError):
        return "temperror", ""
    if not names:
        return "fail", ""
    temp = False
    for name in names[:MAX_PTR_NAMES]:
        try:
            if ip in await resolver.addresses(name):
                return "pass", name.lower()
        except DnsTempError:
            temp = True
    return ("temperror" if temp else "fail"), ""


def helo_problems(helo: str, *, client_ip: str, our_names: Sequence[str]) -> list[str]:
    """Reasons a HELO/EHLO argument is suspicious (RFC 5321 §4.1.4 allows little else to be checked)."""
    out: list[str] = []
    h = helo.lower().rstrip(".")
    if h.startswith("[") and h.endswith("]"):
        literal = h[1:-1].removeprefix("ipv6:")
        if literal != client_ip.lower():
            out.append("address literal is not the client's address")
        return out
    if h in (n.lower() for n in our_names):
        out.append("claims to be us")
    try:
        ipaddress.ip_address(h)
        out.append("bare IP address")
        return out
    except ValueError:
        pass
    if not valid_domain(h):
        out.append("not a fully qualified domain name")
    return out
