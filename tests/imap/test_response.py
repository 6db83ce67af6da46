"""Response serialisation and modified UTF-7."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailsrv.imap import mutf7
from mailsrv.imap.grammar import Parser
from mailsrv.imap.response import date_time, mailbox, nstring, string
from mailsrv.imap.seqset import format_uids


def test_string_forms() -> None:
    assert string(b"abc") == b'"abc"'
    assert string(b'a"b\\') == b'"a\\"b\\\\"'
    assert string(b"a\r\nb") == b"{4}\r\na\r\nb"
    assert string("é".encode()) == b"{2}\r\n\xc3\xa9"
    assert string("é".encode(), utf8=True) == b'"\xc3\xa9"'
    assert nstring(None) == b"NIL"


def test_rfc3501_mutf7_example() -> None:
    # RFC 3501 §5.1.3
    assert mutf7.encode("~peter/mail/台北/日本語") == b"~peter/mail/&U,BTFw-/&ZeVnLIqe-"
    assert mutf7.decode(b"~peter/mail/&U,BTFw-/&ZeVnLIqe-") == "~peter/mail/台北/日本語"
    assert mutf7.encode("A&B") == b"A&-B"
    for bad in (b"&Jjo", b"&AGE-", b"\xc3\xa9", b"&U/BTFw-"):
        with pytest.raises(mutf7.Mutf7Error):
            mutf7.decode(bad)


@given(st.text(max_size=40))
def test_mutf7_roundtrip(name: str) -> None:
    name = "".join(ch for ch in name if not 0xD800 <= ord(ch) <= 0xDFFF)
    assert mutf7.decode(mutf7.encode(name)) == name


@given(st.binary(max_size=80))
def test_string_parses_back(value: bytes) -> None:
    if b"\x00" in value:
        return
    p = Parser(string(value) + b"\r\n")
    assert p.string() == value


def test_mailbox_names() -> None:
    assert mailbox("INBOX", False) == b"INBOX"
    assert mailbox("台北", False) == b"&U,BTFw-"
    assert mailbox("a b", False) == b'"a b"'
    assert mailbox("台北", True) == '"台北"'.encode()


def test_date_time() -> None:
    d = datetime(1994, 2, 7, 21, 52, 25, tzinfo=timezone(-timedelta(hours=8)))
    assert date_time(d) == b'" 7-Feb-1994 21:52:25 -0800"'
    assert Parser(date_time(d)).date_time() == d


def test_format_uids() -> None:
    assert format_uids([1, 2, 3, 5, 7, 8]) == "1:3,5,7:8"
    assert format_uids([]) == ""
