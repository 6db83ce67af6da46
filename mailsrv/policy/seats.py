"""The daily outside-recipient limit of a user, grown with the number of seats (users) of their domain.

The product mailsrv replaces lets each user write to 1 500 distinct outside
recipients a day and raises that for larger organisations. Our formula::

    limit(seats) = min(cap, max(base, per_seat * seats))      (cap 0: no cap; base 0: unlimited)

with ``base = policy.max_outside_recipients_per_day`` (1500), ``per_seat =
policy.outside_recipients_per_seat`` (5: growth starts above 300 users, 2 000
users give 10 000) and ``cap = policy.outside_recipients_cap`` (20 000, so a
compromised account in a huge organisation stays bounded). ``seats`` is the
number of users of the sender's domain in the directory.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from mailsrv.directory import Directory

#: Seconds the per-domain user counts are cached per worker.
SEATS_CACHE_SECONDS = 300.0


def outside_limit(base: int, per_seat: int, cap: int, seats: int) -> int:
    """The formula of the module docstring; 0 means unlimited."""
    if not base:
        return 0
    limit = max(base, per_seat * max(seats, 0))
    return min(limit, cap) if cap else limit


class SeatSource(Protocol):
    async def domain_seats(self, domain: str) -> int:
        """Users of ``domain`` (0 for a domain that is not ours)."""


class DirectorySeats:
    """User counts per domain from the directory, all domains at once, cached :data:`SEATS_CACHE_SECONDS`."""

    def __init__(self, directory: Directory, *, ttl: float = SEATS_CACHE_SECONDS) -> None:
        self.directory = directory
        self.ttl = ttl
        self._counts: dict[str, int] = {}
        self._until = 0.0
        self._refresh = asyncio.Lock()

    async def domain_seats(self, domain: str) -> int:
        if time.monotonic() >= self._until:
            async with self._refresh:  # one listing per expiry, however many RCPTs wait for it
                now = time.monotonic()
                if now >= self._until:
                    self._counts = await self.directory.run(
                        lambda sd: {str(d["name"]).lower(): int(d["users"]) for d in sd.list_domains()})
                    self._until = now + self.ttl
        return self._counts.get(domain.lower().rstrip("."), 0)
