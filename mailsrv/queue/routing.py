"""Where mail for a domain goes: a configured route (smarthost), our own MTA for local domains, or MX.

MX lookups go through the shared resolver of ``mailsrv.net.dns`` (its cache and
timeouts; ``policy.nameservers`` points it at other servers, as tests do) per
RFC 5321 §5.1: MX records by preference, falling back to the domain itself
when there is no MX; a null MX (RFC 7505) is a permanent failure. Tests may
also inject a resolver function.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import sys
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


def local_relay(cfg: Config, master: int | None = None) -> tuple[str, int] | None:
    """Our own MTA listener, for mail the queue holds for local domains (bounces to local senders,
    delayed sends to local users).

    An smtp listener bound to port 0 (``mailsrv init --any-port``) has the port the kernel chose in
    the master: with ``master`` (its pid; the queue owner's parent) that port is read from the
    master's listening sockets (:func:`master_listeners`). Blocking (reads /proc)."""
    if cfg.queue.local_relay:
        return parse_bind(cfg.queue.local_relay)
    specs = [(lst.protocol, parse_bind(spec)) for lst in cfg.listener.values() for spec in lst.bind]
    for i, (protocol, (host, port)) in enumerate(specs):
        if protocol != "smtp":
            continue
        if port == 0 and master is not None:
            bound = _bound_port([a for _, a in specs], i, master_listeners(master))
            if bound is None:
                return None
            port = bound
        return ("127.0.0.1" if host == "0.0.0.0" else "::1" if host == "::" else host), port
    return None


def _bound_port(specs: list[tuple[str, int]], index: int, bound: list[tuple[str, int]]) -> int | None:
    """The master binds the listeners in configuration order, one socket per bind spec, so its
    listening sockets in fd order are the specs in order; any disagreement (a reload that added
    listeners, another process as parent) answers None rather than a guess."""
    if len(bound) != len(specs):
        return None
    for (host, port), (bhost, bport) in zip(specs, bound, strict=True):
        try:
            same = ipaddress.ip_address(host) == ipaddress.ip_address(bhost)
        except ValueError:  # a host name: cannot be checked
            return None
        if not same or port not in (0, bport):
            return None
    return bound[index][1]


def master_listeners(pid: int) -> list[tuple[str, int]]:
    """The TCP listening addresses of process ``pid``'s sockets, in fd order, each once (Linux /proc; []
    when they cannot be read)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    inodes: dict[str, int] = {}
    for fd in fds:
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes[link[8:-1]] = int(fd)
    listening: dict[int, tuple[str, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f, None)
            for line in f:
                cols = line.split()
                # sl local_address rem_address st ... inode: st 0A is LISTEN
                if len(cols) > 9 and cols[3] == "0A" and cols[9] in inodes:
                    listening[inodes[cols[9]]] = _proc_addr(cols[1])
    # server.reuse_port: an address is a group of sockets (one per worker; a reload that grows it adds
    # members after the other listeners'): the group stands where its first member does
    return list(dict.fromkeys(listening[fd] for fd in sorted(listening)))


def _proc_addr(value: str, byteorder: str = sys.byteorder) -> tuple[str, int]:
    """/proc/net/tcp{,6} ``"0100007F:0CFD"`` -> ``("127.0.0.1", 3325)``.

    The kernel prints each 32-bit word of the address (network byte order in memory) with ``%08X``
    as the host reads it, so the hex digits are that word's bytes in host order: reversed on a
    little-endian host, as they are on a big-endian one. The port is printed as a number.
    ``byteorder`` is the host's (``sys.byteorder``); tests pass the other one."""
    hexaddr, _, hexport = value.partition(":")
    if len(hexaddr) not in (8, 32):
        raise ValueError(f"not a /proc/net address: {value!r}")
    words = (int(hexaddr[i:i + 8], 16) for i in range(0, len(hexaddr), 8))
    packed = b"".join(w.to_bytes(4, "little" if byteorder == "little" else "big") for w in words)
    return str(ipaddress.ip_address(packed)), int(hexport, 16)


class Router:
    def __init__(self, cfg: Config, resolver: Resolver | None = None,
                 is_local: Callable[[str], Awaitable[bool]] | None = None, master: int | None = None) -> None:
        self.cfg = cfg
        self.resolver = resolver or config_resolver(cfg)
        self.is_local = is_local
        #: the master's pid, to learn the port of a port-0 smtp listener (see :func:`local_relay`)
        self.master = master
        self._relay: tuple[str, int] | None = None

    async def destination(self, domain: str) -> Destination:
        routes = self.cfg.queue.route
        route = routes.get(domain.lower()) or routes.get(domain)
        if route is None and self.is_local is not None and await self.is_local(domain.lower()):
            if self._relay is None:  # kept once known: the master keeps a port-0 socket across reloads
                self._relay = await asyncio.get_running_loop().run_in_executor(
                    None, local_relay, self.cfg, self.master)
            relay = self._relay
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
