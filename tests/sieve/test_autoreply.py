"""RFC 3834 rules shared by Sieve vacation and JMAP VacationResponse; the delivery side's vacation state
and redirect marker."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import pytest

from mailsrv.delivery import sieve as dsieve
from mailsrv.delivery.sieve import VacationState, redirected, write_redirected
from mailsrv.sieve.autoreply import compose, no_reply_address, reply_subject, silenced


@pytest.mark.parametrize(("fields", "why"), [
    ({}, None),
    ({"auto-submitted": "no"}, None),
    ({"auto-submitted": "auto-replied"}, "auto-submitted"),  # RFC 3834 §5
    ({"auto-submitted": "Auto-Generated; owner=x"}, "auto-submitted"),
    ({"precedence": " Bulk "}, "precedence"),
    ({"precedence": "junk"}, "precedence"),
    ({"precedence": "first-class"}, None),
    ({"list-id": "<a.example>"}, "list"),  # RFC 2919
    ({"list-unsubscribe": "<mailto:u@example>"}, "list"),  # RFC 2369
])
def test_silenced(fields: dict[str, str], why: str | None) -> None:
    assert silenced(fields) == why


def test_no_reply_address() -> None:
    assert no_reply_address("")
    assert no_reply_address("nobody")
    assert no_reply_address("Me@Example.test", ["me@example.test"])  # never answer oneself
    assert no_reply_address("MAILER-DAEMON@example.net")
    assert no_reply_address("owner-list@example.net")
    assert no_reply_address("noreply@example.net")
    assert not no_reply_address("alice@example.net", ["me@example.test"])


def test_reply_subject() -> None:
    assert reply_subject("Hello") == "Auto: Hello"
    assert reply_subject("  ") == "Auto:"
    assert reply_subject("Auto: Hello") == "Auto: Hello"  # not doubled


def test_compose_headers_and_mime_body() -> None:
    raw = compose(from_="me@example.test", to="you@example.net", subject="Auto: hi", text="away\n",
                  msgid="m1@example.net", references=["r0@example.net", "m1@example.net"])
    m = email.message_from_bytes(raw, policy=email.policy.default)
    assert m["Auto-Submitted"] == "auto-replied" and m["In-Reply-To"] == "<m1@example.net>"
    assert m["References"] == "<r0@example.net> <m1@example.net>"
    assert m["Message-ID"].endswith("@example.test>") and m.get_content().splitlines() == ["away"]
    raw = compose(from_="me@example.test", to="you@example.net", subject="s", text="", msgid=None,
                  mime=b"Content-Type: text/html; charset=utf-8\n\n<p>away</p>\n")
    m = email.message_from_bytes(raw, policy=email.policy.default)
    assert m.get_content_type() == "text/html" and "<p>away</p>" in m.get_content()
    assert "In-Reply-To" not in m and b"\r\n\r\n<p>away</p>\r\n" in raw


def test_compose_keeps_header_values_on_one_line() -> None:
    raw = compose(from_="me@example.test", to="you@example.net", subject="Auto: a\r\nBcc: victim@example.net",
                  text="x", msgid=None)
    m = email.message_from_bytes(raw, policy=email.policy.default)
    assert "Bcc" not in m and m["Subject"] == "Auto: a Bcc: victim@example.net"


def test_vacation_state_once_per_period_and_handle(tmp_path: Path) -> None:
    assert VacationState.claim(tmp_path, "h", "a@example.net", 86400, now=1000.0)
    assert not VacationState.claim(tmp_path, "h", "a@example.net", 86400, now=1000.0 + 86399)
    assert VacationState.claim(tmp_path, "h2", "a@example.net", 86400, now=1001.0)  # another handle
    assert VacationState.claim(tmp_path, "h", "b@example.net", 86400, now=1002.0)
    assert VacationState.claim(tmp_path, "h", "a@example.net", 86400, now=1000.0 + 86400)  # period over


def test_vacation_state_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dsieve, "VACATION_ROWS", 3)
    for i in range(5):
        assert VacationState.claim(tmp_path, "h", f"s{i}@example.net", 86400, now=1000.0 + i)
    # the two oldest were forgotten: they may be answered again; the newest may not
    assert VacationState.claim(tmp_path, "h", "s0@example.net", 86400, now=1010.0)
    assert not VacationState.claim(tmp_path, "h", "s4@example.net", 86400, now=1010.0)


def test_redirect_marker_after_return_path(tmp_path: Path) -> None:
    msg = b"Return-Path: <x@example.net>\r\nSubject: s\r\n\r\nbody\r\n"
    want = b"Return-Path: <x@example.net>\r\nX-Sieve-Redirected-From: a@example.test\r\nSubject: s\r\n\r\nbody\r\n"
    assert redirected(msg, "a@example.test") == want
    assert redirected(b"Subject: s\r\n\r\n", "a@example.test").startswith(b"X-Sieve-Redirected-From: a@")
    spool, out = tmp_path / "spool", tmp_path / "out"
    spool.write_bytes(msg + b"x" * (3 << 20))
    write_redirected(out, spool, "a@example.test")
    assert out.read_bytes() == want + b"x" * (3 << 20)


def test_vacation_state_answered_for_the_jmap_vacation_response(tmp_path: Path) -> None:
    assert not VacationState.answered(tmp_path, "a@example.net", 0.0)  # no state file yet
    assert VacationState.claim(tmp_path, "h", "a@example.net", 86400, now=1000.0)
    assert VacationState.answered(tmp_path, "a@example.net", 1000.0)  # any handle, at or after `since`
    assert not VacationState.answered(tmp_path, "a@example.net", 1000.5)
    assert not VacationState.answered(tmp_path, "b@example.net", 0.0)
