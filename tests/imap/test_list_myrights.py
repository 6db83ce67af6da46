"""LIST RETURN (MYRIGHTS) (RFC 8440) over a real socket: one's own folders and shared ones."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from imaptest import ServerHandle, login, ok, serve_real_store

ALICE, BOB = "alice@example.test", "bob@example.test"


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[ServerHandle]:
    with serve_real_store(tmp_path, users=(ALICE, BOB)) as handle:
        yield handle


def test_rfc8440_example_own_folders(srv: ServerHandle) -> None:
    c = login(srv, ALICE)
    assert b"LIST-MYRIGHTS" in ok(c, b"c CAPABILITY")[0].split()
    ok(c, b"c CREATE foo")
    out = ok(c, b'A01 LIST "" % RETURN (MYRIGHTS)')
    # RFC 8440 §3's example: each LIST line followed by the mailbox's MYRIGHTS
    i = out.index(b'* LIST (\\HasNoChildren) "/" INBOX\r\n')
    assert out[i + 1] == b"* MYRIGHTS INBOX lrswipkxteacd\r\n"
    i = out.index(b'* LIST (\\HasNoChildren) "/" foo\r\n')
    assert out[i + 1] == b"* MYRIGHTS foo lrswipkxteacd\r\n"
    # the same rights MYRIGHTS answers
    assert ok(c, b"m MYRIGHTS foo")[0] == out[i + 1]
    c.close()


def test_shared_folders_carry_the_grantees_rights(srv: ServerHandle) -> None:
    alice = login(srv, ALICE)
    ok(alice, b"c CREATE Projects")
    ok(alice, b"c CREATE Private")
    ok(alice, b"s SETACL Projects bob@example.test lrs")
    ok(alice, b"s SETACL INBOX bob@example.test lr")
    bob = login(srv, BOB)
    out = ok(bob, b'l LIST "" "*" RETURN (MYRIGHTS)')
    rights = {ln.split(b" ", 2)[2] for ln in out if ln.startswith(b"* MYRIGHTS ")}
    assert b'"Other Users/alice@example.test/Projects" lrs\r\n' in rights
    assert b'"Other Users/alice@example.test/INBOX" lr\r\n' in rights
    assert b"INBOX lrswipkxteacd\r\n" in rights
    # the namespace's \Noselect levels and what bob may not see have no MYRIGHTS
    assert not any(b"Private" in r for r in rights) and not any(r.startswith(b'"Other Users" ') for r in rights)
    assert not any(r.startswith(b'"Other Users/alice@example.test" ') for r in rights)
    assert len(rights) == sum(1 for ln in out if ln.startswith(b"* LIST ") and b"\\Noselect" not in ln)
    # with STATUS too (RFC 5819 and RFC 8440 together), and a revoke seen at the next LIST
    out = ok(bob, b'l LIST "" "Other Users/*" RETURN (MYRIGHTS STATUS (MESSAGES))')
    assert b'* MYRIGHTS "Other Users/alice@example.test/Projects" lrs\r\n' in out
    assert b'* STATUS "Other Users/alice@example.test/Projects" (MESSAGES 0)\r\n' in out
    ok(alice, b"d DELETEACL Projects bob@example.test")
    out = ok(bob, b'l LIST "" "Other Users/*" RETURN (MYRIGHTS)')
    assert not any(b"Projects" in ln for ln in out)
    alice.close()
    bob.close()
