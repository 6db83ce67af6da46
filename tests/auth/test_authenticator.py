"""Password logins: neutral failures, lockout per account and per IP, networks, rehash, tokens, logging."""

from __future__ import annotations

import asyncio
import io
import time

from mailsrv import log
from mailsrv.auth import Authenticator
from mailsrv.auth import tokens as token_mod
from mailsrv.auth.authenticator import ip_key
from mailsrv.config import AuthConfig
from mailsrv.directory import Directory, SyncDirectory

from .conftest import FAST, PASSWORD


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def test_success_and_neutral_failures(auth: Authenticator, sd: SyncDirectory) -> None:
    ok = await auth.login("Alice@Example.test", PASSWORD, protocol="imap", client_ip="192.0.2.1")
    assert ok.ok and ok.account is not None and ok.account.address == "alice@example.test"
    sd.add_user("sus@example.test", password_hash=sd.credentials("bob@example.test").password_hash)  # type: ignore[union-attr]
    sd.set_user("sus@example.test", state="suspended")
    reasons = []
    for user, pw in (("nobody@example.test", PASSWORD), ("alice@example.test", "wrong"),
                     ("sus@example.test", PASSWORD)):
        r = await auth.login(user, pw, protocol="imap", client_ip="192.0.2.2")
        assert not r.ok and r.account is None and r.scopes == frozenset()
        reasons.append(r.reason)
    assert reasons == ["unknown user", "bad password", "account suspended"]


async def test_account_lockout_grows_and_is_shared_by_protocols(directory: Directory, sd: SyncDirectory) -> None:
    clock = Clock()
    auth = Authenticator(directory, FAST, clock=clock)
    for i in range(FAST.account_failures):
        r = await auth.login("alice@example.test", f"bad{i}", protocol="imap", client_ip=f"192.0.2.{10 + i}")
        assert not r.ok
    # locked now: the right password is refused on every protocol, with a neutral answer
    for proto in ("smtp", "pop3", "jmap"):
        r = await auth.login("alice@example.test", PASSWORD, protocol=proto, client_ip="198.51.100.1")
        assert not r.ok and r.reason == "account locked"
    st = sd.failure_state("acct:alice@example.test")
    assert st is not None and st.level == 1 and st.locked_until == clock.now + FAST.lockout_time
    clock.now += FAST.lockout_time + 1
    for i in range(FAST.account_failures):
        await auth.login("al@example.test", f"bad{i}", protocol="smtp", client_ip="192.0.2.50")  # via the alias
    st = sd.failure_state("acct:alice@example.test")
    assert st is not None and st.level == 2 and st.locked_until == clock.now + 2 * FAST.lockout_time
    clock.now += 2 * FAST.lockout_time + 1
    assert (await auth.login("alice@example.test", PASSWORD, protocol="imap", client_ip="192.0.2.9")).ok
    assert sd.failure_state("acct:alice@example.test") is None  # success resets the level
    # bob was never affected
    assert (await auth.login("bob@example.test", PASSWORD, protocol="imap", client_ip="192.0.2.9")).ok
    await auth.close()


async def test_success_clears_failures_only_when_there_are_some(auth: Authenticator, sd: SyncDirectory,
                                                                monkeypatch) -> None:
    cleared: list[str | None] = []
    real = auth.directory.clear_failures

    async def clear(key: str | None = None) -> int:
        cleared.append(key)
        return await real(key)

    monkeypatch.setattr(auth.directory, "clear_failures", clear)
    assert (await auth.login("alice@example.test", PASSWORD, protocol="imap", client_ip="192.0.2.1")).ok
    assert cleared == []  # nothing on record: no write transaction at each login
    assert not (await auth.login("alice@example.test", "wrong", protocol="imap", client_ip="192.0.2.1")).ok
    assert sd.failure_state("acct:alice@example.test") is not None
    assert (await auth.login("alice@example.test", PASSWORD, protocol="pop3", client_ip="192.0.2.1")).ok
    assert cleared == ["acct:alice@example.test"] and sd.failure_state("acct:alice@example.test") is None


async def test_ip_throttle_then_block(directory: Directory, sd: SyncDirectory) -> None:
    cfg = AuthConfig(argon2_memory_kib=1024, argon2_time_cost=1, account_failures=100, ip_throttle_failures=2,
                     ip_block_failures=4, throttle_delay=0.05)
    auth = Authenticator(directory, cfg)
    delays = []
    for i in range(4):
        r = await auth.login(f"u{i}@example.test", "x", protocol="smtp", client_ip="203.0.113.5")
        delays.append(r.delay)
    assert delays == [0.0, 0.05, 0.05, 0.05]
    r = await auth.login("alice@example.test", PASSWORD, protocol="imap", client_ip="203.0.113.5")
    assert not r.ok and r.reason == "client address blocked"
    assert (await auth.login("alice@example.test", PASSWORD, protocol="imap", client_ip="203.0.113.6")).ok
    # IPv6 is counted per /64
    assert ip_key("2001:db8:1:2::5") == ip_key("2001:db8:1:2:ffff::1") != ip_key("2001:db8:1:3::1")
    assert ip_key("::ffff:192.0.2.1") == "ip:192.0.2.1"
    await auth.close()


async def test_allowed_networks_user_then_domain(auth: Authenticator, sd: SyncDirectory) -> None:
    sd.set_user("alice@example.test", networks=("10.0.0.0/8", "2001:db8::/32"))
    assert (await auth.login("alice@example.test", PASSWORD, protocol="imap", client_ip="10.1.2.3")).ok
    assert (await auth.login("alice@example.test", PASSWORD, protocol="imap", client_ip="2001:db8::7")).ok
    r = await auth.login("alice@example.test", PASSWORD, protocol="imap", client_ip="192.0.2.1")
    assert not r.ok and r.reason == "network not allowed"
    sd.set_domain("example.test", networks=("172.16.0.0/12",))
    r = await auth.login("bob@example.test", PASSWORD, protocol="imap", client_ip="192.0.2.1")
    assert not r.ok and r.reason == "network not allowed"
    assert (await auth.login("bob@example.test", PASSWORD, protocol="imap", client_ip="172.16.9.9")).ok
    assert (await auth.login("alice@example.test", PASSWORD, protocol="imap", client_ip="10.9.9.9")).ok  # user list wins


async def test_legacy_hash_is_upgraded_at_login(auth: Authenticator, sd: SyncDirectory) -> None:
    sd.add_user("old@example.test", password_hash="{SHA512-CRYPT}$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/"
                 "O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1")
    assert (await auth.login("old@example.test", "Hello world!", protocol="pop3", client_ip="127.0.0.1")).ok
    creds = sd.credentials("old@example.test")
    assert creds is not None and creds.password_hash.startswith("$argon2id$") and creds.scram.startswith("SCRAM-SHA-256$")
    assert (await auth.login("old@example.test", "Hello world!", protocol="pop3", client_ip="127.0.0.1")).ok


async def test_bearer_tokens(auth: Authenticator, sd: SyncDirectory) -> None:
    tid, secret = token_mod.issue(sd, "alice@example.test", {"mail"})
    r = await auth.bearer(secret, protocol="jmap", client_ip="127.0.0.1")
    assert r.ok and r.account is not None and r.account.address == "alice@example.test" and r.scopes == {"mail"}
    assert sd.list_tokens()[0]["id"] == tid and secret not in str(sd.list_tokens())
    assert not (await auth.bearer(secret + "x", protocol="jmap", client_ip="127.0.0.1")).ok
    sd.revoke_token(tid)
    assert not (await auth.bearer(secret, protocol="jmap", client_ip="127.0.0.1")).ok
    _, short = token_mod.issue(sd, "alice@example.test", {"mail"}, ttl=-1.0)  # already expired
    assert not (await auth.bearer(short, protocol="jmap", client_ip="127.0.0.1")).ok


async def test_every_attempt_is_logged_without_the_password(auth: Authenticator) -> None:
    buf = io.StringIO()
    log.configure("info", buf)
    try:
        await auth.login("alice@example.test", PASSWORD, protocol="imap", client_ip="192.0.2.77")
        await auth.login("alice@example.test", "Secret-Guess-1", protocol="pop3", client_ip="192.0.2.78")
    finally:
        log.configure("info", __import__("sys").stderr)
    out = buf.getvalue()
    assert "auth.ok protocol=imap ip=192.0.2.77 user=alice@example.test" in out
    assert 'auth.fail protocol=pop3 ip=192.0.2.78 user=alice@example.test mech=password reason="bad password"' in out
    assert PASSWORD not in out and "Secret-Guess-1" not in out


async def test_hashing_does_not_stall_the_event_loop(directory: Directory, sd: SyncDirectory) -> None:
    # Real argon2id cost (the default 19 MiB), a burst of logins, and a ticker measuring loop latency.
    import threading

    from mailsrv.auth.passwords import Hasher

    h, s = Hasher(AuthConfig()).make(PASSWORD)
    sd.add_user("heavy@example.test", password_hash=h, scram=s)
    auth = Authenticator(directory, AuthConfig(throttle_delay=0, account_failures=1000, ip_block_failures=1000))
    threads: set[int] = set()
    real_verify = auth.hasher.verify

    def spy(stored: str, password: str) -> tuple[bool, bool]:
        threads.add(threading.get_ident())
        return real_verify(stored, password)

    auth.hasher.verify = spy  # type: ignore[method-assign]
    worst = 0.0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal worst
        while not done.is_set():
            t0 = time.perf_counter()
            await asyncio.sleep(0.001)
            worst = max(worst, time.perf_counter() - t0 - 0.001)

    tick = asyncio.create_task(ticker())
    t0 = time.perf_counter()
    results = await asyncio.gather(*(auth.login("heavy@example.test", PASSWORD if i % 2 else f"wrong{i}",
                                                protocol="imap", client_ip="127.0.0.1") for i in range(12)))
    burst = time.perf_counter() - t0
    done.set()
    await tick
    await auth.close()
    assert [r.ok for r in results] == [bool(i % 2) for i in range(12)]
    assert threads and threading.get_ident() not in threads  # never verified on the loop's thread
    # 12 hashes at the default cost take far longer than any single stall of the loop
    assert worst < burst / 3, f"event loop stalled {worst * 1000:.1f} ms of a {burst * 1000:.0f} ms burst"


def test_expired_counters_are_pruned(sd: SyncDirectory, monkeypatch) -> None:
    from mailsrv.directory import sqlite as backend

    sd.record_failure("acct:" + "x" * 5000, now=1000.0, window=900, threshold=100, lock_time=60, lock_max=60)
    sd.record_failure("acct:locked@example.test", now=1000.0, window=900, threshold=1, lock_time=10**9, lock_max=10**9)
    assert max(len(f.key) for f in sd.list_failures()) == backend.MAX_FAILURE_KEY
    monkeypatch.setattr(backend, "PRUNE_ONE_IN", 1)
    sd.record_failure("ip:192.0.2.1", now=1000.0 + 2 * 86400, window=900, threshold=100, lock_time=60, lock_max=60)
    assert [f.key for f in sd.list_failures()] == ["acct:locked@example.test", "ip:192.0.2.1"]
