"""The hop count ([smtp] max_hops, RFC 5321 §6.3) under a real ``mailsrv serve``: a message whose
Received fields (ours included) pass the limit is refused at end of DATA and of BDAT LAST with
554 5.4.6, nothing delivered or queued; a real loop (a group of ours with a member at an outside
domain routed back to our own MTA) ends with a bounce naming 5.4.6 to the sender and one local copy;
our queue bounces an over-limit entry instead of sending it; JMAP refuses to submit one."""

from __future__ import annotations

import asyncio
import email
import imaplib
import json
import re
import smtplib
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.admin import cli
from support.server import init_setup, mailsrv_cmd, serve_users, wait_until

from mailsrv.config import load
from mailsrv.queue.enqueue import Enqueuer
from mailsrv.queue.store import QRcpt

D = "example.test"
MAX_HOPS = 8
BOUNCE = "Undelivered Mail Returned to Sender"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    base = tmp_path_factory.mktemp("hops")
    cfg = init_setup(base / "s", "--demo", workers=1)
    users = dict(re.findall(r"demo user (\S+) password (\S+)", (base / "s" / "demo-users.txt").read_text()))
    # our MTA on a port known before it starts (the loop's route names it); 127.0.0.1 may relay, so
    # mail for loop.test that comes back from our queue is queued again: the loop
    port, dead = free_port(), free_port()
    text = cfg.read_text()
    smtp_listener = '[listener.smtp]\nprotocol = "smtp"\nbind = ["127.0.0.1:0"]\n'
    assert smtp_listener in text
    text = text.replace(smtp_listener, f'[listener.smtp]\nprotocol = "smtp"\nbind = ["127.0.0.1:{port}"]\n'
                                       'trusted_networks = ["127.0.0.0/8"]\n')
    text = text.replace("[smtp]\n", f"[smtp]\nmax_hops = {MAX_HOPS}\n") if "[smtp]\n" in text \
        else text + f"\n[smtp]\nmax_hops = {MAX_HOPS}\n"
    text += (f'\n[queue.route."loop.test"]\nsmarthost = "127.0.0.1:{port}"\ntls = "none"\n'
             f'\n[queue.route."dead.test"]\nsmarthost = "127.0.0.1:{dead}"\ntls = "none"\n')
    cfg.write_text(text)
    cli(cfg, "group", "add", f"loop@{D}")
    for member in (f"bob@{D}", "back@loop.test"):
        cli(cfg, "group", "member", "add", f"loop@{D}", member)
    srv = serve_users(cfg, users)
    assert srv.ports["smtp"] == port
    yield srv
    assert srv.stop() == 0


def message(subject: str, received: int, *, name: str = "Received", body: str = "") -> bytes:
    trace = "".join(f"{name}: from relay{i}.remote.test ([192.0.2.{i % 250}])\r\n\tby relay{i + 1}.remote.test"
                    f" with ESMTP id r{i};\r\n\tSat, 28 Nov 2026 05:00:{i % 60:02d} +0000\r\n"
                    for i in range(received))
    return (f"{trace}From: someone@remote.test\r\nTo: bob@{D}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@remote.test>\r\n\r\n{body or 'hello'}\r\n").encode()


def fetched(srv: Any, user: str, subject: str) -> list[bytes]:
    """The messages in ``user``'s INBOX whose subject holds ``subject`` (over IMAP)."""
    m = imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=srv.ctx, timeout=30)
    try:
        m.login(user, srv.users[user])
        m.select("INBOX", readonly=True)
        typ, data = m.search(None, "SUBJECT", f'"{subject}"')
        assert typ == "OK"
        out = []
        for num in data[0].split():
            typ, got = m.fetch(num, "(BODY.PEEK[])")
            item = got[0]
            assert typ == "OK" and isinstance(item, tuple)
            out.append(item[1])
        return out
    finally:
        m.logout()


def arrived(srv: Any, user: str, subject: str, n: int = 1) -> list[bytes]:
    """:func:`fetched` once at least ``n`` such messages are there: a plaintext session's 250 may be
    written a moment before the message's file is linked into new/ (mailsrv.smtp.early)."""
    wait_until(lambda: len(fetched(srv, user, subject)) >= n, timeout=30)
    return fetched(srv, user, subject)


def queued(srv: Any) -> list[str]:
    qmsg = Path(load(srv.cfg).server.data_dir) / "queue" / "msg"
    return sorted(p.name for p in qmsg.iterdir()) if qmsg.exists() else []


def bdat(port: int, rcpt: str, data: bytes) -> bytes:
    """One message over BDAT (RFC 3030) in two chunks, the last with LAST: the reply to it."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s, s.makefile("rb") as f:
        def reply() -> bytes:
            lines = []
            while True:
                line = f.readline()
                lines.append(line)
                if line[3:4] != b"-":
                    return b"".join(lines)

        assert reply().startswith(b"220")
        s.sendall(b"EHLO client.remote.test\r\n")
        assert b"CHUNKING" in reply()
        s.sendall(b"MAIL FROM:<someone@remote.test>\r\n")
        assert reply().startswith(b"250")
        s.sendall(f"RCPT TO:<{rcpt}>\r\n".encode())
        assert reply().startswith(b"250")
        half = len(data) // 2
        s.sendall(b"BDAT %d\r\n" % half + data[:half])
        assert reply().startswith(b"250")
        s.sendall(b"BDAT %d LAST\r\n" % (len(data) - half) + data[half:])
        got = reply()
        s.sendall(b"QUIT\r\n")
        return got


def test_over_max_hops_is_refused_and_nothing_kept(server: Any) -> None:
    before = queued(server)
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
        with pytest.raises(smtplib.SMTPDataError) as e:  # MAX_HOPS of theirs and ours: one too many
            s.sendmail("someone@remote.test", [f"bob@{D}", "far@loop.test"], message("looped one", MAX_HOPS))
        assert e.value.smtp_code == 554 and e.value.smtp_error == b"5.4.6 Too many hops"
        s.sendmail("someone@remote.test", [f"bob@{D}"], message("after the loop", 0))  # the session goes on
    assert fetched(server, f"bob@{D}", "looped one") == []
    assert queued(server) == before  # far@loop.test was not queued either
    assert len(arrived(server, f"bob@{D}", "after the loop")) == 1


def test_one_fewer_is_accepted_counting_ours(server: Any) -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
        s.sendmail("someone@remote.test", [f"bob@{D}"], message("just under", MAX_HOPS - 1))
    (got,) = arrived(server, f"bob@{D}", "just under")
    trace = email.message_from_bytes(got).get_all("Received") or []
    assert len(trace) == MAX_HOPS  # ours is the first
    assert "by mail.example.test (mailsrv)" in trace[0]


def test_lower_case_names_count(server: Any) -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s, \
            pytest.raises(smtplib.SMTPDataError) as e:
        s.sendmail("someone@remote.test", [f"bob@{D}"], message("lower looped", MAX_HOPS, name="received"))
    assert e.value.smtp_code == 554
    assert fetched(server, f"bob@{D}", "lower looped") == []


def test_received_lines_in_the_body_do_not_count(server: Any) -> None:
    body = "".join(f"Received: from quoted{i}.remote.test by x; Sat, 28 Nov 2026\r\n" for i in range(3 * MAX_HOPS))
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
        s.sendmail("someone@remote.test", [f"bob@{D}"], message("quoted trace", MAX_HOPS - 1, body=body))
    (got,) = arrived(server, f"bob@{D}", "quoted trace")
    assert got.count(b"Received: from quoted") == 3 * MAX_HOPS


def test_bdat_last_is_refused_over_max_hops(server: Any) -> None:
    got = bdat(server.ports["smtp"], f"bob@{D}", message("bdat looped", MAX_HOPS))
    assert got.startswith(b"554 5.4.6 Too many hops"), got
    assert fetched(server, f"bob@{D}", "bdat looped") == []
    got = bdat(server.ports["smtp"], f"bob@{D}", message("bdat under", MAX_HOPS - 1))
    assert got.startswith(b"250"), got
    assert len(arrived(server, f"bob@{D}", "bdat under")) == 1


def test_a_real_loop_ends_with_a_bounce(server: Any) -> None:
    """loop@ has bob and back@loop.test; loop.test is routed to our own MTA, which relays it for
    127.0.0.1 into our queue again: each pass is one Received more, until our MTA refuses it."""
    alice = f"alice@{D}"
    mark = server.mark()
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
        s.sendmail(alice, [f"loop@{D}"], message("round and round", 0))
    wait_until(lambda: len(fetched(server, alice, BOUNCE)) == 1, timeout=120)
    (bounce,) = fetched(server, alice, BOUNCE)
    dsn = email.message_from_bytes(bounce)
    assert dsn.get_content_type() == "multipart/report"
    human = dsn.get_payload()[0].get_payload()  # type: ignore[index,union-attr]
    assert "<back@loop.test>: 554 5.4.6 Too many hops" in human, human
    assert len(fetched(server, f"bob@{D}", "round and round")) == 1  # the local member's one copy
    relayed = [line for line in server.lines[mark:] if "message.accepted" in line and "to=back@loop.test" in line]
    # accepted with 2..MAX_HOPS Received fields (the first pass, with ours only, went to the group)
    assert len(relayed) == MAX_HOPS - 1, relayed
    # the pass with MAX_HOPS + 1 was refused by our MTA (not by the queue's own count, which let the
    # entry of MAX_HOPS go): one failure notice, and nothing is left going round
    failed = [line for line in server.lines[mark:] if "queue.dsn" in line and "rcpts=back@loop.test" in line]
    assert len(failed) == 1 and "action=failed" in failed[0], failed
    assert not [line for line in server.lines[mark:] if "queue.too_many_hops" in line]
    wait_until(lambda: queued(server) == [], timeout=30)


def test_our_queue_bounces_an_entry_over_max_hops(server: Any) -> None:
    """An entry over the limit (made here as another path into the queue would make it) bounces at its
    first attempt; dead.test's host refuses connections, so a bounce can only come from the count."""
    alice = f"alice@{D}"
    mark = server.mark()
    data_dir = Path(load(server.cfg).server.data_dir)
    qid = asyncio.run(Enqueuer(data_dir).enqueue(message("queued looper", MAX_HOPS + 1), alice,
                                                 [QRcpt("far@dead.test")]))
    server.wait_for(rf"queue\.too_many_hops .*id={qid}", start=mark)
    wait_until(lambda: len(fetched(server, alice, BOUNCE)) >= 1 and any(
        b"queued looper" in m for m in fetched(server, alice, BOUNCE)), timeout=60)
    (bounce,) = [m for m in fetched(server, alice, BOUNCE) if b"queued looper" in m]
    assert b"<far@dead.test>: 554 5.4.6 Too many hops" in bounce
    assert not any(re.search(rf"queue\.host_failed .*id={qid}", line) for line in server.lines[mark:])


def token(srv: Any, user: str) -> str:
    p = subprocess.run(mailsrv_cmd("token", "issue", user, "--scope", "mail", "--json", "-c", str(srv.cfg)),
                       capture_output=True, text=True, check=True)
    return str(json.loads(p.stdout)["token"])


def jmap(srv: Any, bearer: str, path: str, body: bytes, ctype: str = "application/json") -> Any:
    req = urllib.request.Request(f"http://127.0.0.1:{srv.ports['jmap']}{path}", method="POST", data=body,
                                 headers={"Authorization": f"Bearer {bearer}", "Content-Type": ctype})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_jmap_submission_over_max_hops_is_refused(server: Any) -> None:
    alice = f"alice@{D}"
    t = token(server, alice)

    def api(*calls: list[Any]) -> list[Any]:
        using = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail", "urn:ietf:params:jmap:submission"]
        return list(jmap(server, t, "/jmap/api", json.dumps({"using": using, "methodCalls": list(calls)}).encode())
                    ["methodResponses"])

    got = api(["Mailbox/get", {"accountId": "A1"}, "m"], ["Identity/get", {"accountId": "A1"}, "i"])
    drafts = next(m["id"] for m in got[0][1]["list"] if m["role"] == "drafts")
    ident = got[1][1]["list"][0]["id"]
    results = {}
    for subject, hops in (("jmap looped", MAX_HOPS + 1), ("jmap under", MAX_HOPS)):
        blob = jmap(server, t, "/jmap/upload/A1/", message(subject, hops).replace(b"someone@remote.test", alice.encode()),
                    "message/rfc822")["blobId"]
        imported = api(["Email/import", {"accountId": "A1", "emails": {"e": {
            "blobId": blob, "mailboxIds": {drafts: True}}}}, "e"])[0][1]["created"]["e"]["id"]
        results[subject] = api(["EmailSubmission/set", {"accountId": "A1", "create": {"s": {
            "identityId": ident, "emailId": imported,
            "envelope": {"mailFrom": {"email": alice}, "rcptTo": [{"email": f"bob@{D}"}]}}}}, "s"])[0][1]
    err = results["jmap looped"]["notCreated"]["s"]
    assert err["type"] == "invalidEmail" and err["properties"] == ["headers"], err
    assert "554 5.4.6 Too many hops" in err["description"]
    assert fetched(server, f"bob@{D}", "jmap looped") == []
    assert "s" in results["jmap under"]["created"], results["jmap under"]
    assert len(fetched(server, f"bob@{D}", "jmap under")) == 1
