"""RFC 8620 core over real HTTP: envelope errors, limits, references, Core/echo, auth, CORS."""

from __future__ import annotations

import json

import aiohttp
import pytest
from jmaptest import USING, Client, Server, basic

URN = "urn:ietf:params:jmap:error:"


async def test_echo_and_session_state(client: Client) -> None:
    status, body = await client.api_raw({"using": USING, "methodCalls": [["Core/echo", {"hello": [1, 2]}, "e1"]]})
    assert status == 200
    assert body["methodResponses"] == [["Core/echo", {"hello": [1, 2]}, "e1"]]
    async with client.http.get(client.server.url + "/jmap/session", headers=client.headers) as r:
        session = await r.json()
    assert body["sessionState"] == session["state"]


async def test_session_object(client: Client) -> None:
    async with client.http.get(client.server.url + "/jmap/session", headers=client.headers) as r:
        assert r.status == 200
        s = await r.json()
    core = s["capabilities"]["urn:ietf:params:jmap:core"]
    assert core["maxCallsInRequest"] == 64 and core["maxSizeUpload"] == 2 * 1024**3
    assert s["apiUrl"] == client.server.url + "/jmap/api"  # absolute (browsers)
    assert s["primaryAccounts"]["urn:ietf:params:jmap:mail"] == "a1"
    assert s["accounts"]["a1"]["name"] == "alice@example.test"
    assert "{blobId}" in s["downloadUrl"] and "{accountId}" in s["uploadUrl"]
    assert s["username"] == "alice@example.test"


async def test_well_known_redirects_without_auth_and_with_cors(client: Client) -> None:
    async with client.http.get(client.server.url + "/.well-known/jmap", allow_redirects=False,
                               headers={"Origin": "https://webmail.example"}) as r:
        assert r.status == 307
        assert r.headers["Location"] == client.server.url + "/jmap/session"
        assert r.headers["Access-Control-Allow-Origin"] == "*"


async def test_cors_preflight(client: Client) -> None:
    async with client.http.options(client.server.url + "/jmap/api", headers={
            "Origin": "https://webmail.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"}) as r:
        assert r.status == 204
        assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
        assert "POST" in r.headers["Access-Control-Allow-Methods"]


async def test_plain_http_refuses_basic_and_says_what_works(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    # a listener without TLS, client not trusted for clear-text passwords (the default off loopback):
    # the right password is refused, and the 401 must not ask for Basic again (a client would resend it)
    monkeypatch.setattr(client.server.auth, "plaintext_allowed", lambda *, tls, client_ip: tls)
    for method, path in (("GET", "/jmap/session"), ("POST", "/jmap/api")):
        async with client.http.request(method, client.server.url + path, data=b"{}", headers=basic()) as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"] == 'Bearer realm="mailsrv"'
            detail = (await r.json())["detail"]
            assert "HTTP Basic only over TLS" in detail and "bearer token" in detail


async def test_a_refused_bearer_token_is_told_invalid_token(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    # RFC 6750 §3.1: a token sent and refused gets error="invalid_token"; no token, no error code (§3)
    wrong = {"Authorization": "Bearer tok-nobody"}
    for plain in (True, False):  # plain HTTP off loopback (Bearer only), then where Basic is accepted too
        if plain:
            monkeypatch.setattr(client.server.auth, "plaintext_allowed", lambda *, tls, client_ip: tls)
        else:
            monkeypatch.undo()
        async with client.http.post(client.server.url + "/jmap/api", data=b"{}", headers=wrong) as r:
            assert r.status == 401
            challenges = r.headers.getall("WWW-Authenticate")
            assert challenges[-1] == ('Bearer realm="mailsrv", error="invalid_token", '
                                      'error_description="invalid or expired token"')
            assert challenges[:-1] == ([] if plain else ['Basic realm="mailsrv", charset="UTF-8"'])
            assert (await r.json())["detail"] == "invalid or expired bearer token"
        async with client.http.post(client.server.url + "/jmap/api", data=b"{}") as r:
            assert r.status == 401
            assert r.headers.getall("WWW-Authenticate") == (
                ['Bearer realm="mailsrv"'] if plain else ['Basic realm="mailsrv", charset="UTF-8"'])


async def test_auth_required_and_wrong_password(client: Client) -> None:
    async with client.http.post(client.server.url + "/jmap/api", data=b"{}") as r:
        assert r.status == 401
        assert r.headers["WWW-Authenticate"].startswith("Basic")
    async with client.http.post(client.server.url + "/jmap/api", data=b"{}",
                                headers=basic("alice@example.test", "wrong")) as r:
        assert r.status == 401


async def test_bearer_token_and_scope(server: Server, client: Client) -> None:
    c = Client(server, client.http, {"Authorization": "Bearer tok-alice"})
    assert (await c.one("Core/echo", {"x": 1}))["x"] == 1
    c2 = Client(server, client.http, {"Authorization": "Bearer tok-admin"})  # no "mail" scope
    status, _ = await c2.api_raw({"using": USING, "methodCalls": []})
    assert status == 403


async def test_token_without_mail_scope_is_forbidden_not_unauthorized(client: Client) -> None:
    """RFC 6750 §3.1: a valid token without the scope gets 403 insufficient_scope (asking again for credentials
    would not help); a token that is not valid still gets 401 invalid_token."""
    for method, path in (("POST", "/jmap/api"), ("GET", "/jmap/session")):
        async with client.http.request(method, client.server.url + path, data=b"{}" if method == "POST" else None,
                                       headers={"Authorization": "Bearer tok-admin"}) as r:
            assert r.status == 403, path
            assert r.headers.getall("WWW-Authenticate") == ['Bearer realm="mailsrv", error="insufficient_scope", scope="mail"']
            assert (await r.json())["status"] == 403
    async with client.http.post(client.server.url + "/jmap/api", data=b"{}",
                                headers={"Authorization": "Bearer no-such-token"}) as r:
        assert r.status == 401
        assert any('error="invalid_token"' in h for h in r.headers.getall("WWW-Authenticate"))


async def test_basic_login_is_cached(server: Server, client: Client) -> None:
    for _ in range(3):
        await client.call(["Core/echo", {}, "0"])
    assert server.auth.logins == 1
    assert server.auth.stamps == 3  # one cheap stamp check per request (the first one after the login)


async def test_basic_cache_follows_the_credentials_generation(server: Server, client: Client) -> None:
    await client.call(["Core/echo", {}, "0"])
    server.auth.generations[1] = 7  # as `mailsrv user passwd` bumps it
    await client.call(["Core/echo", {}, "0"])
    assert server.auth.logins == 2  # the cached login was dropped: a full login decided
    await client.call(["Core/echo", {}, "0"])
    assert server.auth.logins == 2


async def test_not_json(client: Client) -> None:
    for data in (b"{not json", b"\xff\xfe", b"[" * 100000 + b"]" * 100000):
        status, body = await client.api_raw(data)
        assert status == 400
        assert body["type"] == URN + "notJSON"


async def test_not_request(client: Client) -> None:
    bad = [
        [],
        {"using": USING},
        {"using": "x", "methodCalls": []},
        {"using": USING, "methodCalls": [["Core/echo", {}]]},
        {"using": USING, "methodCalls": [["Core/echo", [], "c"]]},
        {"using": USING, "methodCalls": [], "extra": 1},
    ]
    for body in bad:
        status, resp = await client.api_raw(body)
        assert (status, resp["type"]) == (400, URN + "notRequest"), body


async def test_unknown_capability(client: Client) -> None:
    status, body = await client.api_raw({"using": ["urn:example:nope"], "methodCalls": []})
    assert (status, body["type"]) == (400, URN + "unknownCapability")


async def test_max_calls_in_request(client: Client) -> None:
    calls = [["Core/echo", {}, str(i)] for i in range(10000)]
    status, body = await client.api_raw({"using": USING, "methodCalls": calls})
    assert (status, body["type"], body["limit"]) == (400, URN + "limit", "maxCallsInRequest")


async def test_max_size_request(client: Client) -> None:
    big = {"using": USING, "methodCalls": [["Core/echo", {"pad": "x" * 10_000_001}, "0"]]}
    status, body = await client.api_raw(json.dumps(big).encode())
    assert (status, body["type"], body["limit"]) == (400, URN + "limit", "maxSizeRequest")


async def test_unknown_method_and_capability_not_used(client: Client) -> None:
    resp = await client.call(["Foo/bar", {}, "a"], ["Mailbox/get", {"accountId": "a1"}, "b"],
                             using=["urn:ietf:params:jmap:core"])
    assert resp[0] == ["error", {"type": "unknownMethod", "description": "unknown method 'Foo/bar'"}, "a"]
    assert resp[1][0] == "error" and resp[1][1]["type"] == "unknownMethod"


async def test_result_references_with_star(client: Client) -> None:
    resp = await client.call(
        ["Core/echo", {"list": [{"id": "x", "n": [1, 2]}, {"id": "y", "n": [3]}]}, "a"],
        ["Core/echo", {"#ids": {"resultOf": "a", "name": "Core/echo", "path": "/list/*/id"}}, "b"],
        ["Core/echo", {"#ns": {"resultOf": "a", "name": "Core/echo", "path": "/list/*/n"}}, "c"],
    )
    assert resp[1][1] == {"ids": ["x", "y"]}
    assert resp[2][1] == {"ns": [1, 2, 3]}  # arrays flattened one level


async def test_invalid_result_references(client: Client) -> None:
    resp = await client.call(
        ["Core/echo", {"a": 1}, "a"],
        ["Core/echo", {"#x": {"resultOf": "zz", "name": "Core/echo", "path": "/a"}}, "b"],
        ["Core/echo", {"#x": {"resultOf": "a", "name": "Mailbox/get", "path": "/a"}}, "c"],
        ["Core/echo", {"#x": {"resultOf": "a", "name": "Core/echo", "path": "/nope"}}, "d"],
        ["Core/echo", {"#x": {"resultOf": "a"}}, "e"],
        ["Core/echo", {"x": 1, "#x": {"resultOf": "a", "name": "Core/echo", "path": "/a"}}, "f"],
    )
    assert [r[1]["type"] for r in resp[1:]] == ["invalidResultReference"] * 4 + ["invalidArguments"]


async def test_account_not_found_and_invalid_arguments(client: Client) -> None:
    resp = await client.call(
        ["Mailbox/get", {"accountId": "nope"}, "a"],
        ["Mailbox/get", {"accountId": "a1", "ids": "x"}, "b"],
        ["Mailbox/get", {"accountId": "a1", "bogus": 1}, "c"],
        ["Mailbox/get", {"accountId": "a1", "properties": ["nope"]}, "d"],
        ["Mailbox/get", {"accountId": 5}, "e"],
    )
    assert [r[1]["type"] for r in resp] == ["accountNotFound"] + ["invalidArguments"] * 4


async def test_max_objects_in_get(client: Client) -> None:
    r = await client.call(["Mailbox/get", {"accountId": "a1", "ids": [f"x{i}" for i in range(1001)]}, "a"])
    assert r[0][1]["type"] == "requestTooLarge"


async def test_max_concurrent_requests_is_per_user(tmp_path, client: Client) -> None:  # type: ignore[no-untyped-def]
    # a deeply nested filter is refused with the RFC's error, not a crash
    nested: dict = {"hasKeyword": "$seen"}
    for _ in range(200):
        nested = {"operator": "NOT", "conditions": [nested]}
    r = await client.call(["Email/query", {"accountId": "a1", "filter": nested}, "q"])
    assert r[0][1]["type"] == "unsupportedFilter"


async def test_other_user_sees_own_account_only(server: Server, client: Client) -> None:
    bob = Client(server, client.http, basic("bob@example.test", "hunter2"))
    r = await bob.call(["Mailbox/get", {"accountId": "a1"}, "x"])
    assert r[0][1]["type"] == "accountNotFound"
    bob.account_id = "a2"
    assert len((await bob.one("Mailbox/get", {}))["list"]) == 6


async def test_plain_http_basic_refused_off_loopback(server: Server) -> None:
    # FakeAuth mirrors auth.plaintext_allowed: only TLS or loopback may send passwords
    assert not server.auth.plaintext_allowed(tls=False, client_ip="192.0.2.1")
    assert server.auth.plaintext_allowed(tls=False, client_ip="127.0.0.1")


async def test_access_token_for_eventsource(client: Client) -> None:
    async with client.http.post(client.server.url + "/jmap/token", headers=client.headers) as r:
        tok = (await r.json())["accessToken"]
    async with aiohttp.ClientSession() as anon:
        url = client.server.url + "/jmap/eventsource?types=*&closeafter=no&ping=0&access_token=" + tok
        async with anon.get(url) as r:
            assert r.status == 200
            line = await r.content.readline()
            assert line == b"event: state\n"
        async with anon.get(client.server.url + "/jmap/eventsource?access_token=" + tok[:-2] + "xx") as r:
            assert r.status == 401
        # ping is ASCII digits (RFC 8620 §7.3): anything else is a 400, never a server error
        async with anon.get(client.server.url + "/jmap/eventsource?ping=%C2%B2&access_token=" + tok) as r:
            assert r.status == 400
        # a non-ASCII signature is refused like any wrong one (not a server error)
        async with anon.get(client.server.url + "/jmap/eventsource?access_token=" + tok[:-2] + "%C3%A9") as r:
            assert r.status == 401
        # the token only works where the browser cannot send a header, not on the API
        async with anon.post(client.server.url + "/jmap/api?access_token=" + tok, data=b"{}") as r:
            assert r.status == 401

async def test_access_token_ends_with_a_password_change(server: Server, client: Client) -> None:
    async with client.http.post(client.server.url + "/jmap/token", headers=client.headers) as r:
        tok = (await r.json())["accessToken"]
    url = client.server.url + "/jmap/download/a1/nope/x?access_token=" + tok
    async with aiohttp.ClientSession() as anon:
        async with anon.get(url) as r:
            assert r.status == 404  # authenticated: the blob is missing
        server.auth.generations[1] = 3  # the password changed
        async with anon.get(url) as r:
            assert r.status == 401


async def test_access_token_cookie_for_browsers(client: Client) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        async with browser.post(client.server.url + "/jmap/token", headers=client.headers) as r:
            assert r.status == 200
            cookie = r.cookies["jmap_access"]
            assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/jmap"
        # no Authorization header: the cookie alone opens the EventSource
        async with browser.get(client.server.url + "/jmap/eventsource?types=*&closeafter=no&ping=0") as r:
            assert r.status == 200
            assert await r.content.readline() == b"event: state\n"
