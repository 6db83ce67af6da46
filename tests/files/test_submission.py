"""[files] convert_over under a real ``mailsrv serve``: big attachments of an authenticated submission (SMTP
AUTH, JMAP EmailSubmission) reach the recipient as links that download the exact octets without a login;
a message under the threshold, and one whose sender is over their file quota, arrive as sent."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import hashlib
import imaplib
import io
import os
import re
import smtplib
import ssl
import subprocess
from email.message import EmailMessage, Message
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support.server import ServerProcess, init_setup, mailsrv_cmd, serve_users, wait_until

MB = 1024 * 1024
#: [files] convert_over: under the SMTP spool's in-memory limit (256 KB), so both of its paths convert
THRESHOLD = 100_000
ALICE, BOB = "alice@example.test", "bob@example.test"
BASE = "https://links.example.test"  # [files] public_url: the links' prefix, rewritten to the listener here


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("convert")
    cfg = init_setup(base / "s", "--demo", workers=1)
    with open(cfg, "a") as f:
        f.write(f'\n[files]\nconvert_over = {THRESHOLD}\nquota = {7 * MB}\npublic_url = "{BASE}"\n')
    users = dict(re.findall(r"demo user (\S+) password (\S+)", (base / "s" / "demo-users.txt").read_text()))
    srv = serve_users(cfg, users)
    yield srv
    assert srv.stop() == 0


def with_attachment(subject: str, data: bytes, name: str = "figures.bin", sender: str = ALICE) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = BOB if sender == ALICE else ALICE
    msg["Subject"] = subject
    msg.set_content("The figures are attached.\n")
    msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return msg.as_bytes(policy=email.policy.SMTP)


def submit(srv: Any, sender: str, rcpt: str, raw: bytes) -> None:
    with smtplib.SMTP_SSL("127.0.0.1", srv.ports["submissions"], context=srv.ctx, timeout=60) as s:
        s.login(sender, srv.users[sender])
        s.sendmail(sender, [rcpt], raw)  # returns only after the 250


def fetch(srv: Any, user: str, subject: str) -> bytes:
    """The whole message ``subject`` of ``user``'s INBOX over IMAP (polled with a deadline)."""
    m = imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=srv.ctx, timeout=60)
    try:
        m.login(user, srv.users[user])
        found: list[bytes] = []

        def search() -> bool:
            m.select("INBOX", readonly=True)
            typ, data = m.uid("SEARCH", "SUBJECT", f'"{subject}"')
            assert typ == "OK", data
            found[:] = data[0].split()
            return bool(found)

        wait_until(search, timeout=30, interval=0.05)
        assert len(found) == 1, found
        typ, data = m.uid("FETCH", found[0].decode(), "(BODY.PEEK[])")
        assert typ == "OK", data
        return bytes(next(x[1] for x in data if isinstance(x, tuple)))
    finally:
        m.logout()


def link_of(raw: bytes, name: str) -> str:
    """The download link of the part that replaced the attachment ``name`` (and no part of that name left)."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    parts: list[Message] = list(msg.walk())
    assert not [p for p in parts if p.get_filename() == name]
    notes = [p.get_content() for p in parts if p.get_content_type() == "text/plain"  # type: ignore[attr-defined]
             and f'"{name}"' in p.get_content()]  # type: ignore[attr-defined]
    assert len(notes) == 1, [p.get_content_type() for p in parts]
    url = next(line for line in notes[0].splitlines() if line.startswith(BASE + "/f/"))
    return url


def download(srv: Any, url: str, dest: Path) -> bytes:
    """GET the link over HTTPS without credentials."""
    local = url.replace(BASE, f"https://127.0.0.1:{srv.ports['jmaps']}")
    p = subprocess.run(["curl", "-sS", "--cacert", str(srv.cfg.parent / "tls" / "cert.pem"), "-o", str(dest),
                        "-w", "%{http_code}", local], capture_output=True, text=True, timeout=120)
    assert p.stdout == "200", (p.stdout, p.stderr)
    return dest.read_bytes()


def links_of(srv: Any, user: str) -> str:
    p = subprocess.run(mailsrv_cmd("files", "list", user, "-c", str(srv.cfg)), capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_a_big_attachment_arrives_as_a_link(server: ServerProcess, tmp_path: Path) -> None:
    big = os.urandom(3 * MB)
    raw = with_attachment("big over smtp", big)
    submit(server, ALICE, BOB, raw)
    got = fetch(server, BOB, "big over smtp")
    assert len(got) < 100_000 and base64.b64encode(big[:300])[:80] not in got
    url = link_of(got, "figures.bin")
    assert hashlib.sha256(download(server, url, tmp_path / "got")).digest() == hashlib.sha256(big).digest()
    assert "figures.bin" in links_of(server, ALICE)  # the sender's link, on the sender's quota


def test_a_message_held_in_memory_converts_too(server: ServerProcess, tmp_path: Path) -> None:
    mid = os.urandom(150_000)  # ~200 KB in base64: the spool never wrote it, the conversion reads it from memory
    submit(server, ALICE, BOB, with_attachment("mid over smtp", mid, name="mid.bin"))
    got = fetch(server, BOB, "mid over smtp")
    assert len(got) < 20_000
    assert download(server, link_of(got, "mid.bin"), tmp_path / "got") == mid


def test_a_message_under_the_threshold_arrives_byte_for_byte(server: ServerProcess, corpus: Path) -> None:
    body = (corpus / "mime4j" / "mimetools-testmsgs" / "attachment-filename-encoding-UTF8.msg").read_bytes()
    raw = (f"From: {ALICE}\nTo: {BOB}\nSubject: small corpus attachment\n".encode() + body).replace(b"\n", b"\r\n")
    submit(server, ALICE, BOB, raw)
    got = fetch(server, BOB, "small corpus attachment")
    assert got.endswith(raw)  # after the trace fields the server prepends: the octets sent


def test_a_sender_over_their_file_quota_sends_the_original(server: ServerProcess, tmp_path: Path) -> None:
    # bob holds 5 MB in links already: a 3 MB attachment would pass his 7 MB quota
    held = tmp_path / "held.bin"
    held.write_bytes(os.urandom(5 * MB))
    p = subprocess.run(["curl", "-sS", "--cacert", str(server.cfg.parent / "tls" / "cert.pem"), "-u",
                        f"{BOB}:{server.users[BOB]}", "-T", str(held), "-w", "%{http_code}",
                        f"https://127.0.0.1:{server.ports['jmaps']}/files/"], capture_output=True, text=True,
                       timeout=120)
    assert p.stdout.endswith("201"), (p.stdout, p.stderr)
    big = os.urandom(3 * MB)
    raw = with_attachment("over quota", big, sender=BOB)
    mark = server.mark()
    submit(server, BOB, ALICE, raw)
    got = fetch(server, ALICE, "over quota")
    assert got.endswith(raw)
    server.wait_for(r"files\.convert_failed .*user=bob@example\.test", start=mark)
    assert "figures.bin" not in links_of(server, BOB)


def test_jmap_email_submission_converts_too(server: ServerProcess, tmp_path: Path) -> None:
    big = os.urandom(3 * MB)
    raw = with_attachment("big over jmap", big, name="plan.bin")
    asyncio.run(jmap_submit(server, raw))
    got = fetch(server, BOB, "big over jmap")
    assert len(got) < 100_000
    url = link_of(got, "plan.bin")
    assert hashlib.sha256(download(server, url, tmp_path / "got")).digest() == hashlib.sha256(big).digest()


async def jmap_submit(srv: Any, raw: bytes) -> None:
    """Upload ``raw``, import it into Drafts, submit it to bob (JMAP over HTTPS with Basic)."""
    url = f"https://127.0.0.1:{srv.ports['jmaps']}"
    auth = {"Authorization": "Basic " + base64.b64encode(f"{ALICE}:{srv.users[ALICE]}".encode()).decode()}
    tls = ssl.create_default_context(cafile=str(srv.cfg.parent / "tls" / "cert.pem"))
    tls.check_hostname = False
    using = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail", "urn:ietf:params:jmap:submission"]

    async def api(http: aiohttp.ClientSession, *calls: list[Any]) -> list[Any]:
        async with http.post(url + "/jmap/api", json={"using": using, "methodCalls": list(calls)}, headers=auth) as r:
            assert r.status == 200, await r.text()
            return list((await r.json())["methodResponses"])

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as http:
        async with http.get(url + "/jmap/session", headers=auth) as r:
            account = (await r.json())["primaryAccounts"]["urn:ietf:params:jmap:mail"]
        async with http.post(f"{url}/jmap/upload/{account}/", data=io.BytesIO(raw),
                             headers={**auth, "Content-Type": "message/rfc822"}) as r:
            assert r.status == 201, await r.text()
            blob = (await r.json())["blobId"]
        got = await api(http, ["Mailbox/get", {"accountId": account}, "m"], ["Identity/get", {"accountId": account}, "i"])
        drafts = next(m["id"] for m in got[0][1]["list"] if m["role"] == "drafts")
        ident = got[1][1]["list"][0]["id"]
        got = await api(http, ["Email/import", {"accountId": account, "emails": {
            "e": {"blobId": blob, "mailboxIds": {drafts: True}}}}, "im"])
        email_id = got[0][1]["created"]["e"]["id"]
        got = await api(http, ["EmailSubmission/set", {"accountId": account, "create": {"s": {
            "identityId": ident, "emailId": email_id,
            "envelope": {"mailFrom": {"email": ALICE}, "rcptTo": [{"email": BOB}]}}}}, "s"])
        assert "s" in got[0][1].get("created", {}), got
