"""Per-domain and per-user block and allow lists: addresses, domains, IPs and networks.

Entries live in the directory (``SyncDirectory.policy_list_*``); a
:class:`ListSource` reads them. Scopes: ``""`` (the whole server), a domain
(``example.com``) or a user address (``alice@example.com``). An entry is an
address (``bob@spam.test``), a domain (``spam.test``, also matching its
subdomains; ``@spam.test`` matches only the domain itself) or an IP/CIDR.
Block wins over allow within one scope; the narrowest scope that matches wins.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from mailsrv import log

logger = log.get("policy")

Kind = Literal["block", "allow"]
KINDS: tuple[Kind, ...] = ("block", "allow")
#: Seconds list entries are cached per worker (a change in the CLI is seen this late at most).
CACHE_SECONDS = 30.0


@dataclass(frozen=True)
class Match:
    kind: Kind
    scope: str
    entry: str


class ListSource(Protocol):
    async def policy_lists(self, scopes: Sequence[str]) -> list[tuple[str, str, str]]:
        """(scope, kind, entry) rows of the given scopes."""


def normalize_entry(entry: str) -> str:
    """Validate and canonicalise one list entry; raises ValueError."""
    e = entry.strip().lower()
    if not e:
        raise ValueError("empty entry")
    try:
        return str(ipaddress.ip_network(e, strict=False))
    except ValueError:
        pass
    local, at, domain = e.rpartition("@")
    if at and (not domain or "." not in domain or " " in e):
        raise ValueError(f"{entry!r} is not an address, domain or network")
    if not at and ("." not in e or " " in e or "/" in e):
        raise ValueError(f"{entry!r} is not an address, domain or network")
    del local
    return e


def normalize_scope(scope: str) -> str:
    s = scope.strip().lower()
    if s and ("." not in s.rpartition("@")[2] or " " in s):
        raise ValueError(f"{scope!r} is not a domain or an address")
    return s


def entry_matches(entry: str, sender: str, ip: str) -> bool:
    if "/" in entry or ":" in entry or entry.replace(".", "").isdigit():
        try:
            return ipaddress.ip_address(ip) in ipaddress.ip_network(entry)
        except ValueError:
            return False
    s = sender.lower()
    if entry.startswith("@"):
        return s.rpartition("@")[2] == entry[1:]
    if "@" in entry:
        return s == entry
    domain = s.rpartition("@")[2]
    return bool(domain) and (domain == entry or domain.endswith("." + entry))


class Lists:
    """Matching over a :class:`ListSource`, with a short per-worker cache."""

    def __init__(self, source: ListSource | None) -> None:
        self.source = source
        self._cache: dict[str, tuple[float, list[tuple[str, str]]]] = {}

    async def _entries(self, scope: str) -> list[tuple[str, str]]:
        now = time.monotonic()
        hit = self._cache.get(scope)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            rows = await self.source.policy_lists([scope]) if self.source is not None else []
        except Exception as exc:  # the directory unavailable: no list decides, mail keeps flowing
            logger.exception("policy.lists_failed", exc, scope=scope)
            return []
        entries = [(kind, entry) for _, kind, entry in rows]
        if len(self._cache) > 10000:
            self._cache.clear()
        self._cache[scope] = (now + CACHE_SECONDS, entries)
        return entries

    def invalidate(self) -> None:
        self._cache.clear()

    async def match_sender(self, sender: str, ip: str, *, scopes: Sequence[str]) -> Match | None:
        """The decisive entry for ``sender`` from ``ip``: scopes are tried narrowest first (as given)."""
        if self.source is None:
            return None
        for scope in scopes:
            found: Match | None = None
            for kind, entry in await self._entries(scope):
                if entry_matches(entry, sender, ip):
                    if kind == "block":
                        return Match("block", scope, entry)
                    found = found or Match("allow", scope, entry)
            if found is not None:
                return found
        return None

    async def match_ip(self, ip: str, *, scopes: Sequence[str]) -> Match | None:
        return await self.match_sender("", ip, scopes=scopes)
