"""JMAP over the real store (issue 3): domain-scoped Quota objects (RFC 9425) and Email/changes from a
state older than the pruned expunge history (cannotCalculateChanges, RFC 8620 §5.2)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from jmaptest import Client, Server

from mailsrv.config import StoreConfig
from mailsrv.directory import Account
from mailsrv.jmap.storebackend import store_factory
from mailsrv.store import Store

USING = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail", "urn:ietf:params:jmap:quota"]


def _user(n: int, name: str, quota_messages: int | None = None) -> Account:
    return Account(n, f"{name}@example.test", "example.test", name, "active", f"mail/{name}", "local", None,
                   quota_messages, True)


USERS = {1: _user(1, "alice", quota_messages=20), 2: _user(2, "bob")}


class Dir:
    async def account(self, account_id: int) -> Account | None:
        return USERS.get(account_id)


@asynccontextmanager
async def jmap_client(tmp_path: Path, store: Store) -> AsyncIterator[Client]:
    """alice's JMAP client on a real JMAP server over ``store``."""
    factory = store_factory(store, Dir(), tmp_path)

    async def by_principal(p: Any) -> Any:
        return await factory(type(p)(p.id, p.username, USERS[int(p.id)]))

    server = Server(tmp_path, factory=by_principal)
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            c = Client(server, http)
            c.account_id = "A1"
            yield c
    finally:
        await server.stop()
        await store.close()


async def call(c: Client, name: str, args: dict[str, Any]) -> list[Any]:
    (r,) = await c.call([name, {"accountId": c.account_id, **args}, "0"], using=USING)
    return r  # type: ignore[no-any-return]


async def test_domain_quota_objects_and_import(tmp_path: Path) -> None:
    async def domain_quota(domain: str) -> tuple[int | None, int | None]:
        return (None, 3) if domain == "example.test" else (None, None)

    store = Store(StoreConfig(io_threads=2), tmp_path, hostname="test")
    store.set_domain_quota_source(domain_quota)
    # the account is known with its domain (as SMTP delivery or an IMAP login opens it)
    alice = await store.account("1", tmp_path / "mail/alice", domain="example.test")
    bob = await store.account("2", tmp_path / "mail/bob", domain="example.test")
    await bob.append("INBOX", b"Subject: b\r\n\r\nbob's\r\n")
    async with jmap_client(tmp_path, store) as c:
        await c.import_message(b"Subject: a\r\n\r\nalice's\r\n")
        got = (await call(c, "Quota/get", {}))[1]
        by = {q["id"]: q for q in got["list"]}
        assert set(by) == {"messages", "domain-messages"}
        assert (by["messages"]["used"], by["messages"]["hardLimit"], by["messages"]["scope"]) == (1, 20, "account")
        dom = by["domain-messages"]
        assert (dom["used"], dom["hardLimit"], dom["scope"], dom["resourceType"]) == (2, 3, "domain", "count")
        assert dom["name"] == "messages of example.test"
        await c.import_message(b"Subject: a2\r\n\r\nalice's 2\r\n")  # the domain's third message
        blob = await c.upload(b"Subject: a3\r\n\r\nno room\r\n")
        inbox = await c.mailbox_id("inbox")
        r = await c.one("Email/import", {"emails": {"x": {"blobId": blob["blobId"], "mailboxIds": {inbox: True}}}})
        assert r["notCreated"]["x"]["type"] == "overQuota"  # alice has room, the domain has not
        assert (await alice.quota_usage()).messages == 2
        again = (await call(c, "Quota/get", {"ids": ["domain-messages"]}))[1]
        assert again["list"][0]["used"] == 3 and again["state"] != got["state"]


async def test_changes_older_than_the_expunge_history(tmp_path: Path) -> None:
    store = Store(StoreConfig(io_threads=2, expunge_history=3), tmp_path, hostname="test")
    async with jmap_client(tmp_path, store) as c:
        ids = [await c.import_message(f"Subject: m{i}\r\n\r\nbody {i}\r\n".encode()) for i in range(12)]
        s0 = (await c.one("Email/get", {"ids": []}))["state"]
        acct = await store.account("1", tmp_path / "mail/alice")
        for uid in range(1, 9):  # eight expunges, one by one: the history keeps the last few
            await acct.expunge("INBOX", [uid], only_deleted=False)
            if uid == 7:
                s7 = (await c.one("Email/get", {"ids": []}))["state"]
        r = await call(c, "Email/changes", {"sinceState": s0})
        assert r[0] == "error" and r[1]["type"] == "cannotCalculateChanges"
        ch = await c.one("Email/changes", {"sinceState": s7})  # inside the window: exact
        assert ch["destroyed"] == [ids[7]] and ch["created"] == [] and ch["updated"] == []
