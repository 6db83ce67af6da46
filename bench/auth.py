"""Authentication throughput per mechanism, and event-loop latency during a burst of logins.

Real argon2id cost (the default parameters of [auth]) and a real SQLite
directory in a temporary folder. The latency baseline is the same burst with
the hash verified on the event loop, which is what mailsrv avoids.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from mailsrv.auth import Authenticator, Challenge, Success
from mailsrv.auth import tokens as token_mod
from mailsrv.auth.passwords import Hasher
from mailsrv.config import AuthConfig
from mailsrv.directory import Directory, SyncDirectory

from ._common import in_process_meter

PASSWORD = "bench password 1"
CFG = AuthConfig(account_failures=10**9, ip_throttle_failures=10**9, ip_block_failures=10**9, throttle_delay=0)


class _ScramClient:
    """Minimal RFC 5802 client with the salted password cached (so we time the server, not PBKDF2 here)."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.salted: dict[tuple[bytes, int], bytes] = {}

    def first(self) -> bytes:
        self.cnonce = base64.b64encode(os.urandom(18)).decode()
        self.bare = f"n={self.user},r={self.cnonce}"
        return ("n,," + self.bare).encode()

    def final(self, server_first: bytes) -> bytes:
        f = dict(kv.split("=", 1) for kv in server_first.decode().split(","))
        salt, it = base64.b64decode(f["s"]), int(f["i"])
        key = (salt, it)
        if key not in self.salted:
            self.salted[key] = hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), salt, it)
        sp = self.salted[key]
        ck = hmac.new(sp, b"Client Key", hashlib.sha256).digest()
        stored = hashlib.sha256(ck).digest()
        without = f"c={base64.b64encode(b'n,,').decode()},r={f['r']}"
        msg = f"{self.bare},{server_first.decode()},{without}".encode()
        sig = hmac.new(stored, msg, hashlib.sha256).digest()
        proof = bytes(a ^ b for a, b in zip(ck, sig, strict=True))
        return f"{without},p={base64.b64encode(proof).decode()}".encode()


async def _mech_rate(auth: Authenticator, mech: str, n: int, concurrency: int) -> float:
    async def one(i: int) -> None:
        user = f"u{i % 50}@bench.test"
        s = auth.sasl(mech, protocol="bench", client_ip="127.0.0.1", tls=True)
        if mech == "PLAIN":
            out = await s.step(f"\0{user}\0{PASSWORD}".encode())
        elif mech == "LOGIN":
            await s.step(None)
            await s.step(user.encode())
            out = await s.step(PASSWORD.encode())
        else:
            c = clients.setdefault(user, _ScramClient(user))
            ch = await s.step(c.first())
            assert isinstance(ch, Challenge)
            out = await s.step(c.final(ch.data))
        assert isinstance(out, Success), out

    clients: dict[str, _ScramClient] = {}
    sem = asyncio.Semaphore(concurrency)

    async def guarded(i: int) -> None:
        async with sem:
            await one(i)

    if mech.startswith("SCRAM"):  # warm the client-side PBKDF2 cache outside the timing
        for i in range(min(n, 50)):
            await one(i)
    t0 = time.perf_counter()
    await asyncio.gather(*(guarded(i) for i in range(n)))
    return n / (time.perf_counter() - t0)


async def _latency(auth: Authenticator, n: int, on_loop: bool) -> dict[str, float]:
    """Max and p99 lateness of a 1 ms ticker ("other sessions") while n logins run."""
    lateness: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            t0 = time.perf_counter()
            await asyncio.sleep(0.001)
            lateness.append(time.perf_counter() - t0 - 0.001)

    stored = SyncDirectory(auth.directory.path).credentials("u0@bench.test")
    assert stored is not None
    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    if on_loop:
        for _ in range(n):
            auth.hasher.verify(stored.password_hash, PASSWORD)  # the anti-pattern, as the baseline
            await asyncio.sleep(0)
    else:
        await asyncio.gather(*(auth.login(f"u{i % 50}@bench.test", PASSWORD, protocol="bench",
                                          client_ip="127.0.0.1") for i in range(n)))
    done.set()
    await tick
    lateness.sort()
    return {"max_ms": lateness[-1] * 1000, "p99_ms": lateness[int(len(lateness) * 0.99) - 1] * 1000,
            "median_ms": statistics.median(lateness) * 1000}


async def _main(size: str) -> dict[str, Any]:
    n = 24 if size == "smoke" else 400
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "directory.sqlite3"
        sd = SyncDirectory(path)
        sd.add_domain("bench.test")
        h, s = Hasher(CFG).make(PASSWORD)
        for i in range(50):
            sd.add_user(f"u{i}@bench.test", password_hash=h, scram=s)
        _, token = token_mod.issue(sd, "u0@bench.test", {"mail"})
        sd.close()
        d = Directory(path)
        auth = Authenticator(d, CFG)
        meter = in_process_meter("logins and token checks")
        for mech in ("PLAIN", "LOGIN", "SCRAM-SHA-256"):
            rate = await _mech_rate(auth, mech, n, concurrency=16)
            results.append({"name": f"logins/s {mech}", "unit": "logins/s", "value": rate, "baseline": None, "ratio": None})
        t0 = time.perf_counter()
        for _ in range(n):
            assert (await auth.bearer(token, protocol="bench", client_ip="127.0.0.1")).ok
        results.append({"name": "bearer token checks/s (sequential)", "unit": "checks/s",
                        "value": n / (time.perf_counter() - t0), "baseline": None, "ratio": None})
        meter.add(4 * n)
        servers = [meter.summary()]
        off = await _latency(auth, n // 2, on_loop=False)
        on = await _latency(auth, n // 2, on_loop=True)
        results.append({"name": "loop lateness max during login burst", "unit": "ms", "value": off["max_ms"],
                        "baseline": {"name": "argon2 on the loop", "value": on["max_ms"]},
                        "ratio": on["max_ms"] / max(off["max_ms"], 1e-6)})
        results.append({"name": "loop lateness p99 during login burst", "unit": "ms", "value": off["p99_ms"],
                        "baseline": {"name": "argon2 on the loop", "value": on["p99_ms"]},
                        "ratio": on["p99_ms"] / max(off["p99_ms"], 1e-6)})
        await auth.close()
        await d.close()
    notes = [f"argon2id m={CFG.argon2_memory_kib} KiB t={CFG.argon2_time_cost} p={CFG.argon2_parallelism}, "
             f"{CFG.hash_threads} hash threads, SCRAM i={CFG.scram_iterations}; concurrency 16; n={n}",
             "logins/s has no external baseline; SCRAM is cheap server-side (HMACs only) by design",
             "measured in-process (a library: the authenticator and its hash threads); CPU and peak RSS are "
             "this process's, over the logins/s and token measurements"]
    return {"scenario": "auth", "results": results, "notes": notes, "servers": servers}


def run(size: str) -> dict[str, Any]:
    from mailsrv import log

    log.configure("warning")  # one auth.ok line per login would dominate the measurement
    try:
        return asyncio.run(_main(size))
    finally:
        log.configure("info")
