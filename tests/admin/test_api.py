"""The admin HTTP API over real HTTP on 127.0.0.1: bearer tokens, scopes, OpenAPI, visibility of changes."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from mailsrv.admin.server import PREFIX, AdminApi
from mailsrv.auth import Authenticator
from mailsrv.auth import tokens as token_mod
from mailsrv.config import AuthConfig
from mailsrv.directory import Directory, Kind, SyncDirectory

FAST = AuthConfig(argon2_memory_kib=1024, argon2_time_cost=1, throttle_delay=0)


@pytest.fixture
async def api(tmp_path: Path):
    path = tmp_path / "directory.sqlite3"
    sd = SyncDirectory(path)
    for dom in ("a.test", "b.test"):
        sd.add_domain(dom)
    sd.add_user("root@a.test")
    sd.add_user("da@a.test")
    sd.add_user("db@b.test")
    sd.add_user("plain@a.test")
    sd.grant_admin("root@a.test", "super")
    sd.grant_admin("da@a.test", "domain", "a.test")
    sd.grant_admin("db@b.test", "domain", "b.test")
    toks = {u: token_mod.issue(sd, f"{u}@{d}", {"admin", "mail"})[1]
            for u, d in (("root", "a.test"), ("da", "a.test"), ("db", "b.test"))}
    toks["mailonly"] = token_mod.issue(sd, "root@a.test", {"mail"})[1]
    d = Directory(path, threads=2)
    auth = Authenticator(d, FAST)
    runner = web.AppRunner(AdminApi(d, auth).app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
        yield http, toks, sd, d
    await runner.cleanup()
    await auth.close()
    await d.close()
    sd.close()


def H(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


async def test_openapi_document_lists_every_route(api) -> None:
    http, toks, sd, d = api
    async with http.get(PREFIX + "/openapi.json") as r:
        assert r.status == 200
        doc = await r.json()
    assert doc["openapi"].startswith("3.")
    assert "post" in doc["paths"][PREFIX + "/users"]
    assert "delete" in doc["paths"][PREFIX + "/groups/{address}/members/{member}"]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


async def test_requires_admin_bearer(api) -> None:
    http, toks, sd, d = api
    async with http.get(PREFIX + "/users") as r:
        assert r.status == 401 and "Bearer" in r.headers["WWW-Authenticate"]
    async with http.get(PREFIX + "/users", headers=H("msv_wrong")) as r:
        assert r.status == 401
    async with http.get(PREFIX + "/users", headers=H(toks["mailonly"])) as r:
        assert r.status == 403


async def test_domain_admin_is_confined_to_their_domain(api) -> None:
    http, toks, sd, d = api
    async with http.post(PREFIX + "/users", headers=H(toks["da"]),
                         json={"address": "new@a.test", "password": "long enough pw", "quota_bytes": 1000}) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["quota_bytes"] == 1000
    # visible to a worker's directory at once
    res = await d.resolve("new@a.test")
    assert res.kind is Kind.USER
    async with http.post(PREFIX + "/users", headers=H(toks["da"]), json={"address": "evil@b.test"}) as r:
        assert r.status == 403
    async with http.delete(PREFIX + "/users/db@b.test", headers=H(toks["da"])) as r:
        assert r.status == 403
    async with http.patch(PREFIX + "/users/db@b.test", headers=H(toks["da"]), json={"state": "suspended"}) as r:
        assert r.status == 403
    async with http.post(PREFIX + "/domains", headers=H(toks["da"]), json={"name": "c.test"}) as r:
        assert r.status == 403
    async with http.post(PREFIX + "/admins", headers=H(toks["da"]), json={"user": "da@a.test", "scope": "super"}) as r:
        assert r.status == 403
    async with http.get(PREFIX + "/users", headers=H(toks["da"])) as r:
        listed = {u["address"] for u in await r.json()}
    assert "db@b.test" not in listed and "new@a.test" in listed
    assert sd.resolve("db@b.test").kind is Kind.USER  # untouched


async def test_super_admin_manages_everything_and_errors_are_problems(api) -> None:
    http, toks, sd, d = api
    h = H(toks["root"])
    async with http.post(PREFIX + "/domains", headers=h, json={"name": "c.test"}) as r:
        assert r.status == 200
    async with http.post(PREFIX + "/domains", headers=h, json={"name": "c.test"}) as r:
        assert r.status == 409
        assert r.headers["Content-Type"].startswith("application/problem+json")
    async with http.post(PREFIX + "/groups", headers=h, json={"address": "team@c.test", "post_policy": "members"}) as r:
        assert r.status == 200
    async with http.post(PREFIX + "/users", headers=h, json={"address": "x@c.test"}) as r:
        assert r.status == 200
    async with http.post(PREFIX + "/groups/team@c.test/members", headers=h, json={"member": "x@c.test"}) as r:
        assert r.status == 200
    assert [m.address async for m in d.expand("team@c.test")] == ["x@c.test"]
    async with http.post(PREFIX + "/groups/team@c.test/send-as", headers=h, json={"user": "x@c.test"}) as r:
        assert (await r.json())["send_as"] == ["x@c.test"]
    x = await d.account_by_address("x@c.test")
    assert x is not None and await d.may_send_as(x.id, "team@c.test")
    async with http.delete(PREFIX + "/groups/team@c.test/send-as/x@c.test", headers=h) as r:
        assert r.status == 200
    assert not await d.may_send_as(x.id, "team@c.test")
    async with http.post(PREFIX + "/users/x@c.test/password", headers=h, json={"password": "another pw!"}) as r:
        assert r.status == 200
    auth = Authenticator(d, FAST)
    assert (await auth.login("x@c.test", "another pw!", protocol="imap", client_ip="127.0.0.1")).ok
    await auth.close()
    async with http.get(PREFIX + "/users/nobody@c.test", headers=h) as r:
        assert r.status == 404
    async with http.post(PREFIX + "/users", headers=h, data=b"not json") as r:
        assert r.status == 400
    async with http.post(PREFIX + "/tokens", headers=h, json={"user": "x@c.test", "scopes": ["mail"]}) as r:
        tok = await r.json()
    async with http.delete(PREFIX + f"/tokens/{tok['id']}", headers=h) as r:
        assert (await r.json())["revoked"] is True


async def test_reserved_and_unsafe_local_parts_answer_400(api) -> None:
    http, toks, sd, d = api
    for path, body in (("/users", {"address": ".mailsrv-new@a.test", "password": "long enough pw"}),
                       ("/aliases", {"alias": ".mailsrv-x@a.test", "user": "plain@a.test"}),
                       ("/groups", {"address": ".mailsrv@a.test"})):
        async with http.post(PREFIX + path, headers=H(toks["root"]), json=body) as r:
            assert r.status == 400, await r.text()
            assert "reserved for the mail store" in (await r.json())["detail"]
    async with http.post(PREFIX + "/users", headers=H(toks["root"]),
                         json={"address": "../x@a.test", "password": "long enough pw"}) as r:
        assert r.status == 400 and "local part" in (await r.json())["detail"]
    assert sd.account_by_address(".mailsrv-new@a.test") is None


async def test_domain_storage_limit_with_unlimited_users(api) -> None:
    http, toks, sd, d = api
    async with http.patch(PREFIX + "/domains/a.test", headers=H(toks["root"]), json={"max_storage": 10_000}) as r:
        assert r.status == 200, await r.text()
    async with http.post(PREFIX + "/users", headers=H(toks["da"]),
                         json={"address": "nolimit@a.test", "password": "long enough pw"}) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["quota_bytes"] is None
    async with http.patch(PREFIX + "/users/plain@a.test", headers=H(toks["da"]), json={"quota_bytes": 50_000}) as r:
        assert r.status == 200, await r.text()  # over the domain's limit: the domain root still applies
    async with http.patch(PREFIX + "/users/plain@a.test", headers=H(toks["da"]), json={"quota_bytes": None}) as r:
        assert r.status == 200 and (await r.json())["quota_bytes"] is None
    async with http.patch(PREFIX + "/domains/a.test", headers=H(toks["root"]), json={"max_storage": -1}) as r:
        assert r.status == 400 and "max_storage" in (await r.json())["detail"]
    async with http.get(PREFIX + "/openapi.json") as r:  # the limits' range is in the API's description
        doc = await r.json()
    body = doc["paths"][PREFIX + "/users"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["quota_bytes"] == {"type": ["integer", "null"], "minimum": 0}


async def test_recall_is_scoped_by_the_account_not_the_alias(api) -> None:
    # an alias of da's domain owned by a user of b.test: recalling through it would take back db's mail
    http, toks, sd, d = api
    sd.add_alias("front@a.test", "db@b.test")
    body = {"sender": "front@a.test", "message_id": "<m@x>"}
    async with http.post(PREFIX + "/recall", headers=H(toks["da"]), json=body) as r:
        assert r.status == 403, await r.text()
    # in scope, it passes the check (this API has no store: 503)
    async with http.post(PREFIX + "/recall", headers=H(toks["da"]),
                         json={"sender": "plain@a.test", "message_id": "<m@x>"}) as r:
        assert r.status == 503, await r.text()
    async with http.post(PREFIX + "/recall", headers=H(toks["db"]),
                         json={"sender": "db@b.test", "message_id": "<m@x>"}) as r:
        assert r.status == 503, await r.text()
