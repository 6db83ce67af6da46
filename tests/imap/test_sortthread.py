"""SORT and THREAD against hand-computed expectations (RFC 5256)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailsrv.imap.sortthread import (
    Item,
    base_subject,
    format_threads,
    sort,
    thread_orderedsubject,
    thread_references,
)


@pytest.mark.parametrize(
    ("subject", "base"),
    [
        ("Re: Hello", "hello"),
        ("RE: re:  Fwd: Hello  world", "hello world"),
        ("[list] Re: [list] hello (fwd)", "hello"),
        ("[Fwd: Re: meeting]", "meeting"),
        ("[only a blob]", "[only a blob]"),
        ("Re:", ""),
        ("", ""),
    ],
)
def test_base_subject(subject: str, base: str) -> None:
    assert base_subject(subject) == base


@given(st.text(max_size=60))
def test_base_subject_is_idempotent(subject: str) -> None:
    once = base_subject(subject)
    assert base_subject(once) == once


def item(n: int, *, subject: str = "", date: str | None = None, mid: str | None = None,
         refs: str | None = None, frm: str = "", size: int = 100, arrival: float = 0.0) -> Item:
    headers = {b"subject": subject.encode()}
    if date:
        headers[b"date"] = date.encode()
    if mid:
        headers[b"message-id"] = mid.encode()
    if refs:
        headers[b"references"] = refs.encode()
    if frm:
        headers[b"from"] = frm.encode()
    return Item(n, n, arrival or float(n), size, headers)


def test_sort_criteria() -> None:
    items = [
        item(1, subject="Re: b", date="Mon, 2 Jan 2023 10:00:00 +0000", frm="Zed <z@x>", size=300),
        item(2, subject="a", date="Sun, 1 Jan 2023 10:00:00 +0000", frm="amy@x", size=100),
        item(3, subject="b", date="Sun, 1 Jan 2023 09:00:00 -0200", frm="Bob <bob@x>", size=200),
        item(4, subject="c", frm="carl@x", size=100),  # no Date: sorts by arrival (epoch + 4 s)
    ]
    assert sort(items, [(False, "DATE")]) == [4, 2, 3, 1]
    assert sort(items, [(False, "SUBJECT")]) == [2, 1, 3, 4]
    assert sort(items, [(False, "SUBJECT"), (True, "SIZE")]) == [2, 1, 3, 4]
    assert sort(items, [(True, "SIZE")]) == [1, 3, 2, 4]
    assert sort(items, [(False, "SIZE"), (True, "ARRIVAL")]) == [4, 2, 3, 1]
    assert sort(items, [(False, "FROM")]) == [2, 3, 4, 1]
    assert sort(items, [(False, "DISPLAYFROM")]) == [2, 3, 4, 1]


def test_thread_references() -> None:
    items = [
        item(1, subject="topic", mid="<a@x>", date="Sun, 1 Jan 2023 10:00:00 +0000"),
        item(2, subject="Re: topic", mid="<b@x>", refs="<a@x>", date="Sun, 1 Jan 2023 11:00:00 +0000"),
        item(3, subject="Re: topic", mid="<c@x>", refs="<a@x> <b@x>", date="Sun, 1 Jan 2023 12:00:00 +0000"),
        item(4, subject="Re: topic", mid="<d@x>", refs="<a@x>", date="Sun, 1 Jan 2023 13:00:00 +0000"),
        item(5, subject="other", mid="<e@x>", date="Sun, 1 Jan 2023 09:00:00 +0000"),
        # a reply whose parent we do not have: under a dummy with its sibling
        item(6, subject="lost", mid="<f@x>", refs="<gone@x>", date="Mon, 2 Jan 2023 10:00:00 +0000"),
        item(7, subject="Re: lost", mid="<g@x>", refs="<gone@x>", date="Mon, 2 Jan 2023 11:00:00 +0000"),
    ]
    assert format_threads(thread_references(items)) == b"(5)(1 (2 3)(4))((6)(7))"


def test_thread_orderedsubject() -> None:
    items = [
        item(1, subject="x", date="Sun, 1 Jan 2023 10:00:00 +0000"),
        item(2, subject="Re: x", date="Sun, 1 Jan 2023 11:00:00 +0000"),
        item(3, subject="y", date="Sun, 1 Jan 2023 09:00:00 +0000"),
        item(4, subject="re: X", date="Sun, 1 Jan 2023 12:00:00 +0000"),
        item(5, subject="y", date="Sun, 1 Jan 2023 13:00:00 +0000"),
    ]
    assert format_threads(thread_orderedsubject(items)) == b"(3 5)(1 (2)(4))"


def test_sort_and_thread_over_the_wire() -> None:
    from test_session import _logged_in  # type: ignore[import-not-found]

    async def go() -> None:
        d, store = await _logged_in()
        acct = await store.account("1")
        msgs = [
            b"Subject: b\r\nMessage-ID: <1@x>\r\nDate: Sun, 1 Jan 2023 10:00:00 +0000\r\n\r\n.\r\n",
            b"Subject: Re: b\r\nMessage-ID: <2@x>\r\nReferences: <1@x>\r\nDate: Sun, 1 Jan 2023 11:00:00 +0000\r\n\r\n.\r\n",
            b"Subject: a\r\nMessage-ID: <3@x>\r\nDate: Sun, 1 Jan 2023 09:00:00 +0000\r\n\r\n.\r\n",
        ]
        for m in msgs:
            await acct.append("INBOX", m)
        await d(b"s SELECT INBOX")
        assert await d(b"a SORT (SUBJECT) UTF-8 ALL") == [b"* SORT 3 1 2", b"a OK SORT completed"]
        assert await d(b"b UID SORT (REVERSE DATE) UTF-8 NOT SUBJECT a") == [b"* SORT 2 1", b"b OK UID SORT completed"]
        assert await d(b"c THREAD REFERENCES UTF-8 ALL") == [b"* THREAD (3)(1 2)", b"c OK THREAD completed"]
        assert await d(b"d THREAD ORDEREDSUBJECT UTF-8 SUBJECT zzz") == [b"* THREAD", b"d OK THREAD completed"]
        # RFC 5267 ESORT: results of the sorted order, ALL keeps that order
        assert await d(b"e SORT RETURN (MIN MAX COUNT ALL) (SUBJECT) UTF-8 ALL") == [
            b'* ESEARCH (TAG "e") MIN 3 MAX 2 ALL 3,1:2 COUNT 3', b"e OK SORT completed"]
        assert await d(b"f UID SORT RETURN () (REVERSE DATE) UTF-8 ALL") == [
            b'* ESEARCH (TAG "f") UID ALL 2,1,3', b"f OK UID SORT completed"]
        assert await d(b"g SORT RETURN (COUNT MIN) (DATE) UTF-8 SUBJECT zzz") == [
            b'* ESEARCH (TAG "g") COUNT 0', b"g OK SORT completed"]
        assert (await d(b"h SORT RETURN (SAVE) (DATE) UTF-8 ALL"))[-1].startswith(b"h BAD")

    asyncio.run(go())
