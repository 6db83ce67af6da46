"""End to end under `mailsrv serve`: a delayed EmailSubmission waits in the outbound queue, survives a
restart of the whole server, is released at its sendAt (to a local user, through the queue runner),
and a second one is cancelled before its release and never sent."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from support.server import ServerProcess, mailsrv_cmd

USING = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail", "urn:ietf:params:jmap:submission"]
HOLD = 5  # seconds: longer than a restart of the server on a busy machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def token(config: Path, user: str) -> str:
    t = subprocess.run(mailsrv_cmd("token", "issue", user, "--scope", "mail", "--json", "-c", str(config)),
                       capture_output=True, text=True, check=True)
    return str(json.loads(t.stdout)["token"])


def queue(config: Path) -> list[dict[str, Any]]:
    p = subprocess.run(mailsrv_cmd("queue", "list", "--json", "-c", str(config)), capture_output=True, text=True,
                       check=True)
    return [json.loads(line) for line in p.stdout.splitlines() if line.strip()]


async def api(http: aiohttp.ClientSession, url: str, tok: str, *calls: list[Any]) -> list[Any]:
    async with http.post(url + "/jmap/api", json={"using": USING, "methodCalls": list(calls)},
                         headers={"Authorization": f"Bearer {tok}"}) as r:
        assert r.status == 200, await r.text()
        return list((await r.json())["methodResponses"])


def test_delayed_submission_survives_a_restart(tmp_path: Path) -> None:
    d = tmp_path / "s"
    subprocess.run(mailsrv_cmd("init", "--dir", str(d), "--any-port", "--workers", "1", "--hostname",
                               "mail.example.test", "--demo"), capture_output=True, text=True, check=True)
    config = d / "mailsrv.toml"
    # the queue hands local mail to the configured SMTP listener address: give it a real port (chosen
    # free now; the same after the restart)
    text = config.read_text()
    smtp = '[listener.smtp]\nprotocol = "smtp"\nbind = ["127.0.0.1:0"]'
    assert smtp in text
    config.write_text(text.replace(smtp, smtp.replace(":0", f":{free_port()}")))
    alice, bob = token(config, "alice@example.test"), token(config, "bob@example.test")
    server = ServerProcess(config).wait_ready()
    try:
        url = f"http://127.0.0.1:{server.ports['jmap']}"
        sub_ids, send_at = asyncio.run(_submit(url, alice, bob, config))
        assert server.stop() == 0
        held = [e for e in queue(config) if e["pending"] == ["bob@example.test"]]
        assert len(held) == 1 and held[0]["next_attempt"] >= send_at - 1  # on disk, still waiting
        server = ServerProcess(config).wait_ready()
        url = f"http://127.0.0.1:{server.ports['jmap']}"
        asyncio.run(_released(url, alice, bob, sub_ids, send_at,
                              lambda: f"queue: {queue(config)}\nlog:\n" + "\n".join(x for x in server.lines if "auth.ok" not in x)[-6000:]))
    finally:
        assert server.stop() == 0


async def _submit(url: str, alice: str, bob: str, config: Path) -> tuple[list[str], float]:
    async with aiohttp.ClientSession() as http:
        got = await api(http, url, alice, ["Identity/get", {"accountId": "A1"}, "i"],
                        ["Mailbox/get", {"accountId": "A1"}, "m"])
        ident = got[0][1]["list"][0]["id"]
        drafts = next(m["id"] for m in got[1][1]["list"] if m["role"] == "drafts")
        made = await api(http, url, alice, ["Email/set", {"accountId": "A1", "create": {
            k: {"mailboxIds": {drafts: True}, "from": [{"email": "alice@example.test"}],
                "to": [{"email": "bob@example.test"}], "subject": f"delayed {k}",
                "textBody": [{"partId": "t"}], "bodyValues": {"t": {"value": f"sent later ({k})"}}}
            for k in ("kept", "undone")}}, "e"])
        ids = {k: v["id"] for k, v in made[0][1]["created"].items()}
        env = {"mailFrom": {"email": "alice@example.test", "parameters": {"HOLDFOR": str(HOLD)}},
               "rcptTo": [{"email": "bob@example.test", "parameters": None}]}
        later = {**env, "mailFrom": {"email": "alice@example.test", "parameters": {"HOLDFOR": "600"}}}
        sub = await api(http, url, alice, ["EmailSubmission/set", {"accountId": "A1", "create": {
            "k": {"identityId": ident, "emailId": ids["kept"], "envelope": env},
            "u": {"identityId": ident, "emailId": ids["undone"], "envelope": later}}}, "s"])
        created = sub[0][1]["created"]
        assert created["k"]["undoStatus"] == created["u"]["undoStatus"] == "pending", sub
        send_at = datetime.fromisoformat(created["k"]["sendAt"].replace("Z", "+00:00")).timestamp()
        assert len(await asyncio.to_thread(queue, config)) == 2
        undo = await api(http, url, alice, ["EmailSubmission/set", {"accountId": "A1", "update": {
            created["u"]["id"]: {"undoStatus": "canceled"}}}, "u"])
        assert undo[0][1]["updated"] == {created["u"]["id"]: None}, undo
        assert [e["pending"] for e in await asyncio.to_thread(queue, config)] == [["bob@example.test"]]
        # nothing reached bob yet
        got = await api(http, url, bob, ["Email/query", {"accountId": "A2", "filter": {"subject": "delayed"}}, "q"])
        assert got[0][1]["ids"] == []
        return [created["k"]["id"], created["u"]["id"]], send_at


async def _released(url: str, alice: str, bob: str, sub_ids: list[str], send_at: float,
                    diag: Callable[[], str]) -> None:
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + HOLD + 60
        while True:  # poll with a deadline until the queue runner has released it to bob
            got = await api(http, url, bob, ["Email/query", {"accountId": "A2", "filter": {"subject": "delayed"}}, "q"],
                            ["Email/get", {"accountId": "A2", "#ids": {"resultOf": "q", "name": "Email/query",
                                                                        "path": "/ids"}, "properties": ["subject"]}, "g"])
            if got[0][1]["ids"]:
                break
            assert time.monotonic() < deadline, "the delayed message never arrived\n" + diag()
            await asyncio.sleep(0.25)
        assert time.time() >= send_at - 1  # not before its release
        assert [e["subject"] for e in got[1][1]["list"]] == ["delayed kept"]
        subs = await api(http, url, alice, ["EmailSubmission/get", {"accountId": "A1", "ids": sub_ids}, "g"])
        assert [s["undoStatus"] for s in subs[0][1]["list"]] == ["final", "canceled"]
