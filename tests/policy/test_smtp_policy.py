"""The policy over real SMTP: smtplib against the SMTP service on loopback, DNS answered by the local server."""

from __future__ import annotations

import base64
import re
import smtplib
import socket
from typing import Any

import pytest

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def send(port: int, sender: str, rcpts: list[str], data: bytes, helo: str = "mail.sender.test",
         login: tuple[str, str] | None = None) -> Any:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.ehlo(helo)
        if login:
            c.login(*login)
        return c.sendmail(sender, rcpts, data)


def ar_header(data: bytes) -> str:
    """Our Authentication-Results field, unfolded."""
    m = re.search(rb"^Authentication-Results: mx\.example\.test;.*?(?=\r\n\S)", data, re.M | re.S)
    assert m is not None, data[:800]
    return re.sub(r"\r\n\s+", " ", m.group(0).decode())


def local_ptr(dnsserver: Any) -> None:
    dnsserver.add("1.0.0.127.in-addr.arpa", "PTR", "mail.sender.test.")
    dnsserver.add("mail.sender.test", "A", "127.0.0.1")


SPF_CASES = [
    ("v=spf1 ip4:127.0.0.1 -all", "pass"),
    ("v=spf1 ip4:192.0.2.1 -all", "fail"),
    ("v=spf1 ip4:192.0.2.1 ~all", "softfail"),
    ("v=spf1 ?all", "neutral"),
    ("v=spf1 ip4:127.0.0.1 bogus:x -all", "permerror"),
    (None, "temperror"),
    ("", "none"),
]


@pytest.mark.parametrize(("record", "expected"), SPF_CASES)
def test_spf_results_in_authentication_results(policy_server: Any, dnsserver: Any, message: Any,
                                               record: str | None, expected: str) -> None:
    srv = policy_server()
    local_ptr(dnsserver)
    if record is None:
        dnsserver.servfail.add("sender.test")
    elif record:
        dnsserver.add("sender.test", "TXT", record)
    send(srv.port, "alice@sender.test", ["bob@example.test"], message())
    [d] = srv.backend.delivered
    ar = ar_header(d.data)
    assert f"spf={expected} " in ar and "smtp.mailfrom=sender.test" in ar
    assert "iprev=pass" in ar
    assert b"X-Spam-Flag: NO" in d.data and not d.junk


DKIM_CASES = ["pass", "fail", "permerror", "temperror"]


@pytest.mark.parametrize("expected", DKIM_CASES)
def test_dkim_results_in_authentication_results(policy_server: Any, dnsserver: Any, dkim_key: Any, sign: Any,
                                                message: Any, expected: str) -> None:
    srv = policy_server()
    local_ptr(dnsserver)
    if expected in ("pass", "fail"):
        dnsserver.add("sel._domainkey.sender.test", "TXT", dkim_key.txt)
    elif expected == "permerror":
        dnsserver.add("sel._domainkey.sender.test", "TXT", "v=DKIM1; k=rsa; p=")
    else:
        dnsserver.servfail.add("sel._domainkey.sender.test")
    data = sign(message(), "sender.test")
    if expected == "fail":
        data = data.replace(b"lunch at noon", b"lunch at ten")
    send(srv.port, "alice@sender.test", ["bob@example.test"], data)
    [d] = srv.backend.delivered
    ar = ar_header(d.data)
    assert f"dkim={expected} " in ar and "header.d=sender.test" in ar and "header.s=sel" in ar


def test_dmarc_reject_policy_refuses_spoof(policy_server: Any, dnsserver: Any, dkim_key: Any, sign: Any,
                                           message: Any) -> None:
    srv = policy_server()
    dnsserver.add("_dmarc.bank.test", "TXT", "v=DMARC1; p=reject; rua=mailto:dmarc@bank.test")
    dnsserver.add("bank.test", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    dnsserver.add("sel._domainkey.bank.test", "TXT", dkim_key.txt)
    spoof = message(from_addr="ceo@bank.test", subject="Urgent wire")
    with pytest.raises(smtplib.SMTPDataError) as exc:
        send(srv.port, "ceo@bank.test", ["bob@example.test"], spoof)
    assert exc.value.smtp_code == 550
    assert b"5.7.1" in exc.value.smtp_error and b"DMARC" in exc.value.smtp_error
    # a spoof with an envelope of its own that passes SPF is still unaligned
    dnsserver.add("evil.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    with pytest.raises(smtplib.SMTPDataError):
        send(srv.port, "bounce@evil.test", ["bob@example.test"], spoof)
    assert srv.backend.delivered == []
    # the real bank signs: aligned DKIM passes although SPF fails for 127.0.0.1
    genuine = sign(message(from_addr="ceo@bank.test"), "bank.test")
    send(srv.port, "ceo@bank.test", ["bob@example.test"], genuine)
    [d] = srv.backend.delivered
    ar = ar_header(d.data)
    assert "spf=fail" in ar and "dkim=pass" in ar and "dmarc=pass header.from=bank.test" in ar


def test_dmarc_quarantine_goes_to_junk(policy_server: Any, dnsserver: Any, message: Any) -> None:
    srv = policy_server()
    dnsserver.add("_dmarc.shop.test", "TXT", "v=DMARC1; p=quarantine")
    send(srv.port, "news@shop.test", ["bob@example.test"], message(from_addr="news@shop.test"))
    [d] = srv.backend.delivered
    assert d.junk and b"X-Spam-Flag: YES" in d.data
    assert "dmarc=fail header.from=shop.test policy.dmarc=quarantine" in ar_header(d.data)


def test_forged_authentication_results_removed(policy_server: Any, dnsserver: Any, message: Any) -> None:
    srv = policy_server()
    forged = ("Authentication-Results: mx.example.test; spf=pass smtp.mailfrom=bank.test;\r\n"
              "\tdkim=pass header.d=bank.test\r\n"
              "Authentication-Results: (comment) MX.Example.Test; dmarc=pass header.from=bank.test\r\n"
              "Authentication-Results: relay.other.test; spf=pass smtp.mailfrom=sender.test\r\n"
              "X-Spam-Flag: NO\r\nX-Spam-Status: No, score=-100\r\nX-Virus-Status: Clean\r\n")
    send(srv.port, "alice@sender.test", ["bob@example.test"], message(extra=forged))
    [d] = srv.backend.delivered
    fields = re.findall(rb"^Authentication-Results:[^\r]*", d.data, re.M)
    assert len(fields) == 2, fields
    assert fields[0].startswith(b"Authentication-Results: mx.example.test;")
    assert b"dkim=pass header.d=bank.test" not in d.data and b"header.from=bank.test" not in d.data
    assert fields[1] == b"Authentication-Results: relay.other.test; spf=pass smtp.mailfrom=sender.test"
    # the sender's own spam/virus verdicts are gone too: only ours remain
    assert d.data.count(b"X-Spam-Flag:") == 1 and b"score=-100" not in d.data and b"X-Virus-Status" not in d.data
    # trace fields stay first, our header right after them
    assert d.data.startswith(b"Return-Path: <alice@sender.test>\r\nReceived: from mail.sender.test")
    lines = d.data.split(b"\r\n")
    first_ar = next(i for i, ln in enumerate(lines) if ln.startswith(b"Authentication-Results"))
    assert all(ln.startswith((b"Return-Path", b"Received", b"\t")) for ln in lines[:first_ar])


def test_greylisting_defers_then_accepts(policy_server: Any, dnsserver: Any, message: Any) -> None:
    srv = policy_server(greylist=True, greylist_delay=300.0, greylist_whitelist=("friendly.test",))
    with pytest.raises(smtplib.SMTPRecipientsRefused) as exc:
        send(srv.port, "alice@sender.test", ["bob@example.test"], message())
    code, text = exc.value.recipients["bob@example.test"]
    assert (code, text[:5]) == (451, b"4.7.1")
    srv.clock.now += 60  # a retry too early is deferred again
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send(srv.port, "alice@sender.test", ["bob@example.test"], message())
    srv.clock.now += 300
    send(srv.port, "alice@sender.test", ["bob@example.test"], message())
    srv.clock.now += 3600  # once passed, no more delay for the triplet
    send(srv.port, "alice@sender.test", ["bob@example.test"], message())
    assert len(srv.backend.delivered) == 2
    # another recipient is a new triplet
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send(srv.port, "alice@sender.test", ["carol@example.test"], message())
    # a whitelisted domain with an SPF pass walks through; without the SPF pass it does not
    dnsserver.add("friendly.test", "TXT", "v=spf1 ip4:127.0.0.0/8 -all")
    send(srv.port, "x@friendly.test", ["carol@example.test"], message(from_addr="x@friendly.test"))
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send(srv.port, "x@sub.friendly.test", ["carol@example.test"], message(from_addr="x@friendly.test"))


def test_allow_and_block_lists(policy_server: Any, dnsserver: Any, message: Any) -> None:
    srv = policy_server(greylist=True)
    srv.lists.rows += [("", "block", "spammer.test"), ("example.test", "allow", "partner.test"),
                       ("carol@example.test", "block", "partner.test")]
    with pytest.raises(smtplib.SMTPSenderRefused) as exc:
        send(srv.port, "x@mail.spammer.test", ["bob@example.test"], message())
    assert exc.value.smtp_code == 550
    # the recipient domain allows partner.test, but a sender domain counts only with an SPF pass
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send(srv.port, "y@partner.test", ["bob@example.test"], message(from_addr="y@partner.test"))
    srv.policy.resolver.clear()
    dnsserver.add("partner.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    send(srv.port, "y@partner.test", ["bob@example.test"], message(from_addr="y@partner.test"))
    assert len(srv.backend.delivered) == 1
    # a network entry needs no SPF
    srv.lists.rows.append(("example.test", "allow", "127.0.0.0/8"))
    srv.policy.lists.invalidate()
    send(srv.port, "z@nospf.test", ["bob@example.test"], message(from_addr="z@nospf.test"))
    assert len(srv.backend.delivered) == 2
    # carol blocks it for herself (the narrower scope wins)
    with pytest.raises(smtplib.SMTPRecipientsRefused) as exc2:
        send(srv.port, "y@partner.test", ["carol@example.test"], message(from_addr="y@partner.test"))
    assert exc2.value.recipients["carol@example.test"][0] == 550


SPAM_BODY = ("WINNER!!! You have won the lottery jackpot. Claim your prize now, 100% free and risk-free.\r\n"
             "Click here: http://192.0.2.66/claim and http://bit.ly/xyz - act now, limited time offer!\r\n")


def test_spam_score_junk_and_reject(policy_server: Any, dnsserver: Any, message: Any) -> None:
    srv = policy_server(junk_score=5.0, reject_score=12.0)
    spam = message(subject="YOU HAVE WON THE LOTTERY JACKPOT!!!", body=SPAM_BODY)
    send(srv.port, "alice@sender.test", ["bob@example.test"], spam)
    [d] = srv.backend.delivered
    assert d.junk and b"X-Spam-Flag: YES" in d.data
    status = re.search(rb"X-Spam-Status: (.*?)\r\n(?!\t)", d.data, re.S)
    assert status is not None and status.group(1).startswith(b"Yes, score=")
    assert b"SPAM_PHRASES" in status.group(1) and b"URL_IP_ADDRESS" in status.group(1), status.group(1)
    # the same message with an SPF fail and no reverse DNS crosses the reject threshold
    dnsserver.add("other.test", "TXT", "v=spf1 -all")
    dnsserver.add("_dmarc.other.test", "TXT", "v=DMARC1; p=none")
    spam = message(from_addr="alice@other.test", subject="YOU HAVE WON THE LOTTERY JACKPOT!!!", body=SPAM_BODY)
    with pytest.raises(smtplib.SMTPDataError) as exc:
        send(srv.port, "alice@other.test", ["bob@example.test"], spam)
    assert (exc.value.smtp_code, exc.value.smtp_error[:5]) == (550, b"5.7.1")


def test_per_domain_thresholds(policy_server: Any, dnsserver: Any, message: Any) -> None:
    from mailsrv.config import DomainPolicyConfig

    srv = policy_server(junk_score=50.0, reject_score=100.0,
                        domain={"example.test": DomainPolicyConfig(junk_score=1.0, reject_score=3.0)})
    with pytest.raises(smtplib.SMTPDataError):
        send(srv.port, "alice@sender.test", ["bob@example.test"], message(body=SPAM_BODY))
    assert srv.policy.thresholds(["other.test"]) == (50.0, 100.0)
    assert srv.policy.thresholds(["other.test", "example.test"]) == (1.0, 3.0)


def test_eicar_rejected_through_real_clamd(policy_server: Any, dnsserver: Any, clamd: Any, message: Any) -> None:
    srv = policy_server(clamd_socket=str(clamd.socket))
    attachment = base64.encodebytes(EICAR).decode().replace("\n", "\r\n")
    body = ("--XX\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n--XX\r\n"
            "Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
            "Content-Disposition: attachment; filename=eicar.com\r\n\r\n" + attachment + "--XX--\r\n")
    virus = message(body=body).replace(b"Content-Type: text/plain; charset=utf-8",
                                       b"Content-Type: multipart/mixed; boundary=XX")
    with pytest.raises(smtplib.SMTPDataError) as exc:
        send(srv.port, "alice@sender.test", ["bob@example.test"], virus)
    assert exc.value.smtp_code == 554 and b"5.7.1" in exc.value.smtp_error
    assert b"Mailsrv.Test.EICAR" in exc.value.smtp_error
    send(srv.port, "alice@sender.test", ["bob@example.test"], message())
    assert len(srv.backend.delivered) == 1


def test_virus_quarantine(policy_server: Any, dnsserver: Any, clamd: Any, message: Any) -> None:
    srv = policy_server(clamd_socket=str(clamd.socket), virus_action="quarantine")
    send(srv.port, "alice@sender.test", ["bob@example.test"], message(body=EICAR.decode() + "\r\n"))
    [d] = srv.backend.delivered
    assert d.junk and b"X-Virus-Status: Infected (Mailsrv.Test.EICAR" in d.data


@pytest.mark.parametrize(("failure", "outcome"), [("tempfail", 451), ("accept", 250)])
def test_clamd_down(policy_server: Any, tmp_path: Any, message: Any, failure: str, outcome: int) -> None:
    srv = policy_server(clamd_socket=str(tmp_path / "no-clamd.sock"), clamd_failure=failure)
    if outcome == 451:
        with pytest.raises(smtplib.SMTPDataError) as exc:
            send(srv.port, "alice@sender.test", ["bob@example.test"], message())
        assert (exc.value.smtp_code, exc.value.smtp_error[:5]) == (451, b"4.7.1")
        assert srv.backend.delivered == []
    else:
        send(srv.port, "alice@sender.test", ["bob@example.test"], message())
        assert len(srv.backend.delivered) == 1


def test_submission_rate_limits_and_outbound_scan(policy_server: Any, clamd: Any, message: Any) -> None:
    srv = policy_server("submission", max_messages_per_hour=2, max_outside_recipients_per_day=3,
                        clamd_socket=str(clamd.socket))
    login = ("user@example.test", "pw")
    send(srv.port, "user@example.test", ["a@out.test", "b@out.test"], message(), login=login)
    # a fourth distinct outside recipient is over the daily limit; local ones never count
    refused = send(srv.port, "user@example.test", ["a@out.test", "c@out.test", "d@out.test", "x@example.test"],
                   message(), login=login)
    assert set(refused) == {"d@out.test"} and refused["d@out.test"][0] == 450
    with pytest.raises(smtplib.SMTPSenderRefused) as exc:
        send(srv.port, "user@example.test", ["a@out.test"], message(), login=login)
    assert exc.value.smtp_code == 450 and b"4.7.1" in exc.value.smtp_error
    srv.clock.now += 3601
    with pytest.raises(smtplib.SMTPDataError) as exc2:
        send(srv.port, "user@example.test", ["a@out.test"], message(body=EICAR.decode()), login=login)
    assert exc2.value.smtp_code == 554
    # no Authentication-Results for our own users' mail
    assert all(b"Authentication-Results" not in d.data for d in srv.backend.delivered)


def test_early_talker_refused(policy_server: Any) -> None:
    srv = policy_server(greet_pause=1.0)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"EHLO hasty.test\r\n")
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = s.recv(1024)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"554 5.5.1")
    # a patient client gets the greeting after the pause
    with smtplib.SMTP("127.0.0.1", srv.port, timeout=10) as c:
        assert c.noop()[0] == 250


def test_helo_claiming_to_be_us(policy_server: Any) -> None:
    srv = policy_server()
    with smtplib.SMTP("127.0.0.1", srv.port, timeout=10) as c:
        code, text = c.ehlo("mx.example.test")
        assert code == 550


def test_rspamd_scorer_plug(policy_server: Any, rspamd: str, message: Any) -> None:
    """The scorer handed to a real rspamd over its HTTP protocol (POST /checkv2)."""
    srv = policy_server(rspamd_url=rspamd, junk_score=6.0, reject_score=15.0)
    send(srv.port, "alice@sender.test", ["bob@example.test"], message(body="hello MAILSRV-RSPAMD-SPAM\r\n"))
    send(srv.port, "alice@sender.test", ["bob@example.test"], message())
    spam, ham = srv.backend.delivered
    assert spam.junk and b"X-Spam-Score: 7.5" in spam.data and b"tests=MAILSRV_TEST_SPAM" in spam.data
    assert not ham.junk and b"X-Spam-Score: 0.0" in ham.data


def test_rspamd_down_falls_back_to_rules(policy_server: Any, message: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    srv = policy_server(rspamd_url=f"http://127.0.0.1:{port}")
    send(srv.port, "alice@sender.test", ["bob@example.test"], message(subject="YOU WON THE CASINO JACKPOT!!!"))
    [d] = srv.backend.delivered
    assert b"SUBJ_ALL_CAPS" in d.data


def test_null_sender_checked_as_helo(policy_server: Any, dnsserver: Any, message: Any) -> None:
    """RFC 7208 §2.4: a bounce (MAIL FROM:<>) is checked as postmaster@HELO."""
    srv = policy_server()
    dnsserver.add("mail.sender.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    dnsserver.add("mail.other.test", "TXT", "v=spf1 -all")
    send(srv.port, "", ["bob@example.test"], message(), helo="mail.sender.test")
    send(srv.port, "", ["bob@example.test"], message(), helo="mail.other.test")
    first, second = (ar_header(d.data) for d in srv.backend.delivered)
    assert "spf=pass smtp.helo=mail.sender.test" in first and "smtp.mailfrom" not in first
    assert "spf=fail smtp.helo=mail.other.test" in second


def test_virus_strip_attachment(policy_server: Any, clamd: Any, message: Any) -> None:
    srv = policy_server(clamd_socket=str(clamd.socket), virus_action="strip")
    attachment = base64.encodebytes(EICAR).decode().replace("\n", "\r\n")
    body = ("--XX\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n--XX\r\n"
            "Content-Type: application/octet-stream; name=eicar.com\r\nContent-Transfer-Encoding: base64\r\n"
            "Content-Disposition: attachment; filename=eicar.com\r\n\r\n" + attachment + "--XX--\r\n")
    virus = message(body=body).replace(b"Content-Type: text/plain; charset=utf-8",
                                       b"Content-Type: multipart/mixed; boundary=XX")
    send(srv.port, "alice@sender.test", ["bob@example.test"], virus)
    [d] = srv.backend.delivered
    assert b"X-Virus-Status: Removed (Mailsrv.Test.EICAR" in d.data
    assert attachment.encode()[:40] not in d.data and b"EICAR-STANDARD" not in d.data
    assert b"eicar.com contained a virus (Mailsrv.Test.EICAR" in d.data
    assert b"see attachment" in d.data and b"\r\n" in d.data and b"\n\n" not in d.data.replace(b"\r\n", b"")
    assert d.data.startswith(b"Return-Path: <alice@sender.test>\r\nReceived: ")
    # a message that is the virus itself cannot be stripped: refused
    with pytest.raises(smtplib.SMTPDataError) as exc:
        send(srv.port, "alice@sender.test", ["bob@example.test"], message(body=EICAR.decode() + "\r\n"))
    assert exc.value.smtp_code == 554


def test_outbound_clamd_down_is_a_tempfail(policy_server: Any, tmp_path: Any, message: Any) -> None:
    srv = policy_server("submission", clamd_socket=str(tmp_path / "none.sock"))
    with pytest.raises(smtplib.SMTPDataError) as exc:
        send(srv.port, "user@example.test", ["a@out.test"], message(), login=("user@example.test", "pw"))
    assert (exc.value.smtp_code, exc.value.smtp_error[:5]) == (451, b"4.7.1")


def test_message_over_max_scan_size_gets_headers_only(policy_server: Any, dnsserver: Any, dkim_key: Any,
                                                      sign: Any, message: Any) -> None:
    """Above max_scan_size nothing is read whole: no DKIM verdict, no content score, but SPF/DMARC stand."""
    srv = policy_server(max_scan_size=2000)
    dnsserver.add("sel._domainkey.sender.test", "TXT", dkim_key.txt)
    dnsserver.add("sender.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    big = sign(message(body="WINNER lottery jackpot click here\r\n" + "x" * 70 + "\r\n" * 100 + "y" * 5000), "sender.test")
    send(srv.port, "alice@sender.test", ["bob@example.test"], big)
    [d] = srv.backend.delivered
    ar = ar_header(d.data)
    assert "spf=pass" in ar and "dkim=" not in ar and "dmarc=none header.from=sender.test" in ar
    assert b"TOO_BIG_TO_SCAN" in d.data and b"X-Spam-Flag: NO" in d.data


def test_analysis_failure_fails_open_but_still_scans(policy_server: Any, clamd: Any, message: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from mailsrv.policy import dmarc

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("library bug")

    monkeypatch.setattr(dmarc, "evaluate", broken)
    srv = policy_server(clamd_socket=str(clamd.socket))

    class BrokenLists:
        async def policy_lists(self, scopes: Any) -> Any:
            raise OSError("directory unavailable")

    srv.policy.lists.source = BrokenLists()
    forged = "Authentication-Results: mx.example.test; dmarc=pass header.from=bank.test\r\n"
    send(srv.port, "alice@sender.test", ["bob@example.test"], message(extra=forged))
    [d] = srv.backend.delivered
    assert b"Authentication-Results" not in d.data  # ours is missing, the forged one is still removed
    with pytest.raises(smtplib.SMTPDataError) as exc:
        send(srv.port, "alice@sender.test", ["bob@example.test"], message(body=EICAR.decode()))
    assert exc.value.smtp_code == 554


def test_state_unavailable_fails_open(policy_server: Any, tmp_path: Any, message: Any) -> None:
    from mailsrv.policy.state import PolicyState

    bad = tmp_path / "not-a-db"
    bad.mkdir()  # sqlite cannot open a directory
    srv = policy_server(greylist=True)
    srv.policy.state.close()
    srv.policy.state = PolicyState(bad / "x" / "..", clock=srv.clock)
    send(srv.port, "alice@sender.test", ["bob@example.test"], message())
    sub = policy_server("submission", max_messages_per_hour=1)
    sub.policy.state.close()
    sub.policy.state = PolicyState(bad / "y" / "..", clock=sub.clock)
    for _ in range(2):
        send(sub.port, "user@example.test", ["a@out.test"], message(), login=("user@example.test", "pw"))
    assert len(srv.backend.delivered) == 1 and len(sub.backend.delivered) == 2


def test_arc_overrides_dmarc_reject_only_for_trusted_sealers(policy_server: Any, dnsserver: Any, dkim_key: Any,
                                                            message: Any) -> None:
    import dkim

    srv = policy_server(arc_trusted_sealers=("lists.test",))
    dnsserver.add("_dmarc.bank.test", "TXT", "v=DMARC1; p=reject")
    dnsserver.add("arc._domainkey.lists.test", "TXT", dkim_key.txt)
    dnsserver.add("arc._domainkey.attacker.test", "TXT", dkim_key.txt)

    def sealed(sealer: str) -> bytes:
        msg = (f"Authentication-Results: mx.{sealer}; dkim=pass header.d=bank.test\r\n").encode() + \
            message(from_addr="ceo@bank.test")
        return b"".join(dkim.arc_sign(msg, b"arc", sealer.encode(), dkim_key.private_pem,
                                      f"mx.{sealer}".encode())) + msg

    send(srv.port, "bounce@lists.test", ["bob@example.test"], sealed("lists.test"))
    [d] = srv.backend.delivered
    assert "arc=pass" in ar_header(d.data) and "dmarc=fail" in ar_header(d.data)
    with pytest.raises(smtplib.SMTPDataError) as exc:
        send(srv.port, "bounce@attacker.test", ["bob@example.test"], sealed("attacker.test"))
    assert exc.value.smtp_code == 550


DMARC_CASES = [
    ("v=DMARC1; p=none", "dkim", "pass", 250),
    ("v=DMARC1; p=none", "", "fail", 250),
    (None, "", "none", 250),
    ("SERVFAIL", "", "temperror", 250),
    ("v=DMARC1; p=bogus", "", "permerror", 250),
    ("v=DMARC1; p=reject", "", "fail", 550),
    ("v=DMARC1; p=reject; SERVFAIL-SPF", "", "temperror", 451),
]


@pytest.mark.parametrize(("record", "signed", "expected", "code"), DMARC_CASES)
def test_dmarc_results(policy_server: Any, dnsserver: Any, dkim_key: Any, sign: Any, message: Any,
                       record: str | None, signed: str, expected: str, code: int) -> None:
    srv = policy_server()
    dnsserver.add("sel._domainkey.sender.test", "TXT", dkim_key.txt)
    if record == "SERVFAIL":
        dnsserver.servfail.add("_dmarc.sender.test")
    elif record is not None:
        if "SERVFAIL-SPF" in record:
            dnsserver.servfail.add("sender.test")  # SPF temperror, nothing else aligned: 451 under p=reject
            record = record.split("; SERVFAIL")[0]
        dnsserver.add("_dmarc.sender.test", "TXT", record)
    data = sign(message(), "sender.test") if signed else message()
    if code != 250:
        with pytest.raises(smtplib.SMTPDataError) as exc:
            send(srv.port, "alice@sender.test", ["bob@example.test"], data)
        assert exc.value.smtp_code == code
        return
    send(srv.port, "alice@sender.test", ["bob@example.test"], data)
    [d] = srv.backend.delivered
    assert f"dmarc={expected} header.from=sender.test" in ar_header(d.data)


def test_gtube_is_refused(policy_server: Any, message: Any) -> None:
    srv = policy_server()
    body = "Test message\r\nXJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n"
    with pytest.raises(smtplib.SMTPDataError) as exc:
        send(srv.port, "alice@sender.test", ["bob@example.test"], message(body=body))
    assert exc.value.smtp_code == 550 and not srv.backend.delivered
    send(srv.port, "alice@sender.test", ["bob@example.test"], message(body=body.replace("GTUBE", "GT-UBE")))
    assert len(srv.backend.delivered) == 1
