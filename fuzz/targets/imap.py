"""IMAP: the command parser (tag, verb, arguments, literals, search keys) and modified UTF-7 names."""

from __future__ import annotations

import re

from fuzz.harness import Target, test_constants
from mailsrv.imap import mutf7
from mailsrv.imap.commands import parse_command, parse_tag
from mailsrv.imap.grammar import NeedLiteral, NeedMore, ParseError, literal_marker

SEEDS = [
    b"a1 LOGIN alice wonderland\r\n",
    b'a2 LOGIN {5}\r\nalice "won\\"der"\r\n',
    b"a3 SELECT INBOX (CONDSTORE)\r\n",
    b"a4 UID FETCH 1:*,7 (UID FLAGS BODY.PEEK[1.2.HEADER.FIELDS (From To)]<0.100> BINARY[1])\r\n",
    b"a5 FETCH 1:4 (FLAGS) (CHANGEDSINCE 12345 VANISHED)\r\n",
    b'a6 SEARCH CHARSET UTF-8 OR (FROM "x" SINCE 1-Feb-1994) NOT (LARGER 10 UNSEEN) HEADER Subject {3+}\r\nabc\r\n',
    b"a7 UID SEARCH RETURN (MIN MAX COUNT SAVE) MODSEQ 5 UID $\r\n",
    b"a8 STORE 2:4 +FLAGS.SILENT (\\Deleted $Junk) (UNCHANGEDSINCE 3)\r\n",
    b'a9 APPEND "Sent" (\\Seen) "17-Jul-1996 02:44:25 -0700" ~{4+}\r\nab\x00d\r\n',
    b"b1 LIST (SUBSCRIBED) \"\" (\"INBOX\" \"%\") RETURN (CHILDREN STATUS (MESSAGES UNSEEN))\r\n",
    b"b2 STATUS &AGUAZQBl- (MESSAGES UIDNEXT HIGHESTMODSEQ SIZE)\r\n",
    b"b3 UID SORT (REVERSE ARRIVAL SUBJECT) UTF-8 ALL\r\n",
    b"b4 THREAD REFERENCES US-ASCII SUBJECT hello\r\n",
    b"b5 AUTHENTICATE PLAIN AGFsaWNlAHdvbmRlcmxhbmQ=\r\n",
    b"b6 ENABLE QRESYNC UTF8=ACCEPT\r\n",
    b"b7 SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541))\r\n",
    b"b8 SETACL INBOX bob +lrswi\r\n",
    b"b9 SETMETADATA INBOX (/private/comment {3}\r\nabc)\r\n",
    b"c1 UID EXPUNGE 3:5\r\n",
    b"c2 COPY 1,3:* Trash\r\n",
    b"c3 GETQUOTAROOT INBOX\r\n",
    b"c4 ID (\"name\" \"mutt\" \"version\" NIL)\r\n",
    b"c5 IDLE\r\n",
    b"c6 COMPRESS DEFLATE\r\n",
    b"c7 REPLACE 3 INBOX {2}\r\nhi\r\n",
    b"c8 UID MOVE 1:2 &ZeVnLIqe-\r\n",
    b"c9 NAMESPACE\r\n",
]


def _command(data: bytes) -> None:
    literal_marker(data.split(b"\n", 1)[0] + b"\n")
    parse_tag(data)
    for utf8 in (True, False):
        try:
            parse_command(data, utf8=utf8)
        except ParseError as exc:
            assert exc.tag is None or isinstance(exc.tag, bytes)


def _mutf7(data: bytes) -> None:
    name = mutf7.decode(data)
    # RFC 3501 §5.1.3: what decodes encodes back to a name that decodes the same
    assert mutf7.decode(mutf7.encode(name)) == name


_COMMAND = re.compile(rb"[A-Za-z0-9.]+ (UID )?[A-Za-z]+[ \r]")


def _seeds() -> list[bytes]:
    found = test_constants("imap/*.py", lambda b: _COMMAND.match(b) is not None)
    return SEEDS + [b if b.endswith(b"\n") else b + b"\r\n" for b in found]


TARGETS = [
    Target("imap_command", _command, _seeds, (NeedMore, NeedLiteral, ParseError), max_len=4096),
    Target("imap_mutf7", _mutf7, lambda: [b"INBOX", b"&AGUAZQBl-", b"&ZeVnLIqe-/x", b"a&-b", b"&Jjo-!"],
           (mutf7.Mutf7Error,), max_len=512),
]
