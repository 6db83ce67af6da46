"""spamtest and virustest (RFC 5235) under a real ``mailsrv serve``: the values come from the verdict
fields our policy pipeline wrote on the inbound message, never from fields the sender wrote (a forged
Authentication-Results of ours and a forged X-Spam-Score are removed by the pipeline, and count for
nothing); environment (RFC 5183) under ihave; duplicate (RFC 7352) across deliveries; folders read over IMAP."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from support.server import init_setup, serve_users
from test_delivery_serve import activate, add_users, imap, send

D = "example.test"
PW = "sieve verdicts test password"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
SCRIPT = ('require ["spamtestplus", "virustest", "ihave", "fileinto", "relational", "comparator-i;ascii-numeric"];\n'
          'if spamtest :value "ge" :comparator "i;ascii-numeric" "10" { fileinto "Spam10"; }\n'
          'elsif spamtest :percent :value "lt" :comparator "i;ascii-numeric" "50" { fileinto "Low"; }\n'
          'if virustest "0" { fileinto "VirusUntested"; }\n'
          # RFC 5183 at delivery: the server's host name, a mail store
          'if ihave "environment" { if allof (environment "host" "mail.example.test", environment "location" "MS",\n'
          '  environment "phase" "during") { fileinto "Env"; } }\n')


DUP = 'require ["duplicate", "fileinto"];\nif duplicate :seconds 3600 { fileinto "Dups"; }\n'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    base = tmp_path_factory.mktemp("sieveverdicts")
    cfg = init_setup(base / "s", "--demo", workers=1)
    users = dict(re.findall(r"demo user (\S+) password (\S+)", (base / "s" / "demo-users.txt").read_text()))
    add_users(cfg, users, ("pia", "quinn"), PW)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:  # DNS: a port nobody answers on
        closed.bind(("127.0.0.1", 0))
        dead = closed.getsockname()[1]
    # the checks run on mail from 127.0.0.1 (skip_networks empty); GTUBE scores 1000: delivered (to Junk)
    # rather than refused, so that the script sees it
    ours = (f'reject_score = 5000.0\nskip_networks = []\nnameservers = ["127.0.0.1:{dead}"]\n'
            "dns_timeout = 0.5\n")
    text = cfg.read_text()
    text = (text.replace("\n[policy]\n", "\n[policy]\n" + ours, 1) if "\n[policy]\n" in text
            else text + "\n[policy]\n" + ours)
    cfg.write_text(text)
    activate(cfg, {"pia": SCRIPT, "quinn": DUP})
    srv = serve_users(cfg, users)
    yield srv
    assert srv.stop() == 0


def boxes_of(srv: Any, subject: str) -> list[str]:
    m = imap(srv, f"pia@{D}")
    try:
        found = []
        for box in ("INBOX", "Junk", "Spam10", "Low", "VirusUntested", "Env"):
            if m.select(box, readonly=True)[0] != "OK":
                continue
            typ, data = m.search(None, "SUBJECT", f'"{subject}"')
            assert typ == "OK"
            found += [box] * len(data[0].split())
        return found
    finally:
        m.logout()


def test_spamtest_reads_our_score_not_the_senders(server: Any) -> None:
    forged = {"Authentication-Results": "mail.example.test; spf=pass smtp.mailfrom=remote.test",
              "X-Spam-Score": "999.0", "X-Spam-Flag": "YES"}
    send(server, "plain one", [f"pia@{D}"], headers=forged)
    # our score of a plain message is low (under 5 of 10: :percent < 50), the forged 999 is gone;
    # no virus scanner in this setup: virustest is "0"
    assert sorted(boxes_of(server, "plain one")) == ["Env", "Low", "VirusUntested"]


def test_spamtest_ten_for_gtube(server: Any) -> None:
    forged = {"Authentication-Results": "mail.example.test; spf=pass smtp.mailfrom=remote.test",
              "X-Spam-Score": "-50.0"}
    send(server, "gtube one", [f"pia@{D}"], headers=forged, body=f"{GTUBE}\n")
    assert sorted(boxes_of(server, "gtube one")) == ["Env", "Spam10", "VirusUntested"]


def test_duplicate_state_across_deliveries(server: Any) -> None:
    """RFC 7352: the second and third deliveries of a Message-ID (a sender's resends) go to Dups (the
    state is SQLite in the account's root, written after each run)."""
    def count(box: str) -> int:
        m = imap(server, f"quinn@{D}")
        try:
            if m.select(box, readonly=True)[0] != "OK":
                return 0
            typ, data = m.search(None, "SUBJECT", '"dup one"')
            assert typ == "OK"
            return len(data[0].split())
        finally:
            m.logout()

    send(server, "dup one", [f"quinn@{D}"])
    assert (count("INBOX"), count("Dups")) == (1, 0)
    send(server, "dup one", [f"quinn@{D}"])  # send() derives the Message-ID from the subject: the same
    assert (count("INBOX"), count("Dups")) == (1, 1)
    send(server, "dup one", [f"quinn@{D}"], headers={"X-Resent": "1"})  # still the same Message-ID
    assert (count("INBOX"), count("Dups")) == (1, 2)
