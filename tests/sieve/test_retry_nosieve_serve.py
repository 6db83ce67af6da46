"""With ``[sieve] enabled = false`` the retry ledger still covers local delivery (docs/sieve.md "A 451
after the copies were made"), under a real ``mailsrv serve``: the local copy is made, the remote
recipient cannot be queued (the queue's directory immutable), 451 (over JMAP: the submission fails); the
sender's retry through smtplib (the JMAP resubmission) makes no second copy. A stored script does not
run."""

from __future__ import annotations

import re
import smtplib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sievesink import Sink
from support.admin import cli
from support.server import init_setup, serve_users, wait_until
from test_delivery_serve import activate, add_users, send, sunk_to
from test_jmap_serve import api, token
from test_retry_serve import count, immutable, mira_count

from mailsrv.config import load

D = "example.test"
PW = "sieve off retry test password"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, sink: Sink) -> Iterator[Any]:
    base = tmp_path_factory.mktemp("sieveoff")
    cfg = init_setup(base / "s", "--demo", workers=1)
    users = dict(re.findall(r"demo user (\S+) password (\S+)", (base / "s" / "demo-users.txt").read_text()))
    add_users(cfg, users, ("mira", "lena"), PW)
    with open(cfg, "a") as fh:
        fh.write(f'\n[queue.route."remote.test"]\nsmarthost = "127.0.0.1:{sink.port}"\ntls = "none"\n'
                 "\n[sieve]\nenabled = false\n")
    cli(cfg, "group", "add", f"offteam@{D}")
    for member in (f"mira@{D}", "far@remote.test"):
        cli(cfg, "group", "member", "add", f"offteam@{D}", member)
    activate(cfg, {"lena": 'require "fileinto";\nfileinto "Never";\n'})  # filtering is off: not run
    srv = serve_users(cfg, users)
    yield srv
    assert srv.stop() == 0


def test_sender_retry_after_a_queue_failure_makes_no_copy_twice_without_sieve(server: Any, sink: Sink) -> None:
    rcpts = [f"offteam@{D}", f"lena@{D}"]  # mira and far@remote.test through the group, and lena
    mark = server.mark()
    send(server, "off warm", rcpts)
    server.wait_for(r"queue\.done ", start=mark)  # the maildirs exist, far's copy sent
    qmsg = Path(load(server.cfg).server.data_dir) / "queue" / "msg"
    mark = server.mark()
    immutable(qmsg, True)
    try:
        with pytest.raises(smtplib.SMTPDataError) as e:
            send(server, "off one", rcpts)
        assert e.value.smtp_code == 451
    finally:
        immutable(qmsg, False)
    server.wait_for(r"sieve\.remembered .*accounts=2", start=mark)
    assert mira_count(server, "off one") == 1  # durable before the 451
    assert count(server, "INBOX", "off one") == 1
    mark = server.mark()
    send(server, "off one", rcpts)  # the sender's retry, the same message
    server.wait_for(r"sieve\.retried .*user=mira@example\.test", start=mark)
    server.wait_for(r"sieve\.retried .*user=lena@example\.test", start=mark)
    wait_until(lambda: len(sunk_to(sink, "off one")) == 1, timeout=60)
    assert mira_count(server, "off one") == 1  # not a second copy
    assert count(server, "INBOX", "off one") == 1
    assert count(server, "Never", "off one") == 0  # lena's script did not run
    # the rows have served: the same message sent once more is new mail
    send(server, "off one", rcpts)
    assert mira_count(server, "off one") == 2
    wait_until(lambda: len(sunk_to(sink, "off one")) == 2, timeout=60)


def test_jmap_resubmission_after_a_queue_failure_makes_no_copy_twice_without_sieve(server: Any, sink: Sink) -> None:
    alice, subject = f"alice@{D}", "off jmap"
    t = token(server, alice)
    got = api(server, t, ["Mailbox/get", {"accountId": "A1"}, "m"], ["Identity/get", {"accountId": "A1"}, "i"])
    drafts = next(m["id"] for m in got[0][1]["list"] if m["role"] == "drafts")
    rcpts = [f"offteam@{D}"]  # mira, and far@remote.test: queued
    made = api(server, t, ["Email/set", {"accountId": "A1", "create": {"d": {
        "mailboxIds": {drafts: True}, "from": [{"email": alice}], "to": [{"email": a} for a in rcpts],
        "subject": subject, "textBody": [{"partId": "t"}], "bodyValues": {"t": {"value": "numbers"}}}}}, "e"])
    create = ["EmailSubmission/set", {"accountId": "A1", "create": {"s": {
        "identityId": got[1][1]["list"][0]["id"], "emailId": made[0][1]["created"]["d"]["id"],
        "envelope": {"mailFrom": {"email": alice}, "rcptTo": [{"email": a} for a in rcpts]}}}}, "s"]
    qmsg = Path(load(server.cfg).server.data_dir) / "queue" / "msg"
    mark = server.mark()
    immutable(qmsg, True)
    try:
        first = api(server, t, create)
    finally:
        immutable(qmsg, False)
    assert not first[0][1].get("created"), first  # not acknowledged
    server.wait_for(r"sieve\.remembered ", start=mark)
    assert mira_count(server, subject) == 1
    mark = server.mark()
    second = api(server, t, create)
    assert second[0][1]["created"]["s"]["id"], second
    server.wait_for(r"sieve\.retried .*user=mira@example\.test", start=mark)
    wait_until(lambda: len(sunk_to(sink, subject)) == 1, timeout=60)
    assert mira_count(server, subject) == 1  # not a second copy
