"""EmailSubmission deliveryStatus follows the outbound queue (RFC 8621 §7, §7.1), end to end under
`mailsrv serve`: the real queue runner hands mail to an aiosmtpd sink on 127.0.0.1 that accepts one
recipient, refuses another with a 550, and answers 451 to a third until the test lets it through;
a delayed send is pending, then final and delivered after its release. The bounce that reaches the
sender is in the submission's dsnBlobIds, a read receipt (MDN) over SMTP in its mdnBlobIds."""

from __future__ import annotations

import asyncio
import json
import smtplib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import test_serve
from support.server import ServerProcess

USING = test_serve.USING
OK, BAD, SLOW, LATER = "ok@remote.test", "bad@remote.test", "slow@remote.test", "later@remote.test"
BOB = "bob@example.test"
REFUSAL = "550 5.1.1 <bad@remote.test>: no such user here"
DEFERRAL = "451 4.3.0 greylisted, try again later"


class ScriptedSink(test_serve._Sink):
    """test_serve's sink with a handler that answers 550 for BAD, 451 for SLOW until ``let_slow``."""

    def __init__(self) -> None:
        self.slow_refused = threading.Event()
        self.let_slow = threading.Event()
        sink = self

        class Handler:
            async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                                  options: list[str]) -> str:
                if address == BAD:
                    return REFUSAL
                if address == SLOW and not sink.let_slow.is_set():
                    sink.slow_refused.set()
                    return DEFERRAL
                envelope.rcpt_tos.append(address)
                return "250 2.1.5 ok"

            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                sink.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
                return f"250 2.0.0 sunk for {','.join(envelope.rcpt_tos)}"

        super().__init__(Handler())


def test_delivery_status_follows_the_queue(tmp_path: Path) -> None:
    sink = ScriptedSink()
    try:
        config, _password, token, _bob = test_serve.setup(tmp_path)
        with config.open("a") as f:
            f.write(f'\n[queue]\nretry_schedule = [0.2]\ndkim_sign = false\n'
                    f'[queue.route."remote.test"]\nsmarthost = "127.0.0.1:{sink.port}"\ntls = "none"\n')
        server = ServerProcess(config).wait_ready()
        try:
            asyncio.run(_scenario(f"http://127.0.0.1:{server.ports['jmap']}", token, sink,
                                  lambda: "\n".join(server.lines[-40:]), server.ports["smtp"]))
        finally:
            assert server.stop() == 0
    finally:
        sink.close()


async def _until(http: aiohttp.ClientSession, url: str, bearer: dict[str, str], sid: str,
                 done: Callable[[dict[str, Any]], bool], diag: Callable[[], str]) -> tuple[dict[str, Any], str]:
    """Poll EmailSubmission/get with a deadline until ``done(submission)``; returns it and the state."""
    deadline = time.monotonic() + 60
    while True:
        got = await test_serve.api(http, url, bearer, ["EmailSubmission/get", {"accountId": "A1", "ids": [sid]}, "g"])
        sub = got[0][1]["list"][0]
        if done(sub):
            return sub, got[0][1]["state"]
        assert time.monotonic() < deadline, f"submission never reached the expected status: {sub}\n{diag()}"
        await asyncio.sleep(0.1)


async def _next_event(es: aiohttp.ClientResponse) -> dict[str, Any]:
    """The next ``state`` event of an EventSource stream (RFC 8620 §7.3)."""
    event = ""
    while True:
        line = (await es.content.readline()).decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == "state":
            return dict(json.loads(line[6:]))


def _mdn(message_id: str, reader: str) -> bytes:
    """A read receipt (RFC 8098) from ``reader`` for the message ``message_id``."""
    return (f"From: <{reader}>\r\nTo: <alice@example.test>\r\nSubject: Read: held\r\n"
            "MIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=disposition-notification; boundary="b"\r\n\r\n'
            "--b\r\nContent-Type: text/plain\r\n\r\nDisplayed.\r\n"
            "--b\r\nContent-Type: message/disposition-notification\r\n\r\n"
            f"Final-Recipient: rfc822;{reader}\r\nOriginal-Message-ID: <{message_id}>\r\n"
            "Disposition: manual-action/MDN-sent-manually; displayed\r\n--b--\r\n").encode()


async def _scenario(url: str, token: str, sink: ScriptedSink, diag: Callable[[], str], smtp_port: int) -> None:
    bearer = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        got = await test_serve.api(http, url, bearer, ["Mailbox/get", {"accountId": "A1"}, "m"],
                                   ["Identity/get", {"accountId": "A1"}, "i"])
        drafts = next(m["id"] for m in got[0][1]["list"] if m["role"] == "drafts")
        ident = got[1][1]["list"][0]["id"]

        async def submit(subject: str, rcpts: list[str], params: dict[str, str] | None = None) -> dict[str, Any]:
            r = await test_serve.api(http, url, bearer, ["Email/set", {"accountId": "A1", "create": {"d": {
                "mailboxIds": {drafts: True}, "from": [{"email": "alice@example.test"}],
                "to": [{"email": a} for a in rcpts], "subject": subject, "textBody": [{"partId": "t"}],
                "bodyValues": {"t": {"value": subject}}}}}, "e"],
                ["EmailSubmission/set", {"accountId": "A1", "create": {"s": {
                    "identityId": ident, "emailId": "#d",
                    "envelope": {"mailFrom": {"email": "alice@example.test", "parameters": params},
                                 "rcptTo": [{"email": a} for a in rcpts]}}}}, "s"])
            assert r[1][1]["created"] is not None, r
            return dict(r[1][1]["created"]["s"])

        # 1. delivered by the remote MX: "yes" with the sink's own reply; refused: "no" with its 550
        first = await submit("accepted and refused", [OK, BAD])
        sub, state = await _until(http, url, bearer, first["id"],
                                  lambda s: all(v["delivered"] != "queued" for v in s["deliveryStatus"].values()), diag)
        ds = sub["deliveryStatus"]
        assert ds[OK]["delivered"] == "yes" and ds[OK]["smtpReply"] == f"250 2.0.0 sunk for {OK}", ds
        assert ds[BAD] == {"delivered": "no", "smtpReply": REFUSAL, "displayed": "unknown"}, ds
        assert sub["undoStatus"] == "final"
        # the state moved when the outcome arrived (created, then updated), and the bounce reached alice
        ch = await test_serve.api(http, url, bearer,
                                  ["EmailSubmission/changes", {"accountId": "A1", "sinceState": "0"}, "c"])
        assert ch[0][1]["created"] == [first["id"]] and ch[0][1]["newState"] == state and int(state) >= 2
        deadline = time.monotonic() + 60
        while True:
            q = await test_serve.api(http, url, bearer, ["Email/query", {"accountId": "A1", "filter": {
                "from": "MAILER-DAEMON", "body": "no such user here"}}, "q"])
            if q[0][1]["ids"]:
                break
            assert time.monotonic() < deadline, "no bounce in alice's mailbox\n" + diag()
            await asyncio.sleep(0.1)
        bounce = await test_serve.api(http, url, bearer, ["Email/get", {"accountId": "A1", "ids": q[0][1]["ids"],
                                                                        "properties": ["blobId"]}, "b"])
        got = await test_serve.api(http, url, bearer, ["EmailSubmission/get", {"accountId": "A1", "ids": [first["id"]]}, "g"])
        assert got[0][1]["list"][0]["dsnBlobIds"] == [bounce[0][1]["list"][0]["blobId"]]
        assert got[0][1]["list"][0]["mdnBlobIds"] == []

        # 2. 451 then 250: "queued" with the 451 while the queue retries, then "yes"
        second = await submit("greylisted", [SLOW])
        sub, queued_state = await _until(http, url, bearer, second["id"],
                                         lambda s: s["deliveryStatus"][SLOW]["smtpReply"] == DEFERRAL, diag)
        assert sub["deliveryStatus"][SLOW]["delivered"] == "queued" and sink.slow_refused.is_set()
        # the outcome change is pushed (EventSource) without any request asking for it
        async with http.get(url + "/jmap/eventsource?types=EmailSubmission&closeafter=no&ping=0",
                            headers=bearer) as es:
            assert es.status == 200
            first_event = await _next_event(es)
            assert first_event["changed"]["A1"] == {"EmailSubmission": queued_state}, first_event
            sink.let_slow.set()
            pushed = await asyncio.wait_for(_next_event(es), 60)
        assert set(pushed["changed"]) == {"A1"} and set(pushed["changed"]["A1"]) == {"EmailSubmission"}
        assert int(pushed["changed"]["A1"]["EmailSubmission"]) > int(queued_state)
        got = await test_serve.api(http, url, bearer, ["EmailSubmission/get", {"accountId": "A1", "ids": [second["id"]]}, "g"])
        sub = got[0][1]["list"][0]
        assert got[0][1]["state"] == pushed["changed"]["A1"]["EmailSubmission"]
        assert sub["deliveryStatus"][SLOW]["delivered"] == "yes"
        assert sub["deliveryStatus"][SLOW]["smtpReply"] == f"250 2.0.0 sunk for {SLOW}"
        ch = await test_serve.api(http, url, bearer,
                                  ["EmailSubmission/changes", {"accountId": "A1", "sinceState": queued_state}, "c"])
        assert ch[0][1]["updated"] == [second["id"]] and ch[0][1]["created"] == []

        # 3. a delayed send: pending and queued until its release, then final and delivered
        #    (the local recipient through our own smtp listener, on the port the kernel chose)
        third = await submit("held for a moment", [LATER, BOB], {"HOLDFOR": "2"})
        assert third["undoStatus"] == "pending"
        got = await test_serve.api(http, url, bearer, ["EmailSubmission/get", {"accountId": "A1", "ids": [third["id"]]}, "g"])
        assert {v["delivered"] for v in got[0][1]["list"][0]["deliveryStatus"].values()} == {"queued"}
        assert not any(LATER in rcpts for _, rcpts, _ in sink.received)
        sub, _ = await _until(http, url, bearer, third["id"],
                              lambda s: all(v["delivered"] != "queued" for v in s["deliveryStatus"].values()), diag)
        assert sub["undoStatus"] == "final" and sub["deliveryStatus"][LATER]["delivered"] == "yes"
        assert sub["deliveryStatus"][LATER]["smtpReply"] == f"250 2.0.0 sunk for {LATER}"
        assert sub["deliveryStatus"][BOB]["delivered"] == "yes", sub
        assert sub["deliveryStatus"][BOB]["smtpReply"].startswith("250 "), sub
        assert any(rcpts == [LATER] for _, rcpts, _ in sink.received)

        # 4. bob's read receipt for the third message: in mdnBlobIds, and displayed "yes" for bob
        got = await test_serve.api(http, url, bearer, ["Email/get", {"accountId": "A1", "ids": [sub["emailId"]],
                                                                     "properties": ["messageId"]}, "e"])
        [message_id] = got[0][1]["list"][0]["messageId"]
        with smtplib.SMTP("127.0.0.1", smtp_port) as c:
            c.sendmail(BOB, ["alice@example.test"], _mdn(message_id, BOB))
        sub, _ = await _until(http, url, bearer, third["id"], lambda s: bool(s["mdnBlobIds"]), diag)
        assert sub["deliveryStatus"][BOB]["displayed"] == "yes", sub
        assert sub["deliveryStatus"][LATER]["displayed"] == "unknown" and sub["dsnBlobIds"] == []
