"""Sieve and JMAP under a real ``mailsrv serve``: an EmailSubmission to local recipients runs their
scripts (fileinto, redirect outside to the aiosmtpd sink routed as "remote.test", reject in the
deliveryStatus), and a user with both a Sieve vacation and an enabled JMAP VacationResponse sends one
reply per message (docs/sieve.md)."""

from __future__ import annotations

import email
import json
import re
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sievesink import Sink
from support.admin import cli
from support.server import init_setup, mailsrv_cmd, serve_users, wait_until
from test_delivery_serve import activate, add_users, folder, imap, send, sunk

from mailsrv.config import load

D = "example.test"
PW = "sieve jmap test password"
USING = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail", "urn:ietf:params:jmap:submission",
         "urn:ietf:params:jmap:vacationresponse"]
SCRIPTS = {
    "bob": 'require "fileinto";\nif header :contains "subject" "report" { fileinto "Reports"; }\n',
    "carol": 'redirect "ext@remote.test";\n',
    "dave": 'require "reject";\nreject "No reports, thank you.";\n',
    "erin": 'require "vacation";\nif header :contains "subject" "urgent" { vacation :days 1 "Sieve says: away"; }\n',
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, sink: Sink) -> Iterator[Any]:
    base = tmp_path_factory.mktemp("sievejmap")
    cfg = init_setup(base / "s", "--demo", workers=2)
    users = dict(re.findall(r"demo user (\S+) password (\S+)", (base / "s" / "demo-users.txt").read_text()))
    add_users(cfg, users, ("carol", "dave", "erin"), PW)
    with open(cfg, "a") as fh:
        fh.write(f'\n[queue.route."remote.test"]\nsmarthost = "127.0.0.1:{sink.port}"\ntls = "none"\n')
    cli(cfg, "group", "add", f"crew@{D}")
    for member in ("bob", "dave"):
        cli(cfg, "group", "member", "add", f"crew@{D}", f"{member}@{D}")
    activate(cfg, SCRIPTS)
    srv = serve_users(cfg, users)
    yield srv
    assert srv.stop() == 0


def token(srv: Any, user: str) -> str:
    p = subprocess.run(mailsrv_cmd("token", "issue", user, "--scope", "mail", "--json", "-c", str(srv.cfg)),
                       capture_output=True, text=True, check=True)
    return str(json.loads(p.stdout)["token"])


def api(srv: Any, bearer: str, *calls: list[Any]) -> list[Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{srv.ports['jmap']}/jmap/api", method="POST",
                                 data=json.dumps({"using": USING, "methodCalls": list(calls)}).encode(),
                                 headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return list(json.loads(r.read())["methodResponses"])


def test_submission_to_local_recipients_runs_their_scripts(server: Any, sink: Sink) -> None:
    alice = f"alice@{D}"
    ds = submit(server, alice, "weekly report", [f"bob@{D}", f"carol@{D}", f"dave@{D}"])
    assert ds[f"bob@{D}"]["delivered"] == "yes" and ds[f"carol@{D}"]["delivered"] == "yes", ds
    # dave's script refused it: told in the status (RFC 5429), no copy
    assert ds[f"dave@{D}"]["delivered"] == "no", ds
    assert ds[f"dave@{D}"]["smtpReply"] == "550 5.7.1 No reports, thank you.", ds
    assert folder(server, f"dave@{D}", "INBOX") == {}
    # bob's script filed it; nothing in his INBOX
    assert "weekly report" in folder(server, f"bob@{D}", "Reports")
    assert "weekly report" not in folder(server, f"bob@{D}", "INBOX")
    # carol's redirect was queued before /set answered; it reaches the sink with alice as the sender
    wait_until(lambda: any("weekly report" in str(m["Subject"]) for m in sunk(sink)), timeout=60)
    out = [m for m in sunk(sink) if "weekly report" in str(m["Subject"])]
    assert len(out) == 1
    assert out[0]["X-Env-From"] == alice and out[0]["X-Env-To"] == "ext@remote.test"
    assert out[0]["X-Sieve-Redirected-From"] == f"carol@{D}"
    assert out[0]["Return-Path"] is None  # the queue takes our Return-Path off before relaying
    assert "weekly report" not in folder(server, f"carol@{D}", "INBOX")


def submit(srv: Any, user: str, subject: str, rcpts: list[str]) -> dict[str, Any]:
    """``user`` writes and submits a message to ``rcpts`` over JMAP: its deliveryStatus."""
    t = token(srv, user)
    got = api(srv, t, ["Mailbox/get", {"accountId": "A1"}, "m"], ["Identity/get", {"accountId": "A1"}, "i"])
    drafts = next(m["id"] for m in got[0][1]["list"] if m["role"] == "drafts")
    r = api(srv, t, ["Email/set", {"accountId": "A1", "create": {"d": {
        "mailboxIds": {drafts: True}, "from": [{"email": user}], "to": [{"email": a} for a in rcpts],
        "subject": subject, "textBody": [{"partId": "t"}], "bodyValues": {"t": {"value": "see attached"}}}}}, "e"],
        ["EmailSubmission/set", {"accountId": "A1", "create": {"s": {
            "identityId": got[1][1]["list"][0]["id"], "emailId": "#d",
            "envelope": {"mailFrom": {"email": user}, "rcptTo": [{"email": a} for a in rcpts]}}}}, "s"])
    sid = r[1][1]["created"]["s"]["id"]
    ds = api(srv, t, ["EmailSubmission/get", {"accountId": "A1", "ids": [sid]}, "g"])[0][1]["list"][0]
    return dict(ds["deliveryStatus"])


def test_group_member_reject_is_told_to_the_submitter(server: Any) -> None:
    # dave's script refuses everything; as a member of crew the submission itself says "delivered" (bob
    # got it), so the submitter hears of dave in a delivery status notification, as over SMTP
    alice = f"alice@{D}"
    ds = submit(server, alice, "monthly report", [f"crew@{D}"])
    assert ds[f"crew@{D}"]["delivered"] == "yes", ds
    assert "monthly report" in folder(server, f"bob@{D}", "Reports")
    bounce = "Undelivered Mail Returned to Sender"
    wait_until(lambda: bounce in folder(server, alice, "INBOX"), timeout=60)
    m = imap(server, alice)
    try:
        m.select("INBOX", readonly=True)
        typ, data = m.search(None, "SUBJECT", f'"{bounce}"')
        (num,) = data[0].split()
        typ, data = m.fetch(num, "(RFC822)")
    finally:
        m.logout()
    dsn = email.message_from_bytes(data[0][1])
    assert dsn.get_content_type() == "multipart/report"
    human = dsn.get_payload()[0].get_payload()
    assert f"<dave@{D}>: 550 5.7.1 No reports, thank you." in human and f"bob@{D}" not in human
    assert "monthly report" not in folder(server, f"dave@{D}", "INBOX")


def vacation_on(srv: Any, user: str) -> None:
    """``user``'s JMAP VacationResponse enabled ("JMAP says: away")."""
    t = token(srv, user)
    r = api(srv, t, ["VacationResponse/set", {"accountId": _account(srv, t), "update": {
        "singleton": {"isEnabled": True, "subject": "Out of office", "textBody": "JMAP says: away"}}}, "v"])
    assert r[0][1]["updated"] == {"singleton": None}, r


def _replies(sink: Sink, to: str) -> list[email.message.Message]:
    return [m for m in sunk(sink) if m["X-Env-To"] == to and m["X-Env-From"] in ("", "<>")]  # the null reverse path


def test_sieve_vacation_and_jmap_vacation_response_reply_once(server: Any, sink: Sink) -> None:
    erin = f"erin@{D}"
    vacation_on(server, erin)
    mark = server.mark()
    # the script's vacation answers this one: the JMAP watcher stays silent for its sender
    send(server, "urgent: the server is down", [erin], sender="x1@remote.test", to=erin)
    server.wait_for(r"jmap\.vacation\.skipped.*sieve", timeout=60, start=mark)
    # the script does not answer this one: the JMAP VacationResponse does
    send(server, "hello there", [erin], sender="x2@remote.test", to=erin)
    try:
        wait_until(lambda: _replies(sink, "x2@remote.test") != [] and _replies(sink, "x1@remote.test") != [],
                   timeout=60)
    except AssertionError:
        raise AssertionError(f"{[(m['X-Env-From'], m['X-Env-To'], m['Subject']) for m in sunk(sink)]}\n"
                             + "\n".join(server.lines[-40:])) from None
    one, two = _replies(sink, "x1@remote.test"), _replies(sink, "x2@remote.test")
    assert len(one) == 1 and "Sieve says: away" in one[0].get_payload(decode=True).decode()
    assert len(two) == 1 and "JMAP says: away" in two[0].get_payload(decode=True).decode()
    assert str(two[0]["Subject"]) == "Out of office"
    # a second urgent mail from x1: no reply of either kind (the same sender within the period)
    mark = server.mark()
    send(server, "urgent: still down", [erin], sender="x1@remote.test", to=erin)
    server.wait_for(r"sieve\.vacation_skipped .*user=erin@example\.test.*reason=period", timeout=60, start=mark)
    server.wait_for(r"jmap\.vacation\.skipped.*sieve", timeout=60, start=mark)
    assert "urgent: still down" in folder(server, erin, "INBOX")
    assert len(_replies(sink, "x1@remote.test")) == 1


def _account(srv: Any, bearer: str) -> str:
    req = urllib.request.Request(f"http://127.0.0.1:{srv.ports['jmap']}/jmap/session",
                                 headers={"Authorization": f"Bearer {bearer}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return str(json.loads(r.read())["primaryAccounts"]["urn:ietf:params:jmap:mail"])


def test_jmap_vacation_reply_silences_a_later_sieve_vacation(server: Any, sink: Sink) -> None:
    erin = f"erin@{D}"
    vacation_on(server, erin)
    # the script does not answer this one: the JMAP VacationResponse does
    send(server, "a quiet question", [erin], sender="x3@remote.test", to=erin)
    wait_until(lambda: _replies(sink, "x3@remote.test") != [], timeout=60)
    mark = server.mark()
    # the script would answer this one: the JMAP reply to x3 a moment ago silences it (one auto-reply)
    send(server, "urgent: a loud question", [erin], sender="x3@remote.test", to=erin)
    server.wait_for(r"sieve\.vacation_skipped .*user=erin@example\.test.*reason=jmap", timeout=60, start=mark)
    server.wait_for(r"jmap\.vacation\.skipped .*reason=period", timeout=60, start=mark)  # nor JMAP's again
    assert "urgent: a loud question" in folder(server, erin, "INBOX")
    (only,) = _replies(sink, "x3@remote.test")
    assert "JMAP says: away" in only.get_payload(decode=True).decode()


def test_resubmission_after_a_queue_failure_makes_no_copy_twice(server: Any, sink: Sink) -> None:
    """docs/sieve.md "Retries": bob's copy is made, then carol's redirect cannot be queued (the queue's
    directory immutable): the submission fails, bob's copy is recorded; submitting the same Email again
    makes no second copy for bob and queues carol's redirect once."""
    alice, subject = f"alice@{D}", "quarterly report"
    t = token(server, alice)
    got = api(server, t, ["Mailbox/get", {"accountId": "A1"}, "m"], ["Identity/get", {"accountId": "A1"}, "i"])
    drafts = next(m["id"] for m in got[0][1]["list"] if m["role"] == "drafts")
    rcpts = [f"bob@{D}", f"carol@{D}"]
    made = api(server, t, ["Email/set", {"accountId": "A1", "create": {"d": {
        "mailboxIds": {drafts: True}, "from": [{"email": alice}], "to": [{"email": a} for a in rcpts],
        "subject": subject, "textBody": [{"partId": "t"}], "bodyValues": {"t": {"value": "numbers"}}}}}, "e"])
    email_id = made[0][1]["created"]["d"]["id"]
    create = ["EmailSubmission/set", {"accountId": "A1", "create": {"s": {
        "identityId": got[1][1]["list"][0]["id"], "emailId": email_id,
        "envelope": {"mailFrom": {"email": alice}, "rcptTo": [{"email": a} for a in rcpts]}}}}, "s"]
    qmsg = Path(load(server.cfg).server.data_dir) / "queue" / "msg"
    mark = server.mark()
    subprocess.run(["chattr", "+i", str(qmsg)], check=True)
    try:
        first = api(server, t, create)
    finally:
        subprocess.run(["chattr", "-i", str(qmsg)], check=True)
    assert "created" not in first[0][1] or not first[0][1]["created"], first  # not acknowledged
    server.wait_for(r"sieve\.remembered ", start=mark)
    assert "quarterly report" in folder(server, f"bob@{D}", "Reports")
    second = api(server, t, create)
    assert second[0][1]["created"]["s"]["id"], second
    wait_until(lambda: len([m for m in sunk(sink) if subject in str(m["Subject"])]) == 1, timeout=60)
    m = imap(server, f"bob@{D}")
    try:
        m.select("Reports", readonly=True)
        typ, data = m.search(None, "SUBJECT", f'"{subject}"')
        assert typ == "OK" and len(data[0].split()) == 1  # not a second copy
    finally:
        m.logout()
