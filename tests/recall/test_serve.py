"""Recall under a real ``mailsrv serve`` (2 workers): mail sent with smtplib (submission, AUTH) to a direct
recipient, a Bcc recipient, an alias, a group and the catch-all; IMAP, POP3 and JMAP clients see the result.
"""

from __future__ import annotations

import asyncio
import imaplib
import json
import poplib
import re
import smtplib
import subprocess
import time
from email.message import EmailMessage
from typing import Any

import aiohttp
import pytest
from support.admin import call, cli
from support.server import init_setup, mailsrv_cmd, serve_users

D = "example.test"
USERS = ("carol", "dave", "erin", "frank", "grace")
PW = "recall test password"
BODY = "line of a message that is long enough to show in the quota\n" * 400  # ~24 KB


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("recall")
    cfg = init_setup(base / "s", "--demo", workers=2)
    users = dict(re.findall(r"demo user (\S+) password (\S+)", (base / "s" / "demo-users.txt").read_text()))
    for name in USERS:
        p = subprocess.run(mailsrv_cmd("user", "add", f"{name}@{D}", "--password-stdin", "--quota", "500M",
                                       "-c", str(cfg)), input=PW + "\n", capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        users[f"{name}@{D}"] = PW
    cli(cfg, "alias", "add", f"dave.alias@{D}", f"dave@{D}")
    cli(cfg, "group", "add", f"team@{D}")
    for name in ("erin", "frank"):
        cli(cfg, "group", "member", "add", f"team@{D}", f"{name}@{D}")
    cli(cfg, "domain", "set", D, "--catchall", f"grace@{D}")
    srv = serve_users(cfg, users)
    yield srv
    assert srv.stop() == 0


def send(srv: Any, sender: str, msgid: str, subject: str, rcpts: list[str], *, to: str, cc: str) -> None:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Cc"] = cc
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{msgid}>"
    msg.set_content(BODY)
    with smtplib.SMTP_SSL("127.0.0.1", srv.ports["submissions"], context=srv.ctx, timeout=30) as s:
        s.login(sender, srv.users[sender])
        s.send_message(msg, from_addr=sender, to_addrs=rcpts)
    # the sender's client keeps its copy in Sent, as clients do (without the Bcc recipients)
    with imap(srv, sender) as m:
        typ, _ = m.append("Sent", "(\\Seen)", None, msg.as_bytes().replace(b"\n", b"\r\n"))
        assert typ == "OK"


class imap:  # a context manager used like a function
    def __init__(self, srv: Any, user: str) -> None:
        self.m = imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=srv.ctx, timeout=30)
        self.m.login(user, srv.users[user])

    def __enter__(self) -> imaplib.IMAP4_SSL:
        return self.m

    def __exit__(self, *exc: object) -> None:
        try:
            self.m.logout()
        except (imaplib.IMAP4.abort, OSError):
            pass


def subjects(srv: Any, user: str) -> list[str]:
    """Subjects of the user's INBOX over IMAP (EXAMINE: nothing becomes \\Seen)."""
    with imap(srv, user) as m:
        m.select("INBOX", readonly=True)
        typ, data = m.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        if typ != "OK" or data == [None]:
            return []
        return [part[1].decode().split(":", 1)[1].strip() for part in data if isinstance(part, tuple)]


def wait_inboxes(srv: Any, users: list[str], subject: str) -> None:
    deadline = time.monotonic() + 30
    for u in users:
        while subject not in subjects(srv, u):
            assert time.monotonic() < deadline, f"{subject!r} never reached {u}"


def storage_used(srv: Any, user: str) -> int:
    with imap(srv, user) as m:
        typ, data = m.getquotaroot("INBOX")
        assert typ == "OK", data
        text = b" ".join(x for x in data[1] if isinstance(x, bytes)).decode()  # type: ignore[index]
        found = re.search(r"STORAGE (\d+) ", text)
        assert found, text
        return int(found.group(1))


def recall_cli(srv: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(mailsrv_cmd("recall", *args, "-c", str(srv.cfg)), capture_output=True, text=True,
                          timeout=120)


def pop3_subjects(srv: Any, user: str) -> list[str]:
    p = poplib.POP3_SSL("127.0.0.1", srv.ports["pop3s"], context=srv.ctx, timeout=30)
    try:
        p.user(user)
        p.pass_(srv.users[user])
        out = []
        for n in range(1, len(p.list()[1]) + 1):
            head = b"\n".join(p.top(n, 0)[1]).decode()
            out.append(re.search(r"(?m)^Subject: (.*)$", head).group(1))  # type: ignore[union-attr]
        return out
    finally:
        p.quit()


async def jmap_subjects(srv: Any, token: str) -> list[str]:
    url = f"http://127.0.0.1:{srv.ports['jmap']}"
    hdr = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/jmap/session", headers=hdr) as r:
            account = (await r.json())["primaryAccounts"]["urn:ietf:params:jmap:mail"]
        body = {"using": ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"], "methodCalls": [
            ["Email/query", {"accountId": account}, "q"],
            ["Email/get", {"accountId": account, "#ids": {"resultOf": "q", "name": "Email/query", "path": "/ids"},
                           "properties": ["subject"]}, "g"]]}
        async with http.post(url + "/jmap/api", json=body, headers=hdr) as r:
            assert r.status == 200
            return [e["subject"] for e in (await r.json())["methodResponses"][1][1]["list"]]


def test_recall_over_every_protocol(server: Any) -> None:
    alice = f"alice@{D}"
    rcpts = [f"bob@{D}", f"dave.alias@{D}", f"team@{D}", f"carol@{D}", f"lost@{D}"]  # carol: Bcc; lost: catch-all
    send(server, alice, "recall-1@example.test", "Quarterly numbers", rcpts,
         to=f"bob@{D}, dave.alias@{D}", cc=f"team@{D}, partner@outside.test")
    everyone = [f"{u}@{D}" for u in ("bob", *USERS)]
    wait_inboxes(server, everyone, "Quarterly numbers")
    frank_before = storage_used(server, f"frank@{D}")
    # bob reads it before the recall (FETCH BODY[] sets \Seen)
    with imap(server, f"bob@{D}") as m:
        m.select("INBOX")
        typ, _ = m.fetch("1", "(BODY[])")
        assert typ == "OK"
    # someone else cannot recall alice's message: nothing found, nothing removed
    p = recall_cli(server, f"bob@{D}", "<recall-1@example.test>")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "no local copy" in p.stdout
    assert "Quarterly numbers" in subjects(server, f"carol@{D}")
    # erin waits in IDLE: the recall's expunge reaches her session
    idler = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=server.ctx, timeout=30)
    idler.login(f"erin@{D}", PW)
    idler.select("INBOX")
    tag = idler._new_tag().decode()  # type: ignore[attr-defined]
    idler.send(f"{tag} IDLE\r\n".encode())
    assert idler.readline().startswith(b"+")
    carol_token = json.loads(cli(server.cfg, "token", "issue", f"carol@{D}", "--scope", "mail", "--json"))["token"]

    p = recall_cli(server, alice, "recall-1@example.test")
    assert p.returncode == 0, p.stdout + p.stderr
    got = dict(line.split(": ", 1) for line in p.stdout.splitlines())
    assert got == {f"bob@{D}": "read", f"carol@{D}": "recalled", f"dave@{D}": "recalled",
                   f"erin@{D}": "recalled", f"frank@{D}": "recalled", f"grace@{D}": "recalled",
                   "partner@outside.test": "external"}, p.stdout

    idler.sock.settimeout(30)
    line = idler.readline()
    while b"EXPUNGE" not in line:
        assert line, "the IDLE session was closed"
        line = idler.readline()
    assert line.strip() == b"* 1 EXPUNGE"
    idler.send(b"DONE\r\n")
    idler.logout()

    notice = "Recall: Quarterly numbers"
    for u in (f"carol@{D}", f"dave@{D}", f"erin@{D}", f"frank@{D}", f"grace@{D}"):
        assert subjects(server, u) == [notice], u
    assert subjects(server, f"bob@{D}") == ["Quarterly numbers"]  # read: left, and no notice
    assert pop3_subjects(server, f"dave@{D}") == [notice]
    assert asyncio.run(jmap_subjects(server, carol_token)) == [notice]
    # the 24 KB copy left frank's quota; the notice is far smaller
    assert storage_used(server, f"frank@{D}") < frank_before - 20
    # alice's own copy (Sent) is never touched
    with imap(server, alice) as m:
        typ, data = m.select("Sent", readonly=True)
        assert typ == "OK" and data == [b"1"]

    # again: nothing left to recall (exit 1); bob's copy is still read
    p = recall_cli(server, alice, "recall-1@example.test")
    assert p.returncode == 1, p.stdout
    assert f"bob@{D}: read" in p.stdout and f"carol@{D}: recalled" not in p.stdout
    # operator errors: exit 2, one line
    p = recall_cli(server, f"nobody@{D}", "recall-1@example.test")
    assert p.returncode == 2 and "no local user" in p.stderr
    assert "incomplete" not in p.stderr and "incomplete" not in recall_cli(server, f"bob@{D}", "x@y").stderr


def test_cli_says_when_max_accounts_cut_the_scan_short(server: Any) -> None:
    send(server, f"bob@{D}", "recall-5@example.test", "Cut short", [f"grace@{D}"], to=f"grace@{D}", cc="")
    wait_inboxes(server, [f"grace@{D}"], "Cut short")
    short = server.cfg.parent / "short.toml"  # the same server, a recall that looks at one account only
    short.write_text(server.cfg.read_text() + "\n[recall]\nmax_accounts = 1\n")
    p = subprocess.run(mailsrv_cmd("recall", f"bob@{D}", "recall-5@example.test", "--json", "-c", str(short)),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "recalled" not in p.stdout, p
    assert "warning: incomplete" in p.stderr and "max_accounts = 1" in p.stderr, p.stderr
    assert "Cut short" in subjects(server, f"grace@{D}")  # grace's account was not reached


def test_admin_api_recall_scope(server: Any) -> None:
    cfg = server.cfg
    cli(cfg, "domain", "add", "other.test")
    cli(cfg, "user", "add", "olga@other.test", "--no-password")
    cli(cfg, "admin", "grant", "olga@other.test", "domain", "other.test")
    cli(cfg, "admin", "grant", f"carol@{D}", "domain", D)
    olga = json.loads(cli(cfg, "token", "issue", "olga@other.test", "--scope", "admin", "--json"))["token"]
    carol = json.loads(cli(cfg, "token", "issue", f"carol@{D}", "--scope", "admin", "--json"))["token"]
    send(server, f"bob@{D}", "recall-2@example.test", "Draft plan", [f"erin@{D}"], to=f"erin@{D}", cc="")
    wait_inboxes(server, [f"erin@{D}"], "Draft plan")
    port = server.ports["admin"]
    body = {"sender": f"bob@{D}", "message_id": "<recall-2@example.test>"}
    assert call(port, "POST", "/recall", None, body)[0] == 401
    status, problem = call(port, "POST", "/recall", olga, body)
    assert status == 403, problem
    assert "Draft plan" in subjects(server, f"erin@{D}")
    assert call(port, "POST", "/recall", carol, {"sender": f"bob@{D}"})[0] == 400
    status, out = call(port, "POST", "/recall", carol, body)
    assert status == 200, out
    assert isinstance(out, dict)
    assert [(r["recipient"], r["status"]) for r in out["results"]] == [(f"erin@{D}", "recalled")]
    assert out["truncated"] is False  # every account was looked at
    assert "Draft plan" not in subjects(server, f"erin@{D}")
    status, doc = call(port, "GET", "/openapi.json")
    assert status == 200 and isinstance(doc, dict) and "post" in doc["paths"]["/api/v1/recall"]



async def jmap_calls(srv: Any, token: str, *calls: list) -> tuple[dict, list]:  # type: ignore[type-arg]
    url = f"http://127.0.0.1:{srv.ports['jmap']}"
    hdr = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/jmap/session", headers=hdr) as r:
            session = await r.json()
        account = session["primaryAccounts"]["urn:ietf:params:jmap:mail"]
        body = {"using": ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail", "urn:mailsrv:recall"],
                "methodCalls": [[name, {"accountId": account, **args}, cid] for name, args, cid in calls]}
        async with http.post(url + "/jmap/api", json=body, headers=hdr) as r:
            assert r.status == 200, await r.text()
            return session, (await r.json())["methodResponses"]


def test_jmap_email_recall(server: Any) -> None:
    carol = f"carol@{D}"
    send(server, carol, "recall-3@example.test", "Wrong attachment", [f"grace@{D}", f"erin@{D}"],
         to=f"grace@{D}, erin@{D}", cc="")
    send(server, f"erin@{D}", "recall-4@example.test", "For carol", [carol], to=carol, cc="")
    wait_inboxes(server, [f"grace@{D}", f"erin@{D}"], "Wrong attachment")
    wait_inboxes(server, [carol], "For carol")
    token = json.loads(cli(server.cfg, "token", "issue", carol, "--scope", "mail", "--json"))["token"]
    session, resp = asyncio.run(jmap_calls(server, token, ["Mailbox/get", {}, "m"]))
    assert "urn:mailsrv:recall" in session["capabilities"]
    assert "urn:mailsrv:recall" in session["accounts"][session["primaryAccounts"]["urn:ietf:params:jmap:mail"]][
        "accountCapabilities"]
    boxes = {m["role"]: m["id"] for m in resp[0][1]["list"]}
    _, resp = asyncio.run(jmap_calls(
        server, token,
        ["Email/query", {"filter": {"inMailbox": boxes["sent"], "subject": "Wrong attachment"}}, "s"],
        ["Email/query", {"filter": {"inMailbox": boxes["inbox"], "subject": "For carol"}}, "i"]))
    [sent_id] = resp[0][1]["ids"]
    inbox_ids = resp[1][1]["ids"]
    assert len(inbox_ids) == 1  # erin's message: carol received it, did not send it
    _, resp = asyncio.run(jmap_calls(server, token, ["Email/recall", {"emailIds": [sent_id, inbox_ids[0]]}, "r"]))
    name, out, _ = resp[0]
    assert name == "Email/recall", out
    assert sorted((r["recipient"], r["status"]) for r in out["recalled"][sent_id]) == [
        (f"erin@{D}", "recalled"), (f"grace@{D}", "recalled")]
    # a recipient's folder names are theirs: the sender learns who and what, not where
    assert all(set(r) == {"recipient", "status"} for r in out["recalled"][sent_id]), out
    assert out["truncated"] == []  # no scan was cut short by [recall] max_accounts
    assert out["notRecalled"] == {inbox_ids[0]: {
        "type": "notFound", "description": "not an Email of your Sent mailbox with a Message-ID"}}
    assert "Wrong attachment" not in subjects(server, f"grace@{D}")
    assert "Recall: Wrong attachment" in subjects(server, f"erin@{D}")
    # without the capability in "using" the method is refused (RFC 8620 §3.6.2 unknownMethod)
    async def without() -> list:  # type: ignore[type-arg]
        url = f"http://127.0.0.1:{server.ports['jmap']}"
        body = {"using": ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"],
                "methodCalls": [["Email/recall", {"accountId": "x", "emailIds": [sent_id]}, "r"]]}
        async with aiohttp.ClientSession() as http, http.post(
                url + "/jmap/api", json=body, headers={"Authorization": f"Bearer {token}"}) as r:
            return (await r.json())["methodResponses"]  # type: ignore[no-any-return]
    assert asyncio.run(without())[0][0] == "error"
    _, resp = asyncio.run(jmap_calls(server, token, ["Email/recall", {"emailIds": []}, "r"]))
    assert resp[0][0] == "error" and resp[0][1]["type"] == "invalidArguments"
    # an account shared with someone else is not theirs to recall from, even with write rights
    cli(server.cfg, "share", "grant", carol, f"erin@{D}", "--rights", "write")
    erin = json.loads(cli(server.cfg, "token", "issue", f"erin@{D}", "--scope", "mail", "--json"))["token"]
    session, _ = asyncio.run(jmap_calls(server, erin, ["Core/echo", {}, "e"]))
    [shared] = [aid for aid, a in session["accounts"].items() if a["name"] == carol]
    assert "urn:mailsrv:recall" not in session["accounts"][shared]["accountCapabilities"]
    _, resp = asyncio.run(jmap_calls(server, erin, ["Email/recall", {"accountId": shared, "emailIds": [sent_id]}, "r"]))
    assert resp[0][0] == "error" and resp[0][1]["type"] == "accountNotSupportedByMethod", resp


def test_admin_api_and_jmap_say_when_max_accounts_cut_the_scan_short(tmp_path: Any) -> None:
    cfg = init_setup(tmp_path / "s", "--demo", workers=1)
    users = dict(re.findall(r"demo user (\S+) password (\S+)", (tmp_path / "s" / "demo-users.txt").read_text()))
    with open(cfg, "a") as fh:
        fh.write("\n[recall]\nmax_accounts = 1\n")  # alice and bob: the scan stops after the first
    srv = serve_users(cfg, users)
    try:
        alice, bob = f"alice@{D}", f"bob@{D}"
        send(srv, bob, "cut-1@example.test", "Cut short", [alice], to=alice, cc="")
        wait_inboxes(srv, [alice], "Cut short")
        cli(cfg, "admin", "grant", bob, "domain", D)
        admin = json.loads(cli(cfg, "token", "issue", bob, "--scope", "admin", "--json"))["token"]
        status, out = call(srv.ports["admin"], "POST", "/recall", admin,
                           {"sender": bob, "message_id": "<nobody-sent-this@example.test>"})
        assert status == 200 and isinstance(out, dict) and out["truncated"] is True, out
        token = json.loads(cli(cfg, "token", "issue", bob, "--scope", "mail", "--json"))["token"]
        _, resp = asyncio.run(jmap_calls(srv, token, ["Mailbox/get", {}, "m"]))
        sent = next(m["id"] for m in resp[0][1]["list"] if m["role"] == "sent")
        _, resp = asyncio.run(jmap_calls(srv, token, ["Email/query", {"filter": {"inMailbox": sent}}, "s"]))
        [sent_id] = resp[0][1]["ids"]
        _, resp = asyncio.run(jmap_calls(srv, token, ["Email/recall", {"emailIds": [sent_id]}, "r"]))
        assert resp[0][0] == "Email/recall" and resp[0][1]["truncated"] == [sent_id], resp
    finally:
        assert srv.stop() == 0
