"""Helpers of the archive tests under a real ``mailsrv serve`` (tests/archive/test_serve.py and
test_legacy_markers.py): the setup with its archiving rules, sending in and out, reading over IMAP.
A module of its own: ``test_serve`` is a name several test folders use."""

from __future__ import annotations

import imaplib
import re
import smtplib
import subprocess
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from support.admin import cli
from support.server import init_setup, mailsrv_cmd

D = "example.test"
PW = "archive test password"
RULES = f"""
[archive.rule.legal]
match = ["bob@{D}", "team@{D}"]
direction = "in"
to = "archive@{D}"
folder = "Legal"
retention_days = 30

[archive.rule.sales]
match = ["carol@{D}"]
direction = "out"
to = "archive@{D}"
folder = "Legal"
retention_days = 30
"""


VAULT = "vault@vault.test"


def setup_server(base: Path, extra: str) -> tuple[Path, dict[str, str]]:
    cfg = init_setup(base / "s", "--demo", workers=2)
    users = dict(re.findall(r"demo user (\S+) password (\S+)", (base / "s" / "demo-users.txt").read_text()))
    for name in ("carol", "dave", "archive"):
        p = subprocess.run(mailsrv_cmd("user", "add", f"{name}@{D}", "--password-stdin", "-c", str(cfg)),
                           input=PW + "\n", capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        users[f"{name}@{D}"] = PW
    cli(cfg, "group", "add", f"team@{D}")
    cli(cfg, "group", "member", "add", f"team@{D}", f"dave@{D}")
    with open(cfg, "a") as fh:
        fh.write(extra)
    return cfg, users


def message(subject: str, sender: str = "x@remote.test") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "someone"
    msg["Subject"] = subject
    msg.set_content(f"body of {subject}\n")
    return msg


def send_in(srv: Any, subject: str, rcpts: list[str]) -> None:
    """From outside, on the MTA listener (no AUTH)."""
    with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=30) as s:
        s.send_message(message(subject), from_addr="x@remote.test", to_addrs=rcpts)


def send_out(srv: Any, sender: str, subject: str, rcpts: list[str]) -> None:
    """A member's client: submission over TLS with AUTH."""
    with smtplib.SMTP_SSL("127.0.0.1", srv.ports["submissions"], context=srv.ctx, timeout=30) as s:
        s.login(sender, srv.users[sender])
        s.send_message(message(subject, sender), from_addr=sender, to_addrs=rcpts)


def imap(srv: Any, user: str) -> imaplib.IMAP4_SSL:
    m = imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=srv.ctx, timeout=30)
    m.login(user, srv.users[user])
    return m


def subjects(srv: Any, user: str, folder: str) -> list[str]:
    m = imap(srv, user)
    try:
        typ, _ = m.select(folder, readonly=True)
        if typ != "OK":
            return []
        typ, data = m.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        if typ != "OK" or data == [None]:
            return []
        return [part[1].decode().split(":", 1)[1].strip() for part in data if isinstance(part, tuple)]
    finally:
        m.logout()


def archived(srv: Any) -> list[str]:
    return subjects(srv, f"archive@{D}", "Legal")


def header_of(srv: Any, user: str, folder: str, subject: str) -> bytes:
    """The header of the one message of ``folder`` with ``subject``."""
    m = imap(srv, user)
    try:
        assert m.select(folder, readonly=True)[0] == "OK"
        typ, data = m.search(None, "SUBJECT", f'"{subject}"')
        assert typ == "OK" and len(data[0].split()) == 1, data
        typ, got = m.fetch(data[0].decode(), "(BODY.PEEK[HEADER])")
        assert typ == "OK" and isinstance(got[0], tuple)
        return bytes(got[0][1])
    finally:
        m.logout()


def envelope(header: bytes) -> list[str]:
    return [line.decode() for line in header.split(b"\r\n") if line.startswith(b"X-Mailsrv-Envelope-")]
