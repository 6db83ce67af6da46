"""Email and Thread methods over HTTP (RFC 8621 §3, §4): import, get, query, changes, set, blobs."""

from __future__ import annotations

from pathlib import Path

from jmaptest import Client


def msg(subject: str, frm: str = "a@x.test", extra: str = "", body: str = "hello", date: str = "Wed, 17 May 2000 19:35:05 -0400") -> bytes:
    return (f"From: {frm}\r\nTo: alice@example.test\r\nSubject: {subject}\r\nDate: {date}\r\n{extra}"
            f"\r\n{body}\r\n").encode()


def count_blob_reads(client: Client) -> list[str]:
    """Wrap the account's ``read_blob``: the returned list collects the id of each message read."""
    be = client.server.backends["1"]
    reads: list[str] = []
    real_read = be.read_blob

    async def counting(blob_id: str) -> bytes | None:
        reads.append(blob_id)
        return await real_read(blob_id)

    be.read_blob = counting  # type: ignore[method-assign]
    return reads


async def test_import_and_get_multipart_from_corpus(client: Client, corpus: Path) -> None:
    raw = (corpus / "stalwart-mail-parser/eml/legacy/015.eml").read_bytes()
    eid = await client.import_message(raw, keywords={"$seen": True})
    got = await client.one("Email/get", {"ids": [eid], "fetchTextBodyValues": True, "maxBodyValueBytes": 20,
                                         "properties": ["id", "blobId", "threadId", "mailboxIds", "keywords", "size",
                                                        "from", "subject", "textBody", "htmlBody", "attachments",
                                                        "hasAttachment", "bodyValues", "preview", "bodyStructure",
                                                        "header:Subject:asText", "header:From:asAddresses:all",
                                                        "header:X-Nope", "receivedAt"]})
    e = got["list"][0]
    assert e["size"] == len(raw) and e["keywords"] == {"$seen": True}
    assert e["from"] == [{"name": "Doug Sauder", "email": "dwsauder@example.com"}]
    assert e["header:Subject:asText"] == e["subject"]
    assert e["header:From:asAddresses:all"] == [e["from"]] and e["header:X-Nope"] is None
    # partIds are the IMAP section numbers (RFC 3501 §6.4.5), so JMAP and IMAP name a part alike
    assert [p["partId"] for p in e["textBody"]] == ["1.1.1"] and [p["type"] for p in e["htmlBody"]] == ["text/html"]
    assert [p["partId"] for p in e["htmlBody"]] == ["1.1.2"]
    assert [a["name"] for a in e["attachments"]] == ["2aa3ed95.png", "2aa3edd1.png", "blueball.png", "greenball.png"]
    assert e["hasAttachment"] is True
    assert list(e["bodyValues"]) == ["1.1.1"]
    bv = e["bodyValues"]["1.1.1"]
    assert bv["isTruncated"] is True and len(bv["value"].encode()) <= 20 and bv["value"].startswith("Die Hasen")
    assert e["preview"].startswith("Die Hasen und die Frösche")
    assert e["bodyStructure"]["type"] == "multipart/mixed" and e["bodyStructure"]["partId"] is None
    assert e["receivedAt"].endswith("Z")
    # download an attachment part, whole and a range
    att = e["attachments"][2]
    url = f"{client.server.url}/jmap/download/a1/{att['blobId']}/ball%20%C3%A9.png?accept=image/png"
    async with client.http.get(url, headers=client.headers) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "image/png"
        assert "filename*=UTF-8''ball%20%C3%A9.png" in r.headers["Content-Disposition"]
        data = await r.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) == att["size"]
    async with client.http.get(url, headers={**client.headers, "Range": "bytes=1-3"}) as r:
        assert r.status == 206 and await r.read() == data[1:4]
        assert r.headers["Content-Range"] == f"bytes 1-3/{len(data)}"
    # the whole message blob
    async with client.http.get(f"{client.server.url}/jmap/download/a1/{e['blobId']}/m.eml?accept=message/rfc822",
                               headers=client.headers) as r:
        assert await r.read() == raw
    async with client.http.get(f"{client.server.url}/jmap/download/a1/nope/x", headers=client.headers) as r:
        assert r.status == 404


async def test_structure_properties_read_no_message_bytes(client: Client, corpus: Path) -> None:
    # bodyStructure/textBody/htmlBody/attachments/hasAttachment and the structural header fields
    # come from the structure cached at import (as the store caches it at delivery)
    raw = (corpus / "stalwart-mail-parser/eml/legacy/015.eml").read_bytes()
    eid = await client.import_message(raw)
    reads = count_blob_reads(client)
    structural = ["id", "size", "from", "to", "subject", "sentAt", "messageId", "hasAttachment", "bodyStructure",
                  "textBody", "htmlBody", "attachments", "header:Content-Type:asRaw", "header:Subject:asText:all"]
    body = ["partId", "blobId", "type", "charset", "name", "disposition", "cid", "language", "location"]
    got = await client.one("Email/get", {"ids": [eid], "properties": structural, "bodyProperties": body})
    e = got["list"][0]
    assert reads == []
    assert e["hasAttachment"] is True and [a["name"] for a in e["attachments"]][:2] == ["2aa3ed95.png", "2aa3edd1.png"]
    assert e["header:Content-Type:asRaw"].lstrip().startswith("multipart/") and not e["header:Content-Type:asRaw"].endswith("\n")
    assert e["header:Subject:asText:all"] == [e["subject"]]
    # decoded sizes of base64 parts, a non-structural header field and bodyValues need the bytes: read once
    got2 = await client.one("Email/get", {"ids": [eid], "properties": ["attachments", "header:X-Mailer", "bodyValues"],
                                          "fetchHTMLBodyValues": True})
    assert len(reads) == 1
    e2 = got2["list"][0]
    assert all(a["size"] > 0 for a in e2["attachments"]) and list(e2["bodyValues"]) == ["1.1.2"]
    # the same answer as when everything is read from the bytes (Email/parse of the blob)
    blob = (await client.one("Email/get", {"ids": [eid], "properties": ["blobId"]}))["list"][0]["blobId"]
    parsed = await client.one("Email/parse", {"blobIds": [blob], "properties": structural[1:], "bodyProperties": body})
    for k in structural[1:]:
        if k != "size":
            assert parsed["parsed"][blob][k] == e[k], k


async def test_nested_part_blob_by_section(client: Client) -> None:
    inner = (b"Subject: inner\r\nContent-Type: multipart/mixed; boundary=i\r\n\r\n--i\r\nContent-Type: text/plain\r\n"
             b"\r\ninner text\r\n--i--\r\n")
    raw = (b"Subject: outer\r\nContent-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\nContent-Type: text/plain\r\n\r\n"
           b"outer\r\n--o\r\nContent-Type: multipart/alternative; boundary=a\r\n\r\n--a\r\nContent-Type: text/plain\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\nYWx0IHRleHQ=\r\n--a--\r\n--o\r\nContent-Type: message/rfc822\r\n\r\n"
           + inner + b"--o--\r\n")
    eid = await client.import_message(raw)
    e = (await client.one("Email/get", {"ids": [eid], "properties": ["bodyStructure", "attachments", "textBody"],
                                        "bodyProperties": ["partId", "blobId", "size", "type"]}))["list"][0]
    sub = e["bodyStructure"]["subParts"]
    assert [p["partId"] for p in sub] == ["1", None, "3"] and sub[1]["subParts"][0]["partId"] == "2.1"
    assert sub[1]["subParts"][0]["size"] == len(b"alt text")
    for part, want in ((sub[1]["subParts"][0], b"alt text"), (sub[2], inner[:-2])):  # RFC 2046 §5.1.1: the CRLF before a delimiter is the delimiter's
        async with client.http.get(f"{client.server.url}/jmap/download/a1/{part['blobId']}/x",
                                   headers=client.headers) as r:
            assert r.status == 200 and await r.read() == want
    base = sub[0]["blobId"].rsplit("_", 1)[0]
    for bogus in ("2", "2.9", "01", "1..1", "x"):
        async with client.http.get(f"{client.server.url}/jmap/download/a1/{base}_{bogus}/x",
                                   headers=client.headers) as r:
            assert r.status == 404, bogus


async def test_upload_range_and_limits(client: Client) -> None:
    up = await client.upload(b"0123456789", "application/octet-stream")
    assert up["size"] == 10 and up["blobId"].startswith("G")
    again = await client.upload(b"0123456789", "application/octet-stream")
    assert again["blobId"] == up["blobId"]  # content addressed
    url = f"{client.server.url}/jmap/download/a1/{up['blobId']}/f.bin"
    async with client.http.get(url, headers={**client.headers, "Range": "bytes=-4"}) as r:
        assert r.status == 206 and await r.read() == b"6789"
    async with client.http.post(f"{client.server.url}/jmap/upload/a2/", data=b"x", headers=client.headers) as r:
        assert r.status == 404


async def test_query_filters_sorts_and_threads(client: Client) -> None:
    e1 = await client.import_message(msg("Lunch plans", "bob@x.test", "Message-ID: <m1@x>\r\n", "pizza today?",
                                         "Mon, 1 Jan 2024 10:00:00 +0000"))
    e2 = await client.import_message(msg("Re: Lunch plans", "carol@x.test",
                                         "Message-ID: <m2@x>\r\nIn-Reply-To: <m1@x>\r\nReferences: <m1@x>\r\n",
                                         "yes please", "Tue, 2 Jan 2024 10:00:00 +0000"), keywords={"$seen": True})
    e3 = await client.import_message(msg("Invoice", "billing@x.test", "Message-ID: <m3@x>\r\n", "pay up " * 50,
                                         "Wed, 3 Jan 2024 10:00:00 +0000"), role="archive")

    async def q(**args: object) -> list[str]:
        return list((await client.one("Email/query", dict(args)))["ids"])

    assert set(await q()) == {e1, e2, e3}
    inbox = await client.mailbox_id("inbox")
    assert set(await q(filter={"inMailbox": inbox})) == {e1, e2}
    assert await q(filter={"inMailboxOtherThan": [inbox]}) == [e3]
    assert await q(filter={"hasKeyword": "$seen"}) == [e2]
    assert set(await q(filter={"notKeyword": "$seen"})) == {e1, e3}
    assert await q(filter={"from": "CAROL"}) == [e2]
    assert await q(filter={"subject": "invoice"}) == [e3]
    assert await q(filter={"body": "pizza"}) == [e1]
    assert set(await q(filter={"text": "lunch"})) == {e1, e2}
    assert await q(filter={"header": ["In-Reply-To"]}) == [e2]
    assert await q(filter={"minSize": 300}) == [e3]
    assert await q(filter={"operator": "NOT", "conditions": [{"text": "lunch"}]}) == [e3]
    assert await q(filter={"someInThreadHaveKeyword": "$seen"}, sort=[{"property": "subject"}, {"property": "receivedAt"}]) == [e1, e2]
    assert (await q(sort=[{"property": "size", "isAscending": False}]))[0] == e3
    assert await q(sort=[{"property": "sentAt"}]) == [e1, e2, e3]
    assert await q(sort=[{"property": "from"}]) == [e3, e1, e2]
    collapsed = await q(sort=[{"property": "sentAt", "isAscending": False}], collapseThreads=True)
    assert collapsed == [e3, e2]
    page = await client.one("Email/query", {"sort": [{"property": "sentAt"}], "anchor": e2, "anchorOffset": -1,
                                            "limit": 2, "calculateTotal": True})
    assert page["ids"] == [e1, e2] and page["position"] == 0 and page["total"] == 3
    page = await client.one("Email/query", {"sort": [{"property": "sentAt"}], "position": -1})
    assert page["ids"] == [e3] and page["position"] == 2
    got = await client.one("Email/get", {"ids": [e1, e2], "properties": ["threadId"]})
    t1, t2 = (x["threadId"] for x in got["list"])
    assert t1 == t2
    threads = await client.one("Thread/get", {"ids": [t1, "nope"]})
    assert threads["list"] == [{"id": t1, "emailIds": [e1, e2]}] and threads["notFound"] == ["nope"]
    snip = await client.one("SearchSnippet/get", {"emailIds": [e1], "filter": {"text": "pizza"}})
    assert snip["list"][0]["preview"] == "<mark>pizza</mark> today?"
    bad = await client.call(["Email/query", {"accountId": "a1", "filter": {"bogus": 1}}, "1"],
                            ["Email/query", {"accountId": "a1", "sort": [{"property": "bogus"}]}, "2"],
                            ["Email/query", {"accountId": "a1", "filter": {"before": "yesterday"}}, "3"])
    assert [x[1]["type"] for x in bad] == ["unsupportedFilter", "unsupportedSort", "unsupportedFilter"]


async def test_query_reads_message_bytes_only_for_content_filters(client: Client) -> None:
    # from/to/subject/sentAt/hasAttachment filters and sorts come from the cached structures;
    # header, body and text filters read each message once
    for i, (subject, frm, body) in enumerate((("Zeta", "zed@x.test", "apples"), ("alpha", "amy@x.test", "pears"),
                                              ("Mid", "mo@x.test", "apples and pears"))):
        await client.import_message(msg(subject, frm, body=body, extra=f"X-N: {i}\r\n",
                                        date=f"Wed, 17 May 200{i} 19:35:05 -0400"))
    reads = count_blob_reads(client)

    async def subjects(filt: dict[str, object], sort: str = "subject") -> list[str]:
        q = await client.one("Email/query", {"filter": filt, "sort": [{"property": sort, "isAscending": True}]})
        got = await client.one("Email/get", {"ids": q["ids"], "properties": ["subject"]})
        return [e["subject"] for e in got["list"]]

    assert await subjects({"from": "x.test"}) == ["alpha", "Mid", "Zeta"]
    assert await subjects({"hasAttachment": False, "to": "alice"}, "sentAt") == ["Zeta", "alpha", "Mid"]
    assert reads == []
    assert await subjects({"body": "pears"}) == ["alpha", "Mid"]
    assert len(reads) == 3
    assert await subjects({"header": ["X-N", "2"]}) == ["Mid"] and len(reads) == 3  # content facts are kept
    assert await subjects({"text": "APPLES"}) == ["Mid", "Zeta"]


async def test_set_keywords_mailboxes_changes_and_query_changes(client: Client) -> None:
    e1 = await client.import_message(msg("one"))
    e2 = await client.import_message(msg("two"))
    q0 = await client.one("Email/query", {"filter": {"notKeyword": "$seen"}, "sort": [{"property": "id"}]})
    s0 = q0["queryState"]
    archive = await client.mailbox_id("archive")
    inbox = await client.mailbox_id("inbox")
    r = await client.one("Email/set", {"ifInState": s0, "update": {
        e1: {"keywords/$seen": True, "keywords/$flagged": True},
        e2: {f"mailboxIds/{archive}": True, f"mailboxIds/{inbox}": None},
        "nope": {"keywords": {}},
    }})
    assert r["updated"] == {e1: None, e2: None} and r["notUpdated"]["nope"]["type"] == "notFound"
    got = {x["id"]: x for x in (await client.one("Email/get", {"ids": [e1, e2], "properties": ["keywords", "mailboxIds"]}))["list"]}
    assert got[e1]["keywords"] == {"$seen": True, "$flagged": True}
    assert got[e2]["mailboxIds"] == {archive: True}
    ch = await client.one("Email/changes", {"sinceState": s0})
    assert sorted(ch["updated"]) == sorted([e1, e2]) and ch["created"] == [] and ch["newState"] == r["newState"]
    e3 = await client.import_message(msg("three"))
    qc = await client.one("Email/queryChanges", {"filter": {"notKeyword": "$seen"}, "sort": [{"property": "id"}],
                                                 "sinceQueryState": s0, "calculateTotal": True})
    now = (await client.one("Email/query", {"filter": {"notKeyword": "$seen"}, "sort": [{"property": "id"}]}))["ids"]
    # apply the changes to the old result list: must give the new one (RFC 8620 §5.6)
    ids = [i for i in q0["ids"] if i not in qc["removed"]]
    for a in sorted(qc["added"], key=lambda a: a["index"]):
        ids.insert(a["index"], a["id"])
    assert ids == now and qc["total"] == len(now) and e3 in now and e1 not in now
    bad = await client.one("Email/set", {"update": {
        e1: {"subject": "x"}, e2: {"mailboxIds": {}}, e3: {"keywords/bad word": True}}})
    assert {k: v["type"] for k, v in bad["notUpdated"].items()} == {e1: "invalidProperties", e2: "invalidProperties",
                                                                    e3: "invalidPatch"}
    r = await client.one("Email/set", {"destroy": [e3, "nope"]})
    assert r["destroyed"] == [e3] and r["notDestroyed"]["nope"]["type"] == "notFound"
    ch = await client.one("Email/changes", {"sinceState": r["oldState"]})
    assert ch["destroyed"] == [e3]
    mis = await client.call(["Email/set", {"accountId": "a1", "ifInState": "0", "destroy": [e1]}, "x"])
    assert mis[0][1]["type"] == "stateMismatch"


async def test_create_email_then_read_it_back(client: Client) -> None:
    drafts = await client.mailbox_id("drafts")
    att = await client.upload(b"%PDF-1.4 fake", "application/pdf")
    r = await client.one("Email/set", {"create": {"d": {
        "mailboxIds": {drafts: True}, "keywords": {"$draft": True},
        "from": [{"name": "Alice Ä", "email": "alice@example.test"}], "to": [{"email": "bob@example.test"}],
        "subject": "Grüße", "header:X-Mailer:asText": "jmap-test",
        "textBody": [{"partId": "t", "type": "text/plain"}], "htmlBody": [{"partId": "h", "type": "text/html"}],
        "bodyValues": {"t": {"value": "Hallo Bob ✓"}, "h": {"value": "<p>Hallo <b>Bob</b> ✓</p>"}},
        "attachments": [{"blobId": att["blobId"], "type": "application/pdf", "name": "doc.pdf"}],
    }}})
    created = r["created"]["d"]
    got = (await client.one("Email/get", {"ids": [created["id"]], "fetchAllBodyValues": True,
                                          "properties": ["subject", "from", "to", "keywords", "textBody", "htmlBody",
                                                         "attachments", "bodyValues", "header:X-Mailer:asText",
                                                         "messageId", "sentAt", "size"]}))["list"][0]
    assert got["subject"] == "Grüße" and got["from"] == [{"name": "Alice Ä", "email": "alice@example.test"}]
    assert got["to"] == [{"name": None, "email": "bob@example.test"}] and got["keywords"] == {"$draft": True}
    assert got["header:X-Mailer:asText"] == "jmap-test" and got["messageId"] and got["sentAt"]
    text = got["bodyValues"][got["textBody"][0]["partId"]]["value"]
    assert text.strip() == "Hallo Bob ✓"
    assert [a["name"] for a in got["attachments"]] == ["doc.pdf"] and got["size"] == created["size"]
    async with client.http.get(f"{client.server.url}/jmap/download/a1/{got['attachments'][0]['blobId']}/d.pdf",
                               headers=client.headers) as resp:
        assert await resp.read() == b"%PDF-1.4 fake"
    bad = await client.one("Email/set", {"create": {
        "nobox": {"subject": "x"},
        "badblob": {"mailboxIds": {drafts: True}, "attachments": [{"blobId": "Gnope", "type": "a/b"}]},
        "unused": {"mailboxIds": {drafts: True}, "bodyValues": {"z": {"value": "?"}}},
        "serverset": {"mailboxIds": {drafts: True}, "id": "x"},
    }})
    types = {k: v["type"] for k, v in bad["notCreated"].items()}
    assert types == {"nobox": "invalidProperties", "badblob": "blobNotFound", "unused": "invalidProperties",
                     "serverset": "invalidProperties"}


async def test_import_errors_and_parse(client: Client) -> None:
    inbox = await client.mailbox_id("inbox")
    blob = await client.upload(msg("parse me", extra="Message-ID: <p@x>\r\n"))
    r = await client.one("Email/import", {"emails": {
        "a": {"blobId": "Gdeadbeef", "mailboxIds": {inbox: True}},
        "b": {"blobId": blob["blobId"], "mailboxIds": {"nope": True}},
        "c": {"blobId": blob["blobId"], "mailboxIds": {inbox: True}, "keywords": {"a b": True}},
    }})
    assert {k: v["type"] for k, v in r["notCreated"].items()} == {"a": "blobNotFound", "b": "invalidProperties",
                                                                 "c": "invalidProperties"}
    p = await client.one("Email/parse", {"blobIds": [blob["blobId"], "Gnope"], "properties": ["subject", "messageId", "id"]})
    assert p["parsed"][blob["blobId"]] == {"subject": "parse me", "messageId": ["p@x"], "id": None}
    assert p["notFound"] == ["Gnope"]


async def test_get_all_and_default_properties(client: Client) -> None:
    e1 = await client.import_message(msg("x"))
    got = await client.one("Email/get", {"ids": None})
    assert [x["id"] for x in got["list"]] == [e1]
    e = got["list"][0]
    assert "bodyStructure" not in e and "headers" not in e and e["bodyValues"] == {}
    assert e["textBody"][0]["type"] == "text/plain" and "headers" not in e["textBody"][0]
    bad = await client.call(["Email/get", {"accountId": "a1", "properties": ["header:Subject:asAddresses"]}, "1"],
                            ["Email/get", {"accountId": "a1", "properties": ["header:From:asBogus"]}, "2"],
                            ["Email/get", {"accountId": "a1", "bodyProperties": ["nope"]}, "3"])
    assert [x[1]["type"] for x in bad] == ["invalidArguments"] * 3
