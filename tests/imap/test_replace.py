"""REPLACE / UID REPLACE (RFC 8508) over a real socket and a real maildir store: the RFC's
examples, QRESYNC's VANISHED, the rights of a shared folder, refusals that store nothing, and a
spooled (large) replacement."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from imaptest import Raw, ServerHandle, login, ok, serve_real_store

ALICE, BOB = "alice@example.test", "bob@example.test"
DRAFTS_B = b'"Other Users/alice@example.test/Drafts"'


def draft(n: int, pad: int = 0) -> bytes:
    return (b"Date: Thu, 1 Jan 2015 00:05:00 -0500 (EST)\r\nFrom: Fritz Schmidt <fritz.ze@example.org>\r\n"
            b"To: Helga Mueller <helga.mue@example.com>\r\nSubject: Avoiding Lefse (draft %d)\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n\r\nHallo Helga, %s\r\n"
            % (n, b"x" * pad))


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[ServerHandle]:
    with serve_real_store(tmp_path, users=(ALICE, BOB)) as handle:
        yield handle


def send(c: Raw, head: bytes, data: bytes) -> list[bytes]:
    """``head`` then a synchronising literal of ``data`` (the server's "+" read first)."""
    tag = head.split(b" ")[0]
    c.send(head + b" {%d}\r\n" % len(data))
    assert c.line().startswith(b"+ ")
    c.send(data + b"\r\n")
    return c.until(tag)


def subjects(c: Raw, mailbox: bytes) -> list[bytes]:
    ok(c, b"x EXAMINE " + mailbox)
    out = b"".join(ok(c, b"x FETCH 1:* BODY.PEEK[HEADER.FIELDS (SUBJECT)]"))
    ok(c, b"x CLOSE")
    return re.findall(rb"\(draft (\d+)\)", out)


@pytest.fixture
def alice(srv: ServerHandle) -> Raw:
    """Alice with drafts 1..4 in Drafts (UIDs 1..4)."""
    c = login(srv, ALICE)
    assert b"REPLACE" in ok(c, b"c CAPABILITY")[0].split()
    for n in range(1, 5):
        assert send(c, b"a APPEND Drafts (\\Draft)", draft(n))[-1].startswith(b"a OK")
    return c


def test_rfc8508_replace_by_sequence_number(alice: Raw) -> None:
    ok(alice, b"s SELECT Drafts")
    out = send(alice, b"A003 REPLACE 4 Drafts (\\Seen \\Draft)", draft(5))
    # RFC 8508 §3.1's example: the new message's UID first, then the old one's EXPUNGE
    validity = re.search(rb"UIDVALIDITY (\d+)", b"".join(ok(alice, b"x STATUS Drafts (UIDVALIDITY)"))).group(1)
    assert out[0] == b"* OK [APPENDUID %s 5] Replacement Message ID\r\n" % validity
    assert b"* 4 EXPUNGE\r\n" in out and b"* 4 EXISTS\r\n" in out
    assert out.index(b"* 4 EXPUNGE\r\n") < out.index(b"* 4 EXISTS\r\n")
    assert out[-1] == b"A003 OK REPLACE completed\r\n"
    flags = b"".join(ok(alice, b"f UID FETCH 5 FLAGS"))
    assert b"\\Seen" in flags and b"\\Draft" in flags
    ok(alice, b"c CLOSE")
    assert subjects(alice, b"Drafts") == [b"1", b"2", b"3", b"5"]


def test_uid_replace_into_another_mailbox_with_qresync(alice: Raw) -> None:
    ok(alice, b"e ENABLE QRESYNC")
    ok(alice, b"c CREATE Notes")
    sel = b"".join(ok(alice, b"s SELECT Drafts"))
    before = int(re.search(rb"HIGHESTMODSEQ (\d+)", sel).group(1))
    out = send(alice, b"B003 UID REPLACE 2 Notes", draft(6))
    assert re.fullmatch(rb"\* OK \[APPENDUID \d+ 1\] Replacement Message ID\r\n", out[0])
    assert b"* VANISHED 2\r\n" in out and out[-1] == b"B003 OK UID REPLACE completed\r\n"
    assert b"* 3 EXISTS\r\n" in out  # one fewer: the new message went elsewhere
    status = b"".join(ok(alice, b"t STATUS Drafts (HIGHESTMODSEQ MESSAGES)"))
    assert b"MESSAGES 3" in status and int(re.search(rb"HIGHESTMODSEQ (\d+)", status).group(1)) > before
    ok(alice, b"c CLOSE")
    # a QRESYNC resync after the replace reports the old UID vanished
    sel = b"".join(ok(alice, b"s SELECT Drafts (QRESYNC (%s %d))" % (
        re.search(rb"UIDVALIDITY (\d+)", b"".join(ok(alice, b"v STATUS Drafts (UIDVALIDITY)"))).group(1), before)))
    assert b"* VANISHED (EARLIER) 2\r\n" in sel
    ok(alice, b"c CLOSE")
    assert subjects(alice, b"Drafts") == [b"1", b"3", b"4"] and subjects(alice, b"Notes") == [b"6"]


def test_refusals_store_nothing(alice: Raw) -> None:
    ok(alice, b"s EXAMINE Drafts")
    out = send(alice, b"r REPLACE 1 Drafts", draft(7))
    assert out[-1].startswith(b"r NO [READ-ONLY]")
    ok(alice, b"s SELECT Drafts")
    out = send(alice, b"r UID REPLACE 99 Drafts", draft(8))
    assert out[-1].startswith(b"r NO [NONEXISTENT]")
    out = send(alice, b"r REPLACE 9 Drafts", draft(9))
    assert out[-1].startswith(b"r BAD")
    out = send(alice, b"r REPLACE 1 Nowhere", draft(10))
    assert out[-1].startswith(b"r NO [TRYCREATE]")
    assert alice.cmd(b"r REPLACE 1 Drafts")[-1].startswith(b"r BAD")  # no message
    ok(alice, b"c CLOSE")
    assert subjects(alice, b"Drafts") == [b"1", b"2", b"3", b"4"]
    assert send(alice, b"r UID REPLACE 1 Drafts", draft(11))[-1] == b"r BAD No mailbox selected\r\n"


def test_shared_folder_needs_i_t_and_e(srv: ServerHandle, alice: Raw) -> None:
    ok(alice, b"s SETACL Drafts bob@example.test lri")
    bob = login(srv, BOB)
    ok(bob, b"s SELECT " + DRAFTS_B)
    out = send(bob, b"r UID REPLACE 1 " + DRAFTS_B, draft(11))
    assert out[-1].startswith(b"r NO [NOPERM]") and b"APPENDUID" not in b"".join(out)
    ok(alice, b"s SETACL Drafts bob@example.test lrite")
    out = send(bob, b"r UID REPLACE 1 " + DRAFTS_B + b" (\\Seen \\Draft)", draft(12))
    assert out[-1] == b"r OK UID REPLACE completed\r\n" and b"* 1 EXPUNGE\r\n" in out
    # without "s" and "w" the flags are dropped, the message stored (RFC 4314 §4, as APPEND does)
    flags = b"".join(ok(bob, b"f UID FETCH 5 FLAGS"))
    assert b"\\Seen" not in flags and b"\\Draft" not in flags and b"* 4 FETCH" in flags
    bob.close()
    assert subjects(alice, b"Drafts") == [b"2", b"3", b"4", b"12"]


def test_large_replacement_is_spooled(alice: Raw) -> None:
    ok(alice, b"s SELECT Drafts")
    big = draft(13, pad=600_000)
    out = send(alice, b"r REPLACE 1 Drafts", big)
    assert out[-1] == b"r OK REPLACE completed\r\n"
    size = b"".join(ok(alice, b"f UID FETCH 5 RFC822.SIZE"))
    assert b"RFC822.SIZE %d" % len(big) in size
    ok(alice, b"c CLOSE")
    assert subjects(alice, b"Drafts") == [b"2", b"3", b"4", b"13"]
