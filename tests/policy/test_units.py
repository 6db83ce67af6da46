"""Units of the policy: header splitting (hypothesis), lists, reputation, state, scoring, clamd client."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.server import init_setup, mailsrv_cmd

from mailsrv.net.dns import Resolver
from mailsrv.policy import reputation
from mailsrv.policy.authresults import authserv_id, is_ours
from mailsrv.policy.clamd import Clamd, ClamdUnavailable
from mailsrv.policy.headers import from_domains, header_end, split_fields, tag_list
from mailsrv.policy.lists import Lists, entry_matches, normalize_entry
from mailsrv.policy.pipeline import rewrite_spool
from mailsrv.policy.score import Facts, RuleScorer
from mailsrv.policy.state import PolicyState, client_net

_HEADER_LINE = st.one_of(
    st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,10}: [ -~]{0,30}\r\n", fullmatch=True),
    st.from_regex(r"[ \t][ -~]{0,20}\r\n", fullmatch=True),
)


@given(st.lists(_HEADER_LINE, max_size=12), st.binary(max_size=40))
def test_split_fields_keeps_every_byte(lines: list[str], body: bytes) -> None:
    """Hypothesis: the raw fields concatenate back to the header block they came from."""
    head = "".join(lines).encode()
    data = head + b"\r\n" + body
    fields = split_fields(data)
    joined = b"".join(raw for _, _, raw in fields)
    assert data.startswith(joined)
    for name, value, raw in fields:
        assert raw.lower().startswith(name) and b"\n" not in value.replace(b"\r\n", b"")
    # a header block that starts with a continuation line has no field to continue: it ends there
    if lines and lines[0][0] in " \t":
        assert fields == []


@given(st.binary(max_size=200))
def test_split_fields_any_bytes(data: bytes) -> None:
    fields = split_fields(data)
    assert data.startswith(b"".join(raw for _, _, raw in fields))
    assert 0 <= header_end(data) <= len(data)


def test_split_fields_unfolds() -> None:
    data = b"Subject: a\r\n b\r\nFrom: \"X\" <x@Sub.Example.COM>, y@other.test\r\n\r\nbody\r\nNot: a header\r\n"
    fields = split_fields(data)
    assert [(n, v) for n, v, _ in fields] == [(b"subject", b"a b"),
                                             (b"from", b"\"X\" <x@Sub.Example.COM>, y@other.test")]
    assert from_domains(fields) == ["sub.example.com", "other.test"]


@given(st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,5}", fullmatch=True),
                       st.from_regex(r"[A-Za-z0-9+/=.@:-]{0,20}", fullmatch=True), max_size=6))
def test_tag_list_roundtrip(tags: dict[str, str]) -> None:
    text = "; ".join(f"{k}={v}" for k, v in tags.items())
    assert tag_list(text) == tags


def test_tag_list_strips_whitespace_in_b() -> None:
    assert tag_list("v=1; b=abc\r\n\t def; d = example.test ;")["b"] == "abcdef"
    assert tag_list("d = example.test ;")["d"] == "example.test"


@pytest.mark.parametrize(("value", "ident"), [
    ("mx.example.test; spf=pass", "mx.example.test"),
    ("(forged) MX.example.test (x) ; none", "mx.example.test"),
    ("mx.example.test 1; dkim=pass", "mx.example.test"),
    ("other.test; spf=pass", "other.test"),
    ("", ""),
])
def test_authserv_id(value: str, ident: str) -> None:
    assert authserv_id(value) == ident
    assert is_ours(value, "mx.example.test") == (ident == "mx.example.test")


def test_rewrite_spool(tmp_path: Path) -> None:
    spool = tmp_path / "m"
    body = b"x" * 600_000
    spool.write_bytes(b"Return-Path: <a@b.test>\r\nReceived: from x\r\n\tby y; date\r\n"
                      b"Authentication-Results: mx.example.test; spf=pass\r\nSubject: s\r\n\r\n" + body)
    assert rewrite_spool(spool, ["Authentication-Results: mx.example.test; none", "X-Spam-Flag: NO"],
                         "mx.example.test") == 1
    assert spool.read_bytes() == (b"Return-Path: <a@b.test>\r\nReceived: from x\r\n\tby y; date\r\n"
                                  b"Authentication-Results: mx.example.test; none\r\nX-Spam-Flag: NO\r\n"
                                  b"Subject: s\r\n\r\n" + body)
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


@pytest.mark.parametrize(("entry", "sender", "ip", "hit"), [
    ("spam.test", "a@spam.test", "", True),
    ("spam.test", "a@mx.spam.test", "", True),
    ("spam.test", "a@notspam.test", "", False),
    ("@spam.test", "a@mx.spam.test", "", False),
    ("@spam.test", "a@spam.test", "", True),
    ("bob@spam.test", "BOB@spam.test", "", True),
    ("bob@spam.test", "bobby@spam.test", "", False),
    ("192.0.2.0/24", "", "192.0.2.9", True),
    ("192.0.2.0/24", "", "192.0.3.9", False),
    ("2001:db8::/32", "", "2001:db8::5", True),
])
def test_entry_matches(entry: str, sender: str, ip: str, hit: bool) -> None:
    assert entry_matches(normalize_entry(entry), sender, ip) == hit


@pytest.mark.parametrize("bad", ["", "nodot", "a b.test", "x@", "@"])
def test_normalize_entry_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        normalize_entry(bad)


async def test_lists_scope_order() -> None:
    class Src:
        rows = [("", "block", "spam.test"), ("example.test", "allow", "spam.test"),
                ("", "allow", "192.0.2.0/24"), ("", "block", "192.0.2.7")]

        async def policy_lists(self, scopes: Any) -> list[tuple[str, str, str]]:
            return [r for r in self.rows if r[0] in scopes]

    lists = Lists(Src())
    m = await lists.match_sender("a@spam.test", "", scopes=["example.test", ""])
    assert m is not None and (m.kind, m.scope) == ("allow", "example.test")
    m = await lists.match_sender("a@spam.test", "", scopes=["other.test", ""])
    assert m is not None and m.kind == "block"
    # block wins over allow inside one scope
    m = await lists.match_ip("192.0.2.7", scopes=[""])
    assert m is not None and m.kind == "block"
    assert (await lists.match_ip("192.0.2.8", scopes=[""])).kind == "allow"  # type: ignore[union-attr]
    assert await Lists(None).match_ip("192.0.2.7", scopes=[""]) is None


def test_dnsbl_name() -> None:
    assert reputation.dnsbl_name("192.0.2.99", "zen.example.") == "99.2.0.192.zen.example"
    assert reputation.dnsbl_name("2001:db8::1", "bl.test").startswith("1.0.0.0.0.0.0.0")


async def test_dnsbl_and_fcrdns(dnsserver: Any, resolver: Resolver) -> None:
    ip = "198.51.100.7"
    dnsserver.add("7.100.51.198.bl1.test", "A", "127.0.0.2")
    dnsserver.add("7.100.51.198.bl2.test", "A", "127.255.255.254")  # "query refused" is not a listing
    dnsserver.servfail.add("7.100.51.198.bl3.test")
    hits = await reputation.dnsbl(resolver, ip, ["bl1.test", "bl2.test", "bl3.test", "bl4.test"])
    assert [(h.zone, h.codes) for h in hits] == [("bl1.test", ("127.0.0.2",))]
    assert await reputation.dnsbl(resolver, "10.1.2.3", ["bl1.test"]) == []  # private: never queried
    dnsserver.add("7.100.51.198.in-addr.arpa", "PTR", "mail.good.test.")
    dnsserver.add("mail.good.test", "A", ip)
    assert await reputation.fcrdns(resolver, ip) == ("pass", "mail.good.test")
    dnsserver.add("8.100.51.198.in-addr.arpa", "PTR", "liar.test.")
    dnsserver.add("liar.test", "A", "192.0.2.1")
    assert (await reputation.fcrdns(resolver, "198.51.100.8"))[0] == "fail"
    assert (await reputation.fcrdns(resolver, "198.51.100.9"))[0] == "fail"
    dnsserver.servfail.add("10.100.51.198.in-addr.arpa")
    assert (await reputation.fcrdns(resolver, "198.51.100.10"))[0] == "temperror"


@pytest.mark.parametrize(("helo", "problems"), [
    ("mail.sender.test", []),
    ("[192.0.2.1]", []),
    ("[192.0.2.2]", ["address literal is not the client's address"]),
    ("192.0.2.1", ["bare IP address"]),
    ("localhost", ["not a fully qualified domain name"]),
    ("MX.example.test", ["claims to be us"]),
])
def test_helo_problems(helo: str, problems: list[str]) -> None:
    assert reputation.helo_problems(helo, client_ip="192.0.2.1", our_names=["mx.example.test"]) == problems


async def test_state_greylist_expiry_and_limits(tmp_path: Path) -> None:
    now = [1000.0]
    st_ = PolicyState(tmp_path / "p.db", clock=lambda: now[0])
    try:
        kw = {"delay": 60.0, "expire": 3600.0, "pass_ttl": 86400.0}
        assert await st_.greylist("192.0.2.1", "a@x.test", "b@y.test", **kw) == "new"
        now[0] += 30
        assert await st_.greylist("192.0.2.200", "A@x.test", "b@y.test", **kw) == "early"  # same /24
        now[0] += 4000  # unconfirmed and expired: starts over
        assert await st_.greylist("192.0.2.1", "a@x.test", "b@y.test", **kw) == "new"
        now[0] += 61
        assert await st_.greylist("192.0.2.1", "a@x.test", "b@y.test", **kw) == "pass"
        assert await st_.greylist("192.0.3.1", "a@x.test", "b@y.test", **kw) == "new"  # other /24
        for _ in range(3):
            await st_.record_sent("u")
        assert await st_.sent_last_hour("u") == 3
        now[0] += 3601
        assert await st_.sent_last_hour("u") == 0
        assert await st_.outside_recipient("u", "a@o.test", 2)
        assert await st_.outside_recipient("u", "b@o.test", 2)
        assert not await st_.outside_recipient("u", "c@o.test", 2)
        assert await st_.outside_recipient("u", "A@o.test", 2)  # already counted
        now[0] += 86401
        assert await st_.outside_recipient("u", "c@o.test", 2)
    finally:
        st_.close()
    assert client_net("2001:db8::1") == "2001:db8::/64"


async def test_state_shared_between_processes(tmp_path: Path) -> None:
    """Two workers greylist through one database: the second sees the first's triplet."""
    path = tmp_path / "p.db"
    a = PolicyState(path, clock=lambda: 1000.0)
    await a.greylist("192.0.2.1", "s@x.test", "r@y.test", delay=10, expire=100, pass_ttl=100)
    a.close()
    code = ("import asyncio; from pathlib import Path; from mailsrv.policy.state import PolicyState\n"
            f"s = PolicyState(Path({str(path)!r}), clock=lambda: 1020.0)\n"
            "print(asyncio.run(s.greylist('192.0.2.9', 's@x.test', 'r@y.test', delay=10, expire=100, pass_ttl=100)))\n"
            "s.close()\n")
    proc = await asyncio.create_subprocess_exec(mailsrv_cmd()[0], "-c", code, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0 and out.decode().strip() == "pass"


async def test_rule_scorer_explains() -> None:
    ham = (b"From: a@b.test\r\nTo: c@d.test\r\nSubject: Minutes of the budget meeting\r\n"
           b"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@b.test>\r\n\r\nSee attached minutes.\r\n")
    s = await RuleScorer().score(ham, Facts(spf="pass", dkim_aligned_pass=True))
    assert s.score < 0 and ("SPF_PASS", -0.5) in s.rules
    s = await RuleScorer().score(b"Subject: FREE CASINO BONUS!!!\r\n\r\nclick here http://1.2.3.4/x\r\n",
                                 Facts(spf="fail", dnsbl=["bl.test"], dmarc="fail", dmarc_policy="reject"))
    names = {n for n, _ in s.rules}
    assert {"SPF_FAIL", "DNSBL_LISTED(bl.test)", "DMARC_FAIL_REJECT", "MISSING_MID", "SUBJ_ALL_CAPS",
            "URL_IP_ADDRESS", "SPAM_PHRASES"} <= names
    assert s.status(5.0).startswith("Yes, score=")


async def test_clamd_client(clamd: Any, tmp_path: Path) -> None:
    c = Clamd(str(clamd.socket), timeout=10)
    assert await c.ping()
    assert (await c.scan_bytes(b"harmless")).status == "clean"
    big = tmp_path / "big"
    big.write_bytes(b"A" * 300_000 + b"MAILSRV-POLICY-TEST-VIRUS-PATTERN-7b1f" + b"B" * 1000)
    res = await c.scan_file(big)
    assert res.status == "infected" and res.signature.startswith("Mailsrv.Test.Pattern")
    assert (await c.scan_file(big, limit=1000)).status == "clean"  # the pattern lies past the limit
    down = Clamd(str(tmp_path / "none.sock"), timeout=2)
    assert not await down.ping()
    with pytest.raises(ClamdUnavailable):
        await down.scan_bytes(b"x")


async def test_clamd_that_never_answers(tmp_path: Path) -> None:
    sock = tmp_path / "mute.sock"
    accepted = asyncio.Event()

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await reader.read()  # never answers
        writer.close()

    server = await asyncio.start_unix_server(mute, path=str(sock))
    try:
        with pytest.raises(ClamdUnavailable, match="timed out"):
            await Clamd(str(sock), timeout=0.3).scan_bytes(b"x")
        assert accepted.is_set()
    finally:
        server.close()
        await server.wait_closed()


def test_cli_lists(tmp_path: Path) -> None:
    conf = init_setup(tmp_path / "setup")

    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(mailsrv_cmd("policy", *args, "-c", str(conf)), capture_output=True, text=True)
        assert (p.returncode == 0) == ok, p.stderr
        return p

    assert "added" in run("add", "block", "Spam.Test").stdout
    assert "already listed" in run("add", "block", "spam.test").stdout
    run("add", "allow", "192.0.2.0/24", "--scope", "example.test")
    run("add", "allow", "bad entry", ok=False)
    import json

    rows = json.loads(run("list", "--json").stdout)
    assert rows == [{"scope": "", "kind": "block", "entry": "spam.test"},
                    {"scope": "example.test", "kind": "allow", "entry": "192.0.2.0/24"}]
    run("del", "block", "spam.test")
    run("del", "block", "spam.test", ok=False)
    assert run("list", "--scope", "example.test").stdout == "example.test\tallow\t192.0.2.0/24\n"


@given(st.lists(st.sampled_from(["v=DMARC1", "p=reject", "p=none", "p=quarantine", "p=x", "sp=none", "sp=bad",
                                 "adkim=s", "aspf=r", "pct=50", "pct=abc", "pct=-3", "rua=mailto:a@b.test",
                                 "fo=1", "=", ";", " ", "v=DMARC2"]), max_size=8))
def test_dmarc_record_parser_is_total(tags: list[str]) -> None:
    """Hypothesis: any tag soup parses to a well-formed record or to None, never an exception."""
    from mailsrv.policy.dmarc import parse_record

    rec = parse_record("; ".join(tags), "d.test")
    if rec is not None:
        assert rec.p in ("none", "quarantine", "reject") and rec.sp in ("none", "quarantine", "reject")
        assert 0 <= rec.pct <= 100 and rec.adkim in "rs" and rec.aspf in "rs"
        assert tags[0] == "v=DMARC1"


@given(st.text(max_size=80))
def test_authserv_id_is_total(value: str) -> None:
    ident = authserv_id(value)
    assert ident == ident.lower() and ";" not in ident and " " not in ident


@pytest.mark.parametrize(("src", "dst", "label"), [
    ("INBOX", "Junk", "spam"), ("Archive", "Spam", "spam"), ("Junk", "INBOX", "ham"), ("Junk", "Work/Projects", "ham"),
    ("Junk", "Trash", None), ("INBOX", "Archive", None), ("Junk", "Junk", None),
])
def test_training_label(src: str, dst: str, label: str | None) -> None:
    from mailsrv.policy.pipeline import training_label

    assert training_label(src, dst) == label


async def test_training_signals_recorded(tmp_path: Path) -> None:
    from mailsrv.config import PolicyConfig
    from mailsrv.policy.pipeline import Policy

    state = PolicyState(tmp_path / "p.db")
    policy = Policy(PolicyConfig(), hostname="mx.example.test", resolver=Resolver(["127.0.0.1:1"]), state=state)
    try:
        m1 = b"Subject: a\r\n\r\nbody one\r\n"
        m2 = b"Subject: b\r\n\r\nbody two\r\n"
        assert await policy.train("Alice@example.test", "INBOX", "Junk", m1) == "spam"
        assert await policy.train("alice@example.test", "INBOX", "Junk", m2) == "spam"
        assert await policy.train("alice@example.test", "Junk", "INBOX", m2) == "ham"  # changed her mind
        assert await policy.train("alice@example.test", "INBOX", "Archive", m1) is None
        assert await state.training_counts("alice@example.test") == {"spam": 1, "ham": 1}
    finally:
        policy.close()


@pytest.mark.parametrize(("field", "safe"), [
    ("X-A: b\r\n\tc", "X-A: b\r\n\tc"),
    ("X-A: b\r\nX-Injected: yes", "X-A: b X-Injected: yes"),
    ("X-A: b\nc\rd\x00e", "X-A: b c d e"),
])
def test_safe_field(field: str, safe: str) -> None:
    from mailsrv.policy.pipeline import safe_field

    assert safe_field(field) == safe


@given(st.text(max_size=60))
def test_safe_field_never_starts_a_new_field(value: str) -> None:
    from mailsrv.policy.pipeline import safe_field

    out = safe_field("X-Test: " + value)
    for i, line in enumerate(out.split("\r\n")):
        assert "\r" not in line and "\n" not in line
        assert i == 0 or line[:1] in (" ", "\t")


@given(st.binary(max_size=80))
def test_clamd_reply_parser_is_total(raw: bytes) -> None:
    from mailsrv.policy.clamd import _parse

    try:
        res = _parse(raw)
    except ClamdUnavailable:
        return
    assert res.status in ("clean", "infected")
    assert (res.status == "infected") == raw.rstrip(b"\0").strip().endswith(b" FOUND")


@pytest.mark.parametrize(("raw", "status", "sig"), [
    (b"stream: OK\0", "clean", ""),
    (b"stream: Win.Test.EICAR_HDB-1 FOUND\0", "infected", "Win.Test.EICAR_HDB-1"),
])
def test_clamd_reply_examples(raw: bytes, status: str, sig: str) -> None:
    from mailsrv.policy.clamd import _parse

    res = _parse(raw)
    assert (res.status, res.signature) == (status, sig)
    with pytest.raises(ClamdUnavailable):
        _parse(b"INSTREAM size limit exceeded. ERROR\0")


@given(st.text(max_size=40))
def test_normalize_entry_is_idempotent(entry: str) -> None:
    try:
        once = normalize_entry(entry)
    except ValueError:
        return
    assert normalize_entry(once) == once and once == once.strip().lower() or "/" in once


async def test_dnsbl_skip_networks_and_mapped_addresses(dnsserver: Any, resolver: Resolver) -> None:
    import ipaddress

    dnsserver.add("5.0.0.10.bl.test", "A", "127.0.0.2")
    dnsserver.add("7.100.51.198.bl.test", "A", "127.0.0.3")
    assert await reputation.dnsbl(resolver, "10.0.0.5", ["bl.test"]) == []  # default: private never looked up
    only_loopback = [ipaddress.ip_network("127.0.0.1/32")]
    hits = await reputation.dnsbl(resolver, "10.0.0.5", ["bl.test"], only_loopback)
    assert [h.codes for h in hits] == [("127.0.0.2",)]
    # an IPv4-mapped IPv6 peer (dual-stack listener) is looked up as IPv4, and skipped as IPv4
    mapped = await reputation.dnsbl(resolver, "::ffff:198.51.100.7", ["bl.test"], only_loopback)
    assert [h.codes for h in mapped] == [("127.0.0.3",)]
    assert await reputation.dnsbl(resolver, "::ffff:10.0.0.5", ["bl.test"]) == []
    assert await reputation.dnsbl(resolver, "not an ip", ["bl.test"]) == []
