"""The policy inside a real ``mailsrv serve`` (master + worker): built from [policy] over the real directory,
lists from ``mailsrv policy``, spam filed into the user's Junk mailbox on disk, DMARC and EICAR refused."""

from __future__ import annotations

import base64
import smtplib
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.server import ServerProcess, mailsrv_cmd

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def setup(tmp: Path, dns_address: str, clamd_socket: str) -> Path:
    d = tmp / "s"
    subprocess.run(mailsrv_cmd("init", "--dir", str(d), "--any-port", "--workers", "1", "--hostname",
                               "mail.example.test", "--demo"), capture_output=True, text=True, check=True)
    config = d / "mailsrv.toml"
    with config.open("a") as f:
        f.write(f'\n[policy]\nnameservers = ["{dns_address}"]\nskip_networks = []\ndns_timeout = 2.0\n'
                f'clamd_socket = "{clamd_socket}"\n')
    subprocess.run(mailsrv_cmd("policy", "add", "block", "spammer.test", "-c", str(config)), check=True,
                   capture_output=True)
    return config


def msg(from_addr: str, subject: str, body: str) -> bytes:
    return (f"From: <{from_addr}>\r\nTo: alice@example.test\r\nSubject: {subject}\r\n"
            f"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{abs(hash(body))}@x.test>\r\n\r\n{body}").encode()


def maildir_files(data: Path) -> dict[str, list[bytes]]:
    """Delivered files by folder name ('' for INBOX, '.Junk' ...), from every new/ and cur/ under data/mail."""
    out: dict[str, list[bytes]] = {}
    for f in [*data.rglob("new/*"), *data.rglob("cur/*")]:
        if f.is_file() and "mail" in f.parts:
            folder = f.parent.parent.name
            out.setdefault(folder if folder.startswith(".") else "", []).append(f.read_bytes())
    return out


def test_policy_under_mailsrv_serve(tmp_path: Path, dnsserver: Any, clamd: Any) -> None:
    dnsserver.add("_dmarc.bank.test", "TXT", "v=DMARC1; p=reject")
    dnsserver.add("good.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    config = setup(tmp_path, dnsserver.address, str(clamd.socket))
    server = ServerProcess(config).wait_ready()
    try:
        port = server.ports["smtp"]
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
            c.ehlo("client.good.test")
            c.sendmail("news@good.test", ["alice@example.test"], msg("news@good.test", "Minutes", "See you.\r\n"))
            spam = msg("promo@good.test", "YOU WON THE LOTTERY JACKPOT!!!",
                       "Winner! Claim your prize, 100% free: http://203.0.113.9/x http://bit.ly/y act now\r\n")
            c.sendmail("promo@good.test", ["alice@example.test"], spam)
            with pytest.raises(smtplib.SMTPDataError) as exc:
                c.sendmail("ceo@bank.test", ["alice@example.test"], msg("ceo@bank.test", "Wire", "Pay now.\r\n"))
            assert exc.value.smtp_code == 550
            virus = msg("news@good.test", "file", base64.b64encode(EICAR).decode() + "\r\n")
            virus = virus.replace(b"Subject: file\r\n", b"Subject: file\r\nContent-Transfer-Encoding: base64\r\n")
            with pytest.raises(smtplib.SMTPDataError) as exc2:
                c.sendmail("news@good.test", ["alice@example.test"], virus)
            assert exc2.value.smtp_code == 554
            with pytest.raises(smtplib.SMTPSenderRefused) as exc3:
                c.sendmail("x@mail.spammer.test", ["alice@example.test"], msg("x@spammer.test", "hi", "hi\r\n"))
            assert exc3.value.smtp_code == 550
    finally:
        assert server.stop() == 0
    folders = maildir_files(config.parent / "data")
    inbox = [m for m in folders.get("", []) if b"Subject: Minutes" in m]
    assert len(inbox) == 1
    assert b"Authentication-Results: mail.example.test;" in inbox[0] and b"spf=pass" in inbox[0]
    junk = [m for ms in folders.values() for m in ms if b"LOTTERY" in m]
    assert len(junk) == 1 and b"X-Spam-Flag: YES" in junk[0]
    assert ".Junk" in folders and junk[0] in folders[".Junk"], sorted(folders)
    assert not any(b"Wire" in m or b"Subject: file" in m for ms in folders.values() for m in ms)
