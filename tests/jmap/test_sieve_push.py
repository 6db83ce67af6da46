"""Push of the SieveScript state (RFC 9661, RFC 8620 §7) under `mailsrv serve`: a script changed over
JMAP, ManageSieve or the CLI is a StateChange on EventSource and WebSocket push."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
from support.server import ServerProcess, mailsrv_cmd
from test_push import read_event
from test_sieve_scripts import RULES, SIEVE, USING, managesieve, under_serve


def test_sieve_script_changes_are_pushed(tmp_path: Path, monkeypatch: Any) -> None:
    under_serve(tmp_path, monkeypatch, _scenario)


def cli(config: Path, *args: str) -> None:
    subprocess.run(mailsrv_cmd("sieve", *args, "-c", str(config)), capture_output=True, text=True, timeout=120,
                   check=True)


async def _scenario(server: ServerProcess, config: Path, password: str, token: str) -> None:
    base = f"http://127.0.0.1:{server.ports['jmap']}"
    auth = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/jmap/session", headers=auth) as r:
            aid = (await r.json())["primaryAccounts"][SIEVE]

        async def state() -> str:
            async with http.post(base + "/jmap/api", headers=auth, json={
                    "using": USING, "methodCalls": [["SieveScript/get", {"accountId": aid, "ids": []}, "g"]]}) as r:
                return str((await r.json())["methodResponses"][0][1]["state"])

        async def pushed(resp: aiohttp.ClientResponse, old: str) -> str:
            """The SieveScript state after a change (as SieveScript/get reads it now), once the stream
            has reported it (a change in several steps may be reported step by step)."""
            want = await state()
            assert want != old
            async with asyncio.timeout(30):
                while True:
                    ev, data = await read_event(resp)
                    if ev == "state" and data.get("changed", {}).get(aid, {}).get("SieveScript") == want:
                        return want

        async with http.post(f"{base}/jmap/upload/{aid}/", data=RULES.encode(), headers=auth) as r:
            blob = (await r.json())["blobId"]
        url = base + "/jmap/eventsource?types=SieveScript&closeafter=no&ping=0"
        async with http.get(url, headers=auth) as es:
            async with asyncio.timeout(30):
                ev, data = await read_event(es)
            assert ev == "state" and set(data["changed"][aid]) == {"SieveScript"}
            s0 = data["changed"][aid]["SieveScript"]
            assert s0 == await state()

            # over JMAP: created and activated
            async with http.post(base + "/jmap/api", headers=auth, json={"using": USING, "methodCalls": [
                    ["SieveScript/set", {"accountId": aid, "create": {"A": {"name": "rules", "blobId": blob}},
                                         "onSuccessActivateScript": "#A"}, "s"]]}) as r:
                assert "A" in (await r.json())["methodResponses"][0][1]["created"]
            s1 = await pushed(es, s0)

            # over ManageSieve (another process's worker may serve it): PUTSCRIPT, then SETACTIVE
            ms = await asyncio.to_thread(managesieve, server, password)
            try:
                assert await asyncio.to_thread(ms.putscript, "other", "keep;\r\n")
                s2 = await pushed(es, s1)
                assert await asyncio.to_thread(ms.setactive, "other")
                s3 = await pushed(es, s2)
            finally:
                await asyncio.to_thread(ms.logout)

            # with the CLI: deactivate, delete
            await asyncio.to_thread(cli, config, "deactivate", "alice@example.test")
            s4 = await pushed(es, s3)
            await asyncio.to_thread(cli, config, "delete", "alice@example.test", "other")
            s5 = await pushed(es, s4)

        # WebSocket push (RFC 8887) follows the same state
        async with http.ws_connect(base.replace("http", "ws") + "/jmap/ws", protocols=("jmap",), headers=auth) as ws:
            await ws.send_str(json.dumps({"@type": "WebSocketPushEnable", "dataTypes": ["SieveScript"]}))
            ms = await asyncio.to_thread(managesieve, server, password)
            try:
                # the push channel is on once a request after the enable is answered
                await ws.send_str(json.dumps({"@type": "Request", "id": "r", "using": USING, "methodCalls": []}))
                async with asyncio.timeout(30):
                    assert json.loads((await ws.receive()).data)["@type"] == "Response"
                assert await asyncio.to_thread(ms.putscript, "third", "discard;\r\n")
            finally:
                await asyncio.to_thread(ms.logout)
            async with asyncio.timeout(30):
                push = json.loads((await ws.receive()).data)
            assert push["@type"] == "StateChange" and set(push["changed"][aid]) == {"SieveScript"}
            assert push["changed"][aid]["SieveScript"] not in (s5, None)
            assert push["changed"][aid]["SieveScript"] == await state()

