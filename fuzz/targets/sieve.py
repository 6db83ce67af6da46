"""Sieve: ManageSieve command lines and literals (RFC 5804 §4), and the script a PUTSCRIPT stores
(RFC 5228 grammar and the extensions' checks)."""

from __future__ import annotations

import re

from fuzz.harness import Target, test_constants
from mailsrv.managesieve import grammar as ms
from mailsrv.sieve import scripts

SCRIPTS = [
    b'require ["fileinto", "reject", "vacation", "regex", "variables", "imap4flags", "editheader", "mime",\n'
    b' "foreverypart", "replace", "enclose", "envelope", "body", "date", "relational", "comparator-i;ascii-numeric"];\n'
    b'if header :contains "subject" "${1}" { fileinto :flags "\\\\Seen" "Junk"; stop; }\n'
    b'elsif anyof (not exists "from", size :over 100K) { reject text:\nno\n.\n; }\n'
    b'if header :regex "x" "^a(b|c)*$" { set "v" "${0}"; addheader "X-A" "${v}"; }\n'
    b'foreverypart { if mime :type :is "content-type" "text" { replace "x"; } }\n'
    b'vacation :days 3 :subject "away" "gone"; # comment\n/* block */ keep;\n',
    b'if envelope :all :comparator "i;octet" :matches "to" "*@x" { discard; }',
    b'if date :value "ge" :originalzone "date" "year" "2020" { redirect "a@b.example"; }',
]

COMMANDS = [b'AUTHENTICATE "PLAIN" "AGFsaWNlAHdvbmRlcmxhbmQ="', b'PUTSCRIPT "s" {10+}\r\nkeep;\r\nxxx\r\n',
            b'CHECKSCRIPT {5}\r\nkeep;\r\n', b'SETACTIVE ""', b'GETSCRIPT "a\\"b"', b'RENAMESCRIPT "a" "b"',
            b'HAVESPACE "s" 4294967295', b"CAPABILITY", b'LISTSCRIPTS', b'STARTTLS', b'UNAUTHENTICATE']


def _script(data: bytes) -> None:
    scripts.validate(data.decode("utf-8", "surrogateescape"))


def _command(data: bytes) -> None:
    """Lines and the literals they announce, as the connection loop reads them."""
    cmd = ms.Command()
    rest = data
    continued = False
    while True:
        line, sep, rest = rest.partition(b"\r\n")
        marker = ms.parse_line(line, cmd, continued=continued)
        if marker is None or not sep:
            break
        size, _sync = marker
        assert 0 <= size
        cmd.add_literal(rest[:size])
        rest = rest[size:]
        continued = True
    verb = cmd.verb
    assert verb.isupper() or not verb.isalpha()
    for arg in cmd.args:
        if isinstance(arg, bytes):
            ms.string_arg(arg, "x")
            ms.text_arg(arg, "x")
        else:
            ms.number_arg(arg, "x")


TARGETS = [
    Target("sieve_script", _script,
           lambda: SCRIPTS + test_constants("*/test_*.py", lambda b: b"require" in b and b";" in b), (scripts.ScriptError,), max_len=16384),
    Target("managesieve_command", _command,
           lambda: COMMANDS + test_constants("sieve/test_managesieve*.py", lambda b: re.match(rb"[A-Z]+( |\r\n|$)", b) is not None), (ms.SieveProtocolError,), max_len=2048),
]
