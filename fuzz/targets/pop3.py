"""POP3: command lines and numbers, and the multi-line body encoder (RETR / TOP) fed in any chunks."""

from __future__ import annotations

import re

from fuzz.harness import Target, corpus_messages, split, test_constants
from mailsrv.pop3 import grammar

SEEDS = [b"USER alice\r\n", b"PASS wonder land\r\n", b"APOP mrose c4c9334bac560ecc979e58001b3e22fb\r\n",
         b"STAT\r\n", b"LIST 1\r\n", b"RETR 4294967295\r\n", b"TOP 1 0\r\n", b"UIDL\r\n", b"DELE 2\n",
         b"AUTH PLAIN AGFsaWNlAHdvbmRlcmxhbmQ=\r\n", b"CAPA\r\n", b"UTF8\r\n", b"STLS\r\n", b"QUIT\r\n"]


def _command(data: bytes) -> None:
    cmd = grammar.parse_command(data)
    assert cmd.verb.isupper()
    for i, arg in enumerate(cmd.args):
        value = grammar.parse_number(arg, minimum=0 if i else 1)
        assert value >= 0


def _encode(body_lines: int | None, chunks: list[bytes]) -> bytes:
    enc = grammar.BodyEncoder(body_lines)
    out = [enc.feed(c) for c in chunks]
    return b"".join(out) + enc.finish()


def _body(data: bytes) -> None:
    """RFC 1939 §3: the response is the same for any chunking; RETR's unstuffed octets are the
    message with CRLF line ends; TOP's output is a prefix of RETR's."""
    top = data[0] % 8 if data else 0
    chunks = list(split(data[2:], 1 + (data[1] % 5 if len(data) > 1 else 0)))
    msg = b"".join(chunks)
    whole = _encode(None, [msg])
    assert _encode(None, chunks) == whole
    expected = grammar.normalize_line_ends(msg)
    if expected.endswith(b"\r") and not expected.endswith(b"\r\n"):
        expected += b"\n"  # a final bare CR ends the last line
    elif expected and not expected.endswith(b"\r\n"):
        expected += b"\r\n"
    assert grammar.unstuff(whole) == expected
    head = _encode(top, chunks)
    assert head == _encode(top, [msg])
    assert whole.startswith(head[:-3])


TARGETS = [
    Target("pop3_command", _command,
           lambda: SEEDS + test_constants("pop3/*.py", lambda b: re.match(rb"[A-Za-z]{3,4}( |\r?\n)", b) is not None), (grammar.Pop3Error,), max_len=1024),
    Target("pop3_body", _body, lambda: [b"\x02\x03" + m for m in corpus_messages(4000)[:40]] or [b"\x00\x00a\r\n.b\r\n"],
           max_len=8192),
]
