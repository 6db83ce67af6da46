"""Rights on a shared account, method by method, over the in-memory backends (the directory side and the
real store are in test_shared.py)."""

from __future__ import annotations

from jmaptest import Client, FakeAccount, FakeGrant, Server, basic

ALL = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail", "urn:ietf:params:jmap:submission",
       "urn:ietf:params:jmap:vacationresponse", "urn:ietf:params:jmap:quota", "urn:ietf:params:jmap:blob"]


async def test_every_method_on_a_read_only_share(server: Server, client: Client) -> None:
    bob = Client(server, client.http, basic("bob@example.test", "hunter2"))
    bob.account_id = "a2"
    eid = await bob.import_message(b"Subject: bob's report\r\n\r\nquarterly numbers\r\n")
    server.shared["1"] = [FakeGrant(FakeAccount(2, "bob@example.test"), read_only=True)]
    server.backends["2"].quota_limit = (10_000, None)
    reads = await client.call(
        ["Email/query", {"accountId": "a2", "filter": {"text": "quarterly"}}, "q"],
        ["SearchSnippet/get", {"accountId": "a2", "filter": {"text": "quarterly"}, "emailIds": [eid]}, "s"],
        ["Email/get", {"accountId": "a2", "ids": [eid], "properties": ["blobId", "threadId"]}, "g"],
        ["Thread/changes", {"accountId": "a2", "sinceState": "0"}, "t"],
        ["Mailbox/query", {"accountId": "a2", "filter": {"role": "inbox"}}, "m"],
        ["Quota/get", {"accountId": "a2"}, "qt"],
        ["Blob/get", {"accountId": "a2", "#ids": {"resultOf": "g", "name": "Email/get", "path": "/list/*/blobId"},
                      "properties": ["size"]}, "b"],
        using=ALL)
    assert [r[0] for r in reads] == ["Email/query", "SearchSnippet/get", "Email/get", "Thread/changes",
                                     "Mailbox/query", "Quota/get", "Blob/get"], reads
    assert reads[0][1]["ids"] == [eid] and "<mark>quarterly</mark>" in (reads[1][1]["list"][0]["preview"] or "")
    assert reads[5][1]["list"][0]["hardLimit"] == 10_000
    writes = await client.call(
        ["Blob/upload", {"accountId": "a2", "create": {"x": {"data": [{"data:asText": "x"}]}}}, "1"],
        ["Email/set", {"accountId": "a2", "destroy": [eid]}, "2"],
        ["VacationResponse/get", {"accountId": "a2"}, "3"],
        ["Identity/set", {"accountId": "a2", "create": {}}, "4"],
        ["Email/copy", {"fromAccountId": "a1", "accountId": "a2", "create": {}}, "5"],
        using=ALL)
    assert [r[1]["type"] for r in writes] == ["accountReadOnly", "accountReadOnly", "accountNotSupportedByMethod",
                                              "accountNotSupportedByMethod", "accountReadOnly"]
    assert (await bob.one("Email/get", {"ids": [eid], "properties": ["id"]}))["list"] == [{"id": eid}]
    # the caller's own account is untouched by the share
    own = await client.call(["Identity/get", {"accountId": "a1"}, "i"], using=ALL)
    assert own[0][0] == "Identity/get"


async def test_read_write_share_rights(server: Server, client: Client) -> None:
    bob = Client(server, client.http, basic("bob@example.test", "hunter2"))
    bob.account_id = "a2"
    await bob.mailbox_id("inbox")  # bob's account exists
    server.shared["1"] = [FakeGrant(FakeAccount(2, "bob@example.test"), read_only=False)]
    got = await client.call(["Mailbox/get", {"accountId": "a2"}, "m"],
                            ["Blob/upload", {"accountId": "a2", "create": {"x": {"data": [{"data:asText": "x"}]}}}, "b"],
                            using=ALL)
    rights = got[0][1]["list"][0]["myRights"]
    assert rights["mayDelete"] is True and rights["mayAddItems"] is True and rights["maySubmit"] is False
    assert got[1][1]["created"]["x"]["size"] == 1
    sub = await client.call(["EmailSubmission/set", {"accountId": "a2", "create": {}}, "s"], using=ALL)
    assert sub[0][1]["type"] == "accountNotSupportedByMethod"  # never sending as the owner
