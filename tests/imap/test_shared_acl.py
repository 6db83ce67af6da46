"""Shared mailboxes over IMAP: the "Other Users" namespace, the rights of a read and a write grant,
revocation at the next command, RFC 4314 ACL commands (real directory and maildir store, real sockets)."""

from __future__ import annotations

import imaplib
import re
from collections.abc import Iterator
from pathlib import Path

import imapclient
import pytest
from imaptest import Raw, ServerHandle, ok, serve_real_store

from mailsrv.config import DirectoryConfig
from mailsrv.directory import open_sync

ALICE, BOB, CAROL = "alice@example.test", "bob@example.test", "carol@example.test"
SHARED = f"Other Users/{ALICE}"
MSG = b"From: x@example.test\r\nTo: alice@example.test\r\nSubject: %s\r\nMessage-ID: <%s@t>\r\n\r\nbody %s\r\n"


def msg(word: str) -> bytes:
    w = word.encode()
    return MSG % (w, w, w)


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[ServerHandle]:
    with serve_real_store(tmp_path, users=(ALICE, BOB, CAROL), quota_bytes=10_000_000) as handle:
        handle.extra["dir"] = tmp_path
        handle.extra["clients"] = []
        try:
            yield handle
        finally:
            for c in handle.extra["clients"]:
                c.close()


def share(srv: ServerHandle, owner: str, grantee: str, rights: str | None) -> None:
    """``mailsrv share grant|revoke`` as the directory does it (another process's change)."""
    d = open_sync(DirectoryConfig(), srv.extra["dir"])
    try:
        if rights is None:
            d.revoke(owner, grantee)
        else:
            d.grant(owner, grantee, rights)
    finally:
        d.close()


def login(srv: ServerHandle, user: str) -> Raw:
    c = Raw(srv.host, srv.port)
    srv.extra["clients"].append(c)  # closed by the fixture (Raw.opened holds them weakly)
    assert c.cmd(b"l LOGIN " + user.encode() + b" wonderland")[-1].startswith(b"l OK")
    return c


def refused(c: Raw, line: bytes, code: bytes = b"NOPERM") -> list[bytes]:
    out = c.cmd(line)
    assert out[-1].startswith(line.split(b" ")[0] + b" NO [" + code + b"]"), out
    return out


def append(c: Raw, mailbox: str, data: bytes, flags: bytes = b"") -> list[bytes]:
    tag = b"a"
    c.send(tag + b' APPEND "' + mailbox.encode() + b'" ' + (b"(" + flags + b") " if flags else b"")
           + b"{%d+}\r\n" % len(data) + data + b"\r\n")
    return c.until(tag)


@pytest.fixture
def alice(srv: ServerHandle) -> Raw:
    """Alice with two messages in INBOX and one in Projects."""
    c = login(srv, ALICE)
    ok(c, b"c CREATE Projects")
    for word in ("one", "two"):
        assert append(c, "INBOX", msg(word))[-1].startswith(b"a OK")
    assert append(c, "Projects", msg("plan"))[-1].startswith(b"a OK")
    return c


def test_namespace_and_capability(srv: ServerHandle) -> None:
    c = login(srv, BOB)
    assert ok(c, b"n NAMESPACE")[0] == b'* NAMESPACE (("" "/")) (("Other Users/" "/")) NIL\r\n'
    caps = ok(c, b"c CAPABILITY")[0].split()
    assert b"ACL" in caps and b"RIGHTS=texk" in caps


def test_read_grant_lists_selects_fetches_searches_and_writes_nothing(srv: ServerHandle, alice: Raw) -> None:
    share(srv, ALICE, BOB, "read")
    bob = login(srv, BOB)
    listed = b"".join(ok(bob, b'l LIST "" "*"'))
    assert b'* LIST (\\Noselect \\HasChildren) "/" "Other Users"\r\n' in listed
    assert b'* LIST (\\Noselect \\HasChildren) "/" "Other Users/alice@example.test"\r\n' in listed
    assert b'"/" "Other Users/alice@example.test/INBOX"\r\n' in listed
    assert b'"/" "Other Users/alice@example.test/Projects"\r\n' in listed
    assert b'"/" "Other Users/alice@example.test/Sent"\r\n' in listed
    shared_lines = [ln for ln in listed.split(b"\r\n") if b"Other Users/" in ln]
    assert not any(b"\\Sent" in ln or b"\\Trash" in ln for ln in shared_lines)  # no special use there
    lsub = b"".join(ok(bob, b'l LSUB "" "Other Users/*"'))
    assert b'"Other Users/alice@example.test/Projects"' in lsub
    pct = ok(bob, b'l LIST "" "Other Users/%"')
    assert pct[0] == b'* LIST (\\Noselect \\HasChildren) "/" "Other Users/alice@example.test"\r\n' and len(pct) == 2
    status = ok(bob, b'l STATUS "Other Users/alice@example.test/INBOX" (MESSAGES UNSEEN)')[0]
    assert status == b'* STATUS "Other Users/alice@example.test/INBOX" (MESSAGES 2 UNSEEN 2)\r\n'
    sel = ok(bob, b's SELECT "Other Users/alice@example.test/INBOX"')
    assert b"* 2 EXISTS\r\n" in sel and b"* OK [PERMANENTFLAGS ()] Read-only mailbox\r\n" in sel
    assert sel[-1].startswith(b"s OK [READ-ONLY]")
    assert ok(bob, b"m MYRIGHTS \"Other Users/alice@example.test/INBOX\"")[0] == \
        b'* MYRIGHTS "Other Users/alice@example.test/INBOX" lr\r\n'
    body = b"".join(ok(bob, b"f FETCH 2 BODY[]"))
    assert b"Subject: two" in body and b"\\Seen" not in body  # no "s" right: the owner's flag stays
    assert ok(bob, b"s UID SEARCH SUBJECT two")[0] == b"* SEARCH 2\r\n"
    refused(bob, b"t STORE 1 +FLAGS (\\Seen)")
    refused(bob, b"t STORE 1 +FLAGS (\\Flagged)")
    refused(bob, b"e EXPUNGE")
    refused(bob, b"e UID EXPUNGE 1")
    refused(bob, b"m MOVE 1 INBOX")
    assert append(bob, f"{SHARED}/INBOX", msg("planted"))[-1].startswith(b"a NO [NOPERM]")
    refused(bob, b'c CREATE "Other Users/alice@example.test/New"')
    refused(bob, b'c DELETE "Other Users/alice@example.test/Projects"')
    refused(bob, b'c RENAME "Other Users/alice@example.test/Projects" Mine')
    refused(bob, b'g GETACL "Other Users/alice@example.test/INBOX"')
    refused(bob, b'g SETACL "Other Users/alice@example.test/INBOX" carol@example.test lr')
    # copying out into one's own folder needs only "r" there and "i" here
    copied = ok(bob, b"c COPY 1:2 INBOX")
    assert b"COPYUID" in copied[-1]
    refused(bob, b'c COPY 1 "Other Users/alice@example.test/Projects"')
    ok(bob, b"c CLOSE")  # without "e": closes, expunges nothing
    assert ok(bob, b"s STATUS INBOX (MESSAGES)")[0] == b"* STATUS INBOX (MESSAGES 2)\r\n"
    assert ok(alice, b"s STATUS INBOX (MESSAGES UNSEEN)")[0] == b"* STATUS INBOX (MESSAGES 2 UNSEEN 2)\r\n"
    assert ok(alice, b"s STATUS Projects (MESSAGES)")[0] == b"* STATUS Projects (MESSAGES 1)\r\n"
    # the owner's own listing and rights are unchanged
    assert b"Other Users" not in b"".join(ok(alice, b'l LIST "" "*"'))
    assert ok(alice, b"m MYRIGHTS INBOX")[0] == b"* MYRIGHTS INBOX lrswipkxteacd\r\n"


def test_write_grant_changes_the_owners_mail(srv: ServerHandle, alice: Raw) -> None:
    share(srv, ALICE, BOB, "write")
    bob = login(srv, BOB)
    sel = ok(bob, b's SELECT "Other Users/alice@example.test/INBOX"')
    assert sel[-1].startswith(b"s OK [READ-WRITE]") and b"PERMANENTFLAGS (\\Answered" in b"".join(sel)
    assert ok(bob, b'm MYRIGHTS "Other Users/alice@example.test/INBOX"')[0].endswith(b" lrswited\r\n")
    assert b"\\Seen" in b"".join(ok(bob, b"f FETCH 1 BODY[]"))  # "s": the owner sees it read
    ok(bob, b"t STORE 2 +FLAGS (\\Flagged $Work)")
    assert append(bob, f"{SHARED}/INBOX", msg("added"), b"\\Seen")[-1].startswith(b"a OK [APPENDUID")
    ok(bob, b"c COPY 1 \"Other Users/alice@example.test/Projects\"")
    assert ok(bob, b"m MOVE 2 INBOX")[0].startswith(b"* OK [COPYUID")  # into bob's own INBOX
    ok(bob, b"t STORE 1 +FLAGS (\\Deleted)")
    out = ok(bob, b"e EXPUNGE")
    assert b"* 1 EXPUNGE\r\n" in out
    inbox = b"".join(ok(alice, b"s SELECT INBOX") + ok(alice, b"f FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
    assert b"* 1 EXISTS" in inbox and b"Subject: added" in inbox and b"Subject: one" not in inbox
    assert ok(alice, b"s STATUS Projects (MESSAGES)")[0] == b"* STATUS Projects (MESSAGES 2)\r\n"
    moved = b"".join(ok(bob, b"u UNSELECT") + ok(bob, b"s SELECT INBOX") + ok(bob, b"f FETCH 1:* (FLAGS BODY.PEEK[])"))
    assert b"Subject: two" in moved and b"$Work" in moved and b"\\Flagged" in moved
    # a grant never gives k, x or a: no folders made or removed in the owner's account, no ACL changes
    refused(bob, b'c CREATE "Other Users/alice@example.test/Bob"')
    refused(bob, b'c DELETE "Other Users/alice@example.test/Projects"')
    refused(bob, b'g SETACL "Other Users/alice@example.test/INBOX" carol@example.test lr')


def test_a_third_user_sees_nothing(srv: ServerHandle, alice: Raw) -> None:
    share(srv, ALICE, BOB, "write")
    carol = login(srv, CAROL)
    assert b"Other Users" not in b"".join(ok(carol, b'l LIST "" "*"'))
    refused(carol, b's SELECT "Other Users/alice@example.test/INBOX"', b"NONEXISTENT")
    refused(carol, b's EXAMINE "Other Users/ALICE@example.test/INBOX"', b"NONEXISTENT")
    refused(carol, b's STATUS "Other Users/alice@example.test/INBOX" (MESSAGES)', b"NONEXISTENT")
    refused(carol, b'm MYRIGHTS "Other Users/alice@example.test/INBOX"', b"NONEXISTENT")
    refused(carol, b'q GETQUOTAROOT "Other Users/alice@example.test/INBOX"', b"NONEXISTENT")
    refused(carol, b"q GETQUOTA alice@example.test", b"NONEXISTENT")
    assert append(carol, f"{SHARED}/INBOX", msg("x"))[-1].startswith(b"a NO [NONEXISTENT]")
    refused(carol, b'c CREATE "Other Users"', b"NONEXISTENT")
    ok(carol, b"s SELECT INBOX")
    refused(carol, b'c COPY 1:* "Other Users/alice@example.test/INBOX"', b"NONEXISTENT")


def test_revoke_and_downgrade_take_effect_at_the_next_command(srv: ServerHandle, alice: Raw) -> None:
    share(srv, ALICE, BOB, "write")
    bob = login(srv, BOB)
    ok(bob, b's SELECT "Other Users/alice@example.test/INBOX"')
    ok(bob, b"t STORE 1 +FLAGS (\\Flagged)")
    share(srv, ALICE, BOB, "read")
    out = refused(bob, b"t STORE 1 +FLAGS (\\Answered)")
    assert out[0] == b"* OK [PERMANENTFLAGS ()] The share no longer allows changes\r\n"  # RFC 4314 §5.1.1
    assert len(refused(bob, b"e EXPUNGE")) == 1  # said once
    assert b"Subject: one" in b"".join(ok(bob, b"f FETCH 1 BODY.PEEK[]"))
    share(srv, ALICE, BOB, None)
    assert refused(bob, b"f FETCH 1 BODY.PEEK[]")[-1] == b"f NO [NOPERM] Access to this shared mailbox was revoked\r\n"
    refused(bob, b"s UID SEARCH ALL")
    refused(bob, b"c COPY 1 INBOX")
    ok(bob, b"n NOOP")  # reports nothing more of the owner's mailbox
    ok(bob, b"u UNSELECT")
    refused(bob, b's SELECT "Other Users/alice@example.test/INBOX"', b"NONEXISTENT")
    assert b"Other Users" not in b"".join(ok(bob, b'l LIST "" "*"'))
    assert ok(alice, b"s STATUS INBOX (MESSAGES)")[0] == b"* STATUS INBOX (MESSAGES 2)\r\n"


def test_setacl_getacl_deleteacl_are_per_folder(srv: ServerHandle, alice: Raw) -> None:
    bob = login(srv, BOB)
    assert ok(alice, b"g GETACL INBOX")[0] == b"* ACL INBOX alice@example.test lrswipkxteacd\r\n"
    ok(alice, b"s SETACL INBOX bob@example.test lr")
    assert ok(alice, b"g GETACL INBOX")[0] == b"* ACL INBOX alice@example.test lrswipkxteacd bob@example.test lr\r\n"
    assert ok(alice, b"g GETACL Projects")[0] == b"* ACL Projects alice@example.test lrswipkxteacd\r\n"
    assert ok(bob, b's STATUS "Other Users/alice@example.test/INBOX" (MESSAGES)')[0].endswith(b"(MESSAGES 2)\r\n")
    refused(bob, b's STATUS "Other Users/alice@example.test/Projects" (MESSAGES)', b"NONEXISTENT")
    listed = b"".join(ok(bob, b'l LIST "" "Other Users/*"'))
    assert b"/INBOX" in listed and b"Projects" not in listed and b"Sent" not in listed
    ok(alice, b"s SETACL INBOX bob@example.test +swited")
    assert ok(alice, b"g GETACL INBOX")[0].endswith(b" bob@example.test lrswited\r\n")
    ok(alice, b"s SETACL Projects bob@example.test lrs")  # any subset, on any folder
    assert ok(alice, b"g GETACL Projects")[0].endswith(b" bob@example.test lrs\r\n")
    ok(alice, b"s SETACL Projects bob@example.test -s")
    assert ok(alice, b"g GETACL Projects")[0].endswith(b" bob@example.test lr\r\n")
    assert alice.cmd(b"s SETACL INBOX bob@example.test lrQ")[-1].startswith(b"s BAD")
    refused(alice, b"s SETACL INBOX anyone lr", b"CANNOT")
    refused(alice, b"s SETACL INBOX -bob@example.test w", b"CANNOT")
    refused(alice, b"s SETACL INBOX alice@example.test lr", b"CANNOT")
    refused(alice, b"s SETACL INBOX bob@elsewhere.test lr", b"CANNOT")
    refused(alice, b"s SETACL INBOX nobody@example.test lr", b"CANNOT")
    refused(alice, b"s SETACL Nonexistent bob@example.test lr", b"NONEXISTENT")
    assert ok(alice, b"r LISTRIGHTS INBOX bob@example.test")[0] == \
        b'* LISTRIGHTS INBOX bob@example.test "" l r s w i p k x t e a c d\r\n'
    assert ok(alice, b"r LISTRIGHTS INBOX alice@example.test")[0] == \
        b"* LISTRIGHTS INBOX alice@example.test lrswipkxteacd\r\n"
    ok(bob, b's SELECT "Other Users/alice@example.test/INBOX"')
    ok(bob, b"t STORE 1 +FLAGS (\\Flagged)")
    ok(alice, b"d DELETEACL INBOX bob@example.test")
    ok(alice, b"d DELETEACL INBOX bob@example.test")  # nothing left to remove
    refused(bob, b"t STORE 1 +FLAGS (\\Answered)")
    assert ok(alice, b"g GETACL INBOX")[0] == b"* ACL INBOX alice@example.test lrswipkxteacd\r\n"
    # an account grant is every folder's ACL; an entry overrides it on one folder, "" takes it away there
    share(srv, ALICE, BOB, "read")
    assert ok(alice, b"g GETACL Sent")[0].endswith(b" bob@example.test lr\r\n")
    ok(alice, b's SETACL Sent bob@example.test ""')
    assert ok(alice, b"g GETACL Sent")[0] == b"* ACL Sent alice@example.test lrswipkxteacd\r\n"
    listed = b"".join(ok(bob, b'l LIST "" "Other Users/*"'))
    assert b"/INBOX" in listed and b"/Projects" in listed and b"/Sent" not in listed
    ok(alice, b"s SETACL Sent bob@example.test lr")  # back to the account grant's: the entry goes
    assert b"/Sent" in b"".join(ok(bob, b'l LIST "" "Other Users/*"'))
    share(srv, ALICE, BOB, None)  # a revoke ends the account grant and every folder's entry
    assert b"Other Users" not in b"".join(ok(bob, b'l LIST "" "*"'))


def test_quota_of_a_shared_folder_is_the_owners(srv: ServerHandle, alice: Raw) -> None:
    share(srv, ALICE, BOB, "read")
    bob = login(srv, BOB)
    out = ok(bob, b'q GETQUOTAROOT "Other Users/alice@example.test/INBOX"')
    assert out[0] == b'* QUOTAROOT "Other Users/alice@example.test/INBOX" alice@example.test\r\n'
    used = int(re.search(rb"STORAGE (\d+) 9765", out[1]).group(1))  # type: ignore[union-attr]
    assert out[1].startswith(b"* QUOTA alice@example.test (STORAGE ") and used >= 1
    assert ok(bob, b"q GETQUOTA alice@example.test")[0] == out[1]
    own = ok(bob, b"q GETQUOTAROOT INBOX")
    assert own[0] == b'* QUOTAROOT INBOX ""\r\n' and own[1] == b'* QUOTA "" (STORAGE 0 9765)\r\n'


def test_imaplib_and_imapclient_read_a_shared_folder_and_idle_sees_the_owners_new_mail(
        srv: ServerHandle, alice: Raw) -> None:
    share(srv, ALICE, BOB, "read")
    m = imaplib.IMAP4(srv.host, srv.port)
    try:
        m.login(BOB, "wonderland")
        typ, data = m.namespace()
        assert typ == "OK" and b'"Other Users/"' in data[0]
        typ, boxes = m.list('"Other Users/alice@example.test"', "*")
        assert typ == "OK" and any(b'"Other Users/alice@example.test/Projects"' in b for b in boxes)
        typ, _ = m.select('"Other Users/alice@example.test/Projects"', readonly=True)
        assert typ == "OK"
        typ, found = m.uid("SEARCH", "SUBJECT", "plan")
        assert found == [b"1"]
        typ, fetched = m.uid("FETCH", "1", "(BODY.PEEK[TEXT])")
        assert fetched[0][1] == b"body plan\r\n"  # type: ignore[index]
        typ, _ = m.store("1", "+FLAGS", "\\Seen")
        assert typ == "NO"
    finally:
        m.logout()
    c = imapclient.IMAPClient(srv.host, port=srv.port, ssl=False, timeout=10)
    try:
        c.login(BOB, "wonderland")
        c.select_folder(f"{SHARED}/INBOX", readonly=True)
        c.idle()
        assert append(alice, "INBOX", msg("three"))[-1].startswith(b"a OK")
        seen: list[object] = []
        for _ in range(50):  # idle_check returns on each response; a deadline of 50 x 0.2 s
            seen += c.idle_check(timeout=0.2)
            if (3, b"EXISTS") in seen:
                break
        c.idle_done()
        assert (3, b"EXISTS") in seen
        assert c.search(["SUBJECT", "three"]) == [3]
    finally:
        c.logout()


def test_idle_in_a_revoked_share_reports_nothing_more(srv: ServerHandle, alice: Raw) -> None:
    share(srv, ALICE, BOB, "read")
    bob = login(srv, BOB)
    ok(bob, b's SELECT "Other Users/alice@example.test/INBOX"')
    bob.send(b"i IDLE\r\n")
    assert bob.line() == b"+ idling\r\n"
    share(srv, ALICE, BOB, None)
    assert append(alice, "INBOX", msg("after"))[-1].startswith(b"a OK")
    bob.send(b"DONE\r\n")
    out = bob.until(b"i")
    assert out == [b"i OK IDLE completed\r\n"], out  # no "* 3 EXISTS": the grant is gone
    refused(bob, b"f FETCH 3 BODY.PEEK[]")


def test_acl_commands_without_a_directory(server: ServerHandle, raw: Raw) -> None:
    """The in-memory test store has no directory: one's own rights, no Other Users, no SETACL."""
    ok(raw, b"l LOGIN alice wonderland")
    assert ok(raw, b"n NAMESPACE")[0] == b'* NAMESPACE (("" "/")) (("Other Users/" "/")) NIL\r\n'
    assert ok(raw, b"m MYRIGHTS INBOX")[0] == b"* MYRIGHTS INBOX lrswipkxteacd\r\n"
    assert ok(raw, b"g GETACL INBOX")[0] == b"* ACL INBOX alice lrswipkxteacd\r\n"
    assert b"Other Users" not in b"".join(ok(raw, b'l LIST "" "*"'))
    refused(raw, b"s SETACL INBOX bob@example.test lr", b"CANNOT")
    refused(raw, b'x SELECT "Other Users/bob/INBOX"', b"NONEXISTENT")
    refused(raw, b"m MYRIGHTS Nonexistent", b"NONEXISTENT")


def test_list_extended_status_subscriptions_and_close_in_a_write_share(srv: ServerHandle, alice: Raw) -> None:
    share(srv, ALICE, BOB, "write")
    bob = login(srv, BOB)
    out = b"".join(ok(bob, b'l LIST "" "Other Users/alice@example.test/*" RETURN (STATUS (MESSAGES) SUBSCRIBED)'))
    assert b'\\Subscribed) "/" "Other Users/alice@example.test/INBOX"' in out
    assert b'* STATUS "Other Users/alice@example.test/INBOX" (MESSAGES 2)' in out
    assert b'* STATUS "Other Users/alice@example.test/Projects" (MESSAGES 1)' in out
    subscribed = b"".join(ok(bob, b'l LIST (SUBSCRIBED) "" "Other Users/*"'))
    assert b'"Other Users/alice@example.test/Projects"' in subscribed
    special = b"".join(ok(bob, b'l LIST (SPECIAL-USE) "" "*"'))
    assert b"Other Users" not in special  # the owner's special-use folders are not the grantee's
    ok(bob, b's SUBSCRIBE "Other Users/alice@example.test/Projects"')
    refused(bob, b'u UNSUBSCRIBE "Other Users/alice@example.test/Projects"', b"CANNOT")
    ok(bob, b"e ENABLE IMAP4rev2")
    sel = ok(bob, b's SELECT "Other Users/alice@example.test/INBOX"')
    assert b'* LIST () "/" "Other Users/alice@example.test/INBOX"\r\n' in sel
    assert ok(bob, b"o SORT (SUBJECT) UTF-8 ALL")[0] == b"* SORT 1 2\r\n"
    assert ok(bob, b"t THREAD ORDEREDSUBJECT UTF-8 ALL")[0] == b"* THREAD (1)(2)\r\n"
    out = b"".join(ok(bob, b"t UID STORE 1 FLAGS (\\Deleted \\Answered)"))
    assert b"\\Deleted" in out and b"\\Answered" in out
    ok(bob, b"c CLOSE")  # with "e": the \Deleted message goes
    assert ok(alice, b"s STATUS INBOX (MESSAGES)")[0] == b"* STATUS INBOX (MESSAGES 1)\r\n"
    # a folder of one's own cannot be named like the namespace
    refused(bob, b'c CREATE "Other Users/alice@example.test/New"')
    refused(alice, b'c CREATE "Other Users/x"', b"NONEXISTENT")


def test_imapclient_setacl_and_getacl(srv: ServerHandle, alice: Raw) -> None:
    c = imapclient.IMAPClient(srv.host, port=srv.port, ssl=False, timeout=10)
    try:
        c.login(ALICE, "wonderland")
        assert c.has_capability("ACL") and c.has_capability("RIGHTS=texk")
        c.setacl("INBOX", BOB, "lrswite")
        assert c.getacl("INBOX") == [(ALICE.encode(), b"lrswipkxteacd"), (BOB.encode(), b"lrswited")]
        assert c.getacl("Projects") == [(ALICE.encode(), b"lrswipkxteacd")]
        c.setacl("Projects", BOB, "lr")
        assert c.getacl("Projects") == [(ALICE.encode(), b"lrswipkxteacd"), (BOB.encode(), b"lr")]
        with pytest.raises(imapclient.exceptions.IMAPClientError, match="CANNOT"):
            c.setacl("Projects", "anyone", "lr")
        c.setacl("INBOX", BOB, "")  # imapclient's way to remove rights
        assert c.getacl("INBOX") == [(ALICE.encode(), b"lrswipkxteacd")]
    finally:
        c.logout()
