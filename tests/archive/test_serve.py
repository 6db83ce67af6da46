"""Archiving under a real ``mailsrv serve`` (2 workers, the queue runner, the archive sweeper): mail in
over SMTP, out over submission (AUTH) to a remote recipient routed to a local aiosmtpd sink; the auditor
reads the archive over IMAP as the archive account."""

from __future__ import annotations

import imaplib
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from archiveserve import (
    PW,
    RULES,
    VAULT,
    D,
    archived,
    envelope,
    header_of,
    imap,
    message,
    send_in,
    send_out,
    setup_server,
    subjects,
)
from support.admin import cli
from support.server import mailsrv_cmd, serve_users, wait_until


@pytest.fixture(scope="module")
def sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    out = tmp_path_factory.mktemp("sink")
    proc = subprocess.Popen([sys.executable, str(Path(__file__).parent.parent / "queue" / "sink_process.py"),
                             str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    yield port, out
    proc.terminate()
    proc.wait(10)
    proc.stdout.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, sink: tuple[int, Path]) -> Iterator[Any]:
    base = tmp_path_factory.mktemp("archive")
    route = f'\n[queue.route."remote.test"]\nsmarthost = "127.0.0.1:{sink[0]}"\ntls = "none"\n'
    vault = f'\n[archive.rule.vault]\nmatch = ["erin@{D}"]\ndirection = "in"\nto = "{VAULT}"\nfolder = "Vault"\n'
    cfg, users = setup_server(base, RULES + vault + route)
    # the archive's own quota does not stop its copies (docs/archive.md), its domain's does: filled by the test
    cli(cfg, "domain", "add", VAULT.split("@")[1], "--max-storage", "4K")
    for name in ("erin@" + D, VAULT):
        p = subprocess.run(mailsrv_cmd("user", "add", name, "--password-stdin", "-c", str(cfg)),
                           input=PW + "\n", capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        users[name] = PW
    srv = serve_users(cfg, users)
    yield srv
    assert srv.stop() == 0


def test_inbound_to_a_member_is_archived_and_outlives_the_users_delete(server: Any) -> None:
    send_in(server, "in to bob", [f"bob@{D}"])
    assert archived(server).count("in to bob") == 1
    m = imap(server, f"bob@{D}")
    try:
        m.select("INBOX")
        typ, data = m.search(None, "SUBJECT", '"in to bob"')
        assert typ == "OK" and data[0]
        m.store(data[0].decode().replace(" ", ","), "+FLAGS", "\\Deleted")
        assert m.expunge()[0] == "OK"
    finally:
        m.logout()
    assert "in to bob" not in subjects(server, f"bob@{D}", "INBOX")
    assert archived(server).count("in to bob") == 1


def test_group_member_one_copy_and_no_rule_no_copy(server: Any) -> None:
    send_in(server, "to the team", [f"team@{D}"])  # dave is a member
    send_in(server, "team and bob", [f"team@{D}", f"bob@{D}"])  # two matching recipients, two rules' folder
    send_in(server, "to alice", [f"alice@{D}"])  # no rule
    send_in(server, "to carol", [f"carol@{D}"])  # carol's rule is "out" only
    got = archived(server)
    assert got.count("to the team") == 1 and got.count("team and bob") == 1
    assert "to alice" not in got and "to carol" not in got
    assert "to alice" in subjects(server, f"alice@{D}", "INBOX")
    assert subjects(server, f"archive@{D}", "INBOX") == []  # the rule's folder only


def test_outbound_to_a_remote_recipient_is_archived_and_delivered(server: Any, sink: tuple[int, Path]) -> None:
    send_out(server, f"carol@{D}", "carol to far", ["far@remote.test"])
    assert archived(server).count("carol to far") == 1  # at acceptance, before the queue sends it
    send_out(server, f"alice@{D}", "alice to far", ["far@remote.test"])  # no rule for alice
    out = sink[1]

    def delivered() -> list[bytes]:
        return [p.read_bytes() for p in out.glob("*.eml")]

    wait_until(lambda: sum(b"Subject: alice to far" in d or b"Subject: carol to far" in d
                           for d in delivered()) == 2, timeout=30)
    assert "alice to far" not in archived(server)


def test_the_archived_copy_names_a_bcc_recipient_and_the_recipients_copies_do_not(
        server: Any, sink: tuple[int, Path]) -> None:
    send_out(server, f"carol@{D}", "carol with bcc", ["far@remote.test", f"dave@{D}"])  # dave: Bcc (not in To:)
    assert envelope(header_of(server, f"archive@{D}", "Legal", "carol with bcc")) == [
        f"X-Mailsrv-Envelope-From: <carol@{D}>", "X-Mailsrv-Envelope-To: <far@remote.test>",
        f"X-Mailsrv-Envelope-To: <dave@{D}>"]
    assert b"Envelope" not in header_of(server, f"dave@{D}", "INBOX", "carol with bcc")
    wait_until(lambda: any(b"Subject: carol with bcc" in p.read_bytes() for p in sink[1].glob("*.eml")), timeout=30)
    [far] = [p.read_bytes() for p in sink[1].glob("*.eml") if b"Subject: carol with bcc" in p.read_bytes()]
    assert b"X-Mailsrv-Envelope" not in far and f"dave@{D}".encode() not in far  # the Bcc stays hidden


def test_the_archived_copy_of_group_mail_lists_the_group_as_received(server: Any) -> None:
    send_in(server, "envelope of the team", [f"Team@{D}"])  # dave (a member) matches no rule: team@ does
    assert envelope(header_of(server, f"archive@{D}", "Legal", "envelope of the team")) == [
        "X-Mailsrv-Envelope-From: <x@remote.test>", f"X-Mailsrv-Envelope-To: <Team@{D}>"]
    assert b"Envelope" not in header_of(server, f"dave@{D}", "INBOX", "envelope of the team")


def test_a_failed_copy_is_retried_by_the_queue_into_its_rules_folder(server: Any) -> None:
    def send(subject: str, rcpt: str) -> None:
        msg = message(subject)
        msg.set_content("a line long enough to fill most of the vault domain's 4K quota\n" * 50)
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
            s.send_message(msg, from_addr="x@remote.test", to_addrs=[rcpt])

    send("fills the vault", VAULT)
    send("vault retry", f"erin@{D}")
    assert "vault retry" in subjects(server, f"erin@{D}", "INBOX")
    assert subjects(server, VAULT, "Vault") == []  # the copy failed (its domain over quota): queued
    cli(server.cfg, "domain", "set", VAULT.split("@")[1], "--max-storage", "unlimited")
    # the queue runner hands it to our MTA (tried at once, then at each flush) until it lands
    wait_until(lambda: cli(server.cfg, "queue", "flush") is not None
               and "vault retry" in subjects(server, VAULT, "Vault"), timeout=60)
    assert subjects(server, VAULT, "INBOX") == ["fills the vault"]  # in its rule's folder, not the INBOX
    wait_until(lambda: VAULT not in cli(server.cfg, "queue", "list"), timeout=30)  # done, not requeued
    assert subjects(server, VAULT, "Vault") == ["vault retry"]
    # the queued copy was the archive file: one envelope block, after the one Return-Path of its delivery
    head = header_of(server, VAULT, "Vault", "vault retry")
    assert envelope(head) == ["X-Mailsrv-Envelope-From: <x@remote.test>", f"X-Mailsrv-Envelope-To: <erin@{D}>"]
    assert head.count(b"Return-Path:") == 1, head


def test_unknown_archive_account_stops_the_start_and_bad_keys_are_named(tmp_path: Path) -> None:
    cfg, _ = setup_server(tmp_path, f'[archive.rule.x]\nmatch = ["bob@{D}"]\nto = "nobody@{D}"\n')
    p = subprocess.run(mailsrv_cmd("serve", "-c", str(cfg)), capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "archive.rule.x.to" in p.stderr and "nobody@" in p.stderr, p.stderr
    p = subprocess.run(mailsrv_cmd("check-config", "-c", str(cfg)), capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "archive.rule.x.to" in p.stderr and "nobody@" in p.stderr, p.stderr  # as at start
    for bad, key in ((f'match = ["bob@{D}"]\nto = "archive@{D}"\ndirection = "sideways"\n', "direction"),
                     (f'match = []\nto = "archive@{D}"\n', "match"),
                     (f'match = ["bob@{D}"]\n', "to")):
        text = cfg.read_text().split("[archive.rule.x]")[0] + "[archive.rule.x]\n" + bad
        cfg.write_text(text)
        p = subprocess.run(mailsrv_cmd("check-config", "-c", str(cfg)), capture_output=True, text=True, timeout=60)
        assert p.returncode != 0 and f"archive.rule.x.{key}" in p.stderr, (bad, p.stderr)


def test_the_sweeper_removes_copies_past_retention_at_start(tmp_path: Path) -> None:
    cfg, users = setup_server(tmp_path, RULES)
    srv = serve_users(cfg, users)
    try:
        srv.wait_for(r"archive\.swept .*removed=0")  # the first pass, at start
        send_in(srv, "recent", [f"bob@{D}"])
        m = imap(srv, f"archive@{D}")
        try:  # an archived copy whose internal date is 40 days old (IMAP APPEND with a date)
            old = message("old").as_bytes().replace(b"\n", b"\r\n")
            typ, _ = m.append("Legal", None, imaplib.Time2Internaldate(1_700_000_000 - 40 * 86400), old)
            assert typ == "OK"
        finally:
            m.logout()
        assert sorted(archived(srv)) == ["old", "recent"]
    finally:
        assert srv.stop() == 0
    srv = serve_users(cfg, users)  # a new sweeper: its first pass comes at start
    try:
        srv.wait_for(r"archive\.swept .*removed=1")
        assert archived(srv) == ["recent"]
        assert subjects(srv, f"bob@{D}", "INBOX") == ["recent"]
    finally:
        assert srv.stop() == 0


def test_a_jmap_submission_is_archived_at_acceptance(server: Any, sink: tuple[int, Path]) -> None:
    """The worker's JMAP service builds its submitter with the archiving rules (carol's rule: direction out)."""
    import asyncio
    import json

    import aiohttp

    t = subprocess.run(mailsrv_cmd("token", "issue", f"carol@{D}", "--scope", "mail", "--json", "-c",
                                   str(server.config)), capture_output=True, text=True, check=True)
    bearer = {"Authorization": f"Bearer {json.loads(t.stdout)['token']}"}
    url = f"http://127.0.0.1:{server.ports['jmap']}"
    using = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail", "urn:ietf:params:jmap:submission"]

    async def submit() -> list[Any]:
        async with aiohttp.ClientSession() as http:
            async def api(*calls: list[Any]) -> list[Any]:
                async with http.post(url + "/jmap/api", json={"using": using, "methodCalls": list(calls)},
                                     headers=bearer) as r:
                    assert r.status == 200, await r.text()
                    return list((await r.json())["methodResponses"])

            async with http.get(url + "/jmap/session", headers=bearer) as r:
                acct = (await r.json())["primaryAccounts"]["urn:ietf:params:jmap:mail"]
            got = await api(["Mailbox/get", {"accountId": acct}, "m"], ["Identity/get", {"accountId": acct}, "i"])
            drafts = next(m["id"] for m in got[0][1]["list"] if m["role"] == "drafts")
            return await api(
                ["Email/set", {"accountId": acct, "create": {"d": {
                    "mailboxIds": {drafts: True}, "from": [{"email": f"carol@{D}"}],
                    "to": [{"email": "far@remote.test"}], "subject": "carol by jmap",
                    "textBody": [{"partId": "t"}], "bodyValues": {"t": {"value": "hello"}}}}}, "e"],
                ["EmailSubmission/set", {"accountId": acct, "create": {"s": {
                    "identityId": got[1][1]["list"][0]["id"], "emailId": "#d",
                    "envelope": {"mailFrom": {"email": f"carol@{D}"}, "rcptTo": [{"email": "far@remote.test"}]}}}},
                 "s"])

    r = asyncio.run(submit())
    assert r[1][1]["created"] is not None, r
    assert archived(server).count("carol by jmap") == 1  # at acceptance, before the queue sends it
