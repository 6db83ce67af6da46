"""A grantee's private $seen over JMAP (``[imap] shared_private_seen``, docs/shared-mailboxes.md): the
owner's keywords and counts stay the owner's, the grantee's $seen, unreadEmails / unreadThreads and
states are their own; real HTTP (aiohttp), directory, store and CLI (test_shared's env)."""

from __future__ import annotations

import asyncio

import pytest
from test_shared import Env, env, events, msg, own, setup

__all__ = ["env", "setup"]  # fixtures of test_shared

ALICE, BOB = "alice@example.test", "bob@example.test"


@pytest.mark.parametrize("env", [True], indirect=True)
async def test_grantee_seen_is_private_over_jmap(env: Env) -> None:
    alice, bob = env.client(ALICE), env.client(BOB)
    a_id = await own(alice)
    await own(bob)
    new = await alice.import_message(msg("nobody has read it"))
    env.cli("share", "grant", ALICE, BOB, "--rights", "write")
    bob.account_id = a_id
    # bob's first look seeds his $seen from alice's (none yet): what she reads later is hers only
    assert (await bob.one("Email/get", {"ids": [new], "properties": ["keywords"]}))["list"][0]["keywords"] == {}
    read = await alice.import_message(msg("alice has read it"), keywords={"$seen": True})

    async def keywords(c: object, ids: list[str]) -> dict[str, dict[str, bool]]:
        got = await c.one("Email/get", {"ids": ids, "properties": ["keywords"]})  # type: ignore[attr-defined]
        return {e["id"]: e["keywords"] for e in got["list"]}

    async def inbox(c: object) -> dict[str, int]:
        boxes = (await c.one("Mailbox/get", {"ids": None}))["list"]  # type: ignore[attr-defined]
        return next(m for m in boxes if m["role"] == "inbox")

    assert await keywords(bob, [read, new]) == {read: {}, new: {}}  # alice's $seen is not bob's
    assert (await inbox(bob))["unreadEmails"] == 2 and (await inbox(alice))["unreadEmails"] == 1
    e_state = (await bob.one("Email/get", {"ids": []}))["state"]
    m_state = (await bob.one("Mailbox/get", {"ids": []}))["state"]
    a_state = (await alice.one("Email/get", {"ids": []}))["state"]

    res = await bob.one("Email/set", {"update": {new: {"keywords/$seen": True, "keywords/$flagged": True}}})
    assert res["updated"] == {new: None}
    assert await keywords(bob, [new]) == {new: {"$seen": True, "$flagged": True}}
    assert await keywords(alice, [read, new]) == {read: {"$seen": True}, new: {"$flagged": True}}
    box = await inbox(bob)
    assert box["unreadEmails"] == 1 and box["unreadThreads"] == 1
    assert (await inbox(alice))["unreadEmails"] == 1  # alice's counts: her own \Seen
    changes = await bob.one("Email/changes", {"sinceState": e_state})
    assert changes["updated"] == [new] and changes["newState"] != e_state
    assert (await bob.one("Mailbox/changes", {"sinceState": m_state}))["updated"]
    # a private change alone moves the grantee's state, never the owner's
    a_state2 = (await alice.one("Email/get", {"ids": []}))["state"]
    e_state = changes["newState"]
    res = await bob.one("Email/set", {"update": {read: {"keywords/$seen": True}}})
    assert res["updated"] == {read: None}
    assert (await alice.one("Email/get", {"ids": []}))["state"] == a_state2 != a_state  # the $flagged only
    changes = await bob.one("Email/changes", {"sinceState": e_state})
    assert changes["updated"] == [read] and changes["created"] == [] and changes["destroyed"] == []
    assert await keywords(bob, [read]) == {read: {"$seen": True}}
    assert (await inbox(bob))["unreadEmails"] == 0
    # and bob's unseen does not touch alice's \Seen
    await bob.one("Email/set", {"update": {read: {"keywords/$seen": None}}})
    assert await keywords(alice, [read]) == {read: {"$seen": True}}
    assert await keywords(bob, [read]) == {read: {}}
    # pushed: a private change wakes the grantee's stream with the shared account's new state
    es = await env.http.get(env.url + "/jmap/eventsource?types=Email&closeafter=no&ping=0", headers=bob.headers)
    assert es.status == 200
    stream = events(es)
    first = await anext(stream)
    assert a_id in first["changed"]
    await bob.one("Email/set", {"update": {read: {"keywords/$seen": True}}})
    async with asyncio.timeout(10):
        nxt = await anext(stream)
    es.close()
    assert nxt["changed"][a_id]["Email"] != first["changed"][a_id]["Email"]
    assert nxt["changed"][a_id]["Email"] == (await bob.one("Email/get", {"ids": []}))["state"]


async def test_setting_off_seen_is_the_owners_over_jmap(env: Env) -> None:
    alice, bob = env.client(ALICE), env.client(BOB)
    a_id = await own(alice)
    await own(bob)
    read = await alice.import_message(msg("alice has read it"), keywords={"$seen": True})
    env.cli("share", "grant", ALICE, BOB, "--rights", "write")
    bob.account_id = a_id
    got = await bob.one("Email/get", {"ids": [read], "properties": ["keywords"]})
    assert got["list"][0]["keywords"] == {"$seen": True}


@pytest.mark.parametrize("env", [True], indirect=True)
async def test_rights_change_moves_the_grantees_seen(env: Env) -> None:
    """A change of ``s`` (SETACL's folder entry) switches the grantee's $seen between their own and the
    owner's at once: Email/get shows the other one, Email/changes from the state before names the emails.
    In Sent bob never writes privately (his view's modseqs are the owner's): only the rights move it."""
    alice, bob = env.client(ALICE), env.client(BOB)
    a_id = await own(alice)
    await own(bob)
    ids = [await alice.import_message(msg(f"four {i}"), keywords={"$seen": True} if i < 2 else None)
           for i in range(4)]
    sent = [await alice.import_message(msg(f"sent {i}"), "sent", keywords={"$seen": True} if i == 0 else None)
            for i in range(2)]
    for folder in ("INBOX", "Sent"):
        env.cli("share", "grant", ALICE, BOB, "--folder", folder, "--rights", "lrs")
    bob.account_id = a_id

    async def seen(c: object) -> set[str]:
        got = await c.one("Email/get", {"ids": ids + sent, "properties": ["keywords"]})  # type: ignore[attr-defined]
        return {e["id"] for e in got["list"] if e["keywords"].get("$seen")}

    assert await seen(bob) == {ids[0], ids[1], sent[0]}  # the first look seeds alice's reads
    assert (await bob.one("Email/set", {"update": {ids[2]: {"keywords/$seen": True}}}))["updated"] == {ids[2]: None}
    await alice.one("Email/set", {"update": {sent[1]: {"keywords/$seen": True}}})  # after bob's seeding: hers
    owners = {ids[0], ids[1], *sent}
    assert await seen(alice) == owners
    assert await seen(bob) == {ids[0], ids[1], ids[2], sent[0]}
    state = (await bob.one("Email/get", {"ids": []}))["state"]

    async def sent_box() -> dict[str, int]:
        boxes = (await bob.one("Mailbox/get", {"ids": None}))["list"]
        return next(m for m in boxes if m["role"] == "sent")

    assert (await sent_box())["unreadEmails"] == 1
    m_state = (await bob.one("Mailbox/get", {"ids": []}))["state"]
    env.cli("share", "grant", ALICE, BOB, "--folder", "Sent", "--rights", "lr")
    assert await seen(bob) == {ids[0], ids[1], ids[2], *sent}  # at once, with no change of any message
    box = await sent_box()
    assert box["unreadEmails"] == 0 and not box["myRights"]["maySetSeen"]
    assert (await bob.one("Mailbox/changes", {"sinceState": m_state}))["updated"] == [box["id"]]
    env.cli("share", "grant", ALICE, BOB, "--folder", "INBOX", "--rights", "lr")
    assert await seen(bob) == owners
    changes = await bob.one("Email/changes", {"sinceState": state})
    assert {ids[2], sent[1]} <= set(changes["updated"]) and not changes["created"] and not changes["destroyed"]
    assert changes["newState"] != state
    state = changes["newState"]

    for folder in ("INBOX", "Sent"):
        env.cli("share", "grant", ALICE, BOB, "--folder", folder, "--rights", "lrs")
    assert await seen(bob) == {ids[0], ids[1], ids[2], sent[0]}  # his own again
    assert await seen(alice) == owners
    changes = await bob.one("Email/changes", {"sinceState": state})
    assert {ids[2], sent[1]} <= set(changes["updated"]) and not changes["created"] and not changes["destroyed"]
    assert (await bob.one("Email/changes", {"sinceState": changes["newState"]}))["updated"] == []
