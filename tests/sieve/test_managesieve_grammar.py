"""mailsrv.managesieve.grammar: command lines with quoted strings and literals (RFC 5804 §4), responses."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailsrv.managesieve.grammar import (
    MAX_QUOTED,
    Atom,
    Command,
    SieveSyntaxError,
    literal_marker,
    number_arg,
    parse_line,
    response,
    string,
    text_arg,
)


def parse(*lines_and_literals: bytes) -> Command:
    """Feed lines and literal octets as the connection loop does."""
    cmd = Command()
    items = list(lines_and_literals)
    lit = parse_line(items.pop(0), cmd)
    while lit is not None:
        data = items.pop(0)
        assert len(data) == lit[0]
        cmd.add_literal(data)
        lit = parse_line(items.pop(0), cmd, continued=True)
    assert not items
    return cmd


def test_rfc_5804_examples() -> None:
    # RFC 5804 §2.6 PUTSCRIPT with a literal
    script = b'#comment\r\nInvalidSieveCommand\r\n'
    cmd = parse(b'Putscript "foo" {31+}', script, b"")
    assert cmd.verb == "PUTSCRIPT" and cmd.args == [b"foo", script]
    # §2.1 AUTHENTICATE with an initial response; §2.5 HAVESPACE with a number
    cmd = parse(b'AUTHENTICATE "PLAIN" "QJIrweAPyo6Q1T9xy"')
    assert cmd.verb == "AUTHENTICATE" and cmd.args == [b"PLAIN", b"QJIrweAPyo6Q1T9xy"]
    cmd = parse(b'HAVESPACE "myscript" 999999')
    assert number_arg(cmd.args[1], "size") == 999999
    # a synchronizing literal is taken at once too (no continuation in ManageSieve)
    assert parse(b'CHECKSCRIPT {5}', b"keep;", b"").args == [b"keep;"]
    # a literal argument followed by more arguments
    assert parse(b"RENAMESCRIPT {1+}", b"a", b' "b"').args == [b"a", b"b"]
    assert parse(b"listscripts").verb == "LISTSCRIPTS"


def test_quoted_escapes_and_utf8() -> None:
    cmd = parse(b'GETSCRIPT "a\\"b\\\\c \xe9\x82\xae"')
    assert cmd.args == [b'a"b\\c \xe9\x82\xae']
    assert text_arg(cmd.args[0], "name") == 'a"b\\c 邮'
    with pytest.raises(SieveSyntaxError):
        text_arg(b"\xff", "name")
    with pytest.raises(SieveSyntaxError):
        text_arg(Atom("X"), "name")


@pytest.mark.parametrize("line", [
    b"", b" NOOP", b"NOOP ", b"NOOP  \"a\"", b'NOOP "a', b'NOOP "a\\x"', b'NOOP "a"b', b"NOOP {x}", b"NOOP {5",
    b"NOOP {5} x", b"NOOP {99999999999}", b"\x00", b"NOOP \xff", b'NOOP "' + b"a" * (MAX_QUOTED + 1) + b'"',
    b"NOOP " + b" ".join([b'"a"'] * 20),
])
def test_syntax_errors(line: bytes) -> None:
    with pytest.raises(SieveSyntaxError):
        parse_line(line, Command())


def test_after_a_literal_a_space_or_the_end() -> None:
    cmd = Command()
    assert parse_line(b'PUTSCRIPT "a" {1+}', cmd) == (1, False)
    cmd.add_literal(b"x")
    with pytest.raises(SieveSyntaxError):
        parse_line(b'"b"', cmd, continued=True)


def test_numbers() -> None:
    assert number_arg(Atom("4294967295"), "n") == 2**32 - 1
    assert number_arg(Atom("0" * 5000 + "7"), "n") == 7
    for bad in (Atom("4294967296"), Atom("1a"), b"12", Atom("٣"), Atom("9" * 5000)):
        with pytest.raises(SieveSyntaxError):
            number_arg(bad, "n")


def test_literal_marker() -> None:
    assert literal_marker(b'PUTSCRIPT "a" {12+}') == (12, False)
    assert literal_marker(b"X {0}") == (0, True)
    assert literal_marker(b'X "{1}"') is None
    assert literal_marker(b"X {1} ") is None
    assert literal_marker(b"X {+}") is None


def test_responses() -> None:
    assert response("OK") == b"OK\r\n"
    assert response("NO", "QUOTA/MAXSIZE", "Too big") == b'NO (QUOTA/MAXSIZE) "Too big"\r\n'
    assert response("OK", "TAG", "Done", code_arg=b'a"b') == b'OK (TAG "a\\"b") "Done"\r\n'
    assert response("BYE", "", 'say "hi"') == b'BYE "say \\"hi\\""\r\n'
    assert string("a\r\nb") == b"{4}\r\na\r\nb"
    assert string(b"x" * (MAX_QUOTED + 1)).startswith(b"{1025}\r\n")


_safe = st.binary(max_size=60).filter(lambda b: b"\r" not in b and b"\n" not in b and b"\0" not in b)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_safe, st.binary(max_size=40)), max_size=5))
def test_strings_round_trip(values: list[bytes]) -> None:
    """Arguments written with :func:`string` (quoted or literal) parse back to the same bytes."""
    lines: list[bytes] = []
    current = b"NOOP"
    for v in values:
        enc = string(v)
        if enc.startswith(b"{"):
            head, data = enc.split(b"\r\n", 1)
            lines += [current + b" " + head, data]
            current = b""
        else:
            current += b" " + enc
    lines.append(current)
    assert parse(*lines).args == values


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=80), st.booleans())
def test_parse_line_never_raises_anything_else(line: bytes, continued: bool) -> None:
    cmd = Command()
    try:
        lit = parse_line(line, cmd, continued=continued)
    except SieveSyntaxError:
        return
    assert lit is None or (lit[0] >= 0 and line.endswith(b"}"))
    assert all(isinstance(t, Atom | bytes) for t in cmd.tokens)
