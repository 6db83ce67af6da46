"""Per-folder ACLs over JMAP (docs/shared-mailboxes.md): the grantee's account shows only the mailboxes
with "l", emails of readable ones, myRights from the RFC 4314 rights, each change checked per mailbox,
and a mailbox the grantee creates gets its parent's ACL; real HTTP, directory, store and CLI."""

from __future__ import annotations

import json
from typing import Any

from jmaptest import Client
from test_shared import Env, env, msg, own, session, setup

__all__ = ["env", "setup"]  # fixtures of test_shared

ALICE, BOB = "alice@example.test", "bob@example.test"


async def put(c: Client, name: str, subject: str, parent: str | None = None) -> tuple[str, str]:
    """(mailbox id, email id): a new mailbox of ``c``'s with one email in it."""
    made = await c.one("Mailbox/set", {"create": {"m": {"name": name, "parentId": parent}}})
    mid = made["created"]["m"]["id"]
    blob = await c.upload(msg(subject))
    res = await c.one("Email/import", {"emails": {"k": {"blobId": blob["blobId"], "mailboxIds": {mid: True}}}})
    return mid, res["created"]["k"]["id"]


async def test_folder_rights_shape_the_shared_account(env: Env) -> None:
    alice, bob = env.client(ALICE), env.client(BOB)
    a_id = await own(alice)
    await own(bob)
    in_inbox = await alice.import_message(msg("in inbox"))
    projects, in_projects = await put(alice, "Projects", "in projects")
    _private, in_private = await put(alice, "Private", "in private")
    blobs = {e["id"]: e["blobId"] for e in (await alice.one("Email/get", {"ids": None, "properties": ["blobId"]}))["list"]}
    env.cli("share", "grant", ALICE, BOB, "--folder", "Projects", "--rights", "lrsk")
    env.cli("share", "grant", ALICE, BOB, "--folder", "INBOX", "--rights", "lr")
    acc = (await session(bob))["accounts"][a_id]
    assert acc["isReadOnly"] is False  # "s" on Projects
    bob.account_id = a_id
    boxes = {m["name"]: m for m in (await bob.one("Mailbox/get", {"ids": None}))["list"]}
    assert set(boxes) == {"Inbox", "Projects"}  # only the mailboxes with "l"
    assert boxes["Projects"]["myRights"] == {
        "mayReadItems": True, "mayAddItems": False, "mayRemoveItems": False, "maySetSeen": True,
        "maySetKeywords": False, "mayCreateChild": True, "mayRename": False, "mayDelete": False, "maySubmit": False}
    assert boxes["Inbox"]["myRights"]["maySetSeen"] is False
    assert sorted((await bob.one("Email/query", {}))["ids"]) == sorted([in_inbox, in_projects])
    got = await bob.one("Email/get", {"ids": [in_private, in_projects], "properties": ["subject", "mailboxIds"]})
    assert got["notFound"] == [in_private] and got["list"][0]["mailboxIds"] == {projects: True}
    async with env.http.get(f"{env.url}/jmap/download/{a_id}/{blobs[in_private]}/m.eml", headers=bob.headers) as r:
        assert r.status == 404
    async with env.http.get(f"{env.url}/jmap/download/{a_id}/{blobs[in_projects]}/m.eml", headers=bob.headers) as r:
        assert r.status == 200 and b"in projects" in await r.read()
    # each change needs its right on each mailbox the email is in
    res = await bob.one("Email/set", {"update": {in_projects: {"keywords/$seen": True},
                                                 in_inbox: {"keywords/$seen": True}}})
    assert res["updated"] == {in_projects: None} and res["notUpdated"][in_inbox]["type"] == "forbidden"
    res = await bob.one("Email/set", {"update": {in_projects: {"keywords/$flagged": True}},
                                      "destroy": [in_projects, in_private]})
    assert res["notUpdated"][in_projects]["type"] == "forbidden"
    assert res["notDestroyed"][in_projects]["type"] == "forbidden"
    assert res["notDestroyed"][in_private]["type"] == "notFound"
    seen = await alice.one("Email/get", {"ids": [in_projects], "properties": ["keywords"]})
    assert seen["list"][0]["keywords"] == {"$seen": True}  # alice's flag: no private \Seen
    # "k": a child of Projects (which starts with Projects' ACL), not a top-level mailbox
    res = await bob.one("Mailbox/set", {"create": {"c": {"name": "Child", "parentId": projects},
                                                   "t": {"name": "Top"}}})
    assert res["notCreated"]["t"]["type"] == "forbidden" and res["created"]["c"]["id"]
    entries: list[dict[str, Any]] = json.loads(env.cli("share", "list", ALICE, "--json"))
    assert {"owner": ALICE, "grantee": BOB, "folder": "Projects/Child", "rights": "lrsk"} in entries
    names = {m["name"] for m in (await bob.one("Mailbox/get", {"ids": None}))["list"]}
    assert names == {"Inbox", "Projects", "Child"}
    # alice renames Projects over JMAP: its entries (and its child's) follow; a destroyed one's go
    await alice.one("Mailbox/set", {"update": {projects: {"name": "Work"}}})
    entries = json.loads(env.cli("share", "list", ALICE, "--json"))
    assert {e.get("folder") for e in entries} == {"Work", "Work/Child", "INBOX"}
    child = res["created"]["c"]["id"]
    assert (await alice.one("Mailbox/set", {"destroy": [child]}))["destroyed"] == [child]
    assert {e.get("folder") for e in json.loads(env.cli("share", "list", ALICE, "--json"))} == {"Work", "INBOX"}
    # the same rights over IMAP and JMAP: an entry that takes INBOX away hides it here too
    env.cli("share", "grant", ALICE, BOB, "--folder", "INBOX", "--rights", "")
    assert in_inbox not in (await bob.one("Email/query", {}))["ids"]
    env.cli("share", "revoke", ALICE, BOB)
    assert a_id not in (await session(bob))["accounts"]


async def test_changes_leave_out_what_the_grantee_cannot_see(env: Env) -> None:
    alice, bob = env.client(ALICE), env.client(BOB)
    a_id = await own(alice)
    await own(bob)
    projects, _ = await put(alice, "Projects", "first")
    private, _ = await put(alice, "Private", "secret")
    env.cli("share", "grant", ALICE, BOB, "--folder", "Projects", "--rights", "lr")
    bob.account_id = a_id
    state = (await bob.one("Email/get", {"ids": []}))["state"]
    mstate = (await bob.one("Mailbox/get", {"ids": []}))["state"]
    own_state = (await alice.one("Email/get", {"ids": []}))["state"]
    own_mstate = (await alice.one("Mailbox/get", {"ids": []}))["state"]
    assert own_state != state  # a grantee's state also holds what they see (so it follows ACL changes)
    for mid, subject in ((private, "later private"), (projects, "later work")):
        blob = await alice.upload(msg(subject))
        await alice.one("Email/import", {"emails": {"k": {"blobId": blob["blobId"], "mailboxIds": {mid: True}}}})
    mine = await alice.one("Email/changes", {"sinceState": own_state})
    assert len(mine["created"]) == 2  # the owner's own view: both
    seen = await bob.one("Email/changes", {"sinceState": state})
    got = await bob.one("Email/get", {"ids": seen["created"], "properties": ["subject"]})
    assert [e["subject"] for e in got["list"]] == ["later work"] and len(seen["created"]) == 1
    await alice.one("Mailbox/set", {"create": {"h": {"name": "Hidden"}}})
    assert (await bob.one("Mailbox/changes", {"sinceState": mstate}))["created"] == []
    assert len((await alice.one("Mailbox/changes", {"sinceState": own_mstate}))["created"]) == 1


async def test_changes_after_an_acl_change_name_what_it_hid_and_showed(env: Env) -> None:
    """RFC 8620 §5.2: after an ACL change the grantee's /changes reports the emails and mailboxes it
    hid as destroyed and those it showed as created (the grantee's copies never go stale)."""
    alice, bob = env.client(ALICE), env.client(BOB)
    a_id = await own(alice)
    await own(bob)
    projects, in_projects = await put(alice, "Projects", "work")
    private, in_private = await put(alice, "Private", "secret")
    _, in_notes = await put(alice, "Notes", "notes")
    env.cli("share", "grant", ALICE, BOB, "--folder", "Projects", "--rights", "lr")
    env.cli("share", "grant", ALICE, BOB, "--folder", "Notes", "--rights", "lr")
    bob.account_id = a_id
    s0 = (await bob.one("Email/get", {"ids": []}))["state"]
    m0 = (await bob.one("Mailbox/get", {"ids": []}))["state"]
    assert (await bob.one("Email/changes", {"sinceState": s0}))["destroyed"] == []  # nothing yet
    # Projects taken away, Private given: nothing changed in alice's store
    env.cli("share", "grant", ALICE, BOB, "--folder", "Projects", "--rights", "")
    env.cli("share", "grant", ALICE, BOB, "--folder", "Private", "--rights", "lr")
    ch = await bob.one("Email/changes", {"sinceState": s0})
    assert (ch["created"], ch["updated"], ch["destroyed"]) == ([in_private], [], [in_projects])
    assert ch["newState"] == (await bob.one("Email/get", {"ids": []}))["state"] != s0
    mch = await bob.one("Mailbox/changes", {"sinceState": m0})
    assert (mch["created"], mch["destroyed"]) == ([private], [projects])
    again = await bob.one("Email/changes", {"sinceState": ch["newState"]})
    assert (again["created"], again["updated"], again["destroyed"]) == ([], [], [])
    # alice moves an email out of what bob may read: destroyed for him too
    await alice.one("Email/set", {"update": {in_notes: {"mailboxIds": {projects: True}}}})
    ch = await bob.one("Email/changes", {"sinceState": again["newState"]})
    assert (ch["created"], ch["updated"], ch["destroyed"]) == ([], [], [in_notes])
    # the owner's own state does not pass for the grantee's (nor the other way): resynchronise
    mine = (await alice.one("Email/get", {"ids": []}))["state"]
    assert (await bob.call(["Email/changes", {"accountId": a_id, "sinceState": mine}, "c"]))[0][1]["type"] == (
        "cannotCalculateChanges")
    env.cli("share", "revoke", ALICE, BOB)


def test_sight_tokens_round_trip_and_refuse_garbage() -> None:
    import pytest

    from mailsrv.jmap.backend import CannotCalculateChanges
    from mailsrv.jmap.sharedview import _box_key, _unsight, sight

    ids = ["Mabc", "Mdef", "M" + "0" * 24]
    assert _unsight(sight(ids)) == {_box_key(i) for i in ids} and _unsight(sight([])) == set()
    assert len(sight(ids)) == 4 * len(ids)
    for bad in ("!!", "AAAA" + "A", "é"):
        with pytest.raises(CannotCalculateChanges):
            _unsight(bad)


async def test_a_mailbox_destroyed_over_jmap_takes_its_metadata_entries(env: Env) -> None:
    """RFC 5464 entries (IMAP SETMETADATA writes them with mailsrv.store.metadata) go with a mailbox
    destroyed by its owner or by a grantee holding "x" (a right that makes the shared
    account writable, as "k" does); the other mailboxes' entries stay."""
    import sqlite3

    from mailsrv.store import metadata

    alice, bob = env.client(ALICE), env.client(BOB)
    a_id = await own(alice)
    await own(bob)
    made = await alice.one("Mailbox/set", {"create": {n: {"name": n} for n in ("Keep", "Temp", "Theirs")}})
    ids = {n: made["created"][n]["id"] for n in ("Keep", "Temp", "Theirs")}
    root = next(env.config.parent.rglob(".Temp")).parent  # alice's maildir root
    for mid in ids.values():
        metadata.write(root, mid, "", [("/shared/comment", b"c"), ("/private/note", b"n")])

    def rows() -> dict[str, int]:
        db = sqlite3.connect(root / metadata.METADATA_DB)
        try:
            return dict(db.execute("SELECT mailbox, count(*) FROM entries GROUP BY mailbox").fetchall())
        finally:
            db.close()

    assert rows() == {ids["Keep"]: 2, ids["Temp"]: 2, ids["Theirs"]: 2}
    res = await alice.one("Mailbox/set", {"destroy": [ids["Temp"]]})
    assert res["destroyed"] == [ids["Temp"]]
    assert rows() == {ids["Keep"]: 2, ids["Theirs"]: 2}
    env.cli("share", "grant", ALICE, BOB, "--folder", "Theirs", "--rights", "lrx")
    bob.account_id = a_id
    assert (await session(bob))["accounts"][a_id]["isReadOnly"] is False  # "x" changes the account
    res = await bob.one("Mailbox/set", {"destroy": [ids["Theirs"]]})
    assert res["destroyed"] == [ids["Theirs"]]
    assert rows() == {ids["Keep"]: 2}
    # "k" alone (no right on messages) lets the grantee create a child, as IMAP CREATE does
    env.cli("share", "grant", ALICE, BOB, "--folder", "Keep", "--rights", "lk")
    res = await bob.one("Mailbox/set", {"create": {"c": {"name": "Child", "parentId": ids["Keep"]}}})
    assert "c" in res["created"], res
    res = await bob.one("Mailbox/set", {"destroy": [ids["Keep"]]})
    assert res["notDestroyed"][ids["Keep"]]["type"] == "forbidden"  # no "x"
