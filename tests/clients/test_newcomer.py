"""A sysadmin's first day with clients we did not write, against ``mailsrv serve`` from ``mailsrv init --demo``.

Each test follows a README recipe: trust the demo certificate by its file and the name ``localhost``
(fetchmail, swaks, Python), adopt a Dovecot maildir with ``user add --store`` (UIDs kept), and move a
mailbox in over IMAP with mbsync (folders, flags, arrival dates).
"""

from __future__ import annotations

import datetime
import imaplib
import os
import poplib
import re
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.server import ServerProcess, init_setup

pytestmark = pytest.mark.peer


class Demo:
    def __init__(self, config: Path, server: ServerProcess) -> None:
        self.config, self.server = config, server
        self.cert = config.parent / "tls" / "cert.pem"
        self.passwords = {ln.split()[3]: ln.split()[-1]
                          for ln in (config.parent / "demo-users.txt").read_text().splitlines()}

    def port(self, name: str) -> int:
        return self.server.ports[name]

    def mailsrv(self, *args: str, stdin: str = "") -> str:
        p = subprocess.run([sys.executable, "-m", "mailsrv", "-c", str(self.config), *args], input=stdin,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        return p.stdout

    def imap(self, user: str, password: str) -> imaplib.IMAP4_SSL:
        ctx = ssl.create_default_context(cafile=str(self.cert))
        m = imaplib.IMAP4_SSL("localhost", self.port("imaps"), ssl_context=ctx, timeout=30)
        m.login(user, password)
        return m


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    config = init_setup(tmp_path_factory.mktemp("demo") / "s", "--demo", workers=1)
    server = ServerProcess(config).wait_ready()
    try:
        yield Demo(config, server)
    finally:
        assert server.stop() == 0


def _send(demo: Demo, subject: str) -> None:
    """alice -> bob over submissions with swaks, verifying the demo certificate as the README says."""
    p = subprocess.run(["swaks", "--server", f"localhost:{demo.port('submissions')}", "--tlsc", "--tls-verify",
                        "--tls-ca-path", str(demo.cert), "--auth", "PLAIN", "--auth-user", "alice@example.test",
                        "--auth-password", demo.passwords["alice@example.test"], "--from", "alice@example.test",
                        "--to", "bob@example.test", "--h-Subject", subject],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "250 2.0.0 OK" in p.stdout, p.stdout[-800:]


def test_fetchmail_trusts_the_demo_certificate_by_name_localhost(demo: Demo, tmp_path: Path) -> None:
    _send(demo, "for fetchmail")
    mbox = tmp_path / "mbox"
    rc = tmp_path / "fetchmailrc"
    rc.write_text(f'poll localhost service {demo.port("pop3s")} protocol pop3 user "bob@example.test" password '
                  f'"{demo.passwords["bob@example.test"]}" ssl sslcertck sslcertfile {demo.cert} keep '
                  f'mda "cat >> {mbox}"\n')
    rc.chmod(0o600)
    p = subprocess.run(["fetchmail", "-f", str(rc), "--nodetach", "--nosyslog", "-a"], capture_output=True,
                       text=True, timeout=60, env={**os.environ, "HOME": str(tmp_path)})
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Subject: for fetchmail" in mbox.read_text()


def test_user_add_store_adopts_a_dovecot_maildir_with_its_uids(demo: Demo, tmp_path: Path) -> None:
    md = tmp_path / "vmail" / "example.test" / "erin"
    for sub in ("cur", "new", "tmp", ".Sent/cur", ".Sent/new", ".Sent/tmp"):
        (md / sub).mkdir(parents=True)
    (md / "cur" / "1700000001.M1P1.old:2,S").write_bytes(b"From: x@old.test\r\nSubject: seven\r\n\r\n7\r\n")
    (md / "cur" / "1700000002.M2P1.old:2,").write_bytes(b"From: x@old.test\r\nSubject: ten\r\n\r\n10\r\n")
    (md / "dovecot-uidlist").write_text("3 V1700000000 N11 G3085f01b7f11094c501100008c4a11c1\n"
                                        "7 :1700000001.M1P1.old\n10 :1700000002.M2P1.old\n")
    assert f"store: {md}" in demo.mailsrv("user", "add", "erin@example.test", "--store", str(md),
                                          "--password-stdin", stdin="erin's password\n")
    m = demo.imap("erin@example.test", "erin's password")
    try:
        assert m.select("INBOX")[1] == [b"2"]
        assert m.response("UIDVALIDITY")[1] == [b"1700000000"]
        typ, data = m.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        got = [(re.search(rb"\bUID (\d+)", d[0]).group(1), d[1].strip())  # type: ignore[union-attr]
               for d in data if isinstance(d, tuple)]
        assert got == [(b"7", b"Subject: seven"), (b"10", b"Subject: ten")]
        assert b"\\Seen" in data[0][0]
    finally:
        m.logout()
    ctx = ssl.create_default_context(cafile=str(demo.cert))
    pop = poplib.POP3_SSL("localhost", demo.port("pop3s"), context=ctx, timeout=30)
    pop.user("erin@example.test")
    pop.pass_("erin's password")
    assert pop.stat()[0] == 2
    pop.quit()


def test_user_add_store_is_for_super_administrators_only(demo: Demo) -> None:
    demo.mailsrv("admin", "grant", "alice@example.test", "domain", "example.test")
    p = subprocess.run([sys.executable, "-m", "mailsrv", "-c", str(demo.config), "user", "add", "frank@example.test",
                        "--store", "/etc", "--no-password", "--as", "alice@example.test"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "only a super administrator" in p.stderr
    assert "frank@example.test" not in demo.mailsrv("user", "list")


def test_mbsync_moves_a_mailbox_in_over_imap(demo: Demo, tmp_path: Path) -> None:
    # the README's recipe, "old" and "new" both this server: bob's mail into a new account
    _send(demo, "to migrate")
    bob, pw = "bob@example.test", demo.passwords["bob@example.test"]
    m = demo.imap(bob, pw)
    m.create("Projects")
    m.append("Projects", "(\\Flagged)", imaplib.Time2Internaldate(datetime.datetime(2020, 5, 1, 12, 0, tzinfo=datetime.UTC)),
             b"From: x@old.test\r\nSubject: filed in 2020\r\n\r\nold\r\n")
    m.logout()
    demo.mailsrv("user", "add", "grace@example.test", "--password-stdin", stdin="grace's password\n")
    account = ("IMAPAccount {n}\nHost localhost\nPort {port}\nUser {u}\nPass \"{p}\"\nSSLType IMAPS\n"
               "CertificateFile {cert}\n\nIMAPStore {n}\nAccount {n}\n\n")
    rc = tmp_path / "migrate.rc"
    rc.write_text(account.format(n="old", port=demo.port("imaps"), u=bob, p=pw, cert=demo.cert)
                  + account.format(n="new", port=demo.port("imaps"), u="grace@example.test", p="grace's password",
                                   cert=demo.cert)
                  + f"Channel migrate\nFar :old:\nNear :new:\nPatterns *\nCreate Near\nSync Pull\n"
                    f"CopyArrivalDate yes\nSyncState {tmp_path}/state/\n")
    (tmp_path / "state").mkdir()
    p = subprocess.run(["mbsync", "-c", str(rc), "migrate"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    m = demo.imap("grace@example.test", "grace's password")
    try:
        assert m.select("Projects")[0] == "OK"
        typ, data = m.fetch("1:*", "(FLAGS INTERNALDATE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK" and len([d for d in data if isinstance(d, tuple)]) == 1
        assert b"\\Flagged" in data[0][0]
        assert b'INTERNALDATE " 1-May-2020 12:00:00 +0000"' in data[0][0]  # RFC 3501 date-day-fixed
        assert data[0][1].strip() == b"Subject: filed in 2020"
        m.select("INBOX")
        typ, found = m.search(None, "SUBJECT", '"to migrate"')
        assert typ == "OK" and len(found[0].split()) == 1
    finally:
        m.logout()
