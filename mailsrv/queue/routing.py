"""Where mail for a domain goes: a configured route (smarthost), our own MTA for local domains, or MX.

MX lookups go through the shared resolver of ``mailsrv.net.dns`` (its cache and
timeouts; ``policy.nameservers`` points it at other servers, as tests do) per
RFC 5321 §5.1: MX records by preference, falling back to the domain itself
when there is no MX; a null MX (RFC 7505) is a permanent failure. Tests may
also inject a resolver function.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mailsrv.config import Config, RouteConfig, parse_bind
from mailsrv.net import dns as shared_dns

#: domain -> [(host, port)] in preference order; raises NoRoute.
Resolver = Callable[[str], Awaitable[list[tuple[str, int]]]]


class NoRoute(Exception):
    """No destination: ``permanent`` for a null MX / NXDOMAIN, else retry later."""

    def __init__(self, text: str, permanent: bool) -> None:
        super().__init__(text)
        self.permanent = permanent


@dataclass(frozen=True)
class Destination:
    hosts: list[tuple[str, int]]
    route: RouteConfig
    key: str  # concurrency key (first host)


def mx_resolver(dns: shared_dns.Resolver) -> Resolver:
    """The queue's MX lookup over the shared resolver (RFC 5321 §5.1, RFC 7505)."""

    async def resolve(domain: str) -> list[tuple[str, int]]:
        try:
            answer = await dns.query(domain, "MX")
        except shared_dns.DnsTempError as exc:
            raise NoRoute(f"4.4.3 DNS lookup for {domain} failed: {exc}", False) from None
        if answer.nxdomain:
            raise NoRoute(f"5.1.2 domain {domain} does not exist", True)
        hosts = shared_dns.mx_hosts(answer)
        if not hosts:
            return [(domain, 25)]  # RFC 5321 §5.1: implicit MX
        if hosts == [""]:
            raise NoRoute(f"5.1.10 domain {domain} accepts no mail (null MX)", True)
        return [(h, 25) for h in hosts if h]

    return resolve


def config_resolver(cfg: Config) -> Resolver:
    """The MX lookup with the DNS settings of the ``[policy]`` section (servers, timeout, cache TTL)."""
    p = cfg.policy
    return mx_resolver(shared_dns.Resolver(p.nameservers, timeout=p.dns_timeout, max_ttl=p.dns_cache_ttl))


def local_relay(cfg: Config) -> tuple[str, int] | None:
    """Our own MTA listener, for mail the queue holds for local domains (bounces to local senders)."""
    if cfg.queue.local_relay:
        return parse_bind(cfg.queue.local_relay)
    for lst in cfg.listener.values():
        if lst.protocol == "smtp":
            host, port = parse_bind(lst.bind[0])
            return ("127.0.0.1" if host == "0.0.0.0" else "::1" if host == "::" else host), port
    return None


class Router:
    def __init__(self, cfg: Config, resolver: Resolver | None = None,
                 is_local: Callable[[str], Awaitable[bool]] | None = None) -> None:
        self.cfg = cfg
        self.resolver = resolver or config_resolver(cfg)
        self.is_local = is_local

    async def destination(self, domain: str) -> Destination:
        routes = self.cfg.queue.route
        route = routes.get(domain.lower()) or routes.get(domain)
        if route is None and self.is_local is not None and await self.is_local(domain.lower()):
            relay = local_relay(self.cfg)
            if relay is None:
                raise NoRoute("4.3.0 no local smtp listener to hand local mail to", False)
            return Destination([relay], RouteConfig(smarthost=f"{relay[0]}:{relay[1]}", tls="none"), "local")
        if route is None:
            route = routes.get("*")
        if route is not None and route.smarthost:
            host, port = _host_port(route.smarthost)
            return Destination([(host, port)], route, f"{host}:{port}")
        hosts = await self.resolver(domain)
        if not hosts:
            raise NoRoute(f"4.4.4 no mail host for {domain}", False)
        return Destination(hosts, route or RouteConfig(), f"{hosts[0][0]}:{hosts[0][1]}")


def _host_port(value: str) -> tuple[str, int]:
    if value.startswith("["):
        host, _, port = value[1:].partition("]:")
        return host, int(port or 25)
    host, sep, port = value.rpartition(":")
    if not sep:
        return value, 25
    return host, int(port)
