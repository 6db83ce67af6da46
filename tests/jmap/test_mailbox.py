"""Mailbox/get, /set, /changes, /query over HTTP (RFC 8621 §2)."""

from __future__ import annotations

from typing import Any

from jmaptest import Client


async def test_get_roles_counts_rights(client: Client) -> None:
    got = await client.one("Mailbox/get", {"ids": None})
    roles = {m["role"] for m in got["list"]}
    assert roles == {"inbox", "sent", "drafts", "trash", "junk", "archive"}
    inbox = next(m for m in got["list"] if m["role"] == "inbox")
    assert inbox["totalEmails"] == 0 and inbox["myRights"]["mayDelete"] is True
    assert got["notFound"] == []
    part = await client.one("Mailbox/get", {"ids": [inbox["id"], "nope"], "properties": ["name"]})
    assert part["list"] == [{"id": inbox["id"], "name": "Inbox"}] and part["notFound"] == ["nope"]


async def test_create_with_back_reference_update_destroy_and_changes(client: Client) -> None:
    s0 = (await client.one("Mailbox/get", {"ids": []}))["state"]
    r = await client.call(
        ["Mailbox/set", {"accountId": "a1", "create": {
            "p": {"name": "Projects"},
            "c": {"name": "Alpha", "parentId": "#p", "isSubscribed": True}}}, "s"],
        ["Mailbox/get", {"accountId": "a1", "ids": ["#p", "#c"], "properties": ["name", "parentId"]}, "g"],
    )
    created = r[0][1]["created"]
    assert set(created) == {"p", "c"} and created["c"]["totalEmails"] == 0
    got = {m["name"]: m for m in r[1][1]["list"]}
    assert got["Alpha"]["parentId"] == created["p"]["id"]
    ch = await client.one("Mailbox/changes", {"sinceState": s0})
    assert sorted(ch["created"]) == sorted([created["p"]["id"], created["c"]["id"]])
    assert ch["updatedProperties"] is None and ch["oldState"] == s0
    # errors: duplicate name, unknown role, server-set property, has child
    r2 = await client.one("Mailbox/set", {
        "create": {"d": {"name": "Projects"}, "r": {"name": "X", "role": "bogus"}, "t": {"name": "Y", "totalEmails": 3}},
        "destroy": [created["p"]["id"], "nope"],
        "update": {created["c"]["id"]: {"name": "Beta"}, "nope": {"name": "Z"}},
    })
    assert r2["notCreated"]["d"]["type"] == "alreadyExists"
    assert r2["notCreated"]["r"]["type"] == "invalidProperties"
    assert r2["notCreated"]["t"]["properties"] == ["totalEmails"]
    assert r2["notDestroyed"][created["p"]["id"]]["type"] == "mailboxHasChild"
    assert r2["notDestroyed"]["nope"]["type"] == "notFound"
    assert r2["updated"] == {created["c"]["id"]: None} and r2["notUpdated"]["nope"]["type"] == "notFound"
    r3 = await client.one("Mailbox/set", {"destroy": [created["c"]["id"], created["p"]["id"]]})
    assert r3["destroyed"] == [created["c"]["id"], created["p"]["id"]]
    ch2 = await client.one("Mailbox/changes", {"sinceState": s0})
    assert ch2["created"] == [] and ch2["destroyed"] == []  # created and destroyed since: omitted


async def test_state_mismatch_and_cannot_calculate(client: Client) -> None:
    r = await client.call(["Mailbox/set", {"accountId": "a1", "ifInState": "999", "create": {"a": {"name": "A"}}}, "x"],
                          ["Mailbox/changes", {"accountId": "a1", "sinceState": "bogus"}, "y"],
                          ["Mailbox/changes", {"accountId": "a1", "sinceState": "0", "maxChanges": 0}, "z"])
    assert [x[1]["type"] for x in r] == ["stateMismatch", "cannotCalculateChanges", "invalidArguments"]


async def test_changes_counts_only_and_max_changes(client: Client) -> None:
    s0 = (await client.one("Mailbox/get", {"ids": []}))["state"]
    await client.import_message(b"Subject: hi\r\n\r\nbody\r\n")
    ch = await client.one("Mailbox/changes", {"sinceState": s0})
    inbox = await client.mailbox_id("inbox")
    assert ch["updated"] == [inbox] and ch["updatedProperties"] == ["totalEmails", "unreadEmails", "totalThreads",
                                                                     "unreadThreads"]
    await client.one("Mailbox/set", {"create": {str(i): {"name": f"box{i}"} for i in range(3)}})
    page = await client.one("Mailbox/changes", {"sinceState": s0, "maxChanges": 1})
    assert page["hasMoreChanges"] is True and len(page["created"] + page["updated"]) == 1
    seen = set(page["created"] + page["updated"])
    state = page["newState"]
    while True:
        page = await client.one("Mailbox/changes", {"sinceState": state, "maxChanges": 1})
        seen |= set(page["created"] + page["updated"])
        state = page["newState"]
        if not page["hasMoreChanges"]:
            break
    assert len(seen) == 4


async def test_query_filters_sort_tree(client: Client) -> None:
    r = await client.one("Mailbox/set", {"create": {"a": {"name": "zeta", "sortOrder": 1},
                                                     "b": {"name": "child", "parentId": "#a"}}})
    a, b = r["created"]["a"]["id"], r["created"]["b"]["id"]
    q = await client.one("Mailbox/query", {"filter": {"hasAnyRole": False}, "sort": [{"property": "name"}],
                                           "calculateTotal": True})
    assert q["ids"] == [b, a] and q["total"] == 2
    q = await client.one("Mailbox/query", {"filter": {"parentId": None, "hasAnyRole": False}})
    assert q["ids"] == [a]
    q = await client.one("Mailbox/query", {"sortAsTree": True, "sort": [{"property": "sortOrder"}, {"property": "name"}]})
    assert q["ids"].index(a) + 1 == q["ids"].index(b)
    q = await client.one("Mailbox/query", {"filter": {"operator": "OR", "conditions": [{"role": "inbox"}, {"name": "ZET"}]},
                                           "position": 1, "limit": 5})
    assert q["ids"] == [a] or len(q["ids"]) == 1
    bad = await client.call(["Mailbox/query", {"accountId": "a1", "filter": {"nope": 1}}, "1"],
                            ["Mailbox/query", {"accountId": "a1", "sort": [{"property": "nope"}]}, "2"],
                            ["Mailbox/query", {"accountId": "a1", "anchor": "zzz"}, "3"],
                            ["Mailbox/queryChanges", {"accountId": "a1", "sinceQueryState": "999999"}, "4"])
    assert [x[1]["type"] for x in bad] == ["unsupportedFilter", "unsupportedSort", "anchorNotFound",
                                           "cannotCalculateChanges"]


async def test_destroy_with_emails(client: Client) -> None:
    r = await client.one("Mailbox/set", {"create": {"a": {"name": "tmp"}}})
    mid = r["created"]["a"]["id"]
    await client.import_message(b"Subject: x\r\n\r\ny\r\n", role="inbox")
    blob = await client.upload(b"Subject: in tmp\r\n\r\nz\r\n")
    imp = await client.one("Email/import", {"emails": {"e": {"blobId": blob["blobId"], "mailboxIds": {mid: True}}}})
    eid = imp["created"]["e"]["id"]
    r = await client.one("Mailbox/set", {"destroy": [mid]})
    assert r["notDestroyed"][mid]["type"] == "mailboxHasEmail"
    r = await client.one("Mailbox/set", {"destroy": [mid], "onDestroyRemoveEmails": True})
    assert r["destroyed"] == [mid]
    assert (await client.one("Email/get", {"ids": [eid]}))["notFound"] == [eid]


def apply_query_changes(old: list[str], changes: dict[str, Any]) -> list[str]:
    """A client's replay of a /queryChanges response (RFC 8620 §5.6) over its cached ids."""
    out = [i for i in old if i not in set(changes["removed"])]
    for add in sorted(changes["added"], key=lambda a: a["index"]):
        out.insert(add["index"], add["id"])
    return out


async def test_query_changes_replays_to_the_new_result(client: Client) -> None:
    sort = [{"property": "sortOrder"}, {"property": "name"}]
    q0 = await client.one("Mailbox/query", {"sort": sort})
    assert q0["canCalculateChanges"] is True
    r = await client.one("Mailbox/set", {"create": {"a": {"name": "alpha", "sortOrder": 5},
                                                     "b": {"name": "beta", "sortOrder": 5}}})
    a, b = r["created"]["a"]["id"], r["created"]["b"]["id"]
    q1 = await client.one("Mailbox/query", {"sort": sort})
    ch = await client.one("Mailbox/queryChanges", {"sort": sort, "sinceQueryState": q0["queryState"],
                                                   "calculateTotal": True})
    assert ch["oldQueryState"] == q0["queryState"] and ch["newQueryState"] == q1["queryState"]
    assert ch["removed"] == [] and {x["id"] for x in ch["added"]} == {a, b}
    assert apply_query_changes(q0["ids"], ch) == q1["ids"] and ch["total"] == len(q1["ids"])
    # a rename and a new sortOrder move mailboxes; a destroy removes one
    await client.one("Mailbox/set", {"update": {a: {"name": "omega"}, b: {"sortOrder": 0}}})
    q2 = await client.one("Mailbox/query", {"sort": sort})
    ch = await client.one("Mailbox/queryChanges", {"sort": sort, "sinceQueryState": q1["queryState"]})
    assert set(ch["removed"]) == {a, b}
    assert apply_query_changes(q1["ids"], ch) == q2["ids"] != q1["ids"]
    # new mail changes only counts: nothing moves
    await client.import_message(b"Subject: count change only\r\n\r\nx\r\n")
    q2 = await client.one("Mailbox/query", {"sort": sort})
    ch = await client.one("Mailbox/queryChanges", {"sort": sort, "sinceQueryState": ch["newQueryState"]})
    assert (ch["removed"], ch["added"]) == ([], []) and ch["newQueryState"] == q2["queryState"]
    await client.one("Mailbox/set", {"destroy": [b]})
    q3 = await client.one("Mailbox/query", {"sort": sort, "filter": {"hasAnyRole": False}})
    ch = await client.one("Mailbox/queryChanges", {"sort": sort, "filter": {"hasAnyRole": False},
                                                   "sinceQueryState": q2["queryState"]})
    assert ch["removed"] == [b] and ch["added"] == []
    assert q3["ids"] == [a]
    # nothing since: an empty answer; maxChanges and tree queries
    same = await client.one("Mailbox/queryChanges", {"sort": sort, "sinceQueryState": q3["queryState"]})
    assert (same["removed"], same["added"], same["newQueryState"]) == ([], [], q3["queryState"])
    bad = await client.call(
        ["Mailbox/queryChanges", {"accountId": "a1", "sinceQueryState": q0["queryState"], "maxChanges": 1}, "1"],
        ["Mailbox/queryChanges", {"accountId": "a1", "sinceQueryState": q0["queryState"], "sortAsTree": True}, "2"],
        ["Mailbox/queryChanges", {"accountId": "a1", "sinceQueryState": q0["queryState"], "upToId": 3}, "3"])
    assert [x[1]["type"] for x in bad] == ["tooManyChanges", "cannotCalculateChanges", "invalidArguments"]
