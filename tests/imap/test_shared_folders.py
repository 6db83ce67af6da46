"""Per-folder ACLs (RFC 4314, as Dovecot's acl plugin): each command needs exactly its right, LIST
shows only folders with "l", a grantee with "k" / "x" / "a" makes, removes and administers folders,
ACL entries follow the owner's CREATE / RENAME / DELETE, `mailsrv share grant --folder`, and a
grantee's SELECT leaves the owner's \\Recent alone (real directory, maildir store, sockets)."""

from __future__ import annotations

import imaplib
from pathlib import Path

from imaptest import Raw, ServerHandle, serve_real_store
from support.admin import cli
from test_shared_acl import (
    ALICE,
    BOB,
    CAROL,
    SHARED,
    alice,
    append,
    login,
    msg,
    ok,
    refused,
    share,
    srv,
)

from mailsrv.config import DirectoryConfig, ImapConfig
from mailsrv.directory import open_sync

__all__ = ["alice", "srv"]  # fixtures shared with test_shared_acl


def setacl(srv: ServerHandle, folder: str, rights: str | None, grantee: str = BOB) -> None:
    """``mailsrv share grant --folder`` as the directory does it (another process's change)."""
    d = open_sync(DirectoryConfig(), srv.extra["dir"])
    try:
        d.set_folder_rights(ALICE, grantee, folder, rights)
    finally:
        d.close()


def box(folder: str) -> bytes:
    return b'"' + f"{SHARED}/{folder}".encode() + b'"'


def test_each_command_needs_its_right(srv: ServerHandle, alice: Raw) -> None:
    bob = login(srv, BOB)
    setacl(srv, "INBOX", "l")  # listed, not readable
    listed = b"".join(ok(bob, b'l LIST "" "Other Users/*"'))
    assert box("INBOX") in listed and b"Projects" not in listed
    refused(bob, b"s SELECT " + box("INBOX"))  # RFC 4314 §4: SELECT needs "r"
    refused(bob, b"s STATUS " + box("INBOX") + b" (MESSAGES)")
    assert ok(bob, b"m MYRIGHTS " + box("INBOX"))[0] == b'* MYRIGHTS "Other Users/alice@example.test/INBOX" l\r\n'
    setacl(srv, "Projects", "r")  # readable, not listed
    assert b"Projects" not in b"".join(ok(bob, b'l LIST "" "*"'))
    assert ok(bob, b"s EXAMINE " + box("Projects"))[-1].startswith(b"s OK [READ-ONLY]")
    ok(bob, b"u UNSELECT")
    # "s": \Seen (FETCH of a body sets it), not other flags; READ-WRITE (RFC 4314 §5.2)
    setacl(srv, "INBOX", "lrs")
    assert ok(bob, b"s SELECT " + box("INBOX"))[-1].startswith(b"s OK [READ-WRITE]")
    assert b"\\Seen" in b"".join(ok(bob, b"f FETCH 1 BODY[]"))
    ok(bob, b"t STORE 2 +FLAGS (\\Seen)")
    refused(bob, b"t STORE 2 +FLAGS (\\Flagged)")
    refused(bob, b"t STORE 2 +FLAGS (\\Deleted)")
    refused(bob, b"t STORE 2 FLAGS (\\Seen)")  # a replace needs s, t and w
    assert append(bob, f"{SHARED}/INBOX", msg("x"))[-1].startswith(b"a NO [NOPERM]")
    # "w": other flags; "t" without "e": \Deleted set, nothing expunged
    setacl(srv, "INBOX", "lrwt")
    ok(bob, b"t STORE 2 +FLAGS (\\Flagged \\Deleted)")
    refused(bob, b"t STORE 2 -FLAGS (\\Seen)")
    refused(bob, b"e EXPUNGE")
    refused(bob, b"m MOVE 2 INBOX")  # MOVE needs t and e on the source
    ok(bob, b"c CLOSE")  # without "e" CLOSE expunges nothing
    assert ok(alice, b"s STATUS INBOX (MESSAGES)")[0] == b"* STATUS INBOX (MESSAGES 2)\r\n"
    # "e" (with "r"): EXPUNGE
    setacl(srv, "INBOX", "lre")
    ok(bob, b"s SELECT " + box("INBOX"))
    assert b"* 2 EXPUNGE\r\n" in ok(bob, b"e EXPUNGE")
    assert ok(alice, b"s STATUS INBOX (MESSAGES)")[0] == b"* STATUS INBOX (MESSAGES 1)\r\n"
    # "i": APPEND and COPY into, flags kept only with their rights
    setacl(srv, "Projects", "lri")
    out = append(bob, f"{SHARED}/Projects", msg("added"), b"\\Seen \\Flagged")
    assert out[-1].startswith(b"a OK [APPENDUID")
    ok(bob, b"c COPY 1 " + box("Projects"))
    assert b"* 3 EXISTS\r\n" in ok(alice, b"s SELECT Projects")
    assert ok(alice, b"f FETCH 2 FLAGS")[0] == b"* 2 FETCH (FLAGS (\\Recent))\r\n"  # \Seen, \Flagged dropped


def test_k_x_and_a_make_remove_and_administer_folders(srv: ServerHandle, alice: Raw) -> None:
    bob = login(srv, BOB)
    setacl(srv, "Projects", "lrk")
    refused(bob, b'c CREATE "Other Users/alice@example.test/Top"')  # top level: the owner's only
    ok(bob, b'c CREATE "Other Users/alice@example.test/Projects/Bob"')  # "k" on the parent
    assert b" Projects/Bob\r\n" in b"".join(ok(alice, b'l LIST "" "Projects/*"'))
    # the new folder starts with its parent's ACL (Dovecot's acl plugin does the same)
    assert ok(alice, b'g GETACL "Projects/Bob"')[0].endswith(b" bob@example.test lrkc\r\n")
    refused(bob, b'c DELETE "Other Users/alice@example.test/Projects/Bob"')  # no "x"
    refused(bob, b'c RENAME "Other Users/alice@example.test/Projects/Bob" "Other Users/alice@example.test/Projects/B"')
    setacl(srv, "Projects/Bob", "lrx")
    refused(bob, b'c RENAME "Other Users/alice@example.test/Projects/Bob" "Other Users/alice@example.test/Top"')
    refused(bob, b'c RENAME "Other Users/alice@example.test/Projects/Bob" Mine', b"CANNOT")  # across accounts
    ok(bob, b'c RENAME "Other Users/alice@example.test/Projects/Bob" "Other Users/alice@example.test/Projects/B"')
    assert ok(alice, b'g GETACL "Projects/B"')[0].endswith(b" bob@example.test lrx\r\n")  # followed the rename
    ok(bob, b'c DELETE "Other Users/alice@example.test/Projects/B"')
    assert b"Projects/B" not in b"".join(ok(alice, b'l LIST "" "*"'))
    ok(alice, b'c CREATE "Projects/B"')  # a new folder of that name: no left-over entry
    assert ok(alice, b'g GETACL "Projects/B"')[0].endswith(b" bob@example.test lrkc\r\n")  # the parent's
    # "a": GETACL, SETACL, LISTRIGHTS on that folder, within the owner's domain
    refused(bob, b"g GETACL " + box("Projects"))
    setacl(srv, "Projects", "lra")
    acl = ok(bob, b"g GETACL " + box("Projects"))[0]
    assert acl == b'* ACL "Other Users/alice@example.test/Projects" alice@example.test lrswipkxteacd ' \
                  b"bob@example.test lra\r\n"
    ok(bob, b"s SETACL " + box("Projects") + b" carol@example.test lr")
    ok(alice, b"s SETACL Projects CAROL@example.test +s")  # by any spelling of her address
    assert ok(alice, b"g GETACL Projects")[0].endswith(b" carol@example.test lrs\r\n")
    ok(alice, b"s SETACL Projects carol@example.test -s")
    refused(bob, b"s SETACL " + box("Projects") + b" alice@example.test lr", b"CANNOT")
    assert ok(bob, b"r LISTRIGHTS " + box("Projects") + b" alice@example.test")[0].endswith(b" lrswipkxteacd\r\n")
    carol = login(srv, CAROL)
    listed = b"".join(ok(carol, b'l LIST "" "*"'))
    assert box("Projects") in listed and box("INBOX") not in listed
    refused(bob, b'g GETACL "Other Users/alice@example.test/INBOX"', b"NONEXISTENT")  # no right there at all


def test_owner_rename_and_delete_carry_the_acl(srv: ServerHandle, alice: Raw) -> None:
    ok(alice, b"c CREATE Projects/Q1")
    ok(alice, b"s SETACL Projects bob@example.test lrs")
    ok(alice, b"s SETACL Projects/Q1 bob@example.test lr")
    ok(alice, b"r RENAME Projects Work")
    assert ok(alice, b"g GETACL Work")[0].endswith(b" bob@example.test lrs\r\n")
    assert ok(alice, b'g GETACL "Work/Q1"')[0].endswith(b" bob@example.test lr\r\n")
    bob = login(srv, BOB)
    listed = b"".join(ok(bob, b'l LIST "" "Other Users/*"'))
    assert box("Work") in listed and box("Work/Q1") in listed and b"Projects" not in listed
    ok(alice, b"d DELETE Work/Q1")
    ok(alice, b"c CREATE Elsewhere")
    ok(alice, b"r RENAME Elsewhere Work/Q1")  # not the old folder: no rights from it
    assert ok(alice, b'g GETACL "Work/Q1"')[0] == b'* ACL Work/Q1 alice@example.test lrswipkxteacd\r\n'
    # with a shared folder selected, one's own CREATE still makes one's own folder
    ok(bob, b"s SELECT " + box("Work"))
    ok(bob, b"c CREATE Mine")
    assert b'"/" Mine\r\n' in b"".join(ok(bob, b'l LIST "" "Mine"'))
    assert b"Mine" not in b"".join(ok(alice, b'l LIST "" "*"'))


def test_a_grantees_select_leaves_the_owners_recent(srv: ServerHandle, alice: Raw) -> None:
    share(srv, ALICE, BOB, "write")
    owner = login(srv, ALICE)
    assert append(owner, "INBOX", msg("fresh"))[-1].startswith(b"a OK")
    bob = login(srv, BOB)
    sel = ok(bob, b"s SELECT " + box("INBOX"))
    assert b"* 3 RECENT\r\n" in sel  # told of them, as EXAMINE is
    ok(bob, b"u UNSELECT")
    sel = ok(owner, b"s SELECT INBOX")
    assert b"* 3 RECENT\r\n" in sel  # still the owner's to claim


def test_cli_share_grant_folder_and_imaplib(srv: ServerHandle, alice: Raw) -> None:
    cfg = srv.extra["dir"] / "mailsrv.toml"
    cfg.write_text(f'[server]\ndata_dir = "{srv.extra["dir"]}"\n')
    cli(cfg, "share", "grant", ALICE, BOB, "--folder", "Projects", "--rights", "lrs")
    listing = cli(cfg, "share", "list", ALICE, "--json")
    assert '"folder": "Projects"' in listing and '"rights": "lrs"' in listing
    c = imaplib.IMAP4(srv.host, srv.port)
    try:
        c.login(BOB, "wonderland")
        typ, data = c.list('""', '"Other Users/*"')
        names = b"".join(d for d in data if d)
        assert typ == "OK" and b"Projects" in names and b"INBOX" not in names
        typ, data = c.myrights(f'"{SHARED}/Projects"')
        assert typ == "OK" and data[0].endswith(b" lrs"), data
        cli(cfg, "share", "revoke", ALICE, BOB, "--folder", "Projects")
        typ, data = c.myrights(f'"{SHARED}/Projects"')
        assert typ == "NO" and b"NONEXISTENT" in data[0]
    finally:
        c.logout()


def test_anyone_needs_the_switch_then_reaches_the_owners_domain_only(tmp_path: Path) -> None:
    users = (ALICE, BOB, CAROL, "dave@other.test")
    with serve_real_store(tmp_path, users=users[:3], imap=ImapConfig(acl_anyone=True)) as on:
        on.extra.update(dir=tmp_path, clients=[])
        d = open_sync(DirectoryConfig(), tmp_path)
        d.add_domain("other.test")
        bob_login = d.credentials(BOB)
        assert bob_login is not None
        d.add_user(users[3], password_hash=bob_login.password_hash, scram=bob_login.scram)  # "wonderland" too
        d.close()
        a = login(on, ALICE)
        ok(a, b"c CREATE Team")
        assert append(a, "Team", msg("for all"))[-1].startswith(b"a OK")
        ok(a, b"s SETACL Team anyone lr")
        ok(a, b"s SETACL Team authenticated +s")
        ok(a, b"s SETACL Team bob@example.test lrw")  # bob's own entry wins over anyone's
        assert ok(a, b"g GETACL Team")[0] == (b"* ACL Team alice@example.test lrswipkxteacd anyone lr "
                                              b"authenticated s bob@example.test lrw\r\n")
        team = b'"Other Users/alice@example.test/Team"'
        carol, bob, dave = login(on, CAROL), login(on, BOB), login(on, users[3])
        assert team in b"".join(ok(carol, b'l LIST "" "*"'))
        assert ok(carol, b"m MYRIGHTS " + team)[0].endswith(b" lrs\r\n")
        assert ok(bob, b"m MYRIGHTS " + team)[0].endswith(b" lrw\r\n")
        assert b"Other Users" not in b"".join(ok(dave, b'l LIST "" "*"'))  # another domain
        refused(dave, b"s SELECT " + team, b"NONEXISTENT")
        assert b"Team" not in b"".join(ok(carol, b'l LIST "" "Other Users/*/INBOX"'))
        ok(a, b"r RENAME Team Everyone")  # the entry follows
        assert ok(carol, b'm MYRIGHTS "Other Users/alice@example.test/Everyone"')[0].endswith(b" lrs\r\n")
        ok(a, b"d DELETEACL Everyone anyone")
        ok(a, b"d DELETEACL Everyone authenticated")
        refused(carol, b'm MYRIGHTS "Other Users/alice@example.test/Everyone"', b"NONEXISTENT")
        for c in on.extra["clients"]:
            c.close()
    # without the switch (the default): refused, and an entry left in the directory gives nothing
    with serve_real_store(tmp_path / "off", users=(ALICE, CAROL)) as off:
        off.extra.update(dir=tmp_path / "off", clients=[])
        d = open_sync(DirectoryConfig(), tmp_path / "off")
        d.set_anyone_rights(ALICE, "anyone", "INBOX", "lr")
        d.close()
        a, carol = login(off, ALICE), login(off, CAROL)
        refused(a, b"s SETACL INBOX anyone lr", b"CANNOT")
        assert b"Other Users" not in b"".join(ok(carol, b'l LIST "" "*"'))
        assert ok(a, b"g GETACL INBOX")[0] == b"* ACL INBOX alice@example.test lrswipkxteacd\r\n"
        for c in off.extra["clients"]:
            c.close()
