"""The one authentication entry point of every protocol: passwords, SASL, bearer tokens, lockout.

Invariants:
- Password hashing and verification run on this object's thread pool, never
  on the event loop; directory lookups run on the directory's pool.
- Every failure looks the same to the client: unknown user, bad password,
  locked account, blocked IP, suspended account and a login from outside the
  allowed networks differ only in the log line (``reason``).
- Lockout counters live in the directory database, so every worker and every
  protocol sees the same counts.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import ipaddress
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from mailsrv import log
from mailsrv.auth import sasl
from mailsrv.auth.passwords import Hasher, ScramVerifier
from mailsrv.config import AuthConfig
from mailsrv.directory import Account, Directory, LoginStamp
from mailsrv.directory import addresses as A

logger = log.get("auth")

PLAINTEXT_MECHANISMS = ("PLAIN", "LOGIN")


class UnknownMechanism(Exception):
    """The client asked for a SASL mechanism that is not offered on this connection."""


@dataclass(frozen=True, slots=True)
class LoginResult:
    ok: bool
    account: Account | None
    reason: str
    scopes: frozenset[str] = frozenset()
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class Success:
    """SASL exchange succeeded; ``data`` (SCRAM server-final) must still reach the client."""

    account: Account
    authzid: str
    data: bytes | None = None


Challenge = sasl.Challenge
Failure = sasl.Failure


@functools.lru_cache(maxsize=4096)  # a client's address parsed once, not at each login (~10 us)
def ip_key(ip: str) -> str:
    """Lockout key of a client address: IPv4 as is, IPv6 by /64 (one host's usual allocation)."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return f"ip:{ip}"
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return f"ip:{addr.ipv4_mapped}"
        return f"ip:{ipaddress.ip_network(f'{addr}/64', strict=False)}"
    return f"ip:{addr}"


@functools.lru_cache(maxsize=4096)  # asked at each capability list and clear-text login
def is_loopback(ip: str) -> bool:
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


@dataclass
class _Attempt:
    protocol: str
    ip: str
    mechanism: str
    username: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Authenticator:
    """Checks credentials against a :class:`Directory` with the lockout policy of ``cfg``."""

    def __init__(self, directory: Directory, cfg: AuthConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.cfg = cfg
        self.clock = clock
        self.hasher = Hasher(cfg)
        self._pool = ThreadPoolExecutor(max_workers=cfg.hash_threads, thread_name_prefix="auth-hash")
        self._dummy: str | None = None
        self._decoy_secret: bytes | None = None

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown, True)

    async def _in_pool(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def hash_password(self, password: str) -> tuple[str, str]:
        """(argon2id hash, SCRAM verifier) for a new password, computed off the event loop."""
        return await self._in_pool(self.hasher.make, password)

    # -- what to offer ----------------------------------------------------------------------

    def plaintext_allowed(self, *, tls: bool, client_ip: str) -> bool:
        """Whether a clear-text password may be sent on this connection (LOGIN, PLAIN, USER/PASS)."""
        # RFC 3501 §6.2.3, RFC 4954 §4, RFC 2595 §2.1: not on an unprotected channel.
        return tls or (self.cfg.allow_plaintext_loopback and is_loopback(client_ip))

    def mechanisms(self, *, tls: bool, client_ip: str, channel_binding: bool = False) -> list[str]:
        """SASL mechanisms to advertise, strongest first."""
        out = []
        if tls and channel_binding:
            out.append("SCRAM-SHA-256-PLUS")
        out.append("SCRAM-SHA-256")
        if self.plaintext_allowed(tls=tls, client_ip=client_ip):
            out += PLAINTEXT_MECHANISMS
        return out

    def sasl(self, mechanism: str, *, protocol: str, client_ip: str, tls: bool,
             channel_binding: sasl.ChannelBinding | None = None) -> AuthSession:
        """Start a SASL exchange; raises :class:`UnknownMechanism` when ``mechanism`` is not offered."""
        mech = mechanism.upper()
        offered = self.mechanisms(tls=tls, client_ip=client_ip, channel_binding=channel_binding is not None)
        if mech not in offered:
            raise UnknownMechanism(mechanism)
        machine: sasl.Plain | sasl.Login | sasl.Scram
        if mech == "PLAIN":
            machine = sasl.Plain()
        elif mech == "LOGIN":
            machine = sasl.Login()
        else:
            machine = sasl.Scram(plus=mech.endswith("-PLUS"), binding=channel_binding,
                                 plus_offered="SCRAM-SHA-256-PLUS" in offered)
        return AuthSession(self, machine, _Attempt(protocol, client_ip, mech))

    # -- the password check ------------------------------------------------------------------

    async def login(self, username: str, password: str, *, protocol: str, client_ip: str, tls: bool = True,
                    mechanism: str = "password", authzid: str = "") -> LoginResult:
        """Check a user name (address or alias) and password. See the module invariants."""
        at = _Attempt(protocol, client_ip, mechanism, username)
        if not self.plaintext_allowed(tls=tls, client_ip=client_ip):
            return await self._fail(at, None, "plain-text password without TLS", count=False)
        creds = await self.directory.credentials(username)
        key = creds.account.address if creds else A.normalise(username)
        gate = await self._gate(key, client_ip, at)
        stored = creds.password_hash if creds is not None and creds.password_hash else None
        if stored is None:
            await self._in_pool(self.hasher.verify, await self._dummy_hash(), password)
            ok, rehash = False, False
        else:
            ok, rehash = await self._in_pool(self.hasher.verify, stored, password)
        if gate:
            return await self._fail(at, key, gate, count=False)
        if creds is None:
            return await self._fail(at, key, "unknown user")
        if not ok:
            return await self._fail(at, key, "bad password")
        acct = creds.account
        problem = self._account_problem(acct, creds.networks, client_ip, authzid)
        if problem:
            return await self._fail(at, key, problem, count=problem == "authzid mismatch")
        if rehash:
            new_hash, new_scram = await self._in_pool(self.hasher.make, password)
            await self.directory.set_secrets(acct.id, new_hash, new_scram)
            logger.info("auth.rehash", user=acct.address)
        return await self._ok(at, acct)

    async def login_stamp(self, account_id: int) -> LoginStamp | None:
        """For a protocol that caches a successful login (JMAP Basic): one cheap directory query, no
        hashing. The cached login stays good while the generation equals the one read right after the
        login and ``usable`` holds; a password change, suspension or network change bumps the
        generation, a lockout clears ``usable`` (every worker sees both at once). None: account gone."""
        return await self.directory.login_stamp(account_id)

    def _account_problem(self, acct: Account, networks: tuple[str, ...], ip: str, authzid: str) -> str | None:
        if not acct.active:
            return "account suspended"
        if networks and not A.ip_in(ip, networks):
            return "network not allowed"
        if authzid and A.normalise(authzid) != acct.address and not _same_login(authzid, acct):
            return "authzid mismatch"  # no proxy authorization (RFC 4616 §2)
        return None

    async def bearer(self, token: str, *, protocol: str, client_ip: str) -> LoginResult:
        """Check a bearer token (JMAP, admin API); ``scopes`` says what it may be used for."""
        at = _Attempt(protocol, client_ip, "bearer")
        gate = await self._gate(None, client_ip)
        tok = await self.directory.token(hashlib.sha256(token.encode("utf-8", "replace")).hexdigest())
        if gate:
            return await self._fail(at, None, gate, count=False)
        if tok is None:
            return await self._fail(at, None, "unknown or expired token")
        at.username = tok.account.address
        creds = await self.directory.credentials(tok.account.address)
        problem = self._account_problem(tok.account, creds.networks if creds else (), client_ip, "")
        if problem:
            return await self._fail(at, tok.account.address, problem, count=False)
        result = await self._ok(at, tok.account)
        return LoginResult(True, result.account, "ok", tok.scopes)

    # -- lockout ----------------------------------------------------------------------------

    async def _gate(self, account_key: str | None, ip: str, at: _Attempt | None = None) -> str | None:
        """Why the attempt is refused before its check (a lockout), or None. ``at`` learns whether the
        account had failures on record (``_ok`` has nothing to clear otherwise)."""
        keys = [ip_key(ip)] + ([f"acct:{account_key}"] if account_key else [])
        states = await self.directory.failure_states(*keys)
        if at is not None and account_key:
            at.extra["account_failures"] = states[1] is not None
        now = self.clock()
        if states[0] is not None and states[0].locked_until > now:
            return "client address blocked"
        if len(states) > 1 and states[1] is not None and states[1].locked_until > now:
            return "account locked"
        return None

    async def _fail(self, at: _Attempt, account_key: str | None, reason: str, *, count: bool = True) -> LoginResult:
        cfg = self.cfg
        delay = 0.0
        now = self.clock()
        if count:
            ip_state = await self.directory.record_failure(
                ip_key(at.ip), now=now, window=cfg.lockout_window, threshold=cfg.ip_block_failures,
                lock_time=cfg.ip_block_time, lock_max=cfg.ip_block_time)
            if ip_state.count >= cfg.ip_throttle_failures or ip_state.locked_until > now:
                delay = cfg.throttle_delay
            if account_key:
                st = await self.directory.record_failure(
                    f"acct:{account_key}", now=now, window=cfg.lockout_window, threshold=cfg.account_failures,
                    lock_time=cfg.lockout_time, lock_max=cfg.lockout_max)
                if st.locked_until > now and st.count == 0:
                    logger.warning("auth.lockout", user=account_key, until=round(st.locked_until - now, 1))
        logger.warning("auth.fail", protocol=at.protocol, ip=at.ip, user=at.username or account_key,
                       mech=at.mechanism, reason=reason)
        if delay:
            await asyncio.sleep(delay)  # tarpit a guessing client without blocking others
        return LoginResult(False, None, reason, delay=delay)

    async def _ok(self, at: _Attempt, acct: Account) -> LoginResult:
        # a directory write transaction at every login cost more than the rest of its directory work:
        # only when the gate saw failures of this account on record (or did not look)
        if at.extra.get("account_failures", True):
            await self.directory.clear_failures(f"acct:{acct.address}")
        logger.info("auth.ok", protocol=at.protocol, ip=at.ip, user=acct.address, mech=at.mechanism)
        return LoginResult(True, acct, "ok")

    async def _dummy_hash(self) -> str:
        if self._dummy is None:
            self._dummy = await self._in_pool(self.hasher.ph.hash, os.urandom(12).hex())
        return self._dummy

    async def _decoy(self, username: str) -> ScramVerifier:
        """A stable fake verifier for an unknown user, so SCRAM does not reveal who exists."""
        if self._decoy_secret is None:
            self._decoy_secret = await self.directory.secret("scram-decoy")
        salt = hmac.new(self._decoy_secret, username.lower().encode(), hashlib.sha256).digest()[:16]
        return ScramVerifier(max(self.cfg.scram_iterations, 4096), salt, os.urandom(32), os.urandom(32))


def _same_login(authzid: str, acct: Account) -> bool:
    return A.normalise(authzid) == acct.address


class AuthSession:
    """One SASL exchange driven by a protocol: ``await step(bytes)`` until Success or Failure."""

    def __init__(self, auth: Authenticator, machine: sasl.Plain | sasl.Login | sasl.Scram, at: _Attempt) -> None:
        self.auth = auth
        self.machine = machine
        self.at = at
        self.finished = False
        self._scram: tuple[Any, str, str | None] | None = None  # (credentials, key, gate)

    @property
    def mechanism(self) -> str:
        return self.at.mechanism

    def abort(self) -> None:
        """The client cancelled ("*"): log it; the protocol answers."""
        if not self.finished:
            self.finished = True
            logger.info("auth.abort", protocol=self.at.protocol, ip=self.at.ip, mech=self.at.mechanism)

    async def step(self, data: bytes | None) -> sasl.Challenge | Success | sasl.Failure:
        if self.finished:
            return sasl.Failure("exchange finished")
        out = self.machine.step(data)
        if isinstance(out, sasl.Challenge):
            return out
        self.finished = True
        at = self.at
        if isinstance(out, sasl.NeedPassword):
            # an authzid equal to the login name (an alias, say) asks for nothing more than the login itself
            authzid = "" if A.normalise(out.authzid) == A.normalise(out.username) else out.authzid
            res = await self.auth.login(out.username, out.password, protocol=at.protocol, client_ip=at.ip,
                                        tls=True, mechanism=at.mechanism, authzid=authzid)
            if res.ok and res.account is not None:
                return Success(res.account, res.account.address)
            return sasl.Failure(res.reason)
        if isinstance(out, sasl.NeedVerifier):
            assert isinstance(self.machine, sasl.Scram)
            at.username = out.username
            creds = await self.auth.directory.credentials(out.username)
            key = creds.account.address if creds else A.normalise(out.username)
            gate = await self.auth._gate(key, at.ip)
            verifier = ScramVerifier.decode(creds.scram) if creds and creds.scram else None
            if verifier is None:
                verifier = await self.auth._decoy(out.username)
            self._scram = (creds, key, gate)
            self.finished = False
            return self.machine.provide(verifier)
        if isinstance(out, sasl.Verified):
            assert self._scram is not None
            creds, key, gate = self._scram
            if gate:
                await self.auth._fail(at, key, gate, count=False)
                return sasl.Failure(gate)
            authzid = "" if A.normalise(out.authzid) == A.normalise(out.username) else out.authzid
            problem = self.auth._account_problem(creds.account, creds.networks, at.ip, authzid)
            if problem:
                await self.auth._fail(at, key, problem, count=problem == "authzid mismatch")
                return sasl.Failure(problem)
            res = await self.auth._ok(at, creds.account)
            assert res.account is not None
            return Success(res.account, res.account.address, out.data)
        # Failure from the machine
        if self._scram is not None:
            creds, key, gate = self._scram
            reason = "unknown user" if creds is None else out.reason
            await self.auth._fail(at, key, reason, count=not gate)
            return sasl.Failure(reason)
        assert isinstance(out, sasl.Failure)
        await self.auth._fail(at, None, out.reason, count=False)
        return out
