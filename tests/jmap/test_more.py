"""Identity, EmailSubmission, VacationResponse (RFC 8621 §6-8), Quota (RFC 9425), Blob (RFC 9404)."""

from __future__ import annotations

import base64
import hashlib

from jmaptest import Client, Server

ALL = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail", "urn:ietf:params:jmap:submission",
       "urn:ietf:params:jmap:vacationresponse", "urn:ietf:params:jmap:quota", "urn:ietf:params:jmap:blob"]


async def one(c: Client, name: str, args: dict) -> dict:  # type: ignore[type-arg]
    (r,) = await c.call([name, {"accountId": "a1", **args}, "0"], using=ALL)
    assert r[0] == name, r
    return r[1]  # type: ignore[no-any-return]


async def test_session_advertises_capabilities(client: Client) -> None:
    async with client.http.get(client.server.url + "/jmap/session", headers=client.headers) as r:
        s = await r.json()
    for cap in ALL:
        assert cap in s["capabilities"]
    acc = s["accounts"]["a1"]["accountCapabilities"]
    assert acc["urn:ietf:params:jmap:submission"]["maxDelayedSend"] == 7 * 86400  # [jmap] max_delayed_send
    assert acc["urn:ietf:params:jmap:blob"]["supportedDigestAlgorithms"] == ["sha", "sha-256"]


async def test_identity_default_create_update_destroy_changes(client: Client) -> None:
    got = await one(client, "Identity/get", {})
    assert [(i["email"], i["mayDelete"]) for i in got["list"]] == [("alice@example.test", False)]
    s0 = got["state"]
    r = await one(client, "Identity/set", {"create": {
        "s": {"email": "sales@example.test", "name": "Sales", "textSignature": "-- Sales"},
        "x": {"email": "ceo@example.test"}}})
    assert r["notCreated"]["x"]["type"] == "forbiddenFrom"
    sid = r["created"]["s"]["id"]
    r = await one(client, "Identity/set", {"update": {sid: {"name": "Sales team"}}, "destroy": [got["list"][0]["id"]]})
    assert r["updated"] == {sid: None} and r["notDestroyed"][got["list"][0]["id"]]["type"] == "forbidden"
    ch = await one(client, "Identity/changes", {"sinceState": s0})
    assert ch["created"] == [sid]
    # a state that is no number we gave (a Unicode digit, a huge one) cannot be calculated from, not a crash
    for bad in ("\u00b2", "9" * 5000):
        for method in ("Identity/changes", "Email/changes"):
            r = await client.call([method, {"accountId": "a1", "sinceState": bad}, "c"], using=ALL)
            assert r[0][0] == "error" and r[0][1]["type"] == "cannotCalculateChanges", (method, r)
    r = await one(client, "Identity/set", {"destroy": [sid]})
    assert r["destroyed"] == [sid]


async def test_email_submission_with_on_success_update(server: Server, client: Client) -> None:
    drafts = await client.mailbox_id("drafts")
    sent = await client.mailbox_id("sent")
    ident = (await one(client, "Identity/get", {}))["list"][0]["id"]
    r = await client.call(
        ["Email/set", {"accountId": "a1", "create": {"m": {
            "mailboxIds": {drafts: True}, "keywords": {"$draft": True},
            "from": [{"email": "alice@example.test"}], "to": [{"email": "bob@example.test"}],
            "bcc": [{"email": "secret@example.test"}], "subject": "hi Bob",
            "textBody": [{"partId": "t"}], "bodyValues": {"t": {"value": "hello"}}}}}, "e"],
        ["EmailSubmission/set", {"accountId": "a1", "create": {"s": {"identityId": ident, "emailId": "#m"}},
                                 "onSuccessUpdateEmail": {"#s": {f"mailboxIds/{drafts}": None,
                                                                  f"mailboxIds/{sent}": True,
                                                                  "keywords/$draft": None}}}, "s"],
        using=ALL)
    assert [x[0] for x in r] == ["Email/set", "EmailSubmission/set", "Email/set"]
    sub = r[1][1]["created"]["s"]
    assert sub["undoStatus"] == "final"
    eid = r[0][1]["created"]["m"]["id"]
    assert r[2][1]["updated"] == {eid: None}
    mail_from, rcpts, raw = server.submitter.sent[0]
    assert mail_from == "alice@example.test" and rcpts == ["bob@example.test", "secret@example.test"]
    assert b"\nBcc:" not in raw and b"hi Bob" in raw
    e = (await client.one("Email/get", {"ids": [eid], "properties": ["mailboxIds", "keywords"]}))["list"][0]
    assert e == {"id": eid, "mailboxIds": {sent: True}, "keywords": {}}
    got = await one(client, "EmailSubmission/get", {"ids": [sub["id"]]})
    assert got["list"][0]["deliveryStatus"]["bob@example.test"]["delivered"] == "yes"
    q = await one(client, "EmailSubmission/query", {"filter": {"emailIds": [eid]}})
    assert q["ids"] == [sub["id"]]
    bad = await one(client, "EmailSubmission/set", {"create": {
        "a": {"identityId": "nope", "emailId": eid},
        "b": {"identityId": ident, "emailId": eid,
              "envelope": {"mailFrom": {"email": "ceo@example.test"}, "rcptTo": [{"email": "x@y.test"}]}},
        "c": {"identityId": ident, "emailId": eid, "envelope": {"mailFrom": {"email": "alice@example.test"},
                                                               "rcptTo": []}}},
        "update": {sub["id"]: {"undoStatus": "canceled"}}})
    assert {k: v["type"] for k, v in bad["notCreated"].items()} == {"a": "invalidProperties",
                                                                   "b": "forbiddenMailFrom", "c": "noRecipients"}
    assert bad["notUpdated"][sub["id"]]["type"] == "cannotUnsend"


async def test_vacation_response(client: Client) -> None:
    got = await one(client, "VacationResponse/get", {})
    assert got["list"] == [{"id": "singleton", "isEnabled": False, "fromDate": None, "toDate": None,
                            "subject": None, "textBody": None, "htmlBody": None}]
    r = await one(client, "VacationResponse/set", {"update": {"singleton": {"isEnabled": True, "subject": "away"}},
                                                    "create": {"x": {}}, "destroy": ["singleton"]})
    assert r["updated"] == {"singleton": None}
    assert r["notCreated"]["x"]["type"] == "singleton" and r["notDestroyed"]["singleton"]["type"] == "singleton"
    got = await one(client, "VacationResponse/get", {"properties": ["isEnabled", "subject"]})
    assert got["list"] == [{"id": "singleton", "isEnabled": True, "subject": "away"}] and got["state"] != "0"


async def test_quota(server: Server, client: Client) -> None:
    assert (await one(client, "Quota/get", {}))["list"] == []  # unlimited: no Quota objects
    await client.import_message(b"Subject: q\r\n\r\n" + b"x" * 100 + b"\r\n")
    server.backends["1"].quota_limit = (10_000, 5)
    got = await one(client, "Quota/get", {})
    by = {q["resourceType"]: q for q in got["list"]}
    assert by["octets"]["hardLimit"] == 10_000 and by["octets"]["used"] > 100 and by["count"]["used"] == 1
    server.backends["1"].quota_limit = (150, None)
    blob = await client.upload(b"Subject: big\r\n\r\n" + b"y" * 200 + b"\r\n")
    inbox = await client.mailbox_id("inbox")
    r = await client.one("Email/import", {"emails": {"b": {"blobId": blob["blobId"], "mailboxIds": {inbox: True}}}})
    assert r["notCreated"]["b"]["type"] == "overQuota"
    ch = await one(client, "Quota/changes", {"sinceState": got["state"]})
    assert ch["updated"] == ["storage"]


async def test_blob_upload_get_lookup(client: Client) -> None:
    up = await client.upload(b"world", "text/plain")
    r = await one(client, "Blob/upload", {"create": {"b": {"type": "text/plain", "data": [
        {"data:asText": "hello "}, {"blobId": up["blobId"]}, {"data:asBase64": base64.b64encode(b"!").decode()}]}}})
    b = r["created"]["b"]
    assert b["size"] == 12
    got = await one(client, "Blob/get", {"ids": [b["id"], "Gnope"],
                                         "properties": ["data:asText", "digest:sha-256", "size"]})
    item = got["list"][0]
    assert item["data:asText"] == "hello world!" and item["size"] == 12
    assert item["digest:sha-256"] == base64.b64encode(hashlib.sha256(b"hello world!").digest()).decode()
    assert got["notFound"] == ["Gnope"]
    part = await one(client, "Blob/get", {"ids": [b["id"]], "offset": 6, "length": 100, "properties": ["data:asText"]})
    assert part["list"][0]["data:asText"] == "world!" and part["list"][0]["isTruncated"] is True
    eid = await client.import_message(b"Subject: look\r\n\r\nup\r\n")
    e = (await client.one("Email/get", {"ids": [eid], "properties": ["blobId", "threadId", "mailboxIds"]}))["list"][0]
    lk = await one(client, "Blob/lookup", {"typeNames": ["Email", "Thread", "Mailbox"], "ids": [e["blobId"], "Gzz"]})
    assert lk["list"][0]["matchedIds"] == {"Email": [eid], "Thread": [e["threadId"]], "Mailbox": list(e["mailboxIds"])}
    assert lk["notFound"] == ["Gzz"]
    bad = await client.call(["Blob/lookup", {"accountId": "a1", "typeNames": ["Calendar"], "ids": []}, "x"], using=ALL)
    assert bad[0][1]["type"] == "unknownDataType"


async def _next_sent(server: Server, count: int) -> None:
    import asyncio

    async with asyncio.timeout(5):
        while len(server.submitter.sent) < count:
            server.submitter.changed.clear()
            await server.submitter.changed.wait()


async def test_vacation_auto_reply_once_per_sender(server: Server, client: Client) -> None:
    await one(client, "VacationResponse/set", {"update": {"singleton": {
        "isEnabled": True, "subject": "Out of office", "textBody": "back on Monday"}}})
    await client.import_message(b"From: Carol <carol@x.test>\r\nSubject: hello\r\nMessage-ID: <c1@x.test>\r\n\r\nhi\r\n")
    await _next_sent(server, 1)
    mail_from, rcpts, raw = server.submitter.sent[0]
    assert mail_from == "" and rcpts == ["carol@x.test"]  # RFC 3834 §3.3: null reverse path
    assert b"Auto-Submitted: auto-replied" in raw and b"In-Reply-To: <c1@x.test>" in raw
    assert b"Subject: Out of office" in raw and b"back on Monday" in raw
    # the same sender again, a list, an auto-reply and a no-reply sender: all silent; a new sender: answered
    for msg in (b"From: carol@x.test\r\nSubject: again\r\n\r\nx\r\n",
                b"From: list@x.test\r\nList-Id: <l.x.test>\r\nSubject: news\r\n\r\nx\r\n",
                b"From: bot@x.test\r\nAuto-Submitted: auto-replied\r\nSubject: re\r\n\r\nx\r\n",
                b"From: noreply@x.test\r\nSubject: receipt\r\n\r\nx\r\n",
                b"From: dave@x.test\r\nSubject: hi\r\n\r\nx\r\n"):
        await client.import_message(msg)
    await _next_sent(server, 2)
    # the watcher handles new mail in arrival order: dave's reply means the others were judged already
    assert [s[1] for s in server.submitter.sent] == [["carol@x.test"], ["dave@x.test"]]
    await one(client, "VacationResponse/set", {"update": {"singleton": {"isEnabled": False}}})


async def test_watchers_resume_after_restart(tmp_path, server: Server, client: Client) -> None:  # type: ignore[no-untyped-def]
    await one(client, "VacationResponse/set", {"update": {"singleton": {"isEnabled": True, "textBody": "away"}}})
    # a fresh app over the same upload directory (as after a restart), with the same accounts
    from mailsrv.jmap.server import JmapApp

    await server.app.vacation.close()
    app2 = JmapApp(server.config, server.auth, server.backend_for, server.uploads, b"k" * 32, tls=False,
                   submitter=server.submitter)
    await app2.resume()
    try:
        assert "a1" in app2.vacation.tasks
        await server.backends["1"].import_email(b"From: erin@x.test\r\nSubject: q\r\n\r\nx\r\n",
                                                frozenset({(await client.mailbox_id("inbox"))}), frozenset(), None)
        await _next_sent(server, 1)
        assert server.submitter.sent[-1][1] == ["erin@x.test"]
    finally:
        await app2.vacation.close()
