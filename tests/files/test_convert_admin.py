"""``convert_over`` per domain and per user through the admin API (``/files/convert``), scoped like the rest
of the directory: a domain's administrators change their domain's and users' settings only."""

from __future__ import annotations

from typing import Any

from admin.test_policy_lists import call, http  # noqa: F401  (the fixture: admins root, ada, bea, dan)

from mailsrv.admin.server import PREFIX

CONVERT = PREFIX + "/files/convert"


async def test_each_administrator_changes_only_their_scope(http: Any) -> None:  # noqa: F811
    s, t, d = http
    assert await call(s, t["ada"], "PUT", CONVERT + "/A.test", json={"convert_over": 1000}) == (
        200, {"scope": "a.test", "convert_over": 1000})
    assert (await call(s, t["ada"], "PUT", CONVERT + "/zoe@a.test", json={"convert_over": 0}))[0] == 200
    status, body = await call(s, t["ada"], "PUT", CONVERT + "/b.test", json={"convert_over": 5})
    assert status == 403 and "not in your scope" in body["detail"]
    assert (await call(s, t["ada"], "PUT", CONVERT + "/bea@b.test", json={"convert_over": 5}))[0] == 403
    assert (await call(s, t["bea"], "PUT", CONVERT + "/b.test", json={"convert_over": 2048}))[0] == 200
    # a department's administrator: its users, not the domain nor other users
    assert (await call(s, t["dan"], "PUT", CONVERT + "/sam@a.test", json={"convert_over": 77}))[0] == 200
    assert (await call(s, t["dan"], "PUT", CONVERT + "/zoe@a.test", json={"convert_over": None}))[0] == 403
    assert (await call(s, t["dan"], "PUT", CONVERT + "/a.test", json={"convert_over": 1}))[0] == 403
    # listings show what the caller may change; ?scope= one user's (and their domain's) settings
    assert (await call(s, t["root"], "GET", CONVERT))[1] == [
        {"scope": "a.test", "convert_over": 1000}, {"scope": "b.test", "convert_over": 2048},
        {"scope": "sam@a.test", "convert_over": 77}, {"scope": "zoe@a.test", "convert_over": 0}]
    assert [r["scope"] for r in (await call(s, t["ada"], "GET", CONVERT))[1]] == ["a.test", "sam@a.test", "zoe@a.test"]
    assert (await call(s, t["bea"], "GET", CONVERT))[1] == [{"scope": "b.test", "convert_over": 2048}]
    assert (await call(s, t["dan"], "GET", CONVERT))[1] == [{"scope": "sam@a.test", "convert_over": 77}]
    assert (await call(s, t["ada"], "GET", CONVERT, params={"scope": "Zoe@a.test"}))[1] == [
        {"scope": "a.test", "convert_over": 1000}, {"scope": "zoe@a.test", "convert_over": 0}]
    assert (await call(s, t["bea"], "GET", CONVERT, params={"scope": "zoe@a.test"}))[0] == 403
    # null removes; the change is in the directory the workers read
    assert (await call(s, t["ada"], "PUT", CONVERT + "/zoe@a.test", json={"convert_over": None}))[1] == {
        "scope": "zoe@a.test", "convert_over": None}
    assert await d.convert_settings() == ({(await d.account_by_address("sam@a.test")).id: 77},
                                          {"a.test": 1000, "b.test": 2048})


async def test_bad_values_and_unknown_scopes_are_refused(http: Any) -> None:  # noqa: F811
    s, t, _ = http
    for bad in ({"convert_over": -1}, {"convert_over": "25M"}, {"convert_over": True}, {}):
        status, body = await call(s, t["root"], "PUT", CONVERT + "/a.test", json=bad)
        assert status == 400, (bad, body)
    assert (await call(s, t["root"], "PUT", CONVERT + "/nobody@a.test", json={"convert_over": 1}))[0] == 404
    assert (await call(s, t["root"], "PUT", CONVERT + "/c.test", json={"convert_over": 1}))[0] == 404
    assert (await call(s, t["ada"], "GET", CONVERT))[1] == []
    doc = (await call(s, t["root"], "GET", PREFIX + "/openapi.json"))[1]
    assert {"get"} <= doc["paths"][CONVERT].keys() and "put" in doc["paths"][CONVERT + "/{scope}"]
