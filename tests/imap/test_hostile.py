"""Hostile input to the IMAP server over the real maildir store: every answer is the protocol's own
(BAD or NO with a response code), never a dropped connection or a stalled worker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from imaptest import Raw, ServerHandle

from mailsrv.imap.listing import WildcardMatcher, pattern_regex

DIGITS = b"9" * 5000  # past int()'s 4 300-digit limit: a ValueError unless bounded before


@pytest.fixture
def alice(real_store: ServerHandle) -> Iterator[Raw]:
    c = Raw(real_store.host, real_store.port)
    assert c.cmd(b"a LOGIN alice@example.test wonderland")[-1].startswith(b"a OK")
    yield c
    c.close()


def test_numbers_of_thousands_of_digits_are_bad_commands(alice: Raw) -> None:
    assert alice.cmd(b"s SELECT INBOX")[-1].startswith(b"s OK")
    for i, line in enumerate((b"FETCH " + DIGITS + b" FLAGS", b"FETCH 1:" + DIGITS + b" FLAGS",
                              b"SEARCH LARGER " + DIGITS, b"UID SEARCH MODSEQ " + DIGITS,
                              b"FETCH 1 BODY[]<" + DIGITS + b">", b"UID EXPUNGE " + DIGITS,
                              b'APPEND INBOX "01-Jan-' + DIGITS + b' 00:00:00 +0000" {1+}\r\nx',
                              b"LOGIN {" + DIGITS + b"}")):
        tag = b"t%d" % i
        assert alice.cmd(tag + b" " + line)[-1] == tag + b" BAD number out of range\r\n"
    assert alice.cmd(b"n NOOP")[-1].startswith(b"n OK")


def test_a_name_too_long_to_store_is_refused_and_nothing_moves(alice: Raw, tmp_path: Path) -> None:
    long = b"x" * 300
    assert alice.cmd(b"c CREATE " + long)[-1].startswith(b"c NO [CANNOT] Invalid mailbox name")
    assert alice.cmd(b"s SELECT " + long)[-1].startswith(b"s NO [NONEXISTENT]")
    # a rename whose child would get a name too long: refused before the parent moves
    assert alice.cmd(b"c CREATE p")[-1].startswith(b"c OK")
    assert alice.cmd(b"c CREATE p/" + b"c" * 200)[-1].startswith(b"c OK")
    assert alice.cmd(b"r RENAME p " + b"q" * 60)[-1].startswith(b"r NO [CANNOT] Invalid mailbox name")
    names = b"".join(alice.cmd(b'l LIST "" *'))
    assert b" p/" + b"c" * 200 + b"\r\n" in names and b"qqq" not in names
    assert not list(tmp_path.rglob(".q*"))
    assert alice.cmd(b"r RENAME p " + b"q" * 40)[-1].startswith(b"r OK")


def test_list_patterns_of_many_wildcards_do_not_backtrack(alice: Raw) -> None:
    # as a regular expression "*a*a*a*a*a*a*a*a*b" against this name runs for hours (len(name)**8 steps)
    assert alice.cmd(b"c CREATE " + b"a" * 200)[-1].startswith(b"c OK")
    assert alice.cmd(b'l LIST "" "' + b"*a" * 8 + b'*b"') == [b"l OK LIST completed\r\n"]
    assert alice.cmd(b'l LIST "" "' + b"%a" * 3000 + b'"') == [b"l OK LIST completed\r\n"]
    found = alice.cmd(b'l LIST "" "' + b"*a" * 8 + b'*"')
    assert len(found) == 2 and found[0].endswith(b" " + b"a" * 200 + b"\r\n")
    assert alice.cmd(b"n NOOP")[-1].startswith(b"n OK")


@pytest.mark.parametrize("pattern", ["*", "%", "INBOX", "inbox/%", "a*b%c", "*a%a*", "%/%/*", "In%x*y%z", "**%%a",
                                     "*%a*/%b*", "a/*/b%*%"])
def test_the_wildcard_matcher_agrees_with_the_regular_expression(pattern: str) -> None:
    names = ["INBOX", "inbox/a", "Inbox/x/y", "a", "ab", "a/b", "axbyc", "a/xb/c", "aa/ba", "Inxyz", "InxAyBz",
             "a/x/b", "a//b", "", "/", "ba/b", "a/q/b7"]
    rx = pattern_regex(pattern)
    assert not isinstance(rx, WildcardMatcher) or pattern.count("*") + pattern.count("%") > 2
    matcher = WildcardMatcher(pattern)
    assert [n for n in names if matcher.match(n)] == [n for n in names if rx.match(n)]


def test_parameters_after_a_long_run_of_white_space_parse_in_one_pass() -> None:
    from mailsrv.imap import structure

    # folded lines of white space join into one run; with a leading \s* the parameter pattern was
    # tried at each of its positions (12 s a header for this one)
    folded = b"".join(b" " * 900 + b"\r\n" for _ in range(120))
    raw = (b"Content-Type: text/plain;\r\n" + folded + b" x; charset=utf-8\r\nContent-Disposition: attachment;\r\n"
           + folded + b' y; filename="a b.txt"\r\n\r\nbody\r\n')
    part = structure.parse(raw)
    assert structure.bodystructure(raw, part, True) == (
        b'("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 6 1 NIL ("ATTACHMENT" ("FILENAME" "a b.txt")) NIL NIL)')


def test_unterminated_comments_and_quotes_in_addresses_split_in_one_pass() -> None:
    from mailsrv.imap import structure

    # each '(' or '"' that never closes was scanned to the end again: 18 s for one of these headers
    raw = (b"From: Ann <ann@example.test>\r\nTo: bob@example.test, " + b"(\\" * 20_000 + b"\r\nCc: "
           + b'\\"' * 20_000 + b"\r\nSubject: s\r\n\r\nbody\r\n")
    env = structure.envelope(structure.parse(raw))
    assert env.startswith(b'(NIL "s" (("Ann" NIL "ann" "example.test")) ')
    assert b'("bob"' not in env and b'(NIL NIL "bob" "example.test")' in env
    assert structure._addresses(b"a@b.test, <" + b"<" * 50_000) == b'((NIL NIL "a" "b.test") (NIL NIL {50001}\r\n' + (
        b"<" * 50_001 + b" NIL))")
