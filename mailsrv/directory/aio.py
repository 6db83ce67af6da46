"""The async directory facade used inside workers: every query runs on the directory's thread pool.

Each pool thread opens its own :class:`SyncDirectory` (SQLite connections are
per thread). Methods are coroutines; none blocks the event loop. Nothing is
cached, so a change made by the CLI or the admin API is seen at the next call.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from mailsrv.directory.manage import SyncDirectory
from mailsrv.directory.stamp import WalStamp
from mailsrv.directory.types import (
    Account,
    Credentials,
    FailureState,
    Grant,
    LoginStamp,
    Member,
    Resolution,
    Token,
)

T = TypeVar("T")

#: Members fetched per query while a group is expanded (bounds memory per expansion).
EXPAND_BATCH = 500


class Directory:
    """Async access to the directory; one per worker process (or per test)."""

    def __init__(self, path: str | Path, *, store_root: str = "mail", recipient_delimiter: str = "+",
                 threads: int = 4) -> None:
        self.path = Path(path)
        self._kw = {"store_root": store_root, "recipient_delimiter": recipient_delimiter}
        self._local = threading.local()
        self._all: list[SyncDirectory] = []
        self._lock = threading.Lock()
        # Open once here so that schema creation happens before any query (and errors surface early).
        first = SyncDirectory(self.path, **self._kw)
        first.close()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="directory")
        self._stamp = WalStamp(self.path)

    def _sync(self) -> SyncDirectory:
        d = getattr(self._local, "d", None)
        if d is None:
            d = SyncDirectory(self.path, **self._kw)
            self._local.d = d
            with self._lock:
                self._all.append(d)
        return d

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(sync_directory, *args, **kwargs)`` on the pool (for admin operations)."""
        loop = asyncio.get_running_loop()

        def call() -> T:
            return fn(self._sync(), *args, **kwargs)

        return await loop.run_in_executor(self._pool, call)

    async def _call(self, name: str, *args: Any) -> Any:
        return await self.run(functools.partial(_method, name), *args)

    async def close(self) -> None:
        """Close every thread's connection and stop the pool."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._pool.shutdown, True)
        with self._lock:
            for d in self._all:
                d.close()
            self._all.clear()

    def change_stamp(self) -> tuple[int, ...]:
        """A value that changes when any process commits to the directory (one stat of its write-ahead log,
        no query: :class:`mailsrv.directory.stamp.WalStamp`). Lets a caller reuse answers while it is
        unchanged; a commit in the same clock tick that leaves the log's size alone can go unseen, so bound
        the reuse with a short lifetime too (mailsrv.delivery.local.RESOLVE_TTL). Stats at every call: the
        caller chooses how often it looks (mailsrv.delivery.local.STAMP_INTERVAL)."""
        return self._stamp.stamp()

    # -- the API of docs/directory-api.md ------------------------------------------------

    async def resolve(self, address: str) -> Resolution:
        return await self._call("resolve", address)

    async def is_local_domain(self, domain: str) -> bool:
        return await self._call("is_local_domain", domain)

    async def domain_quota(self, domain: str) -> tuple[int | None, int | None]:
        """(storage octets, messages) limits of the domain's quota root; None = unlimited."""
        return await self._call("domain_quota", domain)

    async def policy_lists(self, scopes: Sequence[str]) -> list[tuple[str, str, str]]:
        """(scope, kind, entry) block/allow list rows of ``scopes`` (issue 12)."""
        return await self._call("policy_lists", list(scopes))

    async def convert_settings(self) -> tuple[dict[int, int], dict[str, int]]:
        """Per-user and per-domain ``convert_over`` overrides (docs/files.md; mailsrv.directory.filesettings)."""
        return await self._call("convert_settings")

    async def account(self, account_id: int) -> Account | None:
        return await self._call("account", account_id)

    async def account_by_address(self, address: str) -> Account | None:
        return await self._call("account_by_address", address)

    async def may_send_as(self, account_id: int, address: str) -> bool:
        return await self._call("may_send_as", account_id, address)

    async def may_post(self, group: str, sender: str) -> bool:
        return await self._call("may_post", group, sender)

    async def expand(self, group: str) -> AsyncIterator[Member]:
        """Every recipient of a group, once each: local accounts by id, then outside addresses."""
        after = 0
        while True:
            page: list[Account] = await self._call("expand_accounts", group, after, EXPAND_BATCH)
            for acct in page:
                yield Member(acct.address, acct)
            if len(page) < EXPAND_BATCH:
                break
            after = page[-1].id
        last = ""
        while True:
            ext: list[str] = await self._call("expand_outside", group, last, EXPAND_BATCH)
            for addr in ext:
                yield Member(addr, None)
            if len(ext) < EXPAND_BATCH:
                break
            last = ext[-1]

    async def iter_accounts(self, domain: str | None = None) -> AsyncIterator[Account]:
        after = 0
        while True:
            page: list[Account] = await self._call("accounts_page", domain, after, EXPAND_BATCH)
            for acct in page:
                yield acct
            if len(page) < EXPAND_BATCH:
                return
            after = page[-1].id

    # -- for mailsrv.auth ------------------------------------------------------------------

    async def credentials(self, username: str) -> Credentials | None:
        return await self._call("credentials", username)

    async def set_secrets(self, account_id: int, password_hash: str, scram: str) -> None:
        await self._call("set_secrets", account_id, password_hash, scram)

    async def login_stamp(self, account_id: int) -> LoginStamp | None:
        """Cheap re-check of a cached login (no hashing): see :class:`LoginStamp`."""
        return await self._call("login_stamp", account_id)

    async def grants_for(self, grantee: int | str) -> list[Grant]:
        """The accounts shared with ``grantee`` (shared access, JMAP)."""
        return await self._call("grants_for", grantee)

    async def failure_states(self, *keys: str) -> list[FailureState | None]:
        return await self.run(lambda d: [d.failure_state(k) for k in keys])

    async def record_failure(self, key: str, **policy: Any) -> FailureState:
        return await self.run(lambda d: d.record_failure(key, **policy))

    async def clear_failures(self, key: str | None = None) -> int:
        return await self._call("clear_failures", key)

    async def secret(self, name: str) -> bytes:
        return await self._call("secret", name)

    async def token(self, digest: str) -> Token | None:
        return await self._call("token", digest)


def _method(name: str, d: SyncDirectory, *args: Any) -> Any:
    return getattr(d, name)(*args)
