"""End to end: `mailsrv serve` (2 workers) with the jmap/jmaps listeners, SMTP delivery and IMAP beside them."""

from __future__ import annotations

import asyncio
import base64
import imaplib
import json
import re
import smtplib
import ssl
import subprocess
import time
from pathlib import Path

import aiohttp
from support.server import ServerProcess, mailsrv_cmd

USING = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail", "urn:ietf:params:jmap:submission"]


def setup(tmp: Path) -> tuple[Path, str, str, str]:
    d = tmp / "s"
    p = subprocess.run(mailsrv_cmd("init", "--dir", str(d), "--any-port", "--workers", "2", "--hostname",
                                   "mail.example.test", "--demo"), capture_output=True, text=True, check=True)
    password = re.search(r"demo user alice@example.test password (\S+)", p.stdout + p.stderr)
    bob = re.search(r"demo user bob@example.test password (\S+)", p.stdout + p.stderr)
    assert password is not None and bob is not None
    config = d / "mailsrv.toml"
    t = subprocess.run(mailsrv_cmd("token", "issue", "alice@example.test", "--scope", "mail", "--json", "-c",
                                   str(config)), capture_output=True, text=True, check=True)
    return config, password.group(1), json.loads(t.stdout)["token"], bob.group(1)


async def api(http: aiohttp.ClientSession, url: str, headers: dict[str, str], *calls: list) -> list:  # type: ignore[type-arg]
    async with http.post(url + "/jmap/api", json={"using": USING, "methodCalls": list(calls)}, headers=headers) as r:
        assert r.status == 200, await r.text()
        return list((await r.json())["methodResponses"])


def test_jmap_under_mailsrv_serve(tmp_path: Path) -> None:
    config, password, token, bob = setup(tmp_path)
    server = ServerProcess(config).wait_ready()
    try:
        asyncio.run(_scenario(server, config, password, token, bob))
    finally:
        assert server.stop() == 0


async def _scenario(server: ServerProcess, config: Path, password: str, token: str, bob: str) -> None:
    plain = f"http://127.0.0.1:{server.ports['jmap']}"
    secure = f"https://127.0.0.1:{server.ports['jmaps']}"
    bearer = {"Authorization": f"Bearer {token}"}
    basic = {"Authorization": "Basic " + base64.b64encode(f"alice@example.test:{password}".encode()).decode()}
    tls = ssl.create_default_context(cafile=str(config.parent / "tls" / "cert.pem"))
    tls.check_hostname = False
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as http:
        # HTTPS + Basic: the session resource
        async with http.get(secure + "/jmap/session", headers=basic) as r:
            assert r.status == 200, await r.text()
            session = await r.json()
        account = session["primaryAccounts"]["urn:ietf:params:jmap:mail"]
        assert session["apiUrl"] == secure + "/jmap/api"
        # plain HTTP refuses a password (no TLS, plaintext_loopback off) but takes the bearer token
        async with http.get(plain + "/jmap/session", headers=basic) as r:
            assert r.status == 401
        got = await api(http, plain, bearer, ["Mailbox/get", {"accountId": account}, "m"],
                        ["Email/get", {"accountId": account, "ids": []}, "e"])
        inbox = next(m["id"] for m in got[0][1]["list"] if m["role"] == "inbox")
        state0 = got[1][1]["state"]
        # push: an SMTP delivery reaches the EventSource client
        es = await http.get(plain + "/jmap/eventsource?types=Email&closeafter=state&ping=0", headers=bearer)
        assert es.status == 200
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
            s.sendmail("someone@outside.test", ["alice@example.test"],
                       b"From: someone@outside.test\r\nTo: alice@example.test\r\nSubject: pushed\r\n"
                       b"Message-ID: <push1@outside.test>\r\n\r\nhello over smtp\r\n")
            t250 = time.monotonic()
        async with asyncio.timeout(10):
            body = (await es.read()).decode()
        latency = time.monotonic() - t250
        es.close()
        assert "event: state" in body and '"Email"' in body
        assert latency < 2.0, latency
        ch = await api(http, plain, bearer, ["Email/changes", {"accountId": account, "sinceState": state0}, "c"],
                       ["Email/get", {"accountId": account, "#ids": {"resultOf": "c", "name": "Email/changes",
                                                                      "path": "/created"},
                                      "properties": ["subject", "mailboxIds", "keywords"]}, "g"])
        assert len(ch[0][1]["created"]) == 1
        email = ch[1][1]["list"][0]
        assert email["subject"] == "pushed" and email["mailboxIds"] == {inbox: True} and email["keywords"] == {}
        state1 = ch[0][1]["newState"]
        # IMAP STORE on the same message: JMAP /changes reports exactly that email
        imap = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=tls)
        try:
            imap.login("alice@example.test", password)
            imap.select("INBOX")
            typ, _ = imap.store("1", "+FLAGS", "(\\Flagged)")
            assert typ == "OK"
        finally:
            imap.logout()
        ch = await api(http, plain, bearer, ["Email/changes", {"accountId": account, "sinceState": state1}, "c"],
                       ["Email/get", {"accountId": account, "ids": [email["id"]], "properties": ["keywords"]}, "g"])
        assert ch[0][1]["updated"] == [email["id"]] and ch[0][1]["created"] == []
        assert ch[1][1]["list"][0]["keywords"] == {"$flagged": True}
        # JMAP sets $seen: IMAP FETCH FLAGS sees \\Seen
        await api(http, secure, basic, ["Email/set", {"accountId": account, "update": {email["id"]: {"keywords/$seen": True}}}, "s"])
        imap = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=tls)
        try:
            imap.login("alice@example.test", password)
            imap.select("INBOX")
            typ, data = imap.fetch("1", "(FLAGS)")
            assert typ == "OK" and b"\\Seen" in data[0] and b"\\Flagged" in data[0]
        finally:
            imap.logout()
        # EmailSubmission to a local user: bob finds it in his INBOX (over JMAP, HTTPS + Basic)
        sent = await api(http, plain, bearer,
                         ["Identity/get", {"accountId": account}, "i"],
                         ["Email/set", {"accountId": account, "create": {"d": {
                             "mailboxIds": {inbox: True}, "from": [{"email": "alice@example.test"}],
                             "to": [{"email": "bob@example.test"}], "subject": "from jmap",
                             "textBody": [{"partId": "t"}], "bodyValues": {"t": {"value": "hi bob"}}}}}, "e"])
        ident = sent[0][1]["list"][0]["id"]
        sub = await api(http, plain, bearer, ["EmailSubmission/set", {"accountId": account, "create": {"s": {
            "identityId": ident, "emailId": sent[1][1]["created"]["d"]["id"]}}}, "s"])
        assert sub[0][1]["created"] is not None, sub
        got_sub = await api(http, plain, bearer, ["EmailSubmission/get", {"accountId": account}, "g"])
        assert got_sub[0][1]["list"][0]["deliveryStatus"]["bob@example.test"]["delivered"] == "yes"
        bob_auth = {"Authorization": "Basic " + base64.b64encode(f"bob@example.test:{bob}".encode()).decode()}
        async with http.get(secure + "/jmap/session", headers=bob_auth) as r:
            bob_account = (await r.json())["primaryAccounts"]["urn:ietf:params:jmap:mail"]
        got = await api(http, secure, bob_auth,
                        ["Email/query", {"accountId": bob_account, "filter": {"subject": "from jmap"}}, "q"],
                        ["Email/get", {"accountId": bob_account, "#ids": {"resultOf": "q", "name": "Email/query",
                                                                           "path": "/ids"},
                                       "properties": ["subject", "from"]}, "g"])
        assert [e["subject"] for e in got[1][1]["list"]] == ["from jmap"]
        assert got[1][1]["list"][0]["from"] == [{"name": None, "email": "alice@example.test"}]


class _Sink:
    """An SMTP sink on 127.0.0.1 (aiosmtpd) in its own loop thread: the outbound queue's smarthost."""

    def __init__(self, handler: object = None) -> None:
        """``handler``: an aiosmtpd handler of the caller's (default: record every message, 250)."""
        import threading

        from aiosmtpd.smtp import SMTP

        self.received: list[tuple[str, list[str], bytes]] = []
        self.got = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        sink = self

        class Handler:
            async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
                sink.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))  # type: ignore[attr-defined]
                sink.got.set()
                return "250 2.0.0 sunk"

        async def start() -> asyncio.Server:
            return await self.loop.create_server(lambda: SMTP(handler or Handler(), hostname="sink.test"),
                                                 "127.0.0.1", 0)

        self.server = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        self.port = self.server.sockets[0].getsockname()[1]

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def test_email_submission_to_an_outside_sink(tmp_path: Path) -> None:
    sink = _Sink()
    try:
        config, _password, token, _bob = setup(tmp_path)
        with config.open("a") as f:
            f.write(f'\n[queue]\nretry_schedule = [0.05]\ndkim_sign = false\n'
                    f'[queue.route."remote.test"]\nsmarthost = "127.0.0.1:{sink.port}"\ntls = "none"\n')
        server = ServerProcess(config).wait_ready()
        try:
            asyncio.run(_submit_outside(server, token))
            assert sink.got.wait(30), "the sink received nothing"
        finally:
            assert server.stop() == 0
        mail_from, rcpts, content = sink.received[0]
        assert mail_from == "alice@example.test" and rcpts == ["carol@remote.test"]
        assert b"Subject: to the outside" in content and b"Bcc:" not in content
    finally:
        sink.close()


async def _submit_outside(server: ServerProcess, token: str) -> None:
    plain = f"http://127.0.0.1:{server.ports['jmap']}"
    bearer = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(plain + "/jmap/session", headers=bearer) as r:
            account = (await r.json())["primaryAccounts"]["urn:ietf:params:jmap:mail"]
        got = await api(http, plain, bearer, ["Mailbox/get", {"accountId": account}, "m"],
                        ["Identity/get", {"accountId": account}, "i"])
        drafts = next(m["id"] for m in got[0][1]["list"] if m["role"] == "drafts")
        ident = got[1][1]["list"][0]["id"]
        r = await api(http, plain, bearer,
                      ["Email/set", {"accountId": account, "create": {"d": {
                          "mailboxIds": {drafts: True}, "from": [{"email": "alice@example.test"}],
                          "to": [{"email": "carol@remote.test"}], "bcc": [{"email": "dave@remote.test"}],
                          "subject": "to the outside", "textBody": [{"partId": "t"}],
                          "bodyValues": {"t": {"value": "hello out there"}}}}}, "e"],
                      ["EmailSubmission/set", {"accountId": account, "create": {"s": {
                          "identityId": ident, "emailId": "#d",
                          "envelope": {"mailFrom": {"email": "alice@example.test"},
                                       "rcptTo": [{"email": "carol@remote.test"}]}}},
                          "onSuccessDestroyEmail": ["#s"]}, "s"])
        assert r[1][1]["created"] is not None, r
        assert r[2][0] == "Email/set" and r[2][1]["destroyed"] == [r[0][1]["created"]["d"]["id"]]
        status = await api(http, plain, bearer, ["EmailSubmission/get", {"accountId": account}, "g"])
        # "queued" until the runner's attempt, then "yes" (deliveryStatus follows the queue)
        assert status[0][1]["list"][0]["deliveryStatus"]["carol@remote.test"]["delivered"] in ("queued", "yes")
