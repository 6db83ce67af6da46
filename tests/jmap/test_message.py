"""RFC 8621 §4.1 message views: body part lists (the RFC's own example), header forms, corpus, hypothesis."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mailsrv.mime
from mailsrv.jmap import message
from mailsrv.mime import Part


def mime(parts: list[tuple[str, str]], sub: str = "mixed", boundary: str = "b") -> str:
    out = [f"Content-Type: multipart/{sub}; boundary={boundary}", ""]
    for p in parts:
        out += [f"--{boundary}", p[0], "", p[1]]
    out.append(f"--{boundary}--")
    return "\r\n".join(out)


def leaf(ctype: str, body: str, extra: str = "") -> tuple[str, str]:
    return (f"Content-Type: {ctype}" + (f"\r\n{extra}" if extra else ""), body)


def test_rfc8621_section_4_1_4_example() -> None:
    # The structure of the example in RFC 8621 §4.1.4, letters as bodies.
    inner_mixed = mime([leaf("text/plain", "B"), leaf("image/jpeg", "C", "Content-Disposition: inline"),
                        leaf("text/plain", "D")], "mixed", "m2")
    related = mime([leaf("text/html", "E"), leaf("image/jpeg", "F")], "related", "r1")
    alt = mime([(inner_mixed.split("\r\n\r\n", 1)[0], inner_mixed.split("\r\n\r\n", 1)[1]),
                (related.split("\r\n\r\n", 1)[0], related.split("\r\n\r\n", 1)[1])], "alternative", "a1")
    mixed2 = mime([(alt.split("\r\n\r\n", 1)[0], alt.split("\r\n\r\n", 1)[1]),
                   leaf("image/jpeg", "G", "Content-Disposition: attachment"),
                   leaf("application/x-excel", "H"), leaf("message/rfc822", "Subject: J\r\n\r\nJ")], "mixed", "m1")
    top = mime([leaf("text/plain", "A", "Content-Disposition: inline"),
                (mixed2.split("\r\n\r\n", 1)[0], mixed2.split("\r\n\r\n", 1)[1]),
                leaf("text/plain", "K", "Content-Disposition: inline")], "mixed", "m0")
    raw = ("Subject: example\r\nMIME-Version: 1.0\r\n" + top).encode()
    s = mailsrv.mime.parse(raw)
    text, html, att = message.body_lists(s)

    def names(parts: list[Part]) -> list[str]:
        return [mailsrv.mime.decoded_body(raw, p).decode().strip() or "J" for p in parts]

    assert names(text) == ["A", "B", "C", "D", "K"]
    assert names(html) == ["A", "E", "K"]
    assert [p.mime_type for p in att] == ["image/jpeg", "image/jpeg", "image/jpeg", "application/x-excel",
                                          "message/rfc822"]
    assert names(att)[:4] == ["C", "F", "G", "H"]
    # partIds are IMAP sections; the embedded message is one leaf
    assert [message.part_id(p) for p in text] == ["1", "2.1.1.1", "2.1.1.2", "2.1.1.3", "3"]
    assert [message.part_id(p) for p in message.leaves(s)][-3:] == ["2.3", "2.4", "3"]
    found = message.find_part(s, "2.4")
    assert found is not None and found.mime_type == "message/rfc822" and message.part_id(found) == "2.4"
    assert message.find_part(s, "9") is None


def test_corpus_related_alternative(corpus: Path) -> None:
    raw = (corpus / "stalwart-mail-parser/eml/legacy/015.eml").read_bytes()
    s = mailsrv.mime.parse(raw)
    text, html, att = message.body_lists(s)
    assert [message.part_id(p) for p in text] == ["1.1.1"] and [message.part_id(p) for p in html] == ["1.1.2"]
    assert [p.filename for p in att] == ["2aa3ed95.png", "2aa3edd1.png", "blueball.png", "greenball.png"]
    assert message.charset_of(html[0]) == "iso-8859-1"
    value, problem = message.decode_text(raw, text[0])
    assert "Frösche" in value and not problem
    assert mailsrv.mime.decoded_body(raw, att[0])[:8] == b"\x89PNG\r\n\x1a\n"
    # RFC 8621 §4.1.4 size is after transfer decoding: base64 parts need the bytes, others do not
    assert message.part_size(raw, att[0]) == len(mailsrv.mime.decoded_body(raw, att[0])) < att[0].size
    assert message.parts_need_raw(s, ["partId", "size"]) and not message.parts_need_raw(s, ["partId", "type"])
    assert message.parts_need_raw(s, ["headers"]) and message.parts_need_raw(s, ["header:X-Foo"])
    assert not message.parts_need_raw(s, ["header:Content-Type:asRaw"])


def test_corpus_text_and_html_bodies_agree_with_stalwart(corpus: Path) -> None:
    # Stalwart (a JMAP server) also lists inline media shown in both bodies as attachments;
    # RFC 8621's algorithm does not, so only the body lists are compared, and our attachments
    # must be a subset of theirs. Stalwart numbers leaves in order; ours are IMAP sections.
    checked = 0
    for eml in sorted((corpus / "stalwart-mail-parser/eml/legacy").glob("*.eml")):
        want = json.loads(eml.with_suffix(".json").read_text())
        s = mailsrv.mime.parse(eml.read_bytes())
        ours = [message.part_id(p) for p in message.leaves(s)]
        ordinal, n = {}, 0
        for i, p in enumerate(want["parts"]):
            if isinstance(p["body"], dict) and "Multipart" in p["body"]:
                continue
            ordinal[i] = ours[n] if n < len(ours) else f"missing {n}"
            n += 1
        text, html, att = message.body_lists(s)
        assert [message.part_id(p) for p in text] == [ordinal[i] for i in want["text_body"]], eml.name
        assert [message.part_id(p) for p in html] == [ordinal[i] for i in want["html_body"]], eml.name
        assert {message.part_id(p) for p in att} <= {ordinal[i] for i in want["attachments"]}, eml.name
        checked += 1
    assert checked > 40


def test_header_forms() -> None:
    raw = (b"From: =?utf-8?q?J=C3=BCrgen?= <j@example.test>, Team: a@x.test, b@x.test;\r\n"
           b"Subject:  =?iso-8859-1?q?caf=E9?=\r\n  again \r\n"
           b"Message-ID: <one@x>\r\nReferences: <a@x>\r\n <b@x>\r\n"
           b"Date: Wed, 17 May 2000 19:35:05 -0400\r\nList-Unsubscribe: <mailto:u@x>, <https://x/u>\r\n"
           b"Sender: <>\r\nTo: barney@x.test (Barney P. Erson)\r\n\r\nbody: not a header\r\n")
    h = message.header_list(raw)
    assert [k for k, _ in h] == ["From", "Subject", "Message-ID", "References", "Date", "List-Unsubscribe",
                                 "Sender", "To"]
    get = {k.lower(): v for k, v in h}
    assert message.as_text(get["subject"]) == "café  again"  # unfolding keeps the WSP
    assert message.as_raw(get["subject"]).startswith("  =?iso")  # Raw keeps the leading space
    assert message.as_addresses(get["from"]) == [{"name": "Jürgen", "email": "j@example.test"},
                                                 {"name": None, "email": "a@x.test"},
                                                 {"name": None, "email": "b@x.test"}]
    groups = message.as_grouped_addresses(get["from"])
    assert [g["name"] for g in groups] == [None, "Team"] and len(groups[1]["addresses"]) == 2
    # RFC 8621 §4.1.2.3: a comment after the addr-spec is the name; "<>" has an empty email
    assert message.as_addresses(get["to"]) == [{"name": "Barney P. Erson", "email": "barney@x.test"}]
    assert all(a["email"] != "MISSING_MAILBOX" for a in message.as_addresses(get["sender"]))
    assert message.as_message_ids(get["references"]) == ["a@x", "b@x"]
    assert message.as_date(get["date"]) == "2000-05-17T19:35:05-04:00"
    assert message.as_urls(get["list-unsubscribe"]) == ["mailto:u@x", "https://x/u"]
    assert message.form_allowed("From", "Addresses") and not message.form_allowed("Subject", "Addresses")
    assert message.form_allowed("X-Custom", "Date") and not message.form_allowed("Date", "Text")
    # the structure answers structural fields without the bytes, and agrees with them
    s = mailsrv.mime.parse(raw)
    for name in ("from", "subject", "message-id", "references", "date", "sender", "to"):
        assert message.field_values(s, None, None, name) == mailsrv.mime.header_values(raw, s.root, name.encode())


def test_mbox_from_line_is_not_a_header_field() -> None:
    raw = b"From MAILER-DAEMON Fri Apr 06 16:46:09 2001\nSubject: x\nX-Y: 1\n\nbody\n"
    assert message.header_list(raw) == [("Subject", b" x"), ("X-Y", b" 1")]


def test_body_values_decode_charsets() -> None:
    raw = (b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
           b"caf=E9\r\n")
    s = mailsrv.mime.parse(raw)
    assert message.decode_text(raw, s.root) == ("café\r\n", False)
    raw = b"Content-Type: text/plain\r\n\r\ncaf\xc3\xa9\r\n"  # UTF-8 in a us-ascii part
    assert message.decode_text(raw, mailsrv.mime.parse(raw).root) == ("café\r\n", False)
    raw = b"Content-Type: text/plain; charset=x-unknown\r\n\r\ncaf\xe9\r\n"
    assert message.decode_text(raw, mailsrv.mime.parse(raw).root) == ("caf\ufffd\r\n", True)


def test_truncate_utf8_on_character_boundary() -> None:
    assert message.truncate_utf8("héllo", 2) == ("h", True)
    assert message.truncate_utf8("héllo", 3) == ("hé", True)
    assert message.truncate_utf8("héllo", 0) == ("héllo", False)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_views_never_crash_on_bytes(raw: bytes) -> None:
    s = mailsrv.mime.parse(raw)
    text, html, att = message.body_lists(s)
    message.preview(raw, s)
    for p in message.leaves(s):
        message.part_size(raw, p)
        if p.type == "text":
            message.decode_text(raw, p)
    for _name, v in message.header_list(raw):
        for form in message.FORMS:
            message.parse_form(v, form)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["text/plain", "text/html", "image/png", "application/pdf", "multipart/mixed",
                                 "multipart/alternative", "multipart/related"]), min_size=1, max_size=6))
def test_every_leaf_is_listed_somewhere_for_flat_multiparts(types: list[str]) -> None:
    parts = [leaf(t, "x") for t in types if not t.startswith("multipart/")] or [leaf("text/plain", "x")]
    sub = next((t.split("/")[1] for t in types if t.startswith("multipart/")), "mixed")
    raw = ("MIME-Version: 1.0\r\n" + mime(parts, sub)).encode()
    s = mailsrv.mime.parse(raw)
    text, html, att = message.body_lists(s)
    listed = {message.part_id(p) for p in text + html + att}
    assert listed == {message.part_id(p) for p in message.leaves(s)} == {str(i) for i in range(1, len(parts) + 1)}


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400), st.sampled_from(["", "7bit", "base64", "quoted-printable"]))
def test_structure_only_answers_equal_the_answers_from_the_bytes(noise: bytes, cte: str) -> None:
    # what Email/get answers without reading the message must equal what it answers with the bytes
    from mailsrv.jmap.backend import EmailMeta
    from mailsrv.jmap.email import BodyOptions, _email_json, needs_raw

    enc = f"\r\nContent-Transfer-Encoding: {cte}" if cte else ""
    parts = [leaf("text/plain", "hello"), leaf("image/png", noise.hex(), "Content-Disposition: attachment" + enc)]
    raw = (b"From: A <a@x.test>\r\nTo: b@x.test\r\nSubject: s\r\nDate: Wed, 17 May 2000 19:35:05 -0400\r\n"
           + mime(parts).encode() + b"\r\n" + noise)
    s = mailsrv.mime.parse(raw)
    meta = EmailMeta("E1", "B1", "T1", frozenset(), frozenset(), len(raw), 0.0)
    props = ["from", "to", "subject", "sentAt", "hasAttachment", "bodyStructure", "textBody", "attachments",
             "header:Content-Type:asRaw"]
    for body in (["partId", "type", "name", "disposition"], ["partId", "size", "charset"]):
        opts = BodyOptions({})
        with_bytes = _email_json(meta, s, raw, props, body, opts)
        if not needs_raw(s, props, body, opts):
            assert _email_json(meta, s, None, props, body, opts) == with_bytes
        else:
            assert "size" in body and cte in ("base64", "quoted-printable")


def test_repeated_structural_fields_last_instance_and_all() -> None:
    # RFC 8621 §4.1.3: without :all the last instance; the cached structure keeps every occurrence
    from mailsrv.jmap.email import convenience, header_value

    raw = b"Subject: first\r\nTo: x@y.test\r\nSubject: =?utf-8?q?second_=C3=A9?=\r\n\r\nbody\r\n"
    s = mailsrv.mime.parse(raw)
    assert convenience(s, "subject") == "second é"
    assert header_value(s, None, None, "header:Subject:asText:all") == ["first", "second é"]
    assert header_value(s, None, None, "header:subject:asRaw") == " =?utf-8?q?second_=C3=A9?="


@given(st.integers(min_value=-(2**35), max_value=2**37), st.floats(min_value=0, max_value=0.999))
@settings(max_examples=300)
def test_utc_date_is_datetimes(seconds: int, fraction: float) -> None:
    """receivedAt and sendAt (RFC 8620 §1.4 UTCDate) as datetime wrote them, fractions dropped."""
    from datetime import UTC, datetime

    ts = seconds + fraction
    assert message.utc_date(ts) == datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert message.utc_date(1700000000.9) == "2023-11-14T22:13:20Z"


def test_shape_numbers_are_never_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The derived cache's key holds a number per request shape: equal shapes share it, another shape
    (properties, body properties, body value options) gets its own, and a number is not given again
    after the table of numbers is forgotten (else a cached object would answer for another shape)."""
    from mailsrv.jmap import email as E

    opts = E.BodyOptions({})
    a = E.Shape(["id", "subject", "preview"], E.DEFAULT_BODY_PROPERTIES, opts)
    assert E.Shape(["id", "subject", "preview"], E.DEFAULT_BODY_PROPERTIES, opts).key == a.key
    others = [E.Shape(["id", "subject"], E.DEFAULT_BODY_PROPERTIES, opts),
              E.Shape(["id", "subject", "preview"], ["partId"], opts),
              E.Shape(["id", "subject", "preview"], E.DEFAULT_BODY_PROPERTIES, E.BodyOptions({"fetchAllBodyValues": True}))]
    assert len({a.key, *(o.key for o in others)}) == 4
    assert [p for p, reader in a.plan if reader is None] == a.content == ["subject", "preview"]
    monkeypatch.setattr(E, "SHAPES", 0)
    seen = {a.key, *(o.key for o in others)}
    for props in (["id", "from"], ["id", "to"], ["id", "subject", "preview"]):
        k = E.Shape(props, E.DEFAULT_BODY_PROPERTIES, opts).key
        assert k not in seen
        seen.add(k)
