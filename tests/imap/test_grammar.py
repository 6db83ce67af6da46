"""IMAP command grammar: RFC examples, every split point, hypothesis round trips."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailsrv.imap.commands import parse_command, parse_tag
from mailsrv.imap.grammar import (
    NeedLiteral,
    NeedMore,
    ParseError,
    Parser,
    SearchKey,
    Section,
    literal_marker,
)
from mailsrv.imap.seqset import STAR, SequenceSet

EXAMPLES = [
    b"a001 CAPABILITY\r\n",
    b"A142 SELECT INBOX\r\n",
    b'a001 LOGIN SMITH {7}\r\nSESAME\x21\r\n',
    b'A682 LIST "" *\r\n',
    b'A02 LIST (SUBSCRIBED) "" ("*" "Foo%") RETURN (CHILDREN STATUS (MESSAGES UNSEEN))\r\n',
    b"A003 APPEND saved-messages (\\Seen) \" 7-Feb-1994 21:52:25 -0800\" {5+}\r\nhello\r\n",
    b"A654 FETCH 2:4 (FLAGS BODY[HEADER.FIELDS (DATE FROM)])\r\n",
    b"A654 UID FETCH 1:* (UID FLAGS BODY.PEEK[1.2.TEXT]<0.2048>) (CHANGEDSINCE 12345 VANISHED)\r\n",
    b"A003 STORE 2:4 +FLAGS (\\Deleted)\r\n",
    b"A003 STORE 1 (UNCHANGEDSINCE 5) FLAGS.SILENT \\Seen $Junk\r\n",
    b'A282 SEARCH RETURN (MIN COUNT) FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"\r\n',
    b"A283 SEARCH OR (SEEN UNDELETED) HEADER X-Foo {3}\r\nbar 1:5,7:*\r\n",
    b"A284 SORT (REVERSE DATE SUBJECT) UTF-8 ALL\r\n",
    b"A285 THREAD REFERENCES UTF-8 SINCE 5-MAR-2000\r\n",
    b"A286 SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541))\r\n",
    b'A287 ID ("name" "sodr" "version" NIL)\r\n',
    b"A288 UID EXPUNGE 3000:3002\r\n",
    b"A289 AUTHENTICATE PLAIN AGJvYgBzZWNyZXQ=\r\n",
    b"A290 CREATE Drafts (USE (\\Drafts))\r\n",
    b"A291 STATUS blurdybloop (UIDNEXT MESSAGES SIZE)\r\n",
    b'A01 LIST "" % RETURN (MYRIGHTS)\r\n',
    b"A292 UNAUTHENTICATE\r\n",
    b"A003 REPLACE 4 Drafts (\\Seen \\Draft) {5+}\r\nhello\r\n",
    b"B003 UID REPLACE 2000 Drafts {5+}\r\nhello\r\n",
    b"a GETMETADATA (MAXSIZE 1024 DEPTH infinity) INBOX (/private/comment /shared/comment)\r\n",
    b'a GETMETADATA "" /shared/comment\r\n',
    b"a SETMETADATA INBOX (/private/comment {5+}\r\nhello /shared/x NIL /shared/y ~{2+}\r\n\x00a)\r\n",
]


@pytest.mark.parametrize("raw", EXAMPLES)
def test_examples_parse_and_every_prefix_needs_more(raw: bytes) -> None:
    cmd = parse_command(raw)
    assert cmd.tag == raw.split(b" ")[0]
    for cut in range(len(raw)):
        with pytest.raises((NeedMore, NeedLiteral, ParseError)) as info:
            parse_command(raw[:cut])
        # A prefix of a valid command is never a *syntax* error, except a tag cut at its end
        # followed by nothing (still NeedMore) -- so ParseError must not happen at all.
        assert not isinstance(info.value, ParseError), (cut, info.value)


def test_fetch_details() -> None:
    cmd = parse_command(b"A UID FETCH 1:* (UID FLAGS BODY.PEEK[1.2.HEADER.FIELDS (from To)]<10.20>)\r\n")
    assert cmd.uid and cmd.name == "FETCH"
    assert cmd.args["set"] == SequenceSet(((1, STAR),))
    att = cmd.args["atts"][2]
    assert att.name == "BODY.PEEK"
    assert att.section == Section((1, 2), "HEADER.FIELDS", (b"FROM", b"TO"))
    assert att.partial == (10, 20)
    assert att.section.spec() == b"1.2.HEADER.FIELDS (FROM TO)"
    macro = parse_command(b"A FETCH 1 FAST\r\n")
    assert [a.name for a in macro.args["atts"]] == ["FLAGS", "INTERNALDATE", "RFC822.SIZE"]


def test_literal_need_literal_reports_size() -> None:
    with pytest.raises(NeedLiteral) as info:
        parse_command(b"a LOGIN {3}\r\nab")
    assert info.value.size == 3 and not info.value.nonsync
    with pytest.raises(NeedLiteral) as info:
        parse_command(b"a LOGIN {3+}\r\n")
    assert info.value.nonsync


def test_literal_marker() -> None:
    assert literal_marker(b"a LOGIN {5}\r\n") == (5, False)
    assert literal_marker(b"a APPEND x ~{12+}\r\n") == (12, True)
    assert literal_marker(b'a LOGIN "x{5}"\r\n') is None
    assert literal_marker(b"a NOOP\r\n") is None


@pytest.mark.parametrize(
    "raw",
    [
        b"a  NOOP\r\n",
        b"a NOOP \r\n",
        b"a FROB\r\n",
        b"a FETCH 0 FLAGS\r\n",
        b"a FETCH 1 (FLAGS\r\n",
        b"a FETCH 1 BODY[FOO]\r\n",
        b'a LOGIN "unterminated\r\n',
        b'a LOGIN "bad\\escape" x\r\n',
        b"a SEARCH FROB\r\n",
        b"a STORE 1 FLAGS (\\Seen\r\n",
        b"a SELECT INBOX (BOGUS)\r\n",
        b"a LOGIN {2}\r\n\x00x x\r\n",
    ],
)
def test_malformed_is_a_parse_error_with_the_tag(raw: bytes) -> None:
    with pytest.raises(ParseError) as info:
        parse_command(raw)
    assert info.value.tag == b"a"


def test_nesting_is_bounded() -> None:
    raw = b"a SEARCH " + b"(" * 100 + b"ALL" + b")" * 100 + b"\r\n"
    with pytest.raises(ParseError) as info:
        parse_command(raw)
    assert info.value.code == "LIMIT"
    raw = b"a SEARCH " + b"NOT " * 100 + b"ALL\r\n"
    with pytest.raises(ParseError):
        parse_command(raw)


def test_parse_tag() -> None:
    assert parse_tag(b"x1 FROB\r\n") == b"x1"
    assert parse_tag(b"+ FROB\r\n") is None
    assert parse_tag(b"\r\n") is None


def test_search_tree() -> None:
    cmd = parse_command(b"a SEARCH CHARSET UTF-8 OR 1:3 NOT SEEN LARGER 100\r\n")
    assert cmd.args["charset"] == "UTF-8"
    key = cmd.args["key"]
    assert key.op == "AND"
    assert key.args[0] == SearchKey(
        "OR", (SearchKey("SEQ", (SequenceSet(((1, 3),)),)), SearchKey("NOT", (SearchKey("SEEN"),)))
    )
    assert key.args[1] == SearchKey("LARGER", (100,))


def test_dates() -> None:
    cmd = parse_command(b'a APPEND INBOX "07-Feb-1994 21:52:25 -0800" {1+}\r\nx\r\n')
    flags, when, data = cmd.args["messages"][0]
    assert when == datetime(1994, 2, 7, 21, 52, 25, tzinfo=timezone(-timedelta(hours=8)))
    assert data == b"x" and flags == []
    cmd = parse_command(b'a SEARCH SENTON "3-jan-2020"\r\n')
    assert cmd.args["key"] == SearchKey("SENTON", (date(2020, 1, 3),))
    with pytest.raises(ParseError):
        parse_command(b"a SEARCH ON 31-Feb-2020\r\n")


def test_multiappend() -> None:
    cmd = parse_command(b"a APPEND Box {1+}\r\nx (\\Seen) {2+}\r\nyz\r\n")
    assert [m[2] for m in cmd.args["messages"]] == [b"x", b"yz"]
    assert cmd.args["messages"][1][0] == [b"\\Seen"]


_atomish = st.binary(min_size=1, max_size=20).filter(lambda b: b"\r" not in b and b"\n" not in b and b"\x00" not in b)


@given(st.binary(max_size=60))
def test_astring_roundtrip_via_serializer(value: bytes) -> None:
    from mailsrv.imap.response import astring

    if b"\x00" in value:
        return
    wire = astring(value) + b"\r\n"
    p = Parser(wire)
    assert p.astring() == value
    p.end()


@given(st.binary(max_size=200))
def test_parser_never_crashes(data: bytes) -> None:
    try:
        parse_command(data)
    except (NeedMore, NeedLiteral, ParseError):
        pass


@given(st.lists(st.tuples(st.integers(1, 10**6), st.integers(0, 10**6)), min_size=1, max_size=8))
def test_sequence_set_roundtrip(ranges: list[tuple[int, int]]) -> None:
    text = ",".join(f"{a}" if b == 0 else f"{a}:{b if b else '*'}" for a, b in ranges)
    p = Parser(text.encode() + b"\r\n")
    s = p.sequence_set()
    values = sorted({1, 5, 99, 1000, 10**6})
    picked = s.select(values, 10**6)
    assert picked == [v for v in values if s.contains(v, 10**6)]
