"""The shared asynchronous DNS resolver: one cache, bounded timeouts, and a test override.

Every policy lookup (SPF, DKIM keys, DMARC, DNSBL, reverse DNS) goes through
:class:`Resolver`. Answers are cached by (name, type) for their TTL (clamped
to ``[MIN_TTL, max_ttl]``), negative answers (NXDOMAIN / no data) for
``negative_ttl``; temporary failures are never cached. ``nameservers`` points
the resolver at explicit servers (``"127.0.0.1:5353"``): tests run a tiny
authoritative server on loopback so nothing reaches real DNS.

Contract: :meth:`Resolver.query` returns a :class:`DnsAnswer` (possibly empty)
or raises :class:`DnsTempError` (timeout, SERVFAIL, network). It never blocks
the loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
import dns.reversename

#: Seconds an answer stays cached at least (avoids re-querying zero-TTL records in one message).
MIN_TTL = 5.0
#: Cached (name, type) entries per worker; the oldest go first.
CACHE_ENTRIES = 10000


class DnsTempError(Exception):
    """The lookup could not be completed (timeout, SERVFAIL, unreachable server)."""


@dataclass(frozen=True)
class DnsAnswer:
    """Records as text (TXT strings joined per RFC 7208 §3.3, names without the final dot)."""

    records: tuple[str, ...]
    nxdomain: bool = False

    def __bool__(self) -> bool:
        return bool(self.records)


def parse_nameserver(spec: str) -> tuple[str, int]:
    """``"127.0.0.1"``, ``"127.0.0.1:5353"`` or ``"[::1]:5353"`` -> (ip, port)."""
    host, port = spec, 53
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        if rest.startswith(":"):
            port = int(rest[1:])
    elif spec.count(":") == 1:
        host, p = spec.split(":")
        port = int(p)
    ipaddress.ip_address(host)
    if not 0 < port < 65536:
        raise ValueError(f"bad port in {spec!r}")
    return host, port


def _text(rdtype: str, rdata: object) -> str:
    if rdtype == "TXT":
        # RFC 7208 §3.3 / RFC 6376 §3.6.2.2: character-strings are concatenated without spaces
        return b"".join(rdata.strings).decode("utf-8", "replace")  # type: ignore[attr-defined]
    if rdtype == "MX":
        return f"{rdata.preference} {str(rdata.exchange).rstrip('.')}"  # type: ignore[attr-defined]
    return str(rdata).rstrip(".") if rdtype in ("PTR", "CNAME", "NS") else str(rdata)


class Resolver:
    """Per-worker resolver; safe for concurrent use by the tasks of one loop."""

    def __init__(
        self,
        nameservers: Sequence[str] = (),
        *,
        timeout: float = 5.0,
        max_ttl: float = 3600.0,
        negative_ttl: float = 300.0,
        entries: int = CACHE_ENTRIES,
    ) -> None:
        if nameservers:
            servers = [parse_nameserver(s) for s in nameservers]
            self._res = dns.asyncresolver.Resolver(configure=False)
            self._res.nameservers = [h for h, _ in servers]
            self._res.port = servers[0][1]
        else:
            try:
                self._res = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration:
                # no usable /etc/resolv.conf: a local resolver is the only sane guess (and fails soft)
                self._res = dns.asyncresolver.Resolver(configure=False)
                self._res.nameservers = ["127.0.0.1"]
        self._res.lifetime = timeout
        self._res.timeout = timeout
        self.max_ttl = max_ttl
        self.negative_ttl = negative_ttl
        self.entries = entries
        self._cache: OrderedDict[tuple[str, str], tuple[float, DnsAnswer]] = OrderedDict()
        self._inflight: dict[tuple[str, str], asyncio.Future[DnsAnswer]] = {}
        self.queries = 0  # upstream queries sent (for tests and the bench)

    def clear(self) -> None:
        self._cache.clear()

    async def query(self, name: str, rdtype: str) -> DnsAnswer:
        """One lookup through the cache; concurrent identical lookups share one query."""
        key = (name.lower().rstrip("."), rdtype.upper())
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None:
            if hit[0] > now:
                self._cache.move_to_end(key)
                return hit[1]
            del self._cache[key]
        fut = self._inflight.get(key)
        if fut is not None:
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            answer, ttl = await self._lookup(*key)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: waiters re-raise it
            raise
        else:
            fut.set_result(answer)
        finally:
            del self._inflight[key]
        self._cache[key] = (now + ttl, answer)
        while len(self._cache) > self.entries:
            self._cache.popitem(last=False)
        return answer

    async def _lookup(self, name: str, rdtype: str) -> tuple[DnsAnswer, float]:
        self.queries += 1
        try:
            ans = await self._res.resolve(name + ".", rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return DnsAnswer((), nxdomain=True), self.negative_ttl
        except dns.resolver.NoNameservers as exc:
            raise DnsTempError(f"{name}/{rdtype}: SERVFAIL") from exc
        except (dns.exception.Timeout, dns.resolver.LifetimeTimeout) as exc:
            raise DnsTempError(f"{name}/{rdtype}: timeout") from exc
        except (dns.exception.DNSException, OSError) as exc:
            raise DnsTempError(f"{name}/{rdtype}: {exc}") from exc
        if ans.rrset is None:
            return DnsAnswer(()), self.negative_ttl
        records = tuple(_text(rdtype, r) for r in ans.rrset)
        ttl = min(max(float(ans.rrset.ttl), MIN_TTL), self.max_ttl)
        return DnsAnswer(records), ttl

    # -- conveniences ---------------------------------------------------------------

    async def txt(self, name: str) -> list[str]:
        return list((await self.query(name, "TXT")).records)

    async def addresses(self, name: str) -> list[str]:
        """A and AAAA records of ``name`` (both asked concurrently)."""
        a, aaaa = await asyncio.gather(self.query(name, "A"), self.query(name, "AAAA"))
        return list(a.records) + list(aaaa.records)

    async def mx(self, name: str) -> list[str]:
        """MX hosts in preference order."""
        return mx_hosts(await self.query(name, "MX"))

    async def ptr(self, ip: str) -> list[str]:
        rev = dns.reversename.from_address(ip).to_text().rstrip(".")
        return list((await self.query(rev, "PTR")).records)


def mx_hosts(answer: DnsAnswer) -> list[str]:
    """The hosts of an MX answer in preference order (a null MX, RFC 7505, is ``[""]``)."""
    pairs = sorted((int(p), h) for p, _, h in (r.partition(" ") for r in answer.records))
    return [h for _, h in pairs]
