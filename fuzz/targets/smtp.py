"""SMTP: command lines (verbs, paths, ESMTP parameters, xtext, BDAT sizes) and the DATA reader."""

from __future__ import annotations

import re

from fuzz.harness import Mismatch, Target, split, test_constants
from mailsrv.smtp import dotstuff_py, grammar
from mailsrv.smtp.dotstuff import DotDecoder

SEEDS = [
    b"EHLO client.example.org\r\n",
    b"HELO [192.0.2.1]\r\n",
    b"MAIL FROM:<alice@example.org> SIZE=1000 BODY=8BITMIME\r\n",
    b"MAIL FROM:<> RET=HDRS ENVID=QQ314159+2B\r\n",
    b"MAIL FROM:<@a.example,@b.example:j\xc3\xb6rg@b\xc3\xbccher.example> SMTPUTF8\r\n",
    b'RCPT TO:<"john smith"@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;j+2Bs@example.org\r\n',
    b"RCPT TO:<postmaster>\r\n",
    b"RCPT TO:<bob@[IPv6:2001:db8::1]>\r\n",
    b"BDAT 1000 LAST\r\n",
    b"BDAT 0\r\n",
    b"AUTH PLAIN AGFsaWNlAHdvbmRlcmxhbmQ=\r\n",
    b"VRFY alice\r\n",
    b"DATA\r\n",
    b"QUIT\r\n",
]


def _line(data: bytes) -> None:
    cmd = grammar.split_command(data)
    utf8 = grammar.wants_smtputf8(cmd.arg)
    if cmd.verb in ("EHLO", "HELO"):
        grammar.parse_domain(cmd.arg, utf8=True)
    elif cmd.verb == "MAIL":
        _, params = grammar.parse_mail(cmd.arg)
        for value in params.values():
            if value is not None:
                grammar.xtext_decode(value)
    elif cmd.verb == "RCPT":
        grammar.parse_rcpt(cmd.arg, utf8=utf8)
    elif cmd.verb == "BDAT":
        size, _ = grammar.parse_bdat(cmd.arg)
        assert size >= 0
    elif cmd.verb == "VRFY":
        grammar.parse_mailbox(cmd.arg, utf8=True)


def _feed_all(decoder: object, chunks: list[bytes]) -> tuple[bytes, int, bool, bool, int]:
    out = []
    consumed = 0
    for chunk in chunks:
        payload, used = decoder.feed(chunk)  # type: ignore[attr-defined]
        assert 0 <= used <= len(chunk)
        out.append(payload)
        consumed += used
        if decoder.done:  # type: ignore[attr-defined]
            break
    return (b"".join(out), consumed, decoder.done, decoder.bare_newline, decoder.size)  # type: ignore[attr-defined]


def _data(data: bytes) -> None:
    """The DATA reader: any chunking gives the same message; compiled and twin agree."""
    chunks = list(split(data[1:], 1 + data[0] % 6)) if data else [b""]
    got = _feed_all(DotDecoder(), chunks)
    ref = _feed_all(dotstuff_py.DotDecoder(), chunks)
    if got != ref:
        raise Mismatch(f"{DotDecoder.__module__} {got!r} != twin {ref!r}")
    whole = _feed_all(dotstuff_py.DotDecoder(), [b"".join(chunks)])
    if whole != ref:
        raise Mismatch(f"chunked {ref!r} != whole {whole!r}")
    if ref[2]:
        # Stuffing what came out gives back what went in (RFC 5321 §4.5.2), bare line ends aside.
        assert ref[0].endswith(b"\r\n") or ref[0] == b""
    assert ref[4] == len(ref[0])


TARGETS = [
    Target("smtp_line", _line,
           lambda: SEEDS + test_constants("smtp/*.py", lambda b: re.match(rb"(MAIL|RCPT|EHLO|HELO|BDAT|AUTH|VRFY) ", b, re.I)
                                          is not None), (grammar.SmtpError,), max_len=2048),
    Target("smtp_data", _data, lambda: [b"\x03Hello\r\n..dot\r\n.\r\nQUIT\r\n", b"\x01a\n.\n\r\n.\r\n",
                                        b"\x05\x10\x80\xf0x\r\n.\r\r\n.\r\n"], max_len=8192),
]
