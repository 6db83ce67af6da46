"""The outside-recipient daily limit grown with the seats of the sender's domain."""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from mailsrv.directory import Directory, SyncDirectory
from mailsrv.policy.seats import DirectorySeats, outside_limit


def test_formula_defaults() -> None:
    # 1 500 for a small organisation, growth above 300 users, capped at 20 000
    assert outside_limit(1500, 5, 20000, 10) == 1500
    assert outside_limit(1500, 5, 20000, 300) == 1500
    assert outside_limit(1500, 5, 20000, 301) == 1505
    assert outside_limit(1500, 5, 20000, 2000) == 10000
    assert outside_limit(1500, 5, 20000, 100000) == 20000
    assert outside_limit(1500, 5, 0, 100000) == 500000  # no cap
    assert outside_limit(1500, 0, 20000, 100000) == 1500  # no growth
    assert outside_limit(0, 5, 20000, 100000) == 0  # unlimited stays unlimited


@given(base=st.integers(1, 10**6), per=st.integers(0, 1000), cap=st.integers(0, 10**7),
       a=st.integers(0, 10**6), b=st.integers(0, 10**6))
def test_formula_properties(base: int, per: int, cap: int, a: int, b: int) -> None:
    lo, hi = sorted((a, b))
    assert outside_limit(base, per, cap, lo) <= outside_limit(base, per, cap, hi)  # grows with seats
    got = outside_limit(base, per, cap, hi)
    assert got >= min(base, cap) if cap else got >= base
    if cap:
        assert got <= cap


async def test_directory_seats_counts_users_per_domain(tmp_path: Path) -> None:
    path = tmp_path / "dir.sqlite3"
    sd = SyncDirectory(path)
    sd.add_domain("big.test")
    sd.add_domain("small.test")
    for i in range(7):
        sd.add_user(f"u{i}@big.test")
    sd.add_user("only@small.test")
    d = Directory(path, threads=1)
    try:
        seats = DirectorySeats(d)
        assert await seats.domain_seats("big.test") == 7
        assert await seats.domain_seats("Small.Test") == 1
        assert await seats.domain_seats("elsewhere.test") == 0
        sd.add_user("u7@big.test")
        assert await seats.domain_seats("big.test") == 7  # cached
        fresh = DirectorySeats(d, ttl=0)
        assert await fresh.domain_seats("big.test") == 8
    finally:
        await d.close()
        sd.close()


async def test_directory_seats_one_listing_for_concurrent_lookups() -> None:
    gate, listing = asyncio.Event(), asyncio.Event()
    calls = 0

    class SlowDirectory:
        async def run(self, fn: Any) -> dict[str, int]:
            nonlocal calls
            calls += 1
            listing.set()
            await gate.wait()
            return {"big.test": 7}

    seats = DirectorySeats(SlowDirectory())  # type: ignore[arg-type]
    lookups = [asyncio.ensure_future(seats.domain_seats("big.test")) for _ in range(20)]
    # the first lookup is listing; the other 19 (scheduled before this task wakes) have started too
    await listing.wait()
    gate.set()
    assert await asyncio.gather(*lookups) == [7] * 20
    assert calls == 1


class FixedSeats:
    def __init__(self, n: int) -> None:
        self.n = n
        self.asked: list[str] = []

    async def domain_seats(self, domain: str) -> int:
        self.asked.append(domain)
        return self.n


def _send(port: int, rcpts: list[str], message: Any) -> dict[str, Any]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.ehlo("client.example.test")
        c.login("user@example.test", "pw")
        return c.sendmail("user@example.test", rcpts, message())


def test_limit_grows_with_seats_over_submission(policy_server: Any, message: Any) -> None:
    srv = policy_server("submission", max_outside_recipients_per_day=2, outside_recipients_per_seat=1,
                        outside_recipients_cap=4)
    seats = FixedSeats(1)
    srv.policy.seats = seats
    refused = _send(srv.port, ["a@out.test", "b@out.test", "c@out.test"], message)
    assert set(refused) == {"c@out.test"} and refused["c@out.test"][0] == 450
    assert seats.asked and set(seats.asked) == {"example.test"}
    seats.n = 3  # the organisation grew: 3 seats x 1 = 3 distinct recipients a day
    refused = _send(srv.port, ["c@out.test", "d@out.test"], message)
    assert set(refused) == {"d@out.test"}
    seats.n = 50  # capped at 4
    refused = _send(srv.port, ["d@out.test", "e@out.test"], message)
    assert set(refused) == {"e@out.test"}
    assert b"4 outside recipients" in refused["e@out.test"][1]
