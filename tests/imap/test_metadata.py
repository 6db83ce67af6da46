"""GETMETADATA / SETMETADATA (RFC 5464) over a real socket and store: the RFC's examples, DEPTH
and MAXSIZE, the limits, /private/specialuse (RFC 6154), rights on a shared folder, entries that
follow a RENAME and go with a DELETE, and the file they are kept in."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from imaptest import Raw, ServerHandle, login, ok, serve_real_store

from mailsrv.imap import metadata
from mailsrv.store.metadata import MAX_ENTRIES, METADATA_DB

ALICE, BOB = "alice@example.test", "bob@example.test"
PROJECTS = b'"Other Users/alice@example.test/Projects"'


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[ServerHandle]:
    with serve_real_store(tmp_path, users=(ALICE, BOB)) as handle:
        handle.extra["dir"] = tmp_path
        yield handle


def send(c: Raw, head: bytes, data: bytes, tail: bytes = b")") -> list[bytes]:
    """``head`` then a synchronising literal of ``data`` and ``tail``."""
    tag = head.split(b" ")[0]
    c.send(head + b"{%d}\r\n" % len(data))
    assert c.line().startswith(b"+ ")
    c.send(data + tail + b"\r\n")
    return c.until(tag)


def test_rfc5464_examples(srv: ServerHandle) -> None:
    c = login(srv, ALICE)
    assert b"METADATA" in ok(c, b"c CAPABILITY")[0].split()
    # §4.3's examples: a server entry, a mailbox entry (a literal over two lines), its removal
    ok(c, b'a SETMETADATA "" (/private/comment "My comment")')
    assert ok(c, b'a GETMETADATA "" /private/comment')[0] == b'* METADATA "" (/private/comment "My comment")\r\n'
    out = send(c, b"a SETMETADATA INBOX (/private/comment ", b"My new comment across\r\ntwo lines.")
    assert out[-1].startswith(b"a OK")
    out = ok(c, b"a GETMETADATA INBOX (/private/comment /shared/comment)")
    assert out[0] == b"* METADATA INBOX (/private/comment {33}\r\n"
    assert out[1] == b"My new comment across\r\n" and out[2] == b"two lines.)\r\n"
    # §4.2.1: MAXSIZE leaves a longer value out and says how long the longest was
    out = ok(c, b"a GETMETADATA (MAXSIZE 10) INBOX (/private/comment)")
    assert out == [b"a OK [METADATA LONGENTRIES 33] GETMETADATA completed\r\n"]
    ok(c, b"a SETMETADATA INBOX (/private/comment NIL)")
    assert ok(c, b"a GETMETADATA INBOX /private/comment") == [b"a OK GETMETADATA completed\r\n"]
    # §4.2.2: DEPTH
    ok(c, b'a SETMETADATA INBOX (/private/filters/values/small "SMALLER 5000" '
          b'/private/filters/values/big "LARGER 500000" /private/filters/values/big/x "deep")')
    assert ok(c, b"a GETMETADATA (DEPTH 1) INBOX (/private/filters/values)")[0] == (
        b'* METADATA INBOX (/private/filters/values/big "LARGER 500000" '
        b'/private/filters/values/small "SMALLER 5000")\r\n')
    deep = ok(c, b"a GETMETADATA (DEPTH infinity) INBOX /private/filters")[0]
    assert b'/private/filters/values/big/x "deep"' in deep and b"small" in deep
    # names are case-insensitive (§3.2)
    assert b'"SMALLER 5000"' in ok(c, b"a GETMETADATA INBOX /PRIVATE/Filters/Values/Small")[0]
    # and durable: in the account's metadata.db, seen by a new connection
    c.close()
    c = login(srv, ALICE)
    assert b'"My comment"' in ok(c, b'a GETMETADATA "" /private/comment')[0]
    files = list(srv.extra["dir"].rglob(METADATA_DB))  # in alice's maildir root
    assert len(files) == 1
    db = sqlite3.connect(files[0])
    assert db.execute("SELECT count(*) FROM entries").fetchone()[0] == 4
    db.close()
    c.close()


def test_limits_and_bad_names(srv: ServerHandle) -> None:
    c = login(srv, ALICE)
    out = send(c, b"a SETMETADATA INBOX (/private/big ", b"x" * (metadata.MAX_VALUE + 1))
    assert out[-1].startswith(b"a NO [METADATA MAXSIZE %d]" % metadata.MAX_VALUE)
    assert send(c, b"a SETMETADATA INBOX (/private/big ", b"x" * metadata.MAX_VALUE)[-1].startswith(b"a OK")
    items = b" ".join(b'/shared/n%d "v"' % i for i in range(MAX_ENTRIES + 1))
    assert c.cmd(b"a SETMETADATA INBOX (" + items + b")")[-1].startswith(b"a NO [METADATA TOOMANY]")
    assert ok(c, b"a GETMETADATA (DEPTH infinity) INBOX /shared") == [b"a OK GETMETADATA completed\r\n"]
    for bad in (b"/private/a*", b"/other/x", b"/private//x", b"/private/x/", b"/private", b"private/x"):
        assert c.cmd(b'a SETMETADATA INBOX (' + bad + b' "v")')[-1].startswith(b"a BAD"), bad
    assert c.cmd(b"a GETMETADATA (DEPTH 2) INBOX /private")[-1].startswith(b"a BAD")
    # a value with NUL goes back as a literal8 (RFC 5464 §5: value = nstring / literal8)
    c.send(b"a SETMETADATA INBOX (/private/bin ~{2+}\r\n\x00b)\r\n")
    assert c.until(b"a")[-1].startswith(b"a OK")
    assert ok(c, b"a GETMETADATA INBOX /private/bin")[:2] == [b"* METADATA INBOX (/private/bin ~{2}\r\n", b"\x00b)\r\n"]
    assert c.cmd(b'a SETMETADATA "" (/shared/comment "motd")')[-1].startswith(b"a NO [NOPERM]")
    assert c.cmd(b'a GETMETADATA Nowhere /private/comment')[-1].startswith(b"a NO [NONEXISTENT]")
    c.close()


def test_specialuse_rename_and_delete(srv: ServerHandle) -> None:
    c = login(srv, ALICE)
    assert ok(c, b"a GETMETADATA Sent /private/specialuse")[0] == b'* METADATA Sent (/private/specialuse "\\\\Sent")\r\n'
    assert c.cmd(b'a SETMETADATA Sent (/private/specialuse "\\\\Trash")')[-1].startswith(b"a NO [USEATTR]")
    ok(c, b"c CREATE Old")
    ok(c, b'a SETMETADATA Old (/shared/comment "kept")')
    ok(c, b"r RENAME Old New")
    assert b'"kept"' in ok(c, b"a GETMETADATA New /shared/comment")[0]
    ok(c, b"d DELETE New")
    db = sqlite3.connect(next(srv.extra["dir"].rglob(METADATA_DB)))  # the row went with the folder
    assert db.execute("SELECT count(*) FROM entries WHERE entry = '/shared/comment'").fetchone()[0] == 0
    db.close()
    ok(c, b"c CREATE New")
    assert ok(c, b"a GETMETADATA New /shared/comment") == [b"a OK GETMETADATA completed\r\n"]
    c.close()


def test_shared_folder_rights_and_private_scopes(srv: ServerHandle) -> None:
    alice = login(srv, ALICE)
    ok(alice, b"c CREATE Projects")
    ok(alice, b'a SETMETADATA Projects (/shared/comment "team plans" /private/comment "alice only")')
    ok(alice, b"s SETACL Projects bob@example.test lr")
    bob = login(srv, BOB)
    assert ok(bob, b"a GETMETADATA " + PROJECTS + b" (/shared/comment /private/comment)")[0] == (
        b'* METADATA ' + PROJECTS + b' (/shared/comment "team plans")\r\n')
    assert bob.cmd(b"a SETMETADATA " + PROJECTS + b' (/shared/comment "mine")')[-1].startswith(b"a NO [NOPERM]")
    ok(bob, b"a SETMETADATA " + PROJECTS + b' (/private/comment "bob only")')
    assert b'"bob only"' in ok(bob, b"a GETMETADATA " + PROJECTS + b" /private/comment")[0]
    assert b'"alice only"' in ok(alice, b"a GETMETADATA Projects /private/comment")[0]
    ok(alice, b"s SETACL Projects bob@example.test lrw")
    ok(bob, b"a SETMETADATA " + PROJECTS + b' (/shared/comment "bob edited")')
    assert b'"bob edited"' in ok(alice, b"a GETMETADATA Projects /shared/comment")[0]
    ok(alice, b"s DELETEACL Projects bob@example.test")
    assert bob.cmd(b"a GETMETADATA " + PROJECTS + b" /shared/comment")[-1].startswith(b"a NO [NONEXISTENT]")
    alice.close()
    bob.close()


def test_grammar_and_entry_names() -> None:
    from mailsrv.imap.commands import parse_command

    cmd = parse_command(b"a GETMETADATA (DEPTH 1 MAXSIZE 7) \"\" (/Shared/Comment /private/x)\r\n")
    assert (cmd.args["mailbox"], cmd.args["entries"], cmd.args["depth"], cmd.args["maxsize"]) == (
        b"", [b"/Shared/Comment", b"/private/x"], 1, 7)
    cmd = parse_command(b"a SETMETADATA INBOX (/private/a NIL /shared/b ~{2}\r\n\x00b)\r\n")
    assert cmd.args["items"] == [(b"/private/a", None), (b"/shared/b", b"\x00b")]
    assert metadata.check_entry(b"/Shared/Comment") == "/shared/comment"
    assert metadata.check_entry(b"/private", for_get=True) == "/private"
    with pytest.raises(Exception, match="Invalid metadata entry"):
        metadata.check_entry(b"/private/" + b"x" * metadata.MAX_ENTRY_NAME)


def test_limits_from_the_imap_section(tmp_path: Path) -> None:
    from mailsrv.config import ImapConfig

    cfg = ImapConfig(metadata_max_value=10, metadata_max_entries=2)
    with serve_real_store(tmp_path, imap=cfg) as srv:
        c = login(srv, ALICE)
        assert c.cmd(b'a SETMETADATA INBOX (/private/a "01234567890")')[-1].startswith(b"a NO [METADATA MAXSIZE 10]")
        ok(c, b'a SETMETADATA INBOX (/private/a "0123456789" /private/b "x" /shared/c "y" /shared/d "z")')
        assert c.cmd(b'a SETMETADATA INBOX (/private/e "x")')[-1].startswith(b"a NO [METADATA TOOMANY]")
        ok(c, b'a SETMETADATA INBOX (/private/a NIL /private/e "x")')  # one out, one in: still two
        c.close()
