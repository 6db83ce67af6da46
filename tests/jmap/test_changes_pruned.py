"""Email/changes from a state older than the store's pruned expunge history: cannotCalculateChanges (issue 3)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from jmaptest import USING, Client, Server

from mailsrv.config import StoreConfig
from mailsrv.jmap.storebackend import store_factory
from mailsrv.store import Store


@dataclass
class DirAccount:
    id: int
    address: str
    store: str
    quota_bytes: int | None = None
    quota_messages: int | None = None


async def test_changes_older_than_the_history(tmp_path: Path) -> None:
    account = DirAccount(1, "alice@example.test", "mail/alice")

    class Dir:
        async def account(self, account_id: int) -> DirAccount | None:
            return account if account_id == 1 else None

    store = Store(StoreConfig(io_threads=2, expunge_history=3), tmp_path, hostname="test")
    factory = store_factory(store, Dir(), tmp_path)

    async def by_principal(p: Any) -> Any:
        return await factory(type(p)(p.id, p.username, account))

    server = Server(tmp_path, factory=by_principal)
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            c = Client(server, http)
            c.account_id = "A1"
            ids = [await c.import_message(f"Subject: m{i}\r\n\r\nbody {i}\r\n".encode()) for i in range(12)]
            s0 = (await c.one("Email/get", {"ids": []}))["state"]
            acct = await store.account("1", tmp_path / "mail/alice")
            for uid in range(1, 9):  # eight expunges, one by one: the history keeps the last few
                await acct.expunge("INBOX", [uid], only_deleted=False)
                if uid == 7:
                    s7 = (await c.one("Email/get", {"ids": []}))["state"]
            r = await c.call(["Email/changes", {"accountId": "A1", "sinceState": s0}, "0"], using=USING)
            assert r[0][0] == "error" and r[0][1]["type"] == "cannotCalculateChanges"
            ch = await c.one("Email/changes", {"sinceState": s7})  # inside the window: exact
            assert ch["destroyed"] == [ids[7]] and ch["created"] == [] and ch["updated"] == []
    finally:
        await server.stop()
        await store.close()
