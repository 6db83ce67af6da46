"""RFC 8621 §4.1 message views: body part lists (the RFC's own example), header forms, corpus, hypothesis."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from mailsrv.jmap import message


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
    parsed = message.parse(raw)
    text, html, att = message.body_lists(parsed.root)

    def names(parts: list[message.Part]) -> list[str]:
        return [p.content().decode().strip() or "J" for p in parts]

    assert names(text) == ["A", "B", "C", "D", "K"]
    assert names(html) == ["A", "E", "K"]
    assert [p.type for p in att] == ["image/jpeg", "image/jpeg", "image/jpeg", "application/x-excel", "message/rfc822"]
    assert names(att)[:4] == ["C", "F", "G", "H"]


def test_corpus_related_alternative(corpus: Path) -> None:
    raw = (corpus / "stalwart-mail-parser/eml/legacy/015.eml").read_bytes()
    parsed = message.parse(raw)
    text, html, att = message.body_lists(parsed.root)
    assert [p.part_id for p in text] == ["1"] and [p.part_id for p in html] == ["2"]
    assert [p.name for p in att] == ["2aa3ed95.png", "2aa3edd1.png", "blueball.png", "greenball.png"]
    assert html[0].charset == "iso-8859-1"
    value, problem = message.decode_text(text[0])
    assert "Frösche" in value and not problem
    assert att[0].content()[:8] == b"\x89PNG\r\n\x1a\n"


def test_corpus_text_and_html_bodies_agree_with_stalwart(corpus: Path) -> None:
    # Stalwart (a JMAP server) also lists inline media shown in both bodies as attachments;
    # RFC 8621's algorithm does not, so only the body lists are compared, and our attachments
    # must be a subset of theirs.
    checked = 0
    for eml in sorted((corpus / "stalwart-mail-parser/eml/legacy").glob("*.eml")):
        want = json.loads(eml.with_suffix(".json").read_text())
        ordinal, n = {}, 0
        for i, p in enumerate(want["parts"]):
            if isinstance(p["body"], dict) and "Multipart" in p["body"]:
                continue
            n += 1
            ordinal[i] = str(n)
        text, html, att = message.body_lists(message.parse(eml.read_bytes()).root)
        assert [p.part_id for p in text] == [ordinal[i] for i in want["text_body"]], eml.name
        assert [p.part_id for p in html] == [ordinal[i] for i in want["html_body"]], eml.name
        assert {p.part_id for p in att} <= {ordinal[i] for i in want["attachments"]}, eml.name
        checked += 1
    assert checked > 40


def test_header_forms() -> None:
    raw = (b"From: =?utf-8?q?J=C3=BCrgen?= <j@example.test>, Team: a@x.test, b@x.test;\r\n"
           b"Subject:  =?iso-8859-1?q?caf=E9?=\r\n  again \r\n"
           b"Message-ID: <one@x>\r\nReferences: <a@x>\r\n <b@x>\r\n"
           b"Date: Wed, 17 May 2000 19:35:05 -0400\r\nList-Unsubscribe: <mailto:u@x>, <https://x/u>\r\n\r\n")
    h = message.parse(raw).headers
    get = {k.lower(): v for k, v in h}
    assert message.as_text(get["subject"]) == "café  again"  # unfolding keeps the WSP
    assert message.to_text(get["subject"]).startswith("  =?iso")  # Raw keeps the leading space
    assert message.as_addresses(get["from"]) == [{"name": "Jürgen", "email": "j@example.test"},
                                                 {"name": None, "email": "a@x.test"},
                                                 {"name": None, "email": "b@x.test"}]
    groups = message.as_grouped_addresses(get["from"])
    assert [g["name"] for g in groups] == [None, "Team"] and len(groups[1]["addresses"]) == 2
    assert message.as_message_ids(get["references"]) == ["a@x", "b@x"]
    assert message.as_date(get["date"]) == "2000-05-17T19:35:05-04:00"
    assert message.as_urls(get["list-unsubscribe"]) == ["mailto:u@x", "https://x/u"]
    assert message.form_allowed("From", "Addresses") and not message.form_allowed("Subject", "Addresses")
    assert message.form_allowed("X-Custom", "Date") and not message.form_allowed("Date", "Text")


def test_truncate_utf8_on_character_boundary() -> None:
    assert message.truncate_utf8("héllo", 2) == ("h", True)
    assert message.truncate_utf8("héllo", 3) == ("hé", True)
    assert message.truncate_utf8("héllo", 0) == ("héllo", False)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_parse_never_crashes_on_bytes(raw: bytes) -> None:
    parsed = message.parse(raw)
    text, html, att = message.body_lists(parsed.root)
    message.preview(text, html)
    for _name, v in parsed.headers:
        for form in message.FORMS:
            message.parse_form(v, form)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["text/plain", "text/html", "image/png", "application/pdf", "multipart/mixed",
                                 "multipart/alternative", "multipart/related"]), min_size=1, max_size=6))
def test_every_leaf_is_listed_somewhere_for_flat_multiparts(types: list[str]) -> None:
    parts = [leaf(t, "x") for t in types if not t.startswith("multipart/")] or [leaf("text/plain", "x")]
    sub = next((t.split("/")[1] for t in types if t.startswith("multipart/")), "mixed")
    raw = ("MIME-Version: 1.0\r\n" + mime(parts, sub)).encode()
    parsed = message.parse(raw)
    text, html, att = message.body_lists(parsed.root)
    listed = {p.part_id for p in text + html + att}
    assert listed == set(parsed.leaves)
