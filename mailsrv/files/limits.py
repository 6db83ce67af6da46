"""Limits on public downloads (``GET /f/TOKEN/NAME``, docs/files.md "Limits"): requests per minute per
client address, concurrent downloads per client address and per link, answered ``429`` with Retry-After;
and octets per second per client address (its downloads are paced, not refused).

Invariants:

- Per worker process, on its loop thread only (workers share nothing: with N workers a client may get up
  to N times the figures, as with ``[limits] max_connections_per_ip``).
- Memory is bounded: at most :data:`MAX_TRACKED` request-rate buckets and as many byte-rate ones (the
  least recently used one is forgotten first: forgetting refills a bucket, so it never refuses anyone,
  and a client must bring more than MAX_TRACKED addresses or /64s to reset its own), and one counter
  per download in progress (removed when it ends).
- An IPv6 client counts by its /64 (one host usually holds a whole /64: counting single addresses would let
  it rotate through them); IPv4 by its address.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Callable

#: Request-rate buckets kept at most (one per client address or /64 seen lately): ~100 bytes each.
MAX_TRACKED = 16384
#: Seconds of the rate window: ``download_rate_per_ip`` requests per minute.
WINDOW = 60.0
#: Prefix length an IPv6 client counts by.
V6_PREFIX = 64
#: Seconds a client refused for concurrent downloads is asked to wait (RFC 6585 §4, RFC 9110 §10.2.3).
BUSY_RETRY_AFTER = 5


def client_key(ip: str | None) -> str:
    """The key a client address counts under: the IPv4 address, or the /64 of an IPv6 one (an IPv4-mapped
    IPv6 address counts as its IPv4 address); anything else as given."""
    if not ip:
        return "?"
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, V6_PREFIX), strict=False))
    return str(addr)


class Buckets:
    """Token buckets per key (``capacity`` tokens, refilled at ``per_second``), at most ``max_tracked`` keys:
    the least recently used is forgotten first (a forgotten bucket is a full one)."""

    def __init__(self, capacity: float, per_second: float, max_tracked: int, clock: Callable[[], float]) -> None:
        self.capacity = capacity
        self.per_second = per_second
        self.max_tracked = max_tracked
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def take(self, key: str, amount: float, *, debt: bool) -> float:
        """Take ``amount`` tokens of ``key``'s bucket: 0 when they were there, else the seconds until they
        are. ``debt``: take them anyway (the bucket goes below zero: the caller waits that long, pacing);
        else take nothing (the caller refuses)."""
        now = self.clock()
        tokens, at = self._buckets.pop(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - at) * self.per_second)
        wait = 0.0 if tokens >= amount else (amount - tokens) / self.per_second
        if debt or not wait:
            tokens -= amount
        self._buckets[key] = (tokens, now)  # the most recently used at the end
        while len(self._buckets) > self.max_tracked:
            self._buckets.popitem(last=False)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)


class DownloadLimits:
    """Counters of one worker: ``rate`` requests per :data:`WINDOW` per client (token bucket: a burst of
    ``rate``, then one per ``WINDOW / rate`` seconds), ``per_ip`` downloads at once per client,
    ``per_link`` downloads at once of one link, ``bytes_per_second`` sent to one client (all its downloads
    together; a burst of one second's worth); 0 turns a limit off."""

    def __init__(self, rate: int, per_ip: int, per_link: int, bytes_per_second: int = 0, *,
                 max_tracked: int = MAX_TRACKED, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.per_ip = per_ip
        self.per_link = per_link
        self.bytes_per_second = bytes_per_second
        self._requests = Buckets(rate, rate / WINDOW, max_tracked, clock)
        self._bytes = Buckets(bytes_per_second, bytes_per_second, max_tracked, clock)
        self._ip_active: Counter[str] = Counter()
        self._link_active: Counter[str] = Counter()

    def request(self, key: str) -> int:
        """Count one request of client ``key``: 0 when it may go on, else the seconds it should wait
        (Retry-After, at least 1)."""
        if not self.rate:
            return 0
        wait = self._requests.take(key, 1.0, debt=False)
        return max(1, math.ceil(wait)) if wait else 0

    def pace(self, key: str, size: int) -> float:
        """``size`` octets were just sent to client ``key``: the seconds to wait before its next ones (0: none)."""
        if not self.bytes_per_second:
            return 0.0
        return self._bytes.take(key, float(size), debt=True)
    def begin(self, key: str, link_id: str) -> str | None:
        """Start a download of ``link_id`` by client ``key``: None when it may (then :meth:`end` must
        follow), else why not."""
        if self.per_ip and self._ip_active[key] >= self.per_ip:
            return f"at most {self.per_ip} downloads at a time from one address"
        if self.per_link and self._link_active[link_id] >= self.per_link:
            return f"at most {self.per_link} downloads of this link at a time"
        self._ip_active[key] += 1
        self._link_active[link_id] += 1
        return None

    def end(self, key: str, link_id: str) -> None:
        for counter, k in ((self._ip_active, key), (self._link_active, link_id)):
            counter[k] -= 1
            if counter[k] <= 0:
                del counter[k]

    def tracked(self) -> int:
        """Entries held (buckets and download counters): bounded, for tests."""
        return len(self._requests) + len(self._bytes) + len(self._ip_active) + len(self._link_active)
