"""JMAP for Sieve Scripts (RFC 9661) under `mailsrv serve`: the scripts ManageSieve and the CLI see, run at delivery."""

from __future__ import annotations

import asyncio
import imaplib
import json
import smtplib
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from sievelib.managesieve import Client as SieveClient
from support.server import ServerProcess, mailsrv_cmd
from test_serve import setup

SIEVE = "urn:ietf:params:jmap:sieve"
USING = ["urn:ietf:params:jmap:core", SIEVE]
RULES = 'require ["fileinto"];\r\nif header :contains "subject" "weekly report" {\r\n  fileinto "Reports";\r\n}\r\n'
BROKEN = 'require ["fileinto"];\r\nif header :contains "subject" {\r\n  fileinto "Reports";\r\n}\r\n'


def test_sieve_scripts_over_jmap(tmp_path: Path, monkeypatch: Any) -> None:
    under_serve(tmp_path, monkeypatch, _scenario)


def under_serve(tmp_path: Path, monkeypatch: Any,
                scenario: Callable[[ServerProcess, Path, str, str], Awaitable[None]]) -> None:
    """``scenario(server, config, alice's password, her bearer token)`` against `mailsrv serve`."""
    config, password, token, _ = setup(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(config.parent / "tls" / "cert.pem"))  # sievelib's STARTTLS
    server = ServerProcess(config).wait_ready()
    try:
        asyncio.run(scenario(server, config, password, token))
    finally:
        assert server.stop() == 0


def cli_list(config: Path) -> list[dict[str, Any]]:
    p = subprocess.run(mailsrv_cmd("sieve", "list", "alice@example.test", "--json", "-c", str(config)),
                       capture_output=True, text=True, timeout=120, check=True)
    return list(json.loads(p.stdout))


def managesieve(server: ServerProcess, password: str) -> SieveClient:
    c = SieveClient("127.0.0.1", server.ports["managesieve"])
    assert c.connect("alice@example.test", password, starttls=True, authmech="PLAIN"), c.errmsg
    return c


async def _scenario(server: ServerProcess, config: Path, password: str, token: str) -> None:
    base = f"http://127.0.0.1:{server.ports['jmap']}"
    auth = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/jmap/session", headers=auth) as r:
            session = await r.json()
        assert session["capabilities"][SIEVE] == {}
        aid = session["primaryAccounts"][SIEVE]
        cap = session["accounts"][aid]["accountCapabilities"][SIEVE]
        assert cap["maxSizeScript"] == 64 * 1024 and cap["maxNumberScripts"] == 16 and cap["maxSizeScriptName"] == 128
        assert "fileinto" in cap["sieveExtensions"] and cap["externalLists"] is None

        async def call(*calls: list[Any]) -> list[Any]:
            async with http.post(base + "/jmap/api", json={"using": USING, "methodCalls": list(calls)},
                                 headers=auth) as r:
                assert r.status == 200, await r.text()
                return list((await r.json())["methodResponses"])

        async def upload(data: bytes) -> str:
            async with http.post(f"{base}/jmap/upload/{aid}/", data=data, headers=auth) as r:
                assert r.status == 201, await r.text()
                return str((await r.json())["blobId"])

        good, bad = await upload(RULES.encode()), await upload(BROKEN.encode())
        big = await upload(b"# " + b"x" * (64 * 1024) + b"\r\nkeep;\r\n")
        (_, v1, _), (_, v2, _) = await call(["SieveScript/validate", {"accountId": aid, "blobId": good}, "a"],
                                            ["SieveScript/validate", {"accountId": aid, "blobId": bad}, "b"])
        assert v1["error"] is None
        assert v2["error"]["type"] == "invalidSieve" and "line 2" in v2["error"]["description"]
        got = await call(["SieveScript/get", {"accountId": aid}, "g"])
        state0 = got[0][1]["state"]
        assert got[0][1]["list"] == []

        # a script that does not compile, one too large, then a good one created and activated
        res = await call(["SieveScript/set", {"accountId": aid, "create": {
            "x": {"name": "broken", "blobId": bad}, "y": {"name": "big", "blobId": big}}}, "s"])
        assert res[0][1]["notCreated"]["x"]["type"] == "invalidSieve"
        assert res[0][1]["notCreated"]["y"]["type"] == "tooLarge"
        assert cli_list(config) == []
        res = await call(["SieveScript/set", {"accountId": aid, "create": {"A": {"name": "filters", "blobId": good}},
                                              "onSuccessActivateScript": "#A"}, "s"],
                         ["SieveScript/get", {"accountId": aid, "ids": ["#A"]}, "g"])
        created = res[0][1]["created"]["A"]
        sid = created["id"]
        assert created["isActive"] is True and created["blobId"] == good
        assert res[1][1]["list"] == [{"id": sid, "name": "filters", "blobId": good, "isActive": True}]
        assert cli_list(config) == [{"name": "filters", "active": True}]

        # the script runs at the next delivery
        for subject in ("weekly report 48", "lunch?"):
            with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
                s.sendmail("bob@example.test", ["alice@example.test"],
                           f"From: bob@example.test\r\nTo: alice@example.test\r\nSubject: {subject}\r\n\r\nhi\r\n".encode())
        tls = ssl.create_default_context(cafile=str(config.parent / "tls" / "cert.pem"))
        imap = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=tls, timeout=30)
        try:
            imap.login("alice@example.test", password)
            assert imap.select("Reports", readonly=True)[0] == "OK"
            typ, data = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            assert typ == "OK"
            assert [d[1].strip() for d in data if isinstance(d, tuple)] == [b"Subject: weekly report 48"]
        finally:
            imap.logout()

        # the blob downloads; ManageSieve sees the same script, active
        async with http.get(f"{base}/jmap/download/{aid}/{good}/filters.sieve?accept=application/sieve",
                            headers=auth) as r:
            assert r.status == 200 and await r.read() == RULES.encode()
        ms = managesieve(server, password)
        try:
            assert ms.listscripts() == ("filters", [])
            # sievelib hands the text back with its line ends as lines and the last one dropped
            assert ms.getscript("filters").splitlines() == RULES.splitlines()
        finally:
            ms.logout()

        # rename keeps the id; the active script cannot be destroyed; /changes and /query follow
        res = await call(["SieveScript/set", {"accountId": aid, "update": {sid: {"name": "rules"}},
                                              "destroy": [sid]}, "s"],
                         ["SieveScript/changes", {"accountId": aid, "sinceState": state0}, "c"],
                         ["SieveScript/query", {"accountId": aid, "filter": {"isActive": True}}, "q"])
        assert res[0][1]["updated"] == {sid: None}
        assert res[0][1]["notDestroyed"][sid]["type"] == "sieveIsActive"
        assert res[1][1]["created"] == [sid] and res[1][1]["destroyed"] == []
        assert res[2][1]["ids"] == [sid] and res[2][1]["total"] == 1
        assert cli_list(config) == [{"name": "rules", "active": True}]
        state1 = res[1][1]["newState"]

        # a script put over ManageSieve shows in /changes; a name taken is alreadyExists
        ms = managesieve(server, password)
        try:
            assert ms.putscript("other", "keep;\r\n")
        finally:
            ms.logout()
        res = await call(["SieveScript/changes", {"accountId": aid, "sinceState": state1}, "c"],
                         ["SieveScript/set", {"accountId": aid, "create": {"d": {"name": "other", "blobId": good}}}, "s"],
                         ["SieveScript/query", {"accountId": aid, "sort": [{"property": "name"}]}, "q"],
                         ["SieveScript/changes", {"accountId": aid, "sinceState": "garbage"}, "e"])
        other = res[0][1]["created"]
        assert len(other) == 1 and res[0][1]["updated"] == [] and res[0][1]["destroyed"] == []
        assert res[1][1]["notCreated"]["d"] == {"type": "alreadyExists", "description": "a script named 'other' exists",
                                                "existingId": other[0]}
        assert res[2][1]["ids"] == [other[0], sid]
        assert res[3][0] == "error" and res[3][1]["type"] == "cannotCalculateChanges"

        # deactivate (reported as an update), then destroy
        res = await call(["SieveScript/set", {"accountId": aid, "onSuccessDeactivateScript": True}, "s"],
                         ["SieveScript/set", {"accountId": aid, "destroy": [sid]}, "t"])
        assert res[0][1]["updated"] == {sid: {"isActive": False}}
        assert res[1][1]["destroyed"] == [sid]
        assert cli_list(config) == [{"name": "other", "active": False}]

        # what a client gets wrong is refused with the method's or the object's error
        res = await call(["SieveScript/query", {"accountId": aid, "filter": {"text": "x"}}, "q"],
                         ["SieveScript/query", {"accountId": aid, "sort": [{"property": "size"}]}, "r"],
                         ["SieveScript/set", {"accountId": aid, "create": {
                             "a": {"name": "x", "blobId": good, "isActive": True},
                             "b": {"name": "bad/name", "blobId": good},
                             "c": {"name": "y", "blobId": "Gnothere"}},
                             "update": {"nope": {"name": "z"}}}, "s"])
        assert res[0][1]["type"] == "unsupportedFilter" and res[1][1]["type"] == "unsupportedSort"
        failed = res[2][1]["notCreated"]
        assert failed["a"]["type"] == failed["b"]["type"] == "invalidProperties"
        assert failed["c"]["type"] == "blobNotFound" and res[2][1]["notUpdated"]["nope"]["type"] == "notFound"
        assert cli_list(config) == [{"name": "other", "active": False}]
