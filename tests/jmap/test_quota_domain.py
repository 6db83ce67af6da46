"""RFC 9425 Quota/get over the real store: the domain-scoped quota next to the account's (issue 3)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from jmaptest import Client, Server

from mailsrv.config import StoreConfig
from mailsrv.jmap.storebackend import store_factory
from mailsrv.store import Store

USING = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail", "urn:ietf:params:jmap:quota"]


async def quota_get(c: Client, args: dict[str, Any]) -> dict[str, Any]:
    (r,) = await c.call(["Quota/get", {"accountId": c.account_id, **args}, "0"], using=USING)
    assert r[0] == "Quota/get", r
    return r[1]  # type: ignore[no-any-return]


@dataclass
class DirAccount:
    id: int
    address: str
    store: str
    domain: str = "example.test"
    quota_bytes: int | None = None
    quota_messages: int | None = None


async def test_domain_quota_objects_and_import(tmp_path: Path) -> None:
    accounts = {1: DirAccount(1, "alice@example.test", "mail/alice", quota_messages=10),
                2: DirAccount(2, "bob@example.test", "mail/bob")}

    class Dir:
        async def account(self, account_id: int) -> DirAccount | None:
            return accounts.get(account_id)

    async def domain_quota(domain: str) -> tuple[int | None, int | None]:
        return (None, 3) if domain == "example.test" else (None, None)

    store = Store(StoreConfig(io_threads=2), tmp_path, hostname="test")
    store.set_domain_quota_source(domain_quota)
    # the account is known with its domain (as SMTP delivery or an IMAP login opens it)
    alice = await store.account("1", tmp_path / "mail/alice", domain="example.test")
    bob = await store.account("2", tmp_path / "mail/bob", domain="example.test")
    await bob.append("INBOX", b"Subject: b\r\n\r\nbob's\r\n")
    factory = store_factory(store, Dir(), tmp_path)

    async def by_principal(p: Any) -> Any:
        return await factory(type(p)(p.id, p.username, accounts[int(p.id)]))

    server = Server(tmp_path, factory=by_principal)
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            c = Client(server, http)
            c.account_id = "A1"
            await c.import_message(b"Subject: a\r\n\r\nalice's\r\n")
            got = await quota_get(c, {})
            by = {q["id"]: q for q in got["list"]}
            assert set(by) == {"messages", "domain-messages"}
            assert (by["messages"]["used"], by["messages"]["hardLimit"], by["messages"]["scope"]) == (1, 10, "account")
            dom = by["domain-messages"]
            assert (dom["used"], dom["hardLimit"], dom["scope"], dom["resourceType"]) == (2, 3, "domain", "count")
            assert dom["name"] == "messages of example.test"
            await c.import_message(b"Subject: a2\r\n\r\nalice's 2\r\n")  # the domain's third message
            blob = await c.upload(b"Subject: a3\r\n\r\nno room\r\n")
            inbox = await c.mailbox_id("inbox")
            r = await c.one("Email/import", {"emails": {"x": {"blobId": blob["blobId"], "mailboxIds": {inbox: True}}}})
            assert r["notCreated"]["x"]["type"] == "overQuota"  # alice has room, the domain has not
            assert (await alice.quota_usage()).messages == 2
            again = await quota_get(c, {"ids": ["domain-messages"]})
            assert again["list"][0]["used"] == 3 and again["state"] != got["state"]
    finally:
        await server.stop()
        await store.close()
