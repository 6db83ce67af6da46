"""Parser cases: RFC 2045-2049 examples, torture-style nesting, charsets, RFC 2231, sections, limits."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from samples import ATTACH, RFC2046_MULTIPART, RFC2231, TORTURE, crlf

from mailsrv import mime
from mailsrv.mime import MessageStructure

pytestmark = pytest.mark.speedups


def test_rfc2046_multipart_example(parse: Callable) -> None:
    s = parse(RFC2046_MULTIPART)
    one, two = s.root.children
    assert (one.type, one.subtype, one.charset) == ("text", "plain", "us-ascii")
    body1 = RFC2046_MULTIPART[one.body_start : one.body_end]
    assert (
        body1
        == b"This is implicitly typed plain US-ASCII text.\r\nIt does NOT end with a linebreak."
    )
    body2 = RFC2046_MULTIPART[two.body_start : two.body_end]
    assert body2.endswith(b"It DOES end with a linebreak.\r\n")
    assert s.imap_bodystructure(False) == (
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 80 1)'
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 78 2) "mixed")'
    )
    assert s.imap_envelope() == (
        b'("Sun, 21 Mar 1993 23:56:48 -0800 (PST)" "Sample message" '
        b'(("Nathaniel Borenstein" NIL "nsb" "bellcore.com")) (("Nathaniel Borenstein" NIL "nsb" "bellcore.com")) '
        b'(("Nathaniel Borenstein" NIL "nsb" "bellcore.com")) (("Ned Freed" NIL "ned" "innosoft.com")) NIL NIL NIL NIL)'
    )


def test_torture_nesting_and_sections(parse: Callable) -> None:
    s = parse(TORTURE)
    assert [p.mime_type for p in s.parts()] == [
        "multipart/mixed",
        "text/plain",
        "multipart/digest",
        "message/rfc822",
        "multipart/alternative",
        "text/plain",
        "text/html",
        "message/rfc822",
        "text/plain",
        "image/png",
    ]
    # digest parts default to message/rfc822 (RFC 2046 §5.1.5) and carry an envelope
    first = s.part("2.1")
    assert first is not None and first.message is not None
    assert b'"first digested"' in first.message.imap_envelope()
    assert s.part("2.1.2") is not None and s.part("2.1.2").mime_type == "text/html"  # type: ignore[union-attr]
    rng = s.section_range("2.1.2")
    assert rng is not None and TORTURE[rng[0] : rng[1]] == b"<p>html</p>"
    rng = s.section_range("2.2.TEXT")
    assert rng is not None and TORTURE[rng[0] : rng[1]] == b"inner body"
    rng = s.section_range("2.2.HEADER")
    assert rng is not None and TORTURE[rng[0] : rng[1]].startswith(b"From: b@example.org")
    rng = s.section_range("3.MIME")
    assert rng is not None and TORTURE[rng[0] : rng[1]].startswith(b"Content-Type: image/png")
    assert s.section_range("4") is None
    assert s.section_range("1.1") is None
    assert s.section_range("0") is None
    assert s.section_range("BOGUS") is None
    assert s.section_range("") == (0, len(TORTURE))
    assert s.section_range("HEADER") == (0, s.header_end)
    assert b'"digest"' in s.imap_bodystructure()


def test_single_part_sections(parse: Callable) -> None:
    raw = crlf("Subject: x\n\nhello\n")
    s = parse(raw)
    assert s.section_range("1") == (s.header_end, len(raw))
    assert s.section_range("TEXT") == (s.header_end, len(raw))
    assert s.section_range("2") is None
    assert s.section_range("1.MIME") == (0, s.header_end)


def test_header_fields_selection(parse: Callable) -> None:
    raw = crlf("Subject: hi\nX-A: 1\nTo: a@b.c,\n c@d.e\nsubject: again\n\nbody\n")
    s = parse(raw)
    assert mime.header_fields(raw, s, "", [b"SUBJECT"]) == b"Subject: hi\r\nsubject: again\r\n\r\n"
    assert (
        mime.header_fields(raw, s, "", [b"subject", b"x-a"], exclude=True)
        == b"To: a@b.c,\r\n c@d.e\r\n\r\n"
    )
    assert mime.header_values(raw, s.root, b"to") == [b" a@b.c,\r\n c@d.e"]
    assert mime.header_fields(raw, s, "7", [b"to"]) == b""


ENCODED = {
    # Chinese: GB2312 (decoded as its superset GB18030), GBK, Big5
    "=?GB2312?B?1tDOxNPKvP4=?=": "中文邮件",
    "=?gbk?B?suLK1A==?=": "测试",
    "=?big5?B?pKSk5Q==?=": "中文",
    # Japanese ISO-2022-JP
    "=?ISO-2022-JP?B?GyRCRnxLXDhsGyhC?=": "日本語",
    # Cyrillic KOI8-R and Windows-1251
    "=?KOI8-R?Q?=F0=D2=C9=D7=C5=D4?=": "Привет",
    "=?windows-1251?B?z/Do4uXy?=": "Привет",
    # adjacent words: the white space between them disappears (RFC 2047 §6.2)
    "=?UTF-8?Q?a?= =?UTF-8?Q?b?=": "ab",
    "=?UTF-8?B?5Lit?= =?UTF-8?B?5paH?=": "中文",
    # a multi-byte character split across two words
    "=?UTF-8?B?5Lg=?= =?UTF-8?B?rQ==?=": "中",
    "x =?ISO-8859-1?Q?caf=E9?= y": "x café y",
    # broken or unknown words stay as written
    "=?x-unknown?Q?abc?=": "=?x-unknown?Q?abc?=",
    "=?utf-8?B?###?= tail": "=?utf-8?B?###?= tail",
    "=?utf-8?Q?no_end": "=?utf-8?Q?no_end",
}


@pytest.mark.parametrize("word", list(ENCODED))
def test_encoded_words(parse: Callable, word: str) -> None:
    raw = crlf(f"Subject: {word}\n\nx\n")
    s = parse(raw)
    assert s.subject == ENCODED[word]
    # IMAP ENVELOPE keeps the raw value (Dovecot does too)
    assert word.encode() in s.imap_envelope()


def test_raw_8bit_headers(parse: Callable) -> None:
    raw = b"Subject: \xe4\xb8\xad\xe6\x96\x87\r\nFrom: \xc3\xa9 <e@x.org>\r\n\r\nbody"
    s = parse(raw)
    assert s.subject == "中文"
    # 8-bit bytes go out as a literal (RFC 3501 §4.3), never raw in a quoted string
    assert b"{6}\r\n\xe4\xb8\xad\xe6\x96\x87" in s.imap_envelope()
    assert mime.jmap_addresses(s.field(b"from") or b"") == [{"name": "é", "email": "e@x.org"}]
    latin = parse(b"Subject: caf\xe9\r\n\r\n")
    assert latin.subject == "café"


def test_addresses_groups_and_quoted_local_parts() -> None:
    value = b' "Doe, John" <"john doe"@example.com>, team: a@x.org, b@y.org (c);, =?utf-8?q?J=C3=B6rg?= <j@z.de>'
    addrs = mime.parse_addresses(value)
    assert addrs == [
        mime.Address("Doe, John", None, "john doe", "example.com"),
        mime.Address(None, None, "team", None),
        mime.Address(None, None, "a", "x.org"),
        mime.Address("c", None, "b", "y.org"),
        mime.Address(None, None, None, None),
        mime.Address("=?utf-8?q?J=C3=B6rg?=", None, "j", "z.de"),
    ]
    flat = mime.jmap_addresses(value)
    assert flat[0] == {"name": "Doe, John", "email": "john doe@example.com"}
    assert flat[-1] == {"name": "Jörg", "email": "j@z.de"}
    grouped = mime.jmap_addresses(value, grouped=True)
    assert [g["name"] for g in grouped] == [None, "team", None]
    assert [a["email"] for a in grouped[1]["addresses"]] == ["a@x.org", "b@y.org"]
    # routes and missing parts (RFC 5322 §4.4 obsolete syntax)
    assert mime.parse_addresses(b"<@a.org,@b.org:x@c.org>") == [
        mime.Address(None, "@a.org,@b.org", "x", "c.org")
    ]
    assert mime.parse_addresses(b"undisclosed-recipients:;") == [
        mime.Address(None, None, "undisclosed-recipients", None),
        mime.Address(None, None, None, None),
    ]
    assert mime.parse_addresses(b"nobody") == [mime.Address(None, None, "nobody", "MISSING_DOMAIN")]


def test_threading_fields(parse: Callable) -> None:
    raw = crlf(
        "Message-ID: <a@x>\nIn-Reply-To: <b@x> (comment)\nReferences: <c@x>\n <b@x>  <broken\n\nbody"
    )
    s = parse(raw)
    assert s.message_id == "a@x"
    assert s.in_reply_to == ["b@x"]
    assert s.references == ["c@x", "b@x"]


def test_rfc2231_parameters(parse: Callable) -> None:
    s = parse(RFC2231)
    a, b = s.root.children
    assert a.params["title"] == "This is even more ***fun*** isn't it!"
    assert a.filename == "中文.pdf"
    assert b.filename == "longname.txt"
    assert b.params["name"] == "报告.pdf"
    # IMAP shows RFC 2231 parameters joined but still encoded, as Dovecot does
    assert (
        b'"title*" "us-ascii\'en\'This%20is%20even%20more%20%2A%2A%2Afun%2A%2A%2A%20isn\'t it!"'
        in s.imap_bodystructure()
    )
    assert b'("attachment" ("filename" "longname.txt"))' in s.imap_bodystructure()


def test_jmap_body_parts_like_mail_clients(parse: Callable) -> None:
    s = parse(ATTACH)
    parts = mime.jmap_body_parts(ATTACH, s)
    # RFC 8621 §4.1.4: the inline image after the alternative shows in both bodies
    assert [p["partId"] for p in parts["textBody"]] == ["1.1", "3"]
    assert [p["partId"] for p in parts["htmlBody"]] == ["1.2.1", "3"]
    assert [p["partId"] for p in parts["attachments"]] == ["1.2.2", "2"]
    assert parts["hasAttachment"] is True
    att = {p["partId"]: p for p in parts["attachments"]}
    assert att["2"]["name"] == "report.pdf" and att["2"]["type"] == "application/pdf"
    assert att["2"]["size"] == len(b"%PDF-1.4\n%%EOF\n")
    assert att["1.2.2"]["cid"] == "logo"
    tree = parts["bodyStructure"]
    assert tree["type"] == "multipart/mixed" and tree["partId"] is None
    assert [p["type"] for p in tree["subParts"]] == [
        "multipart/alternative",
        "application/pdf",
        "image/jpeg",
    ]
    assert any(h["name"] == "Content-Type" for h in tree["headers"])
    assert mime.preview(ATTACH, s).startswith(
        "Hello 世界, this is the text body that is long enough to be soft-wrapped."
    )
    assert len(mime.preview(ATTACH, s, max_chars=10)) == 10


def test_decoding_base64_qp_streaming(parse: Callable) -> None:
    s = parse(ATTACH)
    pdf = s.part("2")
    assert pdf is not None
    assert mime.decoded_body(ATTACH, pdf) == b"%PDF-1.4\n%%EOF\n"
    assert mime.binary_size(ATTACH, pdf) == 15
    text = s.part("1.1")
    assert text is not None
    assert mime.part_text(ATTACH, text).startswith(
        "Hello 世界, this is the text body that is long enough to be"
    )
    # streaming: tiny chunks give the same bytes
    big = b"".join(b"%08d" % i for i in range(50000))
    import base64

    enc = base64.encodebytes(big)
    raw = b"Content-Transfer-Encoding: base64\r\n\r\n" + enc.replace(b"\n", b"\r\n")
    bs = parse(raw)
    chunks = list(mime.iter_decoded(raw, bs.root, chunk=1024))
    assert len(chunks) > 100 and b"".join(chunks) == big
    assert mime.binary_size(raw, bs.root) == len(big)
    # invalid base64: junk is skipped, never an exception
    junk = b"Content-Transfer-Encoding: base64\r\n\r\nQUJD!!!\r\nRE*VG\r\n="
    assert mime.decoded_body(junk, parse(junk).root).startswith(b"ABCDE")


def test_cache_is_compact_and_versioned(parse: Callable) -> None:
    s = parse(ATTACH)
    blob = s.to_cache()
    assert blob[0] & 0x7F == mime.CACHE_VERSION
    assert len(blob) < len(ATTACH)
    assert MessageStructure.from_cache(blob) == s
    with pytest.raises(ValueError):
        MessageStructure.from_cache(b"\x7f" + blob[1:])
    with pytest.raises(ValueError):
        MessageStructure.from_cache(blob[:1] + b"garbage")
    with pytest.raises(ValueError):
        MessageStructure.from_cache(b"")


# --- malformed mail: bounded time, best effort, never an exception -------------


def test_missing_and_wrong_boundaries(parse: Callable) -> None:
    no_param = crlf("Content-Type: multipart/mixed\n\n--x\nContent-Type: text/plain\n\nhi\n--x--\n")
    s = parse(no_param)
    assert s.root.children == []
    assert b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0)' in s.imap_bodystructure(
        False
    )
    unterminated = crlf(
        "Content-Type: multipart/mixed; boundary=x\n\n--x\n\nfirst\n--x\n\nsecond, no end\n"
    )
    kids = parse(unterminated).root.children
    assert [unterminated[k.body_start : k.body_end] for k in kids] == [
        b"first",
        b"second, no end\r\n",
    ]
    wrong = crlf("Content-Type: multipart/mixed; boundary=x\n\n--y\n\nnothing\n")
    assert parse(wrong).root.children == []


def test_same_boundary_nested(parse: Callable) -> None:
    raw = crlf(
        "Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: multipart/alternative; boundary=b\n\n"
        "--b\n\none\n--b\n\ntwo\n--b--\n--b\n\nthree\n--b--\n"
    )
    s = parse(raw)
    assert [p.mime_type for p in s.parts()] == [
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "text/plain",
        "text/plain",
    ]


def test_deep_nesting_is_cut_at_the_limit(parse: Callable) -> None:
    depth = 10000
    head = b"".join(
        b"Content-Type: multipart/mixed; boundary=x%dx\r\n\r\n--x%dx\r\n" % (i, i)
        for i in range(depth)
    )
    raw = head + b"\r\nleaf\r\n"
    t0 = time.monotonic()
    s = parse(raw)
    # one pass: no search runs ahead of the header scan (this took 25 s when it did)
    assert time.monotonic() - t0 < 5
    parts = list(s.parts())
    # the message is depth 1: the 100th nested multipart is left unparsed, as Dovecot does
    assert len(parts) == 100
    assert parts[-1].truncated and parts[-1].mime_type == "application/octet-stream"
    assert s.imap_bodystructure().count(b"(") > 100
    assert MessageStructure.from_cache(s.to_cache()) == s
    rfc822 = b"Content-Type: message/rfc822\r\n\r\n" * depth + b"\r\nend"
    s2 = parse(rfc822)
    assert len(list(s2.parts())) == 100
    s2.imap_bodystructure()
    # worst case of the line counts: each of 100 nested messages counts its body
    big = b"Content-Type: message/rfc822\r\n\r\n" * 120 + b"\r\n" + b"line\r\n" * 1_000_000
    t0 = time.monotonic()
    s3 = parse(big)
    assert time.monotonic() - t0 < 10
    assert s3.root.lines == 1_000_000 + 1 + 2 * 119


def test_part_count_limit(parse: Callable) -> None:
    raw = (
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
        + b"--b\r\n\r\nx\r\n" * 20000
        + b"--b--\r\n"
    )
    s = parse(raw, mime.MimeLimits(max_parts=1000))
    assert len(s.root.children) < 1000
    assert s.root.truncated


def test_huge_header_line_and_single_line_body(parse: Callable) -> None:
    raw = (
        b"Subject: "
        + b"x" * (1 << 20)
        + b"\r\nX-Junk: "
        + b"y" * (1 << 20)
        + b"\r\n\r\n"
        + b"z" * (50 << 20)
    )
    t0 = time.monotonic()
    s = parse(raw)
    assert time.monotonic() - t0 < 20
    assert s.size == len(raw)
    assert len(s.field(b"subject") or b"") == 65536  # max_value
    assert s.root.lines == 0
    assert len(s.to_cache()) < 100_000
    small = parse(raw, mime.MimeLimits(max_value=100))
    assert len(small.field(b"subject") or b"") == 100


def test_header_without_body_and_empty_input(parse: Callable) -> None:
    for raw in (
        b"",
        b"\r\n",
        b"Subject: only header",
        b"\n\n\n",
        b"no colon here\r\n\r\nbody",
        b"--\r\n--",
    ):
        s = parse(raw)
        s.imap_bodystructure()
        s.imap_envelope()
        assert s.size == len(raw)
        assert MessageStructure.from_cache(s.to_cache()) == s
    assert parse(b"").imap_envelope() == b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"


def test_lf_only_and_crlf_give_the_same_shape(parse: Callable) -> None:
    lf = RFC2046_MULTIPART.replace(b"\r\n", b"\n")
    a, b = parse(lf), parse(RFC2046_MULTIPART)
    assert [p.mime_type for p in a.parts()] == [p.mime_type for p in b.parts()]
    assert [p.lines for p in a.parts()] == [p.lines for p in b.parts()]


@pytest.mark.parametrize("k", [0, 1, 7, 8, 9, 2039, 2040, 2041, 4081, 100003])
def test_line_count_exact(parse: Callable, k: int) -> None:
    """The compiled LF counter works eight bytes at a time: check lane and block edges."""
    body = (b"ab\n\r" * k)[: k * 3] + b"\n" * k
    s = parse(b"x: y\r\n\r\n" + body)
    assert s.root.lines == body.count(b"\n")


def test_header_flood_is_bounded(parse: Callable) -> None:
    """Many big structural fields: the cache entry stays within a few max_value."""
    raw = b"".join(b"To: " + b"a@b.c, " * 20000 + b"\r\n" for _ in range(200)) + b"\r\nbody"
    s = parse(raw, mime.MimeLimits(max_value=10000))
    kept = sum(len(v) for _, v in s.tree[7])
    assert 0 < kept <= 5 * 10000
    assert len(s.to_cache()) < 60000
    s.imap_envelope()


def test_embedded_message_sections(parse: Callable) -> None:
    s = parse(TORTURE)
    # BODY[2.2] is the whole embedded message, BODY[2.2.1] its (single-part) body
    whole = s.section_range("2.2")
    body = s.section_range("2.2.1")
    text = s.section_range("2.2.TEXT")
    assert whole is not None and body is not None and body == text
    assert TORTURE[whole[0] : whole[1]].startswith(b"From: b@example.org")
    assert (
        mime.header_fields(TORTURE, s, "2.2", [b"subject"]) == b"Subject: second digested\r\n\r\n"
    )
    assert mime.header_fields(TORTURE, s, "2.1", [b"from"]) == b"From: a@example.org\r\n\r\n"
    # a non-message part has no HEADER/TEXT (RFC 3501 §6.4.5)
    assert s.section_range("1.HEADER") is None
    assert mime.header_fields(TORTURE, s, "1", [b"from"]) == b""


def test_config_section_is_the_limits() -> None:
    from mailsrv.config import Config

    cfg = Config()
    assert cfg.mime == mime.MimeLimits()
    raw = b"Content-Type: message/rfc822\r\n\r\n" * 10
    assert len(list(mime.parse(raw, mime.MimeLimits(max_depth=3)).parts())) == 3
    assert len(list(mime.parse(raw).parts())) == 11


def test_sent_at(parse: Callable) -> None:
    import datetime

    s = parse(b"Date: Thu, 26 Nov 2026 10:00:00 +0800\r\n\r\n")
    assert s.sent_at == datetime.datetime(2026, 11, 26, 2, 0, tzinfo=datetime.UTC)
    assert parse(b"Date: Thu, 26 Nov 2026 10:00:00 -0000\r\n\r\n").sent_at is not None
    assert parse(b"Date: yesterday-ish\r\n\r\n").sent_at is None
    assert parse(b"Subject: no date\r\n\r\n").sent_at is None


def test_parameters_read_as_dovecot_reads_them(parse: Callable) -> None:
    """RFC 2045 §5.1 value := token / quoted-string; broken parameters are skipped, not fatal."""
    raw = b'Content-Type: application/x-a ; ; x=1; name=my file.pdf; y="q \\"r\\"";z==?utf-8?Q?a?= w\r\n\r\n'
    s = parse(raw)
    # "; ;" loses the parameter after it (one character is skipped at the error, as in
    # Dovecot: double-semicolon.msg of the corpus); junk after a token value is ignored
    assert s.root.raw_params() == [(b"name", b"my"), (b"y", b'q "r"'), (b"z", b"=?utf-8?Q?a?=")]
    assert b'("name" "my" "y" "q \\"r\\"" "z" "=?utf-8?Q?a?=")' in s.imap_bodystructure()
    # the decoded parameters (JMAP, filenames) are read leniently: an unquoted value with
    # spaces runs to the next ";" and "; ;" loses nothing
    assert s.root.params == {"x": "1", "name": "my file.pdf", "y": 'q "r"', "z": "a w"}
    assert s.root.filename == "my file.pdf"


def test_html_only_preview_and_parts_without_raw(parse: Callable) -> None:
    raw = crlf(
        "Content-Type: text/html; charset=utf-8\n\n"
        "<html><head><style>p {color: red}</style></head><body><p>Hi &amp; welcome</p>"
        "<script>alert(1)</script><p>second</p></body></html>\n"
    )
    s = parse(raw)
    assert mime.preview(raw, s) == "Hi & welcome second"
    parts = mime.jmap_body_parts(None, s)
    assert [p["partId"] for p in parts["textBody"]] == ["1"]
    assert [p["partId"] for p in parts["htmlBody"]] == ["1"]
    assert parts["textBody"][0]["size"] == s.root.size and parts["textBody"][0]["headers"] == []
    assert parts["attachments"] == [] and parts["hasAttachment"] is False
    # a message without any text has an empty preview
    assert (
        mime.preview(
            b"Content-Type: image/png\r\n\r\nxx", parse(b"Content-Type: image/png\r\n\r\nxx")
        )
        == ""
    )


# --- RFC 2231 boundary, BINARY of containers, lenient parameters ---------------


@pytest.mark.parametrize(
    ("params", "boundary"),
    [
        (((b"boundary*", b"us-ascii'en'a%20b"),), b"a b"),
        (
            ((b"BOUNDARY*0*", b"''a%3d"), (b"boundary*1", b"%41"), (b"boundary*2*", b"%4")),
            b"a=%41%4",
        ),
        # sections in any order, first occurrence of a number wins, a gap ends the value
        (((b"boundary*1", b"y"), (b"boundary*0", b"x"), (b"boundary*0", b"z")), b"xy"),
        (((b"boundary*0", b"x"), (b"boundary*2", b"z")), b"x"),
        (((b"boundary*1", b"y"),), b""),
        (((b"boundary*x", b"y"), (b"boundaryx*", b"z"), (b"name*", b"''n")), b""),
        # no quote pair: the whole first section is the value
        (((b"boundary*", b"abc%2Fd"),), b"abc/d"),
    ],
)
def test_rfc2231_boundary_parameter(impl: object, params: tuple, boundary: bytes) -> None:
    assert impl.rfc2231_boundary(params) == boundary  # type: ignore[attr-defined]


def test_plain_boundary_wins_over_rfc2231(parse: Callable) -> None:
    raw = crlf(
        "Content-Type: multipart/mixed; boundary*=''x; boundary=y\n\n--x\n\nX\n--y\n\nY\n--y--\n"
    )
    s = parse(raw)
    assert [raw[p.body_start : p.body_end] for p in s.root.children] == [b"Y"]
    # a boundary*= longer than RFC 2046's 70 characters is cut like a plain one
    long = "b" * 100
    raw = crlf(f"Content-Type: multipart/mixed; boundary*0={long[:50]}; boundary*1={long[50:]}\n\n")
    raw += crlf(f"--{long[:80]}\n\nA\n--{long[:80]}--\n")
    assert [raw[p.body_start : p.body_end] for p in parse(raw).root.children] == [b"A"]


def test_binary_of_containers(parse: Callable) -> None:
    from samples import BINARY_CONTAINERS as raw

    s = parse(raw)
    one = s.part("1")
    assert one is not None
    assert b"".join(mime.iter_binary(raw, one, chunk=1024)) == (
        b"--a\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: binary\r\n\r\ncaf\xc3\xa9 soft\r\n"
        b"--a\r\nContent-Type: text/html;\r\n charset=utf-8\r\n"
        b"Content-Transfer-Encoding: binary\r\n\r\n<p>hi</p>\r\n--a--\r\n"
    )
    two = s.part("2")
    assert two is not None and two.message is not None
    assert b"".join(mime.iter_binary(raw, two)) == (
        b"Subject: inner\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: binary\r\n\r\n\x00\x01\x02\x03"
    )
    for section, size in (("1", 197), ("1.1", 10), ("1.2", 9), ("2", 97), ("2.1", 4), ("3", 5)):
        part = s.part(section)
        assert part is not None
        assert mime.binary_size(raw, part) == size
        assert len(b"".join(mime.iter_binary(raw, part))) == size
    # JMAP sizes stay the part's own: a message/rfc822 is downloaded as written
    assert mime.decoded_size(raw, two) == two.size == 101
    # LF-only storage: the added line uses the header's line ends
    lf = raw.replace(b"\r\n", b"\n")
    inner = parse(lf).part("2")
    assert inner is not None
    assert b"Content-Transfer-Encoding: binary\n\n\x00" in b"".join(mime.iter_binary(lf, inner))


def test_binary_header_without_empty_line(parse: Callable) -> None:
    """Headers a delimiter or the end cuts keep their shape (Dovecot 2.3 answers such
    parts with truncated raw bytes, so there is no reference to compare with)."""
    head = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
    cases = {
        b"--b\r\nContent-Transfer-Encoding: base64\r\n--b--\r\n": (
            b"--b\r\nContent-Transfer-Encoding: binary\r\n--b--\r\n"
        ),
        b"--b\r\nContent-Transfer-Encoding: base64\r\nX-B: 2\r\n--b--\r\n": (
            b"--b\r\nX-B: 2\r\nContent-Transfer-Encoding: binary\r\n--b--\r\n"
        ),
        b"--b\r\nX-A: 1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n--b--\r\n": (
            b"--b\r\nX-A: 1\r\nContent-Transfer-Encoding: binary\r\n\r\n--b--\r\n"
        ),
    }
    for body, binary in cases.items():
        raw = head + body
        s = parse(raw)
        assert b"".join(mime.iter_binary(raw, s.root)) == binary
        assert mime.binary_size(raw, s.root) == len(binary)
    for raw, binary in (
        (b"Content-Type: message/rfc822\r\n\r\nContent-Transfer-Encoding: base64", b""),
        (b"Content-Type: message/rfc822\r\n\r\nContent-Transfer-Encoding: base64\r\n", b"\r\n"),
        (b"Content-Type: message/rfc822\n\nContent-Transfer-Encoding: base64\n", b"\n"),
    ):
        got = b"".join(mime.iter_binary(raw, parse(raw).root))
        assert got == b"Content-Transfer-Encoding: binary" + binary


def test_quoted_printable_trailing_blanks_and_long_lines(parse: Callable) -> None:
    raw = b"Content-Transfer-Encoding: quoted-printable\r\n\r\na \t\r\nb= \r\nc=20 \r\nend  "
    part = parse(raw).root
    # RFC 2045 §6.7 (3): blanks at the end of a line are deleted (a soft break survives them)
    assert mime.decoded_body(raw, part) == b"a\r\nbc \r\nend"
    line = b"x" * 3000 + b"=C3=A9" + b"y" * 3000 + b"   \r\nz"
    raw = b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + line
    part = parse(raw).root
    whole = mime.decoded_body(raw, part)
    assert whole == b"x" * 3000 + b"\xc3\xa9" + b"y" * 3000 + b"\r\nz"
    for chunk in range(1024, 1040):
        assert b"".join(mime.iter_decoded(raw, part, chunk=chunk)) == whole
    # blanks and escapes at a chunk edge of a long line
    line = b"x" * 1020 + b"  =41  " + b"y" * 2000 + b"=\r\n" + b"=20" * 700 + b" \t "
    raw = b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + line
    part = parse(raw).root
    whole = b"x" * 1020 + b"  A  " + b"y" * 2000 + b" " * 700
    for chunk in range(1024, 1034):
        assert b"".join(mime.iter_decoded(raw, part, chunk=chunk)) == whole


def test_header_cut_by_delimiter_leaves_the_crlf(parse: Callable) -> None:
    from samples import CUT_HEADERS as raw

    s = parse(raw)
    mimes = []
    for p in s.root.children:
        rng = s.section_range(p.section + ".MIME")
        assert rng is not None
        mimes.append(raw[rng[0] : rng[1]])
    assert mimes == [
        b"Content-Type: text/plain",
        b"junk",
        b"X-A: 1\r\njunk",
        b"Content-Type: text/plain\r\n",
        b"Content-Type: multipart/mixed; boundary=c\r\n\r\n",
    ]
    assert [p.size for p in s.root.children] == [0, 0, 0, 0, 11]


def test_lenient_names_for_jmap_strict_for_imap(parse: Callable) -> None:
    raw = crlf(
        "Content-Type: multipart/mixed; boundary=m\n\n--m\nContent-Type: text/plain\n\nhi\n"
        "--m\nContent-Type: application/pdf; name=Quarterly report 2026.pdf\n"
        "Content-Disposition: attachment; filename=Quarterly report 2026.pdf ; size=12\n\nx\n--m--\n"
    )
    s = parse(raw)
    att = s.part("2")
    assert att is not None
    assert att.filename == "Quarterly report 2026.pdf"
    assert att.disposition_params == {"filename": "Quarterly report 2026.pdf", "size": "12"}
    parts = mime.jmap_body_parts(raw, s)
    assert [p["name"] for p in parts["attachments"]] == ["Quarterly report 2026.pdf"]
    assert parts["hasAttachment"] is True
    # BODYSTRUCTURE keeps Dovecot's reading: the value is the token before the space
    assert b'("name" "Quarterly")' in s.imap_bodystructure()
    assert b'("attachment" ("filename" "Quarterly" "size" "12"))' in s.imap_bodystructure()


LENIENT = {
    b"a/b; n=v": [(b"n", b"v")],
    b"a/b;n = v ;m=w": [(b"n", b"v"), (b"m", b"w")],
    b'a/b; n="x;y" junk; m=1': [(b"n", b"x;y"), (b"m", b"1")],
    b"a/b; n=v (comment)": [(b"n", b"v")],
    b"a/b; n=my  file.pdf ": [(b"n", b"my  file.pdf")],
    b"a/b; n=a=b": [(b"n", b"a=b")],
    b"a/b; ; =x; y; n=": [(b"n", b"")],
    b'a/b; n="unterminated': [(b"n", b"unterminated")],
    b"a/b": [],
}


@pytest.mark.parametrize("value", list(LENIENT))
def test_parse_params_lenient(value: bytes) -> None:
    from mailsrv.mime.headers import parse_params_lenient

    assert parse_params_lenient(value) == LENIENT[value]


_TOKEN = st.text("abcXYZ019-._!#$%&'*+^`{|}~", min_size=1, max_size=8).map(str.encode)
_QUOTED = st.binary(max_size=10).filter(lambda b: b"\r" not in b and b"\n" not in b)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_TOKEN, st.one_of(_TOKEN, _QUOTED), st.booleans()), max_size=6))
def test_lenient_agrees_with_strict_on_wellformed_parameters(
    items: list[tuple[bytes, bytes, bool]],
) -> None:
    """On RFC 2045 §5.1 parameters both readings give the same values."""
    from mailsrv._speedups import mime_py
    from mailsrv.mime.headers import parse_params_lenient

    v = b"a/b"
    for name, value, quote in items:
        if (
            quote
            or not value
            or any(c in b'()<>@,;:\\"/[]?= \t' or c > 126 or c < 33 for c in value)
        ):
            value = b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
        v += b"; " + name + b"=" + value
    assert parse_params_lenient(v) == list(mime_py.parse_params(v, 3))
