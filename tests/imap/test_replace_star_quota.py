"""REPLACE / UID REPLACE (RFC 8508) with Python's imaplib over a real socket and store: ``*`` names the
last message or the highest UID, and the quota counts the replaced message's octets as freed (as
Dovecot does) for the account's and the domain's quota root."""

from __future__ import annotations

import imaplib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from imaptest import ServerHandle, serve_real_store

ALICE = "alice@example.test"
LIMIT = 20_000


def draft(n: int, size: int = 0) -> bytes:
    head = b"From: fritz@example.org\r\nTo: helga@example.com\r\nSubject: draft %d\r\n\r\n" % n
    return head + b"x" * max(0, size - len(head) - 2) + b"\r\n"


@pytest.fixture(autouse=True)
def replace_in_imaplib(monkeypatch: pytest.MonkeyPatch) -> None:
    """imaplib knows no REPLACE: allow it, also after UID (the message is sent with ``c.literal``)."""
    monkeypatch.setitem(imaplib.Commands, "REPLACE", ("SELECTED",))


def connect(srv: ServerHandle) -> imaplib.IMAP4:
    c = imaplib.IMAP4(srv.host, srv.port, timeout=20)
    c.login(ALICE, "wonderland")
    return c


def replace(c: imaplib.IMAP4, number: str, data: bytes, *, uid: bool = False) -> str:
    """The tagged reply's status, and its text after a NO (``NO [OVERQUOTA] ...``)."""
    c.literal = data
    if uid:
        typ, got = c._simple_command("UID", "REPLACE", number, "Drafts", "(\\Draft)")
    else:
        typ, got = c._simple_command("REPLACE", number, "Drafts", "(\\Draft)")
    return str(typ) if typ == "OK" else f"{typ} {got[-1].decode()}"


def subjects(c: imaplib.IMAP4) -> list[tuple[int, int]]:
    """(UID, draft number) of each message in the selected mailbox, in order."""
    typ, data = c.uid("FETCH", "1:*", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK"
    return [(int(re.search(rb"UID (\d+)", d[0]).group(1)), int(re.search(rb"draft (\d+)", d[1]).group(1)))
            for d in data if isinstance(d, tuple)]


def test_star_is_the_last_message_and_the_highest_uid(tmp_path: Path) -> None:
    with serve_real_store(tmp_path) as srv:
        c = connect(srv)
        try:
            c.create("Drafts")
            c.select("Drafts")
            # an empty mailbox: "*" names nothing (BAD for a sequence number, NO for a UID), nothing stored
            with pytest.raises(imaplib.IMAP4.error):
                replace(c, "*", draft(0))
            assert replace(c, "*", draft(0), uid=True).startswith("NO [NONEXISTENT]")
            for n in (1, 2, 3):
                assert c.append("Drafts", "(\\Draft)", None, draft(n))[0] == "OK"
            c.select("Drafts")
            assert subjects(c) == [(1, 1), (2, 2), (3, 3)]
            assert replace(c, "*", draft(4)) == "OK"
            assert c.response("APPENDUID")[1][-1].split()[1] == b"4"
            assert subjects(c) == [(1, 1), (2, 2), (4, 4)]
            c.store("2", "+FLAGS", "\\Deleted")  # "*" still the highest UID, whatever its flags
            assert replace(c, "*", draft(5), uid=True) == "OK"
            assert subjects(c) == [(1, 1), (2, 2), (5, 5)]
        finally:
            c.logout()


@pytest.fixture(params=["account", "domain"])
def limited(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerHandle]:
    """Alice under a LIMIT of octets: her own quota, or her domain's storage limit."""
    if request.param == "account":
        with serve_real_store(tmp_path, quota_bytes=LIMIT) as srv:
            yield srv
    else:
        with serve_real_store(tmp_path, domain_storage=LIMIT) as srv:
            yield srv


def test_the_replaced_message_is_counted_as_freed(limited: ServerHandle) -> None:
    c = connect(limited)
    try:
        c.create("Drafts")
        assert c.append("Drafts", "(\\Draft)", None, draft(1, 12_000))[0] == "OK"
        c.select("Drafts")
        free = LIMIT - 12_000
        # what APPEND refuses (12 000 + 15 000 > LIMIT) fits as the replacement of the 12 000 octets
        assert c.append("Drafts", "(\\Draft)", None, draft(9, 15_000))[1][0].startswith(b"[OVERQUOTA]")
        assert replace(c, "1", draft(2, 12_000 + free - 200)) == "OK"
        assert subjects(c) == [(2, 2)]
        # one larger than the old message and the free space: refused, nothing stored, the old one kept
        assert replace(c, "*", draft(3, 12_000 + free + 2_000)).startswith("NO [OVERQUOTA]")
        assert subjects(c) == [(2, 2)]
        assert replace(c, "2", draft(4, 1_000), uid=True) == "OK"
        assert subjects(c) == [(3, 4)]
    finally:
        c.logout()
