"""Shared accounts (issue 8): a grant in the directory shows the owner's account in the grantee's JMAP
session; rights enforced; Email/copy between the accounts; push; and cached logins that follow the
directory's credentials generation. Over real HTTP against the real directory, authenticator and store
of a ``mailsrv init`` setup, changed with the real CLI in another process."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from jmaptest import Client
from support.server import mailsrv_cmd

from mailsrv import config as config_mod
from mailsrv.auth import Authenticator
from mailsrv.directory import open_directory
from mailsrv.jmap.blobs import UploadStore
from mailsrv.jmap.server import JmapApp
from mailsrv.jmap.sharedview import directory_sources
from mailsrv.jmap.storebackend import store_factory, with_sort_order
from mailsrv.store import Store
from mailsrv.util.fsio import FileIO

USING = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail", "urn:ietf:params:jmap:submission"]
MAIL = "urn:ietf:params:jmap:mail"


@dataclass
class Env:
    config: Path
    passwords: dict[str, str]
    url: str
    http: aiohttp.ClientSession

    def client(self, user: str, password: str | None = None) -> Client:
        pw = self.passwords[user] if password is None else password
        c = Client(self, self.http, {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()})  # type: ignore[arg-type]
        return c

    def cli(self, *args: str, stdin: str | None = None) -> str:
        p = subprocess.run(mailsrv_cmd(*args, "-c", str(self.config)), input=stdin, capture_output=True, text=True,
                           timeout=60)
        assert p.returncode == 0, p.stderr
        return p.stdout


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    d = tmp_path / "s"
    p = subprocess.run(mailsrv_cmd("init", "--dir", str(d), "--any-port", "--demo"), capture_output=True,
                       text=True, check=True)
    passwords = dict(re.findall(r"demo user (\S+) password (\S+)", p.stdout + p.stderr))
    assert set(passwords) == {"alice@example.test", "bob@example.test"}
    return d, passwords


@pytest.fixture
async def env(setup: tuple[Path, dict[str, str]], request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    """The JMAP app over the setup's store and directory; parametrised indirectly with True, a grantee's
    $seen is private (``[imap] shared_private_seen``, which the service sets; off by default here)."""
    d, passwords = setup
    cfg = config_mod.load(d / "mailsrv.toml")
    data = cfg.server.data_dir
    directory = open_directory(cfg.directory, data)
    auth = Authenticator(directory, cfg.auth)
    store = Store(cfg.store, data, hostname="test")
    io = FileIO(2, "jmap-shared")
    uploads = UploadStore(data / cfg.jmap.upload_dir, io)
    factory = with_sort_order(store_factory(store, directory, data), uploads.root, io)

    grants, hook = directory_sources(directory)  # as the JMAP service wires them

    app = JmapApp(cfg.jmap, auth, factory, uploads, b"k" * 32, tls=True, grants=grants, folder_hook=hook)
    app.private_seen = bool(getattr(request, "param", False))
    runner = web.AppRunner(app.make_app(), access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as http:
            yield Env(d / "mailsrv.toml", passwords, f"http://127.0.0.1:{port}", http)
    finally:
        await app.push.close()
        await app.vacation.close()
        await runner.cleanup()
        await store.close()
        await auth.close()
        await directory.close()
        io.shutdown()


async def events(resp: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """The data of each ``state`` event of an EventSource stream."""
    event = ""
    while True:
        line = (await resp.content.readline()).decode()
        if line.startswith("event: "):
            event = line[7:].strip()
        elif line.startswith("data: ") and event == "state":
            yield json.loads(line[6:])


async def session(c: Client) -> dict[str, Any]:
    async with c.http.get(c.server.url + "/jmap/session", headers=c.headers) as r:
        assert r.status == 200, await r.text()
        return dict(await r.json())


async def status_of(c: Client) -> int:
    async with c.http.get(c.server.url + "/jmap/session", headers=c.headers) as r:
        return r.status


async def own(c: Client) -> str:
    c.account_id = (await session(c))["primaryAccounts"][MAIL]
    return c.account_id


def msg(subject: str) -> bytes:
    return (f"From: carol@outside.test\r\nTo: alice@example.test\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@outside.test>\r\n\r\nbody of {subject}\r\n").encode()


async def test_read_only_share(env: Env) -> None:
    alice, bob = env.client("alice@example.test"), env.client("bob@example.test")
    a_id, b_id = await own(alice), await own(bob)
    eid = await alice.import_message(msg("for alice"))
    assert a_id not in (await session(bob))["accounts"]
    env.cli("share", "grant", "alice@example.test", "bob@example.test")  # read-only by default
    s = await session(bob)
    acc = s["accounts"][a_id]
    assert (acc["name"], acc["isPersonal"], acc["isReadOnly"]) == ("alice@example.test", False, True)
    assert "urn:ietf:params:jmap:submission" not in acc["accountCapabilities"]
    assert acc["accountCapabilities"][MAIL]["mayCreateTopLevelMailbox"] is False
    assert s["primaryAccounts"][MAIL] == b_id and s["accounts"][b_id]["isPersonal"] is True
    # bob reads alice's mailboxes, emails and threads through her account id
    got = await bob.call(
        ["Mailbox/get", {"accountId": a_id}, "m"],
        ["Email/query", {"accountId": a_id}, "q"],
        ["Email/get", {"accountId": a_id, "#ids": {"resultOf": "q", "name": "Email/query", "path": "/ids"},
                       "properties": ["subject", "threadId", "blobId"]}, "g"],
        ["Thread/get", {"accountId": a_id, "#ids": {"resultOf": "g", "name": "Email/get", "path": "/list/*/threadId"}},
         "t"])
    inbox = next(m for m in got[0][1]["list"] if m["role"] == "inbox")
    assert inbox["myRights"]["mayReadItems"] is True and inbox["myRights"]["mayAddItems"] is False
    assert inbox["myRights"]["maySetSeen"] is False and inbox["myRights"]["maySubmit"] is False
    assert got[1][1]["ids"] == [eid]
    assert got[2][1]["list"][0]["subject"] == "for alice"
    assert got[3][1]["list"][0]["emailIds"] == [eid]
    blob = got[2][1]["list"][0]["blobId"]
    async with env.http.get(f"{env.url}/jmap/download/{a_id}/{blob}/m.eml", headers=bob.headers) as r:
        assert r.status == 200 and b"body of for alice" in await r.read()
    # every change is refused: accountReadOnly; submission and vacation are not on a shared account
    bad = await bob.call(
        ["Email/set", {"accountId": a_id, "update": {eid: {"keywords/$seen": True}}}, "1"],
        ["Mailbox/set", {"accountId": a_id, "create": {"x": {"name": "bob was here"}}}, "2"],
        ["Email/import", {"accountId": a_id, "emails": {}}, "3"],
        ["Identity/get", {"accountId": a_id}, "4"],
        ["EmailSubmission/set", {"accountId": a_id, "create": {}}, "5"],
        using=USING)
    assert [x[1]["type"] for x in bad] == ["accountReadOnly"] * 3 + ["accountNotSupportedByMethod"] * 2
    async with env.http.post(f"{env.url}/jmap/upload/{a_id}/", data=b"x", headers=bob.headers) as r:
        assert r.status == 403
    meta = await alice.one("Email/get", {"ids": [eid], "properties": ["keywords"]})
    assert meta["list"][0]["keywords"] == {}  # nothing changed
    # bob may copy from the read-only account into his own, but not destroy the original
    bob_inbox = await bob.mailbox_id("inbox")
    cp = await bob.call(["Email/copy", {"fromAccountId": a_id, "accountId": b_id, "onSuccessDestroyOriginal": True,
                                        "create": {"c1": {"id": eid, "mailboxIds": {bob_inbox: True}}}}, "c"])
    assert [x[0] for x in cp] == ["Email/copy", "error"]
    assert cp[0][1]["created"]["c1"]["id"] and cp[1][1]["type"] == "accountReadOnly"
    assert (await alice.one("Email/query", {}))["ids"] == [eid]
    got = await bob.one("Email/get", {"ids": [cp[0][1]["created"]["c1"]["id"]], "properties": ["subject"]})
    assert got["list"][0]["subject"] == "for alice"
    # revoked: the account is gone at once, also on a WebSocket opened before
    async with env.http.ws_connect(env.url.replace("http", "ws") + "/jmap/ws", protocols=("jmap",),
                                   headers=bob.headers) as ws:
        query = {"@type": "Request", "using": USING, "methodCalls": [["Email/query", {"accountId": a_id}, "q"]]}
        await ws.send_json(query)
        assert (await ws.receive_json())["methodResponses"][0][0] == "Email/query"
        env.cli("share", "revoke", "alice@example.test", "bob@example.test")
        await ws.send_json(query)
        assert (await ws.receive_json())["methodResponses"][0][1]["type"] == "accountNotFound"
    assert a_id not in (await session(bob))["accounts"]
    gone = await bob.call(["Email/query", {"accountId": a_id}, "q"])
    assert gone[0][1]["type"] == "accountNotFound"


async def test_read_write_share_and_copy_both_ways(env: Env) -> None:
    alice, bob = env.client("alice@example.test"), env.client("bob@example.test")
    a_id, b_id = await own(alice), await own(bob)
    eid = await alice.import_message(msg("shared"))
    out = env.cli("share", "grant", "alice@example.test", "bob@example.test", "--rights", "write", "--json")
    assert '"rights": "write"' in out
    listed = env.cli("share", "list", "bob@example.test")
    assert "owner=alice@example.test" in listed and "rights=write" in listed
    acc = (await session(bob))["accounts"][a_id]
    assert acc["isReadOnly"] is False and acc["isPersonal"] is False
    # bob changes alice's mail: alice sees it in her own session
    upd = await bob.call(["Email/set", {"accountId": a_id, "update": {eid: {"keywords/$flagged": True}}}, "u"],
                         ["Mailbox/set", {"accountId": a_id, "create": {"f": {"name": "From Bob"}}}, "m"])
    # a write grant is lrswite, as over IMAP: no "k", so no mailbox made in alice's account
    assert upd[0][1]["updated"] == {eid: None} and upd[1][1]["notCreated"]["f"]["type"] == "forbidden"
    got = await alice.one("Email/get", {"ids": [eid], "properties": ["keywords"]})
    assert got["list"][0]["keywords"] == {"$flagged": True}
    # bob moves one of his emails into alice's account (copy + destroy original, RFC 8620 §5.4)
    bob.account_id = b_id
    mine = await bob.import_message(msg("moved to alice"), keywords={"$seen": True})
    a_inbox = await alice.mailbox_id("inbox")
    src_state = (await bob.one("Email/get", {"ids": []}))["state"]
    cp = await bob.call(["Email/copy", {"fromAccountId": b_id, "accountId": a_id, "onSuccessDestroyOriginal": True,
                                        "destroyFromIfInState": src_state, "ifFromInState": src_state,
                                        "create": {"k": {"id": mine, "mailboxIds": {a_inbox: True}},
                                                   "missing": {"id": "Mnope", "mailboxIds": {a_inbox: True}}}}, "c"])
    assert [x[0] for x in cp] == ["Email/copy", "Email/set"]
    res = cp[0][1]
    assert (res["fromAccountId"], res["accountId"]) == (b_id, a_id)
    assert res["notCreated"]["missing"]["type"] == "notFound"
    new_id = res["created"]["k"]["id"]
    assert cp[1][1]["accountId"] == b_id and cp[1][1]["destroyed"] == [mine]
    assert (await bob.one("Email/query", {}))["ids"] == []
    got = await alice.one("Email/get", {"ids": [new_id], "properties": ["subject", "keywords", "mailboxIds"]})
    assert got["list"][0] == {"id": new_id, "subject": "moved to alice", "keywords": {"$seen": True},
                              "mailboxIds": {a_inbox: True}}
    # the state of alice's account as bob sees it (hers, and what he may see: sharedview "States")
    seen = await bob.call(["Email/get", {"accountId": a_id, "ids": []}, "g"])
    assert res["newState"] == seen[0][1]["state"] != res["oldState"]
    # a stale destroyFromIfInState keeps the original (the implicit /set fails with stateMismatch)
    again = await bob.import_message(msg("stays with bob"))
    cp = await bob.call(["Email/copy", {"fromAccountId": b_id, "accountId": a_id, "onSuccessDestroyOriginal": True,
                                        "destroyFromIfInState": src_state,
                                        "create": {"k": {"id": again, "mailboxIds": {a_inbox: True},
                                                         "keywords": {"$answered": True}}}}, "c"])
    assert cp[0][1]["created"]["k"]["id"] and cp[1] == ["error", {"type": "stateMismatch"}, "c"]
    assert (await bob.one("Email/query", {}))["ids"] == [again]
    # a copy with its own receivedAt (and the source's left as it is)
    before = (await alice.one("Email/get", {"ids": [eid], "properties": ["receivedAt"]}))["list"][0]["receivedAt"]
    b_inbox = await bob.mailbox_id("inbox")
    cp = await bob.call(["Email/copy", {"fromAccountId": a_id, "accountId": b_id, "create": {
        "d": {"id": eid, "mailboxIds": {b_inbox: True}, "receivedAt": "2020-01-02T03:04:05Z"}}}, "c"])
    dated = cp[0][1]["created"]["d"]["id"]
    got = await bob.one("Email/get", {"ids": [dated], "properties": ["receivedAt", "subject"]})
    assert got["list"][0]["receivedAt"] == "2020-01-02T03:04:05Z" and got["list"][0]["subject"] == "shared"
    after = (await alice.one("Email/get", {"ids": [eid], "properties": ["receivedAt"]}))["list"][0]["receivedAt"]
    assert after == before != "2020-01-02T03:04:05Z"
    # argument and state errors
    bad = await bob.call(
        ["Email/copy", {"fromAccountId": b_id, "accountId": b_id, "create": {}}, "1"],
        ["Email/copy", {"fromAccountId": "Anope", "accountId": a_id, "create": {}}, "2"],
        ["Email/copy", {"fromAccountId": b_id, "accountId": a_id, "ifFromInState": "stale", "create": {}}, "3"],
        ["Email/copy", {"fromAccountId": b_id, "accountId": a_id, "create": {
            "x": {"id": again, "mailboxIds": {a_inbox: True}, "subject": "no"}}}, "4"])
    assert [x[1].get("type") for x in bad[:3]] == ["invalidArguments", "fromAccountNotFound", "stateMismatch"]
    assert bad[3][1]["notCreated"]["x"]["type"] == "invalidProperties"


async def test_push_names_the_shared_account(env: Env) -> None:
    alice, bob = env.client("alice@example.test"), env.client("bob@example.test")
    a_id, b_id = await own(alice), await own(bob)
    # a stream opened before the grant follows the new account from its next wake-up on
    es = await env.http.get(env.url + "/jmap/eventsource?types=Email&closeafter=no&ping=0", headers=bob.headers)
    assert es.status == 200
    first = await anext(events(es))
    assert set(first["changed"]) == {b_id}
    env.cli("share", "grant", "alice@example.test", "bob@example.test")
    await bob.import_message(msg("wakes bob's stream"))
    async with asyncio.timeout(10):
        nxt = await anext(events(es))
    assert set(nxt["changed"]) == {a_id, b_id}
    await alice.import_message(msg("seen by bob"))
    async with asyncio.timeout(10):
        nxt = await anext(events(es))
    assert set(nxt["changed"]) == {a_id}
    es.close()
    es = await env.http.get(env.url + "/jmap/eventsource?types=Email&closeafter=state&ping=0", headers=bob.headers)
    assert es.status == 200
    await alice.import_message(msg("pushed to bob"))
    async with asyncio.timeout(10):
        body = (await es.read()).decode()
    es.close()
    assert "event: state" in body and f'"{a_id}"' in body
    # and over the WebSocket
    async with env.http.ws_connect(env.url.replace("http", "ws") + "/jmap/ws", protocols=("jmap",),
                                   headers=bob.headers) as ws:
        await ws.send_json({"@type": "WebSocketPushEnable", "dataTypes": ["Email"]})
        await alice.import_message(msg("pushed again"))
        async with asyncio.timeout(10):
            change = await ws.receive_json()
        assert change["@type"] == "StateChange" and a_id in change["changed"]


async def test_password_change_suspension_and_lockout_act_at_once(env: Env) -> None:
    user = "alice@example.test"
    old = env.client(user)
    await own(old)
    for _ in range(2):  # logged in, and the login is cached
        assert await status_of(old) == 200
    env.cli("user", "passwd", user, "--password-stdin", stdin="a-new-password-1\n")
    assert await status_of(old) == 401  # the old password, at the very next request
    new = env.client(user, "a-new-password-1")
    assert await status_of(new) == 200 and await status_of(new) == 200
    env.cli("user", "suspend", user)
    assert await status_of(new) == 401
    env.cli("user", "activate", user)
    assert await status_of(new) == 200
    # a lockout (earned elsewhere: here with wrong passwords over JMAP itself) refuses the cached login too
    wrong = env.client(user, "wrong-password")
    for _ in range(12):
        if await status_of(wrong) != 401:
            raise AssertionError("a wrong password was accepted")
        rows = json.loads(env.cli("lockout", "list", "--json"))
        if any(r["key"] == f"acct:{user}" and r["locked"] for r in rows):
            break
    else:
        raise AssertionError("the account was never locked")
    assert await status_of(new) == 401
    env.cli("lockout", "clear", user)
    assert await status_of(new) == 200


def test_share_cli_scopes(setup: tuple[Path, dict[str, str]]) -> None:
    d, _ = setup
    config = str(d / "mailsrv.toml")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(mailsrv_cmd(*args, "-c", config), capture_output=True, text=True, timeout=60)

    for cmd in (("domain", "add", "other.test"), ("user", "add", "carol@other.test", "--no-password"),
                ("admin", "grant", "carol@other.test", "domain", "other.test")):
        assert run(*cmd).returncode == 0
    # an administrator of other.test may not share example.test mail
    refused = run("share", "grant", "alice@example.test", "bob@example.test", "--as", "carol@other.test")
    assert refused.returncode == 2 and "mailsrv:" in refused.stderr
    assert json.loads(run("share", "list", "--json").stdout) == []
    bad = run("share", "grant", "alice@example.test", "nobody@example.test")
    assert bad.returncode == 2 and "nobody@example.test" in bad.stderr
    ok = run("share", "grant", "alice@example.test", "bob@example.test", "--rights", "write", "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["changed"] is True
    assert json.loads(run("share", "list", "--json", "--as", "carol@other.test").stdout) == []  # out of scope
    assert json.loads(run("share", "list", "--json").stdout) == [
        {"owner": "alice@example.test", "grantee": "bob@example.test", "rights": "write"}]
    gone = run("share", "revoke", "alice@example.test", "bob@example.test", "--json")
    assert json.loads(gone.stdout)["revoked"] is True


async def test_session_state_follows_grants(env: Env) -> None:
    """The sessionState of API responses (kept per worker by what the Session is made of) is the Session
    resource's and moves when a grant adds or removes an account (RFC 8620 §3.4)."""
    bob = env.client("bob@example.test")
    await own(bob)

    async def api_state() -> str:
        status, body = await bob.api_raw({"using": USING, "methodCalls": [["Core/echo", {}, "e"]]})
        assert status == 200, body
        return str(body["sessionState"])

    before = await api_state()
    assert before == (await session(bob))["state"] == await api_state()
    env.cli("share", "grant", "alice@example.test", "bob@example.test")
    shared = await api_state()
    assert shared != before and shared == (await session(bob))["state"]
    env.cli("share", "revoke", "alice@example.test", "bob@example.test")
    assert await api_state() == before
