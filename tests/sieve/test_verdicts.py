"""RFC 5235 spamtest, spamtestplus and virustest: the values read from our policy's verdict fields
(mailsrv.sieve.verdicts), only from the block after our own Authentication-Results, and the tests'
syntax and matching."""

from __future__ import annotations

import pytest

from mailsrv import sieve
from mailsrv.sieve import MessageView
from mailsrv.sieve.verdicts import OurVerdicts, Values, values

OURS = OurVerdicts("mx.example.test", virus_scanned=True, max_score=10.0)
TRACE = b"Return-Path: <a@remote.test>\r\nReceived: from remote.test by mx.example.test; Tue, 1 Apr 2025\r\n"


def head(*fields: bytes, rest: bytes = b"From: a@remote.test\r\nSubject: hi\r\n") -> list[tuple[str, bytes]]:
    return sieve.header_fields(TRACE + b"".join(f + b"\r\n" for f in fields) + rest + b"\r\nbody\r\n")


def ar(authserv: bytes = b"mx.example.test") -> bytes:
    return b"Authentication-Results: " + authserv + b";\r\n\tspf=pass smtp.mailfrom=remote.test"


@pytest.mark.parametrize(("score", "spam", "pct"), [
    (b"-1.5", "1", "0"), (b"0.0", "1", "0"), (b"2.5", "3", "25"), (b"5.0", "6", "50"), (b"9.9", "10", "99"),
    (b"10.0", "10", "100"), (b"42.0", "10", "100"), (b"nan", "0", "0"), (b"x" * 5000, "0", "0"),
])
def test_spam_values_from_our_score(score: bytes, spam: str, pct: str) -> None:
    got = values(head(ar(), b"X-Spam-Flag: NO", b"X-Spam-Score: " + score, b"X-Spam-Status: No"), OURS)
    assert (got.spam, got.spam_percent) == (spam, pct)
    assert got.virus == "1"  # scanned, no X-Virus-Status: clean


def test_virus_values() -> None:
    infected = head(ar(), b"X-Spam-Score: 1.0", b"X-Virus-Status: Infected (Eicar-Test-Signature)")
    removed = head(ar(), b"X-Spam-Score: 1.0", b"X-Virus-Status: Removed (Eicar-Test-Signature)")
    assert values(infected, OURS).virus == "5"
    assert values(removed, OURS).virus == "2"
    unscanned = OurVerdicts("mx.example.test", virus_scanned=False)
    assert values(head(ar(), b"X-Spam-Score: 1.0"), unscanned).virus == "0"


@pytest.mark.parametrize("fields", [
    (),  # our policy wrote nothing (submitted mail, policy off): not tested
    (b"X-Spam-Score: -5.0", b"X-Virus-Status: Removed (x)"),  # a sender's own fields, no AR of ours
    (ar(b"mx.other.test"), b"X-Spam-Score: -5.0"),  # another server's verdict
    (ar(b"mx.example.test.evil"), b"X-Spam-Score: -5.0"),
])
def test_fields_not_written_by_our_policy_do_not_count(fields: tuple[bytes, ...]) -> None:
    assert values(head(*fields), OURS) == Values()


def test_only_the_block_right_after_our_results_counts() -> None:
    # ours says 8.0; the sender's forged score further down (had the policy not removed it) is ignored,
    # as is a second copy of a field inside the block
    got = values(head(ar(), b"X-Spam-Flag: YES", b"X-Spam-Score: 8.0", b"X-Spam-Status: Yes",
                      rest=b"X-Spam-Score: -9.0\r\nFrom: a@remote.test\r\n"), OURS)
    assert got.spam == "8"
    got = values(head(ar(), b"X-Spam-Flag: NO", b"Subject: x", b"X-Spam-Score: -9.0"), OURS)
    assert got.spam == "0"  # the score is not in our block: none was written


def run_boxes(script: str, v: Values) -> list[str]:
    fields = tuple(head())
    msg = MessageView(fields, "a@remote.test", "bob@example.test", 100, verdicts=v)
    return [t.mailbox for t in sieve.run(sieve.compile(script), msg).targets]


SPAM = ('require ["spamtest", "fileinto", "relational", "comparator-i;ascii-numeric"];\n'
        'if spamtest :value "eq" :comparator "i;ascii-numeric" "0" { fileinto "Untested"; }\n'
        'elsif spamtest :value "ge" :comparator "i;ascii-numeric" "6" { fileinto "Junk"; }\n')


def test_spamtest_rfc5235_example() -> None:
    assert run_boxes(SPAM, Values("0", "0", "0")) == ["Untested"]
    assert run_boxes(SPAM, Values("6", "50", "1")) == ["Junk"]
    assert run_boxes(SPAM, Values("2", "12", "1")) == ["INBOX"]


def test_spamtestplus_percent_and_virustest() -> None:
    plus = ('require ["spamtestplus", "fileinto", "relational", "comparator-i;ascii-numeric"];\n'
            'if spamtest :percent :value "gt" :comparator "i;ascii-numeric" "60" { fileinto "Spam"; }\n'
            'if spamtest "0" { fileinto "NotTested"; }\n')  # spamtestplus brings spamtest
    assert run_boxes(plus, Values("7", "61", "0")) == ["Spam"]
    assert run_boxes(plus, Values("7", "60", "0")) == ["INBOX"]
    assert run_boxes(plus, Values()) == ["NotTested"]
    virus = ('require ["virustest", "fileinto", "relational", "comparator-i;ascii-numeric"];\n'
             'if virustest :value "ge" :comparator "i;ascii-numeric" "4" { fileinto "Quarantine"; }\n')
    assert run_boxes(virus, Values("1", "0", "5")) == ["Quarantine"]
    assert run_boxes(virus, Values("1", "0", "2")) == ["INBOX"]


def test_extensions_announced() -> None:
    assert {"spamtest", "spamtestplus", "virustest"} <= set(sieve.EXTENSIONS)
