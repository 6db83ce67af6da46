"""SMTP grammar and DATA transparency: RFC examples, byte-split feeding, hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailsrv.smtp import grammar
from mailsrv.smtp.dotstuff import DotDecoder, stuff
from mailsrv.smtp.grammar import (
    SmtpSyntaxError,
    parse_bdat,
    parse_mail,
    parse_mailbox,
    parse_rcpt,
    reply,
    split_command,
    xtext_decode,
    xtext_encode,
)


def test_split_command() -> None:
    c = split_command(b"mail FROM:<a@b.example>  \r\n")
    assert (c.verb, c.arg) == ("MAIL", b"FROM:<a@b.example>")
    assert split_command(b"QUIT\n").verb == "QUIT"
    with pytest.raises(SmtpSyntaxError) as e:
        split_command(b"\x00\x01 x\r\n")
    assert e.value.code == 500


def test_mail_from_forms() -> None:
    assert parse_mail(b"FROM:<a@example.test> SIZE=100 BODY=8BITMIME") == (
        "a@example.test",
        {"SIZE": "100", "BODY": "8BITMIME"},
    )
    assert parse_mail(b"FROM:<>") == ("", {})
    assert parse_mail(b"from: <a@example.test>")[0] == "a@example.test"
    # RFC 5321 §C source route accepted and ignored
    assert parse_mail(b"FROM:<@relay.test,@r2.test:joe@example.test>")[0] == "joe@example.test"
    assert parse_mail(b'FROM:<"john doe"@example.test>')[0] == '"john doe"@example.test'
    assert parse_mail(b"FROM:<a@[192.0.2.1]>")[0] == "a@[192.0.2.1]"


@pytest.mark.parametrize(
    ("arg", "code"),
    [
        (b"FROM:a@example.test", 501),
        (b"TO:<a@example.test>", 501),
        (b"FROM:<a@example.test", 501),
        (b"FROM:<a@example.test>junk", 501),
        (b"FROM:<a.@example.test>", 553),
        (b"FROM:<a@-bad-.test>", 553),
        (b"FROM:<noat>", 553),
        (b"FROM:<a@example.test> SIZE=1 SIZE=2", 501),
        (b"FROM:<a@example.test> =x", 501),
        ("FROM:<jos\u00e9@example.test>".encode(), 553),
    ],
)
def test_mail_from_errors(arg: bytes, code: int) -> None:
    with pytest.raises(SmtpSyntaxError) as e:
        parse_mail(arg)
    assert e.value.code == code


def test_smtputf8_address() -> None:
    addr, params = parse_mail("FROM:<jos\u00e9@\u4f8b\u3048.test> SMTPUTF8".encode())
    assert addr == "jos\u00e9@\u4f8b\u3048.test"
    assert "SMTPUTF8" in params
    assert parse_rcpt("TO:<\u7528\u6237@example.test>".encode(), utf8=True)[0] == "\u7528\u6237@example.test"
    with pytest.raises(SmtpSyntaxError) as e:
        parse_rcpt("TO:<\u7528\u6237@example.test>".encode(), utf8=False)
    assert e.value.enh == "5.6.7"


def test_rcpt_postmaster_and_params() -> None:
    assert parse_rcpt(b"TO:<Postmaster>") == ("postmaster", {})
    assert parse_rcpt(b"TO:<b@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bx@example.test") == (
        "b@example.test",
        {"NOTIFY": "SUCCESS,FAILURE", "ORCPT": "rfc822;b+2Bx@example.test"},
    )
    with pytest.raises(SmtpSyntaxError):
        parse_rcpt(b"TO:<>")


def test_long_local_part() -> None:
    with pytest.raises(SmtpSyntaxError):
        parse_mailbox(b"a" * 65 + b"@example.test")
    assert parse_mailbox(b"a" * 64 + b"@example.test")


def test_bdat() -> None:
    assert parse_bdat(b"100") == (100, False)
    assert parse_bdat(b"0 last") == (0, True)
    for bad in (b"", b"x", b"1 2", b"1 LAST x", b"-1"):
        with pytest.raises(SmtpSyntaxError):
            parse_bdat(bad)


@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126)))
def test_xtext_roundtrip(s: str) -> None:
    assert xtext_decode(xtext_encode(s)) == s


@given(st.binary(max_size=300))
def test_parsers_never_crash(data: bytes) -> None:
    for fn in (lambda: parse_mail(data), lambda: parse_rcpt(data, utf8=True), lambda: split_command(data),
               lambda: parse_bdat(data)):
        try:
            fn()
        except SmtpSyntaxError as exc:
            assert 500 <= exc.code < 600


# --- DATA transparency -------------------------------------------------------


def reference_decode(stream: bytes) -> tuple[bytes, int, bool] | None:
    """Line-by-line decoder from RFC 5321 §4.5.2: (message, consumed, bare) or None if no end."""
    pos = 0
    out = []
    while True:
        j = stream.find(b"\r\n", pos)
        if j < 0:
            return None
        line = stream[pos : j + 2]
        pos = j + 2
        if line == b".\r\n":
            msg = b"".join(out)
            crlf = msg.count(b"\r\n")
            bare = msg.count(b"\n") != crlf or msg.count(b"\r") != crlf
            return msg, pos, bare
        out.append(line[1:] if line.startswith(b".") else line)


def decode_in_pieces(stream: bytes, cuts: list[int]) -> tuple[bytes, int, bool] | None:
    dec = DotDecoder()
    out = []
    consumed = 0
    prev = 0
    for cut in [*sorted(set(cuts)), len(stream)]:
        piece = stream[prev:cut]
        prev = cut
        if not piece:
            continue
        payload, used = dec.feed(piece)
        out.append(payload)
        consumed += used
        if dec.done:
            msg = b"".join(out)
            assert dec.size == len(msg)
            return msg, consumed, dec.bare_newline
    return None


def test_decoder_rfc_examples() -> None:
    stream = b"Subject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n"
    assert decode_in_pieces(stream, []) == (b"Subject: x\r\n\r\n.dot\r\n", len(stream) - 6, False)
    # every split point
    for i in range(len(stream)):
        assert decode_in_pieces(stream, [i]) == reference_decode(stream)
    # smuggling: LF.LF and LF.CRLF are not the end
    smuggle = b"a\n.\nMAIL FROM:<x@y>\r\n.\r\n"
    res = decode_in_pieces(smuggle, [])
    assert res is not None and res[2] is True and res[1] == len(smuggle)
    res = decode_in_pieces(b"a\r\n.\nRCPT\r\n.\r\n", [])
    assert res is not None and res[0] == b"a\r\n\nRCPT\r\n" and res[2] is True
    assert decode_in_pieces(b".\r\n", []) == (b"", 3, False)


def test_stuff_roundtrip() -> None:
    body = b".a\r\n..b\r\nc\r\n.\r\n"
    assert decode_in_pieces(stuff(body), [])[0] == body  # type: ignore[index]


_pieces = st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"\r\n.", b".\r\n", b"xyz"]), max_size=40)


@given(_pieces, st.lists(st.integers(min_value=0, max_value=200), max_size=6))
def test_decoder_matches_reference(parts: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(parts) + b"\r\n.\r\ntail"
    assert decode_in_pieces(stream, cuts) == reference_decode(stream)


@given(st.binary(max_size=200))
def test_stuff_then_decode_is_identity(body: bytes) -> None:
    body = body.replace(b"\r", b"").replace(b"\n", b"\r\n")
    wire = stuff(body)
    expected = body if body.endswith(b"\r\n") else body + b"\r\n"
    assert decode_in_pieces(wire, [len(wire) // 2]) == (expected, len(wire), False)


_reply_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FFF, blacklist_categories=("Cs",)))


@given(st.integers(min_value=200, max_value=599), st.sampled_from([None, "2.0.0", "5.7.1"]), _reply_text)
def test_one_line_reply_is_the_list_form_of_one_line(code: int, enh: str | None, text: str) -> None:
    # RFC 5321 §4.2.1; the one-line fast path must say what the general (list) form says
    assert reply(code, enh, text) == reply(code, enh, [text])
    assert reply(code, enh, text).endswith(b"\r\n") and reply(code, enh, text)[3:4] == b" "


def test_multi_line_reply() -> None:
    assert reply(250, None, ["mx Hello a", "PIPELINING", "SIZE 10"]) == b"250-mx Hello a\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
    assert reply(550, "5.1.1", ["a", "b"]) == b"550-5.1.1 a\r\n550 5.1.1 b\r\n"


def _closing_bracket_reference(rest: bytes) -> int:
    """The quote-aware scan, byte by byte (what the fast path for paths without quotes must agree with)."""
    i, quoted = 1, False
    while i < len(rest):
        c = rest[i : i + 1]
        if quoted and c == b"\\":
            i += 2
            continue
        if c == b'"':
            quoted = not quoted
        elif c == b">" and not quoted:
            return i
        i += 1
    return -1


@given(st.binary(max_size=40).map(lambda b: b"<" + b), st.sampled_from([b"", b'"', b'a"b>c"', b"\\>"]))
def test_closing_bracket_agrees_with_the_quote_aware_scan(rest: bytes, extra: bytes) -> None:
    from mailsrv.smtp.grammar import _closing_bracket

    rest = rest[:5] + extra + rest[5:]
    assert _closing_bracket(rest) == _closing_bracket_reference(rest)


def test_quoted_local_part_may_hold_a_bracket() -> None:
    # RFC 5321 §4.1.2 Quoted-string: the ">" inside the quotes does not end the path
    assert parse_mail(b'FROM:<"a>b"@example.test> SIZE=10') == ('"a>b"@example.test', {"SIZE": "10"})


@given(st.binary(max_size=80) | st.from_regex(rb"\A[a-z0-9.\"\\ ]{1,20}@[a-z0-9.\-\[\]:]{1,20}\Z"), st.booleans())
def test_a_remembered_mailbox_is_the_parse_of_its_bytes(raw: bytes, utf8: bool) -> None:
    """parse_mailbox remembers valid results: asked twice (the second from memory) it answers as the
    parser itself, and an invalid mailbox raises every time."""
    try:
        expected: str | type[Exception] = grammar._parse_mailbox(raw, utf8)
    except SmtpSyntaxError as exc:
        expected = type(exc)
    for _ in range(2):
        try:
            got: str | type[Exception] = parse_mailbox(raw, utf8)
        except SmtpSyntaxError as exc:
            got = type(exc)
        assert got == expected
    assert ((raw, utf8) in grammar._MAILBOXES) == isinstance(expected, str)


def test_remembered_mailboxes_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grammar, "MAX_MAILBOXES", 3)
    grammar._MAILBOXES.clear()
    for i in range(10):
        assert parse_mailbox(f"u{i}@example.test".encode()) == f"u{i}@example.test"
        assert 1 <= len(grammar._MAILBOXES) <= 3


@given(st.binary(max_size=40) | st.from_regex(rb"\A[A-Za-z]{1,14}( [ -~]{0,20})? *\r?\n?\Z"))
def test_a_remembered_command_is_the_split_of_its_bytes(line: bytes) -> None:
    """split_command remembers valid splits: asked twice (the second from memory) it answers as the
    splitter itself, and a line that does not split raises every time."""
    try:
        expected: grammar.Command | type[Exception] = grammar._split_command(line)
    except SmtpSyntaxError as exc:
        expected = type(exc)
    for _ in range(2):
        try:
            got: grammar.Command | type[Exception] = split_command(line)
        except SmtpSyntaxError as exc:
            got = type(exc)
        assert got == expected
    assert (line in grammar._COMMANDS) == isinstance(expected, grammar.Command)


def test_remembered_commands_are_bounded_and_never_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grammar, "MAX_COMMANDS", 3)
    grammar._COMMANDS.clear()
    for i in range(10):
        assert split_command(f"RCPT TO:<u{i}@example.test>\r\n".encode()).arg == f"TO:<u{i}@example.test>".encode()
        assert 1 <= len(grammar._COMMANDS) <= 3
    # an AUTH line carries a credential (its initial response): split, never kept in memory
    assert split_command(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n").verb == "AUTH"
    assert split_command(b"auth login\r\n").verb == "AUTH"
    assert not any(line[:4].upper() == b"AUTH" for line in grammar._COMMANDS)
    long = b"NOOP " + b"x" * grammar.MAX_COMMAND_REMEMBERED + b"\r\n"
    assert split_command(long).verb == "NOOP"
    assert long not in grammar._COMMANDS


@given(st.binary(max_size=60) | st.from_regex(rb"\A(FROM|TO|from|to): ?<[a-z@.\"]{0,20}>( [A-Za-z]{1,8}(=[a-z0-9]{0,4})?)?\Z"),
       st.booleans())
def test_a_remembered_path_is_the_parse_of_its_bytes(arg: bytes, utf8: bool) -> None:
    """parse_mail and parse_rcpt remember the addresses of valid arguments without parameters: asked twice
    (the second from memory) they answer as the first time, and each keeps its own memory."""
    grammar._SENDERS.clear()
    grammar._RECIPIENTS.clear()
    for parse, memory in ((parse_mail, grammar._SENDERS), (parse_rcpt, grammar._RECIPIENTS)):
        results: list[object] = []
        for _ in range(2):
            try:
                results.append(parse(arg, utf8))
            except SmtpSyntaxError as exc:
                results.append((type(exc), exc.code, exc.enh))
        assert results[0] == results[1]
        first = results[0]
        assert ((arg, utf8) in memory) == (isinstance(first, tuple) and first[1] == {})


def test_a_remembered_sender_is_no_recipient(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grammar, "MAX_PATHS", 3)
    assert parse_mail(b"FROM:<a@example.test>") == ("a@example.test", {})
    assert parse_mail(b"FROM:<a@example.test>") == ("a@example.test", {})
    with pytest.raises(SmtpSyntaxError):
        parse_rcpt(b"FROM:<a@example.test>")
    with pytest.raises(SmtpSyntaxError):
        parse_rcpt(b"TO:<>")
    for i in range(10):
        assert parse_rcpt(f"TO:<u{i}@example.test>".encode()) == (f"u{i}@example.test", {})
        assert 1 <= len(grammar._RECIPIENTS) <= 3
    assert parse_mail(b"FROM:<b@example.test> SIZE=10") == ("b@example.test", {"SIZE": "10"})
    assert (b"FROM:<b@example.test> SIZE=10", True) not in grammar._SENDERS
