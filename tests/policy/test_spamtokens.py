"""The learner's tokenizer (mailsrv.policy.spamtokens) and the verdict zones: token families, bounds, hostile input."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailsrv.config import PolicyConfig
from mailsrv.policy.bayes import DAMPED_RULE, damped_rules, points, zone
from mailsrv.policy.spamtokens import (
    MAX_TOKENS,
    MAX_WORD,
    MIN_WORD,
    SUBJECT_WORDS,
    host_tokens,
    shape,
    strip_tags,
    subject_case,
    tokens,
    words,
)

#: Seconds a 1 MB hostile message may take to tokenize (loaded 2-core machine; about 0.1 s when quiet).
HOSTILE_BOUND = 5.0


def test_shape_collapses_runs_of_one_class() -> None:
    assert shape("<20021001123456.GA1234@example.org>") == "<9.A9@a.a>"
    assert shape("----=_NextPart_000_0007_01C2") == "----=_AaAa_9_9_9A9"
    assert shape("x" * 100, limit=5) == "a"


def test_words_lowercase_strip_punctuation_keep_marks() -> None:
    w = words("FREE!! Offer, (today) $100 ok 12345 " + "x" * 40 + " Ünïcode")
    assert {"free!!", "offer", "today", "$100", "num:5-9", "skip:x40", "ünïcode"} <= w
    assert "ok" not in w  # under 3 characters
    assert "free!! offer" in w and "offer today" in w  # adjacent pairs
    assert all(len(t.split(" ")[0]) <= MAX_WORD or t.startswith("skip:") for t in w)


def test_words_prefix_and_no_bigrams() -> None:
    assert words("Cheap Pills", "s:", bigrams=False) == {"s:cheap", "s:pills"}


def test_words_cjk_bigrams() -> None:
    assert {"s:季度", "s:报告"} <= words("季度报告", "s:")
    assert "季" not in words("季")


def test_host_tokens_registrable_domain_and_numeric() -> None:
    assert host_tokens("WWW.Shop.Example.CO.UK.", "url:") == ["url:www.shop.example.co.uk", "url:example.co.uk"]
    assert host_tokens("example.com", "url:") == ["url:example.com"]
    assert host_tokens("203.0.113.7", "url:") == ["url:ip", "url:ip:203.0"]
    assert host_tokens("...", "url:") == []


def test_strip_tags() -> None:
    assert strip_tags("a<b>bold</b>c") == "a bold c"
    assert strip_tags("x<!-- hidden -->y<script type=x>var a;</script>z<STYLE>p{}</Style >w") == "x y z w"
    assert strip_tags("1 < 2 and 3 <= 4 <3") == "1 < 2 and 3 <= 4 <3"  # not tags
    assert strip_tags("visible <a href='x") == "visible  "  # an unclosed tag hides the rest
    assert strip_tags("a<!-- never closed") == "a "
    assert strip_tags("a<script>never closed") == "a "


def test_html_markup_urls_and_entities() -> None:
    msg = (b"From: \"Shop\" <deals123@promo.example.com>\r\nTo: a@x.test, b@y.test\r\nSubject: GREAT DEALS TODAY!!\r\n"
           b"Date: Mon, 2 Sep 2002 10:00:00 -0700\r\nMessage-ID: <20020902.AB12@mx.promo.example.com>\r\n"
           b"Reply-To: winner@freemail.example.net\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/html; charset=us-ascii\r\n\r\n"
           b"<html><body><font size=7>&#70;&#82;&#69;&#69; money</font>"
           b"<div style=\"display:none\">hidden words</div>"
           b"<a href=\"http://203.0.113.9/x\">click</a> <img src=\"https://img.cdn.example.org/a.gif\">"
           b"<script>var evil = 1;</script>write to sales@biz.example.info</body></html>\r\n")
    t = tokens(msg)
    assert {"tag:font", "tag:img", "tag:hidden", "html", "free", "money", "url:ip", "url:ip:203.0",
            "url:img.cdn.example.org", "url:example.org", "proto:http", "proto:https",
            "email:example.info"} <= t
    assert {"s:caps:high", "s:has:!!", "s:great", "from:promo.example.com", "from:example.com", "fromlp:a9",
            "fn:shop", "replyto:example.net", "to:count:2", "to:bare", "midshape:9.A9@a.a.a.a",
            "mid:example.com", "date:zone:-0700"} <= t
    assert "evil" not in t and "var" not in t  # script bodies are not text


def test_message_without_headers_says_so() -> None:
    t = tokens(b"Subject: x\r\n\r\nhello there\r\n")
    assert {"mid:none", "to:count:0", "attach:0", "hello", "there", "hello there"} <= t
    assert "fn:none" in tokens(b"From: a@b.test\r\n\r\nx\r\n")


def test_fields_we_add_are_not_tokens() -> None:
    t = tokens(b"Received: from a by b\r\nX-Spam-Flag: YES\r\nReturn-Path: <x@y>\r\nSubject: s\r\n\r\nbody text\r\n")
    assert not {"h:received", "h:x-spam-flag", "h:return-path"} & t and "h:subject" in t


def test_fields_a_mailbox_adds_are_not_tokens() -> None:
    """An archived copy (mbox Status/X-Status/X-UID, X-Keywords, Thunderbird's) tokenizes as the message did at
    SMTP time: learned from archives, those fields would describe the archive, not the sender."""
    sent = b"From: a@b.test\r\nSubject: s\r\n\r\nbody text\r\n"
    stored = (b"Status: RO\r\nX-Status: A\r\nX-Keywords: $Junk\r\nX-UID: 7\r\nContent-Length: 11\r\nLines: 1\r\n"
              b"X-Mozilla-Status: 0001\r\nX-Mozilla-Status2: 00000000\r\nDelivery-Date: Tue, 28 May 2002\r\n" + sent)
    assert tokens(stored) == tokens(sent)
    assert "h:x-keyword" in tokens(b"X-Keyword: x\r\n" + sent)  # a sender's own field still is one


def test_a_list_managers_fields_are_one_token_and_list_id_is_its_id() -> None:
    """A dozen fields that all say "through a list" are one clue, not a dozen (Fisher's method counts each)."""
    posted = (b"From: a@b.test\r\nSubject: s\r\nList-Id: Irish Linux Users' Group <ilug.linux.ie>\r\n"
              b"List-Unsubscribe: <mailto:ilug-request@linux.ie?subject=unsubscribe>\r\nList-Post: <mailto:x>\r\n"
              b"List-Help: <mailto:y>\r\nX-BeenThere: ilug@linux.ie\r\nX-Mailman-Version: 1.1\r\n"
              b"Errors-To: ilug-admin@linux.ie\r\nPrecedence: bulk\r\n\r\nbody text\r\n")
    t = tokens(posted)
    assert {"h:list-*", "list-id:ilug.linux.ie", "precedence:bulk", "h:from"} <= t
    assert not [x for x in t if x.startswith(("h:list-i", "h:list-u", "h:x-beenthere", "h:errors-to", "list-id:irish",
                                              "list-unsubscribe:"))]
    assert "list-id:plain-id" in tokens(b"List-Id: plain-id\r\n\r\nx\r\n")  # no <id>: the value


@given(st.sampled_from([b"List-Id", b"List-Unsubscribe", b"X-BeenThere", b"Precedence", b"X-Keywords", b"Status"]),
       st.binary(max_size=400))
@settings(max_examples=200, deadline=None)
def test_list_and_mailbox_fields_of_any_value(name: bytes, value: bytes) -> None:
    value = value.replace(b"\r", b" ").replace(b"\n", b" ")
    t = tokens(b"Subject: s\r\n" + name + b": " + value + b"\r\n\r\nbody\r\n")
    assert "h:" + name.decode().lower() not in t  # never a token of its own
    assert ("h:list-*" in t) == (name not in (b"X-Keywords", b"Status"))
    assert all(len(x) <= 220 for x in t if x.startswith("list-id:"))


def test_subject_words_with_capitals_keep_their_case() -> None:
    t = tokens(b"Subject: FREE Money for YOU, act now!\r\n\r\nbody text\r\n")
    assert {"S:FREE", "S:Money", "S:YOU", "s:free", "s:money", "s:you"} <= t
    assert not {x for x in t if x.startswith("S:") and x[2:] == x[2:].lower()}  # "for", "act", "now": s: only
    assert subject_case("Re: X " + "Word " * 100) == ["S:Word"] * (SUBJECT_WORDS - 2)  # "Re:" -> "Re", 2 chars


@given(st.text(max_size=400))
@settings(max_examples=200, deadline=None)
def test_subject_case_of_any_text(subject: str) -> None:
    out = subject_case(subject)
    assert len(out) <= SUBJECT_WORDS
    for t in out:
        word = t.removeprefix("S:")
        assert t.startswith("S:") and MIN_WORD <= len(word) <= MAX_WORD and word != word.lower()
        assert word in subject


def test_base64_blob_is_one_skip_token() -> None:
    blob = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0123456789abcdefghijklmnop" * 3
    t = tokens(f"Subject: s\r\nContent-Type: text/plain\r\n\r\nsee {blob}\r\n".encode())
    assert "skip:q180" in t and not any(blob[:20].lower() in x for x in t if not x.startswith("skip:"))


@given(st.binary(max_size=3000))
@settings(max_examples=200, deadline=None)
def test_tokens_never_raise_and_stay_bounded(data: bytes) -> None:
    out = tokens(data)
    assert isinstance(out, set) and len(out) <= MAX_TOKENS


@given(st.text(max_size=500), st.text(max_size=20))
@settings(max_examples=200, deadline=None)
def test_words_of_any_text(text: str, prefix: str) -> None:
    for t in words(text, prefix):
        assert t.startswith(prefix) and len(t) > len(prefix)


@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=300))
@settings(max_examples=100, deadline=None)
def test_html_of_any_text(text: str) -> None:
    msg = b"Subject: x\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + text.encode("utf-8")
    assert "ct:text/html" in tokens(msg)


HOSTILE = {
    "unclosed tags": b"<" * 1_000_000,
    "tag soup": b"<a href=http://" * 70_000,
    "script never closed": b"<script>" + b"x " * 500_000,
    "comment never closed": b"<!--" + b"-" * 1_000_000,
    "entities": b"&#x" * 330_000,
    "long host": b"http://" + b"a." * 500_000,
    "at signs": b"a@" * 500_000,
    "one word": b"a" * 1_000_000,
    "style attrs": b"display :" * 110_000,
    "scripts never closed": b"<script>" * 125_000,
    "comments never closed": b"<!--" * 250_000,
    "styles": b"<style " * 140_000,
    "addresses": b"a@" + b"a.a" * 300_000,
    "userinfo": b"http://" + b"a@" * 400_000,
    "hrefs": b"href=http://a" * 80_000,
    "list ids": b"<" * 500_000 + b"a" * 500_000,
    "capital words": b"Aaa " * 250_000,
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
@pytest.mark.parametrize("ctype", [b"text/html", b"text/plain"])
def test_a_hostile_megabyte_takes_bounded_time(name: str, ctype: bytes) -> None:
    body = HOSTILE[name]
    msg = (b"Subject: " + body[:100_000] + b"\r\nContent-Type: " + ctype + b"; boundary=\"" + body[:5000] +
           b"\"\r\nX-Mailer: " + body[:50_000] + b"\r\nDate: " + body[:20_000] + b"\r\nList-Id: " + body[:50_000] +
           b"\r\n\r\n" + body)
    t0 = time.perf_counter()
    out = tokens(msg)
    assert time.perf_counter() - t0 < HOSTILE_BOUND
    assert len(out) <= MAX_TOKENS


def test_zones_and_points() -> None:
    cfg = PolicyConfig(bayes_spam_points=4.0, bayes_ham_points=2.0, bayes_spam_cutoff=0.9, bayes_ham_cutoff=0.2)
    assert [zone(p, cfg) for p in (0.0, 0.2, 0.21, 0.5, 0.89, 0.9, 1.0)] == \
        ["ham", "ham", "unsure", "unsure", "unsure", "spam", "spam"]
    assert points(0.94, cfg) == 4.0 and points(0.9, cfg) == 4.0  # the whole of it in the spam zone
    assert points(0.95, cfg) == 5.0 and points(0.9499, cfg) == 4.0  # all but certain: bayes_sure_points more
    strict = PolicyConfig(bayes_sure_cutoff=0.999)
    assert points(0.998, strict) == 4.0 and points(0.999, strict) == 5.0  # the cutoff is the operator's
    assert points(0.1, cfg) == -2.0
    assert points(0.5, cfg) == 0.0 and points(0.75, cfg) == 2.0 and points(0.35, cfg) == -0.6


def test_sure_ham_damps_the_content_rules_only() -> None:
    cfg = PolicyConfig()  # bayes_sure_ham_cutoff 0.01, bayes_sure_ham_rules 0.5
    rules = [("SPAM_PHRASES", 3.0), ("HTML_ONLY", 1.3), ("MISSING_MID", 1.0), ("DNSBL_LISTED", 5.0),
             ("SPF_PASS", -0.5), ("BAYES_00", -2.0)]
    assert damped_rules(rules, 0.01, cfg) == (DAMPED_RULE, -2.65)  # half of 3.0 + 1.3 + 1.0, not DNSBL/SPF
    assert damped_rules(rules, 0.0101, cfg) is None  # not sure of ham: the rules count in full
    assert damped_rules([("GTUBE", 1000.0), ("DNSBL_LISTED", 5.0)], 0.0, cfg) is None  # never damped
    assert damped_rules(rules, 0.0, PolicyConfig(bayes_sure_ham_rules=1.0)) is None  # the operator's weight
    assert damped_rules(rules, 0.0, PolicyConfig(bayes_sure_ham_rules=0.0)) == (DAMPED_RULE, -5.3)
