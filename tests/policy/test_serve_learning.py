"""The learner inside a real ``mailsrv serve``: IMAP moves into and out of Junk teach it (in the worker's
policy database, seen by ``mailsrv policy stats``), and the next spam over SMTP scores BAYES_9x and lands in Junk."""

from __future__ import annotations

import imaplib
import json
import random
import re
import smtplib
import sqlite3
import ssl
import subprocess
from pathlib import Path
from typing import Any

from support.server import ServerProcess, mailsrv_cmd, wait_until

from mailsrv import config as config_mod

# words the content rules do not know: only the learner can tell these apart
SPAMMY = "pharmacy discount offer bonus exclusive guaranteed deal savings bargain promo special".split()
HAMMY = "meeting agenda project report quarterly review minutes budget schedule deadline release".split()


def letter(kind: str, i: int) -> bytes:
    rnd = random.Random(f"{kind}{i}")
    words = SPAMMY if kind == "spam" else HAMMY
    body = " ".join(rnd.choice(words) for _ in range(50))
    sender = "deals@promo-mailer.test" if kind == "spam" else "carol@partner.test"
    return (f"From: <{sender}>\r\nTo: alice@example.test\r\nSubject: {kind} {' '.join(rnd.sample(words, 3))}\r\n"
            f"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{kind}{i}@x.test>\r\n\r\n{body}\r\n").encode()


def stats(config: Path) -> Any:
    out = subprocess.run(mailsrv_cmd("policy", "stats", "--json", "-c", str(config)), capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout)


def setup(tmp_path: Path, dnsserver: Any) -> tuple[Path, str, ssl.SSLContext]:
    d = tmp_path / "s"
    out = subprocess.run(mailsrv_cmd("init", "--dir", str(d), "--any-port", "--workers", "1", "--hostname",
                                     "mail.example.test", "--demo"), capture_output=True, text=True, check=True)
    m = re.search(r"demo user alice@example\.test password (\S+)", out.stdout + out.stderr)
    assert m is not None, out.stdout
    config = d / "mailsrv.toml"
    with config.open("a") as f:
        f.write(f'\n[policy]\nnameservers = ["{dnsserver.address}"]\nskip_networks = []\ndns_timeout = 2.0\n'
                "bayes_min_spam = 2\nbayes_min_ham = 2\njunk_score = 3.0\n")
    ctx = ssl.create_default_context(cafile=str(config_mod.load(str(config)).tls.cert))  # init's own certificate
    ctx.check_hostname = False
    return config, m.group(1), ctx


def send_two_of_each(server: ServerProcess) -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
        s.ehlo("client.partner.test")
        for kind in ("spam", "ham"):
            for i in range(2):
                s.sendmail("x@partner.test", ["alice@example.test"], letter(kind, i))


def imap_login(server: ServerProcess, password: str, ctx: ssl.SSLContext) -> imaplib.IMAP4:
    c = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=30)
    c.starttls(ssl_context=ctx)
    c.login("alice@example.test", password)
    return c


def test_junk_moves_teach_the_learner_of_a_real_server(tmp_path: Path, dnsserver: Any) -> None:
    config, password, ctx = setup(tmp_path, dnsserver)

    def imap() -> imaplib.IMAP4:
        return imap_login(server, password, ctx)

    server = ServerProcess(config).wait_ready()
    try:
        send_two_of_each(server)
        c = imap()
        c.select("INBOX")
        spam_uids = c.uid("SEARCH", None, "SUBJECT", "spam")[1][0].decode().replace(" ", ",")
        ham_uids = c.uid("SEARCH", None, "SUBJECT", "ham")[1][0].decode().replace(" ", ",")
        assert spam_uids and ham_uids
        assert c.uid("MOVE", spam_uids, "Junk")[0] == "OK"  # the user says: spam
        assert c.uid("MOVE", ham_uids, "Junk")[0] == "OK"  # a slip...
        c.select("Junk")
        back = c.uid("SEARCH", None, "SUBJECT", "ham")[1][0].decode().replace(" ", ",")
        assert c.uid("MOVE", back, "INBOX")[0] == "OK"  # ...corrected: ham
        c.logout()
        # the moves are learned by the worker's background trainer, after the tagged OK
        wait_until(lambda: stats(config) == [{"scope": "example.test", "spam": 2, "ham": 2}], timeout=30)
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
            s.ehlo("client.partner.test")
            s.sendmail("x@partner.test", ["alice@example.test"], letter("spam", 9))
            s.sendmail("x@partner.test", ["alice@example.test"], letter("ham", 9))
        c = imap()
        c.select("Junk", readonly=True)
        found = c.uid("SEARCH", None, "HEADER", "Message-ID", "spam9@x.test")[1][0].split()
        assert len(found) == 1
        status = c.uid("FETCH", found[0].decode(), "(BODY.PEEK[HEADER.FIELDS (X-Spam-Status)])")[1][0][1]
        assert b"BAYES_9" in status.replace(b"\r\n\t", b""), status
        c.select("INBOX", readonly=True)
        ham = c.uid("SEARCH", None, "HEADER", "Message-ID", "ham9@x.test")[1][0].split()
        assert len(ham) == 1
        c.logout()
    finally:
        assert server.stop() == 0


def test_a_dead_workers_journaled_moves_are_learned_by_the_next_worker(tmp_path: Path, dnsserver: Any) -> None:
    """Moves journaled by a worker killed before learning them (rows naming a message by mailbox and UID)
    are read from the store and learned by the next worker (the worker gives the trainer its reader)."""
    config, password, ctx = setup(tmp_path, dnsserver)
    policy_db = config_mod.load(str(config)).server.data_dir / "policy" / "policy.db"
    server = ServerProcess(config).wait_ready()
    try:
        send_two_of_each(server)
        c = imap_login(server, password, ctx)
        c.select("INBOX", readonly=True)
        spam = [int(u) for u in c.uid("SEARCH", None, "SUBJECT", "spam")[1][0].split()]
        ham = [int(u) for u in c.uid("SEARCH", None, "SUBJECT", "ham")[1][0].split()]
        c.logout()
    finally:
        assert server.stop() == 0
    assert len(spam) == 2 and len(ham) == 2
    dead = subprocess.Popen(["true"])  # a pid no process has any more: the journal's owner died
    dead.wait()
    db = sqlite3.connect(policy_db)
    with db:
        db.executemany("INSERT INTO training_queue (owner, account, label, mailbox, uid, message) "
                       "VALUES (?, 'alice@example.test', ?, 'INBOX', ?, NULL)",
                       [(dead.pid, "spam", u) for u in spam] + [(dead.pid, "ham", u) for u in ham])
    db.close()
    assert stats(config) == []
    server = ServerProcess(config).wait_ready()
    try:
        wait_until(lambda: stats(config) == [{"scope": "example.test", "spam": 2, "ham": 2}], timeout=30)
        db = sqlite3.connect(policy_db)
        assert db.execute("SELECT count(*) FROM training_queue").fetchone() == (0,)
        db.close()
    finally:
        assert server.stop() == 0
