"""The learner inside a real ``mailsrv serve``: IMAP moves into and out of Junk teach it (in the worker's
policy database, seen by ``mailsrv policy stats``), and the next spam over SMTP scores BAYES_9x and lands in Junk."""

from __future__ import annotations

import imaplib
import json
import random
import re
import smtplib
import ssl
import subprocess
from pathlib import Path
from typing import Any

from support.server import ServerProcess, mailsrv_cmd

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


def test_junk_moves_teach_the_learner_of_a_real_server(tmp_path: Path, dnsserver: Any) -> None:
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

    def imap() -> imaplib.IMAP4:
        c = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=30)
        c.starttls(ssl_context=ctx)
        c.login("alice@example.test", m.group(1))
        return c

    server = ServerProcess(config).wait_ready()
    try:
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
            s.ehlo("client.partner.test")
            for kind in ("spam", "ham"):
                for i in range(2):
                    s.sendmail("x@partner.test", ["alice@example.test"], letter(kind, i))
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
        stats = subprocess.run(mailsrv_cmd("policy", "stats", "--json", "-c", str(config)), capture_output=True,
                               text=True, check=True)
        assert json.loads(stats.stdout) == [{"scope": "example.test", "spam": 2, "ham": 2}]
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
