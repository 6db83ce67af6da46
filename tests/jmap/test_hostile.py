"""Hostile input to JMAP over the real maildir store: a mailbox name the store cannot keep is
invalidProperties on "name" (it was alreadyExists on create, a server failure on rename)."""

from __future__ import annotations

from typing import Any

from jmaptest import Client
from test_store_backend import env  # noqa: F401  (JMAP over a real store: alice's client, the store, her account)

from mailsrv.store import Store


async def test_a_name_too_long_to_store_is_invalid_properties(env: tuple[Client, Store, Any]) -> None:  # noqa: F811
    c, _, acct = env
    long = "x" * 200  # under the JMAP name limit, over 255 octets once a child's whole path is one directory
    r = await c.one("Mailbox/set", {"create": {"p": {"name": "p"}, "c": {"name": long, "parentId": "#p"}}})
    pid = r["created"]["p"]["id"]
    r = await c.one("Mailbox/set", {"create": {"big": {"name": "y" * 254, "parentId": pid}}})
    assert r["notCreated"]["big"]["type"] == "invalidProperties" and r["notCreated"]["big"]["properties"] == ["name"]
    r = await c.one("Mailbox/set", {"update": {pid: {"name": "q" * 60}}})
    assert r["notUpdated"][pid]["type"] == "invalidProperties"
    assert {"p", "p/" + long} <= {i.name for i in await acct.list_mailboxes()}
