"""RFC 4314 rights and the "Other Users" names (mailsrv.imap.acl, pure), and the ACL commands' grammar."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailsrv.imap import acl
from mailsrv.imap.commands import parse_command
from mailsrv.imap.grammar import NeedLiteral, NeedMore, ParseError

RIGHTS_CHARS = acl.ALL_RIGHTS + "cd"


def test_grant_levels_and_their_letters() -> None:
    assert acl.grant_letters("read") == "lr" and acl.grant_letters("write") == "lrswite"
    assert acl.with_virtual("lr") == "lr"
    assert acl.with_virtual("lrswite") == "lrswited"
    assert acl.with_virtual(acl.OWNER_RIGHTS) == "lrswipkxteacd"
    assert not acl.read_write("lr") and acl.read_write("lrswite") and acl.read_write("ri")


def test_setacl_modifications_and_folder_entries() -> None:
    assert acl.parse_modification("lr") == ("=", frozenset("lr"))
    assert acl.parse_modification("+swid") == ("+", frozenset("swite"))
    assert acl.parse_modification("-c") == ("-", frozenset("k"))
    assert acl.canonical(acl.modified("lr", "+", frozenset("swite"))) == "lrswite"
    assert acl.canonical(acl.modified("lrswite", "-", frozenset("swite"))) == "lr"
    assert acl.canonical(acl.modified("lrs", "=", frozenset("axl"))) == "lxa"
    # an entry is kept only where it differs from the account grant
    assert acl.stored_entry("lr", "lr") is None
    assert acl.stored_entry("", "") is None
    assert acl.stored_entry("", "lr") == ""  # takes the account grant's rights away on that folder
    assert acl.stored_entry("lrsk", "lr") == "lrsk"
    for bad in ("lrQ", "lr1", "lrz", "LR"):
        with pytest.raises(acl.BadRights):
            acl.parse_modification(bad)


def test_shares_by_owner_folder_entries_override_the_account_grant() -> None:
    class A:
        def __init__(self, address: str) -> None:
            self.address = address

    class G:
        def __init__(self, owner: A, rights: str) -> None:
            self.owner, self.rights = owner, rights

    class E:
        def __init__(self, owner: A, mailbox: str, rights: str) -> None:
            self.owner, self.mailbox, self.rights = owner, mailbox, rights

    alice, carol = A("Alice@x.test"), A("carol@x.test")
    shares = acl.shares_by_owner([G(alice, "read")], [E(alice, "Work", "lrsk"), E(alice, "Private", ""),
                                                      E(carol, "Team", "r")])
    a = shares["alice@x.test"]
    assert (a.rights("INBOX"), a.rights("Work"), a.rights("Private")) == ("lr", "lrsk", "")
    assert a.lists_any()
    c = shares["carol@x.test"]
    assert (c.rights("Team"), c.rights("INBOX")) == ("r", "") and not c.lists_any()  # selectable, not listed


def test_store_and_append_rights() -> None:
    assert acl.store_rights(frozenset({"\\Seen"}), "add") == "s"
    assert acl.store_rights(frozenset({"\\Deleted"}), "remove") == "t"
    assert acl.store_rights(frozenset({"\\Flagged", "$Work"}), "add") == "w"
    assert acl.store_rights(frozenset(), "replace") == "stw"
    assert acl.store_rights(frozenset(), "add") == ""
    flags = frozenset({"\\Seen", "\\Deleted", "\\Flagged"})
    assert acl.allowed_flags(flags, "lr") == frozenset()
    assert acl.allowed_flags(flags, "lrs") == {"\\Seen"}
    assert acl.allowed_flags(flags, "lrswite") == flags


def test_shared_names() -> None:
    assert acl.split_shared("INBOX") is None
    assert acl.split_shared("Other Usersx/a") is None
    assert acl.split_shared("Other Users") == acl.SharedName("", "")
    assert acl.split_shared("Other Users/a@b.test") == acl.SharedName("a@b.test", "")
    assert acl.split_shared("Other Users/a@b.test/inbox/Sub") == acl.SharedName("a@b.test", "INBOX/Sub")
    assert acl.split_shared("Other Users/a@b.test/Inboxes") == acl.SharedName("a@b.test", "Inboxes")
    assert acl.shared_name("a@b.test", "Sent") == "Other Users/a@b.test/Sent"
    assert acl.shared_name("a@b.test") == "Other Users/a@b.test"


@given(st.sampled_from(["", "+", "-"]), st.text(alphabet=RIGHTS_CHARS, max_size=20))
def test_parse_modification_accepts_every_known_right(mode: str, letters: str) -> None:
    got_mode, rights = acl.parse_modification(mode + letters)
    assert got_mode == (mode or "=")
    assert rights <= frozenset(acl.ALL_RIGHTS)  # virtual c / d expanded
    assert set(letters) - {"c", "d"} <= rights
    result = acl.canonical(acl.modified("lr", got_mode, rights))
    assert set(result) <= set(acl.ALL_RIGHTS) and len(set(result)) == len(result)


@given(st.text(min_size=1, max_size=8).filter(lambda t: any(c not in RIGHTS_CHARS for c in t.lstrip("+-"))))
def test_parse_modification_refuses_unknown_rights(text: str) -> None:
    with pytest.raises(acl.BadRights):
        acl.parse_modification(text)


@given(st.text(alphabet=st.characters(blacklist_characters="/", blacklist_categories=("Cs",)), min_size=1,
               max_size=30),
       st.lists(st.text(alphabet=st.characters(blacklist_characters="/", blacklist_categories=("Cs",)), min_size=1,
                        max_size=10), max_size=3))
def test_shared_names_round_trip(owner: str, parts: list[str]) -> None:
    mailbox = "/".join(parts)
    got = acl.split_shared(acl.shared_name(owner, mailbox))
    assert got is not None and got.owner == owner
    if mailbox.upper() == "INBOX" or mailbox.upper().startswith("INBOX/"):
        assert got.mailbox == "INBOX" + mailbox[5:]
    else:
        assert got.mailbox == mailbox


ACL_COMMANDS = [
    (b"a MYRIGHTS INBOX\r\n", {"mailbox": b"INBOX"}),
    (b'a GETACL "Other Users/x@y.test/Sent"\r\n', {"mailbox": b"Other Users/x@y.test/Sent"}),
    (b"a LISTRIGHTS inbox bob@example.test\r\n", {"mailbox": b"INBOX", "identifier": b"bob@example.test"}),
    (b'a SETACL Work "bob@example.test" +lrswite\r\n',
     {"mailbox": b"Work", "identifier": b"bob@example.test", "rights": b"+lrswite"}),
    (b'a SETACL INBOX bob@example.test ""\r\n', {"mailbox": b"INBOX", "identifier": b"bob@example.test", "rights": b""}),
    (b"a SETACL INBOX bob@example.test \r\n", {"mailbox": b"INBOX", "identifier": b"bob@example.test", "rights": b""}),
    (b"a DELETEACL INBOX {16+}\r\nbob@example.test\r\n", {"mailbox": b"INBOX", "identifier": b"bob@example.test"}),
]


@pytest.mark.parametrize(("line", "args"), ACL_COMMANDS)
def test_acl_command_grammar_at_every_split(line: bytes, args: dict[str, bytes]) -> None:
    cmd = parse_command(line)
    assert cmd.args == args
    for k in range(len(line)):
        with pytest.raises((NeedMore, NeedLiteral)):  # never a ParseError: only incomplete
            parse_command(line[:k])


@pytest.mark.parametrize("line", [b"a SETACL INBOX bob\r\n", b"a LISTRIGHTS INBOX\r\n", b"a MYRIGHTS\r\n",
                                  b"a GETACL INBOX extra\r\n", b"a DELETEACL INBOX bob x\r\n"])
def test_acl_command_grammar_refuses_wrong_arity(line: bytes) -> None:
    with pytest.raises(ParseError):
        parse_command(line)


@given(st.binary(min_size=1, max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b and b"\0" not in b))
def test_setacl_identifier_of_any_bytes_round_trips_as_a_literal(ident: bytes) -> None:
    line = b"a SETACL INBOX {%d+}\r\n" % len(ident) + ident + b" lr\r\n"
    cmd = parse_command(line)
    assert cmd.args["identifier"] == ident and cmd.args["rights"] == b"lr"
