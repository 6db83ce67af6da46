"""Shared mailboxes end to end over `mailsrv serve` (master + 2 workers, IMAPS, SMTP): `mailsrv share
grant` from the CLI, the grantee's IDLE in the owner's INBOX sees mail delivered by SMTP, mbsync pulls
a shared folder, `mailsrv share revoke` ends access at the grantee's next command."""

from __future__ import annotations

import re
import shutil
import smtplib
import subprocess
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import imapclient
import pytest
from support.admin import cli
from support.server import init_setup, mailsrv_cmd, serve_users

D = "example.test"
ALICE, BOB, CAROL = f"alice@{D}", f"bob@{D}", f"carol@{D}"
PW = "shared mailbox test password"
INBOX = f"Other Users/{ALICE}/INBOX"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    base = tmp_path_factory.mktemp("shared")
    cfg = init_setup(base / "s", "--demo", workers=2)
    users = dict(re.findall(r"demo user (\S+) password (\S+)", (base / "s" / "demo-users.txt").read_text()))
    p = subprocess.run(mailsrv_cmd("user", "add", CAROL, "--password-stdin", "-c", str(cfg)), input=PW + "\n",
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    users[CAROL] = PW
    server = serve_users(cfg, users)
    yield server
    assert server.stop() == 0


def imap(srv: Any, user: str) -> imapclient.IMAPClient:
    c = imapclient.IMAPClient("127.0.0.1", port=srv.ports["imaps"], ssl=True, ssl_context=srv.ctx, timeout=30)
    c.login(user, srv.users[user])
    return c


def send(srv: Any, subject: str) -> None:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = CAROL, ALICE, subject
    msg.set_content("for alice, read by bob\n")
    with smtplib.SMTP_SSL("127.0.0.1", srv.ports["submissions"], context=srv.ctx, timeout=30) as s:
        s.login(CAROL, srv.users[CAROL])
        s.send_message(msg)


def test_grant_idle_sees_delivery_then_revoke(srv: Any) -> None:
    cli(srv.cfg, "share", "grant", ALICE, BOB, "--rights", "read")
    mark = srv.mark()
    bob = imap(srv, BOB)
    try:
        assert bob.namespace().other[0][0] == "Other Users/"  # type: ignore[index]
        assert any(name == INBOX for _, _, name in bob.list_folders("", "Other Users/*"))
        bob.select_folder(INBOX, readonly=True)  # a read share answers READ-ONLY (imaplib insists)
        srv.wait_for(r"imap\.shared\.selected .*user=bob@example\.test.* owner=alice@example\.test mailbox=INBOX"
                     r" rights=lr", start=mark)  # the operator's audit trail
        n = bob.folder_status(INBOX, ["MESSAGES"])[b"MESSAGES"] + 1  # the next message's number
        bob.idle()
        send(srv, "while bob idles")
        seen: list[Any] = []
        for _ in range(150):  # a deadline of 150 x 0.2 s; each check returns at the first response
            seen += bob.idle_check(timeout=0.2)
            if (n, b"EXISTS") in seen:
                break
        bob.idle_done()
        assert (n, b"EXISTS") in seen
        fetched = bob.fetch([n], ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])
        assert b"while bob idles" in next(iter(fetched.values()))[b"BODY[HEADER.FIELDS (SUBJECT)]"]
        with pytest.raises(imapclient.exceptions.IMAPClientError, match="NOPERM"):
            bob.add_flags([n], [b"\\Seen"])
        carol = imap(srv, CAROL)
        try:
            assert not any("Other Users" in name for _, _, name in carol.list_folders())
        finally:
            carol.logout()
        cli(srv.cfg, "share", "revoke", ALICE, BOB)
        with pytest.raises(imapclient.exceptions.IMAPClientError, match="NOPERM"):
            bob.fetch([n], ["BODY.PEEK[]"])
        bob.unselect_folder()
        assert not any("Other Users" in name for _, _, name in bob.list_folders())
    finally:
        bob.logout()


@pytest.mark.peer
def test_mbsync_pulls_a_shared_folder(srv: Any, tmp_path: Path) -> None:
    assert shutil.which("mbsync"), "mbsync (isync) is installed by tools/install-peers.sh"
    cli(srv.cfg, "share", "grant", ALICE, BOB, "--rights", "read")
    send(srv, "pulled by mbsync")
    local = tmp_path / "local"
    local.mkdir()
    conf = tmp_path / "mbsyncrc"
    conf.write_text(f"""
IMAPAccount bob
Host 127.0.0.1
Port {srv.ports["imaps"]}
User {BOB}
Pass "{srv.users[BOB]}"
SSLType IMAPS
CertificateFile {srv.cfg.parent / "tls" / "cert.pem"}
AuthMechs LOGIN

IMAPStore remote
Account bob

MaildirStore local
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel shared
Master :remote:
Slave :local:
Patterns "{INBOX}"
Create Slave
Sync Pull
SyncState *
""")
    r = subprocess.run(["mbsync", "-c", str(conf), "-a"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    pulled = list((local / "Other Users" / ALICE / "INBOX").glob("*/*"))
    assert any(b"Subject: pulled by mbsync" in p.read_bytes() for p in pulled), (r.stdout, r.stderr)
    cli(srv.cfg, "share", "revoke", ALICE, BOB)
