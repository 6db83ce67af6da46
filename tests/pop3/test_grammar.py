"""POP3 grammar: command lines, numbers, and the streaming multi-line body encoder."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mailsrv.pop3.grammar import (
    MAX_COMMAND_LINE,
    BodyEncoder,
    Pop3Error,
    Pop3SyntaxError,
    SizeCounter,
    err,
    normalize_line_ends,
    parse_command,
    parse_number,
    unstuff,
    wire_size,
)


@pytest.mark.parametrize(
    ("line", "verb", "args"),
    [
        (b"USER alice@example.test\r\n", "USER", (b"alice@example.test",)),
        (b"user alice\n", "USER", (b"alice",)),
        (b"STAT\r\n", "STAT", ()),
        (b"TOP 1 10\r\n", "TOP", (b"1", b"10")),
        (b"list  2\r\n", "LIST", (b"2",)),
        (b"CAPA", "CAPA", ()),
    ],
)
def test_parse_command(line: bytes, verb: str, args: tuple[bytes, ...]) -> None:
    cmd = parse_command(line)
    assert (cmd.verb, cmd.args) == (verb, args)


def test_pass_keeps_spaces() -> None:
    cmd = parse_command(b"PASS two words  here\r\n")
    assert cmd.rest == b"two words  here"


@pytest.mark.parametrize(
    "line",
    [b"\r\n", b"XY\r\n", b"TOOLONG\r\n", b"ST4T\r\n", b"\xff\xfeAB\r\n",
     b"USER " + b"a" * 41 + b"\r\n", b"PASS " + b"x" * MAX_COMMAND_LINE + b"\r\n",
     b"USER a\0b\r\n", b"LIST 1\r2\r\n"],
)
def test_bad_command_lines(line: bytes) -> None:
    with pytest.raises(Pop3SyntaxError):
        parse_command(line)


def test_auth_line_may_exceed_255() -> None:
    cmd = parse_command(b"AUTH PLAIN " + b"A" * 400 + b"\r\n")
    assert cmd.args[1] == b"A" * 400


@pytest.mark.parametrize(("arg", "minimum", "value"), [(b"1", 1, 1), (b"0", 0, 0), (b"4294967295", 1, 2**32 - 1)])
def test_numbers(arg: bytes, minimum: int, value: int) -> None:
    assert parse_number(arg, minimum=minimum) == value


@pytest.mark.parametrize("arg", [b"0", b"-1", b"+1", b"1a", b"", b"4294967296", b"\xd9\xa1", b"99999999999"])
def test_bad_numbers(arg: bytes) -> None:
    with pytest.raises(Pop3SyntaxError):
        parse_number(arg)


def test_error_reply_has_code() -> None:
    assert err("Maildrop locked", "IN-USE") == b"-ERR [IN-USE] Maildrop locked\r\n"
    assert Pop3Error("No such message").reply() == b"-ERR No such message\r\n"


@given(st.binary(max_size=300))
def test_parser_never_crashes(line: bytes) -> None:
    try:
        cmd = parse_command(line)
    except Pop3SyntaxError:
        return
    assert cmd.verb.isupper() and 3 <= len(cmd.verb) <= 4


def encode(data: bytes, lines: int | None = None, cuts: list[int] | None = None) -> bytes:
    enc = BodyEncoder(lines)
    out = bytearray()
    prev = 0
    for c in sorted(cuts or []):
        out += enc.feed(data[prev:c])
        prev = c
    out += enc.feed(data[prev:])
    out += enc.finish()
    return bytes(out)


def test_stuffing_and_terminator() -> None:
    msg = b"Subject: x\r\n\r\n.hidden\r\n..two\r\nend"
    assert encode(msg) == b"Subject: x\r\n\r\n..hidden\r\n...two\r\nend\r\n.\r\n"


def test_bare_lf_becomes_crlf_and_bare_cr_stays() -> None:
    assert encode(b"a\nb\rc\n") == b"a\r\nb\rc\r\n.\r\n"
    assert wire_size(b"a\nb\rc\n") == len(b"a\r\nb\rc\r\n")


def test_empty_message() -> None:
    assert encode(b"") == b".\r\n"
    assert wire_size(b"") == 0


def test_top_zero_and_more_lines_than_the_body() -> None:
    msg = b"From: a\r\nSubject: b\r\n\r\nl1\r\nl2\r\n.l3\r\n"
    assert encode(msg, 0) == b"From: a\r\nSubject: b\r\n\r\n.\r\n"
    assert encode(msg, 2) == b"From: a\r\nSubject: b\r\n\r\nl1\r\nl2\r\n.\r\n"
    assert encode(msg, 3) == b"From: a\r\nSubject: b\r\n\r\nl1\r\nl2\r\n..l3\r\n.\r\n"
    assert encode(msg, 100) == encode(msg)


def test_top_without_body_separator() -> None:
    assert encode(b"From: a\nSubject: b", 0) == b"From: a\r\nSubject: b\r\n.\r\n"


def test_top_stops_early() -> None:
    enc = BodyEncoder(1)
    out = enc.feed(b"H: 1\r\n\r\nline1\r\nline2\r\n")
    assert enc.done and out == b"H: 1\r\n\r\nline1\r\n"
    assert enc.feed(b"more") == b""
    assert enc.finish() == b".\r\n"


messages = st.lists(
    st.one_of(st.sampled_from([b"\r\n", b"\n", b"\r", b".", b"..", b"H: v", b"", b"\r\n.\r\n"]),
              st.binary(max_size=12)),
    max_size=30,
).map(b"".join)


def poplib_decode(body: bytes) -> bytes:
    """What poplib's retr() reconstructs: lines unstuffed, joined with CRLF."""
    lines = body.split(b"\r\n")
    assert lines[-2:] == [b".", b""]
    return b"".join((ln[1:] if ln.startswith(b"..") else ln) + b"\r\n" for ln in lines[:-2])


@given(messages, st.lists(st.integers(min_value=0, max_value=400), max_size=6))
def test_split_anywhere_gives_the_same_output(data: bytes, cuts: list[int]) -> None:
    cuts = [min(c, len(data)) for c in cuts]
    assert encode(data, None, cuts) == encode(data)


@given(messages, st.integers(min_value=0, max_value=5), st.lists(st.integers(min_value=0, max_value=400), max_size=6))
def test_top_split_anywhere(data: bytes, n: int, cuts: list[int]) -> None:
    cuts = [min(c, len(data)) for c in cuts]
    assert encode(data, n, cuts) == encode(data, n)


@given(messages)
def test_roundtrip_and_octet_count(data: bytes) -> None:
    out = encode(data)
    # byte-stuffing is undone exactly; what remains is the CRLF form whose size LIST announces
    plain = unstuff(out)
    assert len(plain) == wire_size(data)
    expected = normalize_line_ends(data)
    if data and not expected.endswith(b"\r\n"):
        expected = (expected[:-1] if expected.endswith(b"\r") else expected) + b"\r\n"
    assert plain == expected
    # every line ends in CRLF, the body is terminated by a lone "."
    assert out.endswith(b"\r\n.\r\n") or out == b".\r\n"
    assert b"\r\n.\r\n" not in out[:-3]


@given(messages, st.integers(min_value=0, max_value=5))
def test_top_is_a_prefix_of_retr(data: bytes, n: int) -> None:
    top, full = unstuff(encode(data, n)), unstuff(encode(data))
    assert full.startswith(top)


@given(st.lists(st.sampled_from([b"", b".", b"..", b"a", b"\r", b" .x", b"\x00"]), max_size=12),
       st.lists(st.integers(min_value=0, max_value=60), max_size=5), st.sampled_from([None, 0, 1, 3]))
def test_a_crlf_message_needs_no_look_for_bare_lf(lines: list[bytes], cuts: list[int], top: int | None) -> None:
    # what a maildrop marks crlf (wire_size == length): the encoder that skips the bare-LF look agrees
    data = b"".join(line + b"\r\n" for line in lines)
    assert wire_size(data) == len(data)
    enc = BodyEncoder(top, crlf=True)
    out = bytearray()
    prev = 0
    for c in sorted(cuts):
        out += enc.feed(data[prev:c])
        prev = c
    out += enc.feed(data[prev:]) + enc.finish()
    assert bytes(out) == encode(data, top, cuts)


def test_byte_at_a_time(corpus) -> None:  # type: ignore[no-untyped-def]
    files = sorted(p for p in corpus.rglob("*") if p.is_file())[:40]
    assert files
    for path in files:
        data = path.read_bytes()[:20000]
        whole = encode(data)
        enc = BodyEncoder()
        out = b"".join(enc.feed(data[i:i + 1]) for i in range(len(data))) + enc.finish()
        assert out == whole, path
        assert len(unstuff(whole)) == wire_size(data)


def test_poplib_agrees() -> None:
    original = b"a\r\n.b\r\n..c\r\n.\r\n"
    body = encode(original)
    assert body == b"a\r\n..b\r\n...c\r\n..\r\n.\r\n"
    assert poplib_decode(body) == original


@example(b"\x00", [])  # a NUL byte once passed for "nothing fed yet"
@given(messages, st.lists(st.integers(min_value=0, max_value=400), max_size=6))
def test_size_counter_agrees_with_wire_size(data: bytes, cuts: list[int]) -> None:
    counter = SizeCounter()
    prev = 0
    for c in sorted(min(c, len(data)) for c in cuts):
        counter.feed(data[prev:c])
        prev = c
    counter.feed(data[prev:])
    assert counter.total() == wire_size(data) == len(unstuff(encode(data)))
