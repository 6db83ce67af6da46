"""IMAP: the command parser (tag, verb, arguments, literals, search keys) and modified UTF-7 names."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from fuzz.harness import Target, raise_logged, test_constants
from mailsrv.imap import mutf7, shared
from mailsrv.imap import session as session_mod
from mailsrv.imap.commands import parse_command, parse_tag
from mailsrv.imap.errors import Bye
from mailsrv.imap.grammar import NeedLiteral, NeedMore, ParseError, literal_marker
from mailsrv.imap.memory import MemoryAuth, MemoryStore
from mailsrv.net.connection import ConnectionClosed, IdleTimeout, LineTooLong

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


_COMMAND = re.compile(rb"[A-Za-z0-9.]+ (UID )?[A-Z]{2,}[ \r]")


def _seeds() -> list[bytes]:
    found = test_constants("imap/*.py", lambda b: _COMMAND.match(b) is not None)
    return SEEDS + [b if b.endswith(b"\n") else b + b"\r\n" for b in found]


TARGETS = [
    Target("imap_command", _command, _seeds, (NeedMore, NeedLiteral, ParseError), max_len=4096),
    Target("imap_mutf7", _mutf7, lambda: [b"INBOX", b"&AGUAZQBl-", b"&ZeVnLIqe-/x", b"a&-b", b"&Jjo-!"],
           (mutf7.Mutf7Error,), max_len=512),
]


# --- the session: parsed commands run against the in-memory store -------------------------------


class _Channel:
    """What a Session writes to; continuation lines (AUTHENTICATE, IDLE's DONE) come from the input."""

    peer_host = "127.0.0.1"
    tls_active = False
    channel_binding = None

    def __init__(self, lines: list[bytes]) -> None:
        self.out = bytearray()
        self.lines = lines

    def write(self, data: bytes) -> None:
        self.out += data

    async def flush(self) -> None:
        return None

    async def read_continuation(self) -> bytes:
        if not self.lines:
            raise ConnectionClosed
        return self.lines.pop(0)

    async def read_idle(self, limit: float) -> bytes:
        return await self.read_continuation()

    async def starttls(self) -> None:
        raise AssertionError("not offered")

    def start_compress(self, max_literal: int) -> None:
        """COMPRESS DEFLATE (RFC 4978): the session's compressed stream is not fuzzed here."""


MESSAGES = [
    b"From: A <a@example.test>\r\nTo: b@example.test\r\nSubject: =?utf-8?q?s=C3=A9?=\r\nDate: Mon, 7 Feb 1994 21:52:25 -0800\r\n"
    b"Message-ID: <1@x>\r\n\r\nbody one\r\n",
    b"From: c@example.test\r\nSubject: two\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
    b"Content-Type: text/plain\r\n\r\nhello\r\n--b\r\nContent-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n--b--\r\n",
    b"Subject: three\r\n\r\n.\r\n",
]


#: Commands the in-memory store cannot serve (their data lives in a per-account SQLite file).
DISK_ONLY = frozenset({"SETMETADATA", "GETMETADATA"})


#: Commands run per input, and the largest literal the framing takes (APPEND_LIMIT aside, a bound).
MAX_COMMANDS = 20
MAX_LITERAL = 4096


def frames(data: bytes) -> list[bytes]:
    """``data`` cut into commands as the connection loop frames them (RFC 9051 §4.3): a line, and
    when it ends with a literal marker, the literal's octets and the next line, and so on."""
    out: list[bytes] = []
    i, n = 0, len(data)
    while i < n and len(out) < MAX_COMMANDS:
        j = data.find(b"\n", i)
        j = n if j < 0 else j + 1
        cmd, i = data[i:j], j
        while (m := literal_marker(cmd)) is not None and m[0] <= MAX_LITERAL and i < n:
            lit_end = min(i + m[0], n)
            j = data.find(b"\n", lit_end)
            j = n if j < 0 else j + 1
            cmd, i = cmd + data[i:j], j
        out.append(cmd if cmd.endswith(b"\n") else cmd + b"\r\n")
    return out


async def _session_run(lines: list[bytes]) -> None:
    store = MemoryStore()
    acct = await store.account("1")
    for m in MESSAGES:
        await acct.append("INBOX", m)
    ch = _Channel(lines)
    s = session_mod.Session(ch, MemoryAuth({"u": "p"}), store, session_mod.SessionConfig())
    tables = len(shared._TABLES)
    try:
        for pre in (b"a LOGIN u p\r\n", b"b SELECT INBOX\r\n"):
            await s.execute(parse_command(pre))
        while ch.lines:
            try:
                cmd = parse_command(ch.lines.pop(0))
            except (NeedMore, NeedLiteral, ParseError):
                continue
            if cmd.name in DISK_ONLY:
                continue
            try:
                if not await s.execute(cmd):
                    break
            except (Bye, ConnectionClosed, IdleTimeout, LineTooLong):
                break
            finally:
                await s.spool.cleanup()
            await s.flush()
    finally:
        s.end()  # as the server does when the connection goes
    assert b"[SERVERBUG]" not in ch.out, bytes(ch.out[-400:])
    # the session let go of its share of the mailbox (per-process tables must not grow per connection)
    assert len(shared._TABLES) <= tables, shared._TABLES


_LOOP: list[Any] = []


def _session(data: bytes) -> None:
    """Commands (one a line) after LOGIN and SELECT INBOX: a command may fail with BAD or NO, never
    with the [SERVERBUG] that a handler's unexpected exception gives."""
    if not _LOOP:
        _LOOP.append(asyncio.new_event_loop())
    raise_logged(session_mod)
    _LOOP[0].run_until_complete(_session_run(frames(data)))


def _session_seeds() -> list[bytes]:
    cmds = [s.split(b" ", 1)[1] for s in _seeds()]
    return [b"".join(b"t%d " % i + c for i, c in enumerate(cmds[k : k + 6])) for k in range(0, len(cmds), 6)]


TARGETS.append(Target("imap_session", _session, _session_seeds, max_len=2048))
