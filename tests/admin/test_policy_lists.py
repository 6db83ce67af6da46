"""Block and allow lists through the admin API over real HTTP: scopes, validation, OpenAPI, and the policy
seeing the change."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from mailsrv.admin.server import PREFIX, AdminApi
from mailsrv.auth import Authenticator
from mailsrv.auth import tokens as token_mod
from mailsrv.config import AuthConfig
from mailsrv.directory import Directory, SyncDirectory
from mailsrv.policy.lists import Lists

LISTS = PREFIX + "/policy/lists"


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[tuple[aiohttp.ClientSession, dict[str, str], Directory]]:
    """Admins: root (super), ada (domain a.test), bea (domain b.test), dan (department sales@a.test)."""
    path = tmp_path / "dir.sqlite3"
    sd = SyncDirectory(path)
    for dom in ("a.test", "b.test"):
        sd.add_domain(dom)
    for user in ("root@a.test", "ada@a.test", "bea@b.test", "dan@a.test", "sam@a.test", "zoe@a.test"):
        sd.add_user(user)
    sd.add_dept("sales@a.test", name="Sales")
    sd.set_user("sam@a.test", dept="sales@a.test")
    sd.grant_admin("root@a.test", "super")
    sd.grant_admin("ada@a.test", "domain", "a.test")
    sd.grant_admin("bea@b.test", "domain", "b.test")
    sd.grant_admin("dan@a.test", "dept", "sales@a.test")
    toks = {u.partition("@")[0]: token_mod.issue(sd, u, {"admin"})[1]
            for u in ("root@a.test", "ada@a.test", "bea@b.test", "dan@a.test")}
    sd.close()
    d = Directory(path, threads=2)
    auth = Authenticator(d, AuthConfig(argon2_memory_kib=1024, argon2_time_cost=1, throttle_delay=0))
    runner = web.AppRunner(AdminApi(d, auth).app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
            yield session, toks, d
    finally:
        await runner.cleanup()
        await auth.close()
        await d.close()


async def call(session: aiohttp.ClientSession, tok: str, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    async with session.request(method, path, headers={"Authorization": f"Bearer {tok}"}, **kw) as r:
        return r.status, await r.json(content_type=None)


async def test_scopes_of_administrators(http: Any) -> None:
    s, t, d = http
    # a domain admin manages their domain and its users, not another domain or the server
    assert (await call(s, t["ada"], "POST", LISTS, json={"scope": "a.test", "kind": "block", "entry": "Spam.Test"}))[
        1] == {"scope": "a.test", "kind": "block", "entry": "spam.test", "added": True}
    status, body = await call(s, t["ada"], "POST", LISTS, json={"scope": "zoe@a.test", "kind": "allow",
                                                               "entry": "10.0.0.0/8"})
    assert status == 200 and body["entry"] == "10.0.0.0/8"
    assert (await call(s, t["ada"], "POST", LISTS, json={"scope": "b.test", "kind": "block", "entry": "x.test"}))[
        0] == 403
    assert (await call(s, t["ada"], "POST", LISTS, json={"kind": "block", "entry": "x.test"}))[0] == 403
    assert (await call(s, t["bea"], "POST", LISTS, json={"scope": "b.test", "kind": "allow",
                                                         "entry": "@partner.test"}))[0] == 200
    # a department admin manages their department's users only
    assert (await call(s, t["dan"], "POST", LISTS, json={"scope": "sam@a.test", "kind": "block",
                                                         "entry": "ex@old.test"}))[0] == 200
    assert (await call(s, t["dan"], "POST", LISTS, json={"scope": "zoe@a.test", "kind": "block",
                                                         "entry": "ex@old.test"}))[0] == 403
    assert (await call(s, t["dan"], "POST", LISTS, json={"scope": "a.test", "kind": "block",
                                                         "entry": "ex@old.test"}))[0] == 403
    # the super administrator manages the server scope
    assert (await call(s, t["root"], "POST", LISTS, json={"scope": "", "kind": "block", "entry": "192.0.2.0/24"}))[
        0] == 200
    # each sees what they manage
    _, mine = await call(s, t["ada"], "GET", LISTS)
    assert {(r["scope"], r["entry"]) for r in mine} == {("a.test", "spam.test"), ("zoe@a.test", "10.0.0.0/8"),
                                                        ("sam@a.test", "ex@old.test")}
    _, bea = await call(s, t["bea"], "GET", LISTS)
    assert bea == [{"scope": "b.test", "kind": "allow", "entry": "@partner.test"}]
    _, dan = await call(s, t["dan"], "GET", LISTS)
    assert dan == [{"scope": "sam@a.test", "kind": "block", "entry": "ex@old.test"}]
    _, every = await call(s, t["root"], "GET", LISTS)
    assert len(every) == 5
    assert (await call(s, t["bea"], "GET", LISTS, params={"scope": "a.test"}))[0] == 403
    _, one = await call(s, t["ada"], "GET", LISTS, params={"scope": "A.TEST"})
    assert one == [{"scope": "a.test", "kind": "block", "entry": "spam.test"}]
    # removal, with the same scope checks
    assert (await call(s, t["bea"], "POST", LISTS + "/remove", json={"scope": "a.test", "kind": "block",
                                                                     "entry": "spam.test"}))[0] == 403
    status, body = await call(s, t["ada"], "POST", LISTS + "/remove", json={"scope": "a.test", "kind": "block",
                                                                            "entry": "SPAM.test"})
    assert status == 200 and body["removed"] is True
    status, body = await call(s, t["ada"], "POST", LISTS + "/remove", json={"scope": "a.test", "kind": "block",
                                                                            "entry": "spam.test"})
    assert status == 404 and body["status"] == 404


async def test_validation_and_auth(http: Any) -> None:
    s, t, d = http
    for bad in ({"scope": "a.test", "kind": "maybe", "entry": "x.test"},
                {"scope": "a.test", "kind": "block", "entry": "not an entry"},
                {"scope": "a.test", "kind": "block", "entry": ""},
                {"scope": "a.test", "kind": "block", "entry": 5},
                {"scope": "a.test", "kind": "block"}):
        status, body = await call(s, t["ada"], "POST", LISTS, json=bad)
        assert status == 400, bad
        assert body["title"] == "Bad Request"
    async with s.get(LISTS) as r:
        assert r.status == 401
    assert (await call(s, "msv_nope", "GET", LISTS))[0] == 401
    _, again = await call(s, t["ada"], "POST", LISTS, json={"scope": "a.test", "kind": "block", "entry": "dup.test"})
    _, dup = await call(s, t["ada"], "POST", LISTS, json={"scope": "a.test", "kind": "block", "entry": "dup.test"})
    assert again["added"] is True and dup["added"] is False


async def test_openapi_documents_the_list_routes(http: Any) -> None:
    s, _, _ = http
    async with s.get(PREFIX + "/openapi.json") as r:
        doc = await r.json()
    paths = doc["paths"]
    assert set(paths[LISTS]) == {"get", "post"} and "post" in paths[LISTS + "/remove"]
    schema = paths[LISTS]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["kind", "entry"] and schema["properties"]["kind"]["enum"] == ["block", "allow"]
    assert "403" in paths[LISTS]["post"]["responses"]


async def test_policy_sees_an_entry_added_over_http(http: Any) -> None:
    s, t, d = http
    lists = Lists(d)  # what a worker's policy uses (cached per scope)
    assert await lists.match_sender("x@spam.test", "192.0.2.9", scopes=["bob@a.test", "a.test"]) is None
    await call(s, t["ada"], "POST", LISTS, json={"scope": "a.test", "kind": "block", "entry": "spam.test"})
    lists.invalidate()  # a worker sees it after CACHE_SECONDS; the test skips the wait
    m = await lists.match_sender("x@spam.test", "192.0.2.9", scopes=["bob@a.test", "a.test"])
    assert m is not None and (m.kind, m.scope, m.entry) == ("block", "a.test", "spam.test")
