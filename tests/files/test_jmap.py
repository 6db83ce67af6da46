"""FileLink/get, /set, /query (urn:mailsrv:filelink): a webmail makes a link from an uploaded blob."""

from __future__ import annotations

import hashlib
from pathlib import Path

import aiohttp
from filetest import LinkServer, basic, put, serving
from jmaptest import Client

from mailsrv.config import FilesConfig

FILELINK = "urn:mailsrv:filelink"
USING = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail", FILELINK]
DATA = b"quarterly numbers\n" * 1000


async def test_a_link_from_an_uploaded_blob(server: LinkServer, http: aiohttp.ClientSession) -> None:
    c = Client(server, http)
    async with http.get(f"{server.url}/jmap/session", headers=basic()) as r:
        session = await r.json()
    assert session["capabilities"][FILELINK]["maxSize"] == 2 * 1024**3
    assert FILELINK in session["accounts"]["a1"]["accountCapabilities"]
    blob = await c.upload(DATA, "text/csv")
    (res,) = await c.call(["FileLink/set", {"accountId": "a1", "create": {
        "k": {"blobId": blob["blobId"], "name": "q3.csv"},
        "bad": {"blobId": "G" + "0" * 40},
        "week": {"blobId": blob["blobId"], "days": 7}, "long": {"blobId": blob["blobId"], "days": 31}}}, "0"],
        using=USING)
    assert res[0] == "FileLink/set", res
    made = res[1]["created"]["k"]
    assert made["name"] == "q3.csv" and made["size"] == len(DATA) and made["type"] == "text/csv"
    assert made["sha256"] == hashlib.sha256(DATA).hexdigest() and made["downloads"] == 0
    assert made["url"].startswith(server.url + "/f/") and made["url"].endswith("/q3.csv")
    assert res[1]["notCreated"]["bad"]["type"] == "blobNotFound"
    assert res[1]["notCreated"]["long"]["properties"] == ["days"]
    week = res[1]["created"]["week"]
    assert week["expires"] < made["expires"] and week["name"] == "file"
    (gone,) = await c.call(["FileLink/set", {"accountId": "a1", "destroy": [week["id"]]}, "0"], using=USING)
    assert gone[1]["destroyed"] == [week["id"]]
    async with aiohttp.ClientSession() as anonymous, anonymous.get(made["url"]) as r:
        assert r.status == 200 and await r.read() == DATA
    (got,) = await c.call(["FileLink/get", {"accountId": "a1", "ids": None}, "0"], using=USING)
    assert [o["id"] for o in got[1]["list"]] == [made["id"]] and got[1]["list"][0]["downloads"] == 1
    assert "url" not in got[1]["list"][0]  # the token is shown once, at creation
    # an HTTP upload is a FileLink too; /query lists the newest first
    _, body, _ = await put(http, server, "b.bin", b"b")
    (q,) = await c.call(["FileLink/query", {"accountId": "a1"}, "0"], using=USING)
    assert q[1]["ids"] == [body["id"], made["id"]] and q[1]["total"] == 2
    # bob sees none of alice's links and cannot destroy them
    bob = Client(server, http, basic("bob@example.test", "hunter2"))
    bob.account_id = "a2"
    (b,) = await bob.call(["FileLink/set", {"accountId": "a2", "destroy": [made["id"]]}, "0"], using=USING)
    assert b[1]["notDestroyed"][made["id"]]["type"] == "notFound"
    (b,) = await bob.call(["FileLink/get", {"accountId": "a2", "ids": [made["id"]]}, "0"], using=USING)
    assert b[1]["notFound"] == [made["id"]]
    (d,) = await c.call(["FileLink/set", {"accountId": "a1", "destroy": [made["id"]],
                                          "update": {body["id"]: {"name": "x"}}}, "0"], using=USING)
    assert d[1]["destroyed"] == [made["id"]] and d[1]["oldState"] != d[1]["newState"]
    assert d[1]["notUpdated"][body["id"]]["type"] == "forbidden"
    async with http.get(made["url"]) as r:
        assert r.status == 410
    # the upload itself is untouched by the link's end (it was hard-linked, not moved)
    assert await server.uploads.path("a1", blob["blobId"]) is not None


async def test_quota_and_size_are_set_errors(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with serving(tmp_path, FilesConfig(quota=len(DATA) + 10, max_size=len(DATA) + 5)) as s:
        c = Client(s, http)
        blob = await c.upload(DATA, "text/plain")
        big = await c.upload(DATA + b"0123456789", "text/plain")
        (res,) = await c.call(["FileLink/set", {"accountId": "a1", "create": {
            "a": {"blobId": blob["blobId"]}, "b": {"blobId": blob["blobId"]}, "c": {"blobId": big["blobId"]}}},
            "0"], using=USING)
        assert set(res[1]["created"]) == {"a"}
        assert res[1]["notCreated"]["b"]["type"] == "overQuota"
        assert res[1]["notCreated"]["c"]["type"] == "tooLarge"


async def test_without_the_capability_or_when_disabled(server: LinkServer, http: aiohttp.ClientSession) -> None:
    c = Client(server, http)
    (res,) = await c.call(["FileLink/get", {"accountId": "a1", "ids": None}, "0"])  # not in "using"
    assert res[1]["type"] == "unknownMethod"
    server.app.files = None
    (res,) = await c.call(["FileLink/get", {"accountId": "a1", "ids": None}, "0"], using=USING)
    assert res[1]["type"] == "serverUnavailable"


async def test_not_on_an_account_shared_with_the_caller(server: LinkServer, http: aiohttp.ClientSession) -> None:
    from jmaptest import FakeAccount, FakeGrant

    server.shared["2"] = [FakeGrant(FakeAccount(1, "alice@example.test"), read_only=False)]
    bob = Client(server, http, basic("bob@example.test", "hunter2"))
    async with http.get(f"{server.url}/jmap/session", headers=bob.headers) as r:
        session = await r.json()
    assert FILELINK not in session["accounts"]["a1"]["accountCapabilities"]  # alice's, shared with bob
    assert FILELINK in session["accounts"]["a2"]["accountCapabilities"]
    (res,) = await bob.call(["FileLink/get", {"accountId": "a1", "ids": None}, "0"], using=USING)
    assert res[1]["type"] == "accountNotSupportedByMethod"
