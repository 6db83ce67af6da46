"""The log line's cheap paths agree with their rules: a value printed as it is exactly when the regex of
plain values matches it; a stamp's milliseconds as the format spec prints them; a call's field that
overrides the session's."""

from __future__ import annotations

import re
import time

from hypothesis import given
from hypothesis import strategies as st

from mailsrv import log

#: the rule of values printed as they are: printable ASCII without space, quote, ``=`` or backslash
PLAIN = re.compile(r'[!#-<>-\[\]-~]+').fullmatch


_EDGES = ["", " ", '"', "=", "\\", "!", "~", "#", "<", ">", "[", "]", "\x7f", "\x1f", "a b", "a=b", "é", "a\tb",
          "bob@example.test", "0.3", "127.0.0.1:5123", "\u2028", "a\\b", 'a"b']


@given(st.one_of(st.sampled_from(_EDGES), st.text(), st.text(alphabet=st.characters(max_codepoint=0x80))))
def test_quote_agrees_with_the_plain_rule(s: str) -> None:
    # as it is when the rule matches, or when nothing in it needs quoting; else quoted and escaped
    as_it_is = PLAIN(s) is not None or (s != "" and s.isprintable() and not any(c in s for c in ' "=\\'))
    quoted = log._quote(s)
    assert (quoted is s) == as_it_is
    if not as_it_is:
        assert quoted[0] == quoted[-1] == '"' and len(quoted) >= 2 and quoted.isascii() and quoted.isprintable()


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_stamp_prints_milliseconds_as_the_format_spec(now: float) -> None:
    sec = int(now)
    expected = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{int((now - sec) * 1000):03d}Z"
    assert log._stamp(now) == expected


def test_a_calls_field_overrides_the_sessions() -> None:
    token = log.bind(sid="s1", peer="127.0.0.1:1")
    try:
        assert log.format_line("info", "smtp", "e", {"n": 1}).endswith(" e sid=s1 peer=127.0.0.1:1 n=1")
        assert log.format_line("info", "smtp", "e", {"peer": "x", "n": 2}).endswith(" e sid=s1 peer=x n=2")
        assert log.format_line("info", "smtp", "e", {}).endswith(" e sid=s1 peer=127.0.0.1:1")
    finally:
        log.context.reset(token)


def test_info_fields_writes_the_line_info_writes() -> None:
    import io

    buf = io.StringIO()
    log.configure("info", buf)
    token = log.bind(sid="s1", peer="127.0.0.1:1")
    try:
        fields = {"sender": "a@b.test", "to": "c d", "rcpts": 1, "size": None, "ms": "0.3", "qid": None}
        log.get("smtp").info("message.accepted", **fields)
        log.get("smtp").info_fields("message.accepted", fields)
        log.configure("warning", buf)
        log.get("smtp").info_fields("message.accepted", fields)  # below the level: nothing
    finally:
        log.context.reset(token)
        log.configure("info", __import__("sys").stderr)
    first, second = buf.getvalue().splitlines()
    assert first.split(" ", 1)[1] == second.split(" ", 1)[1] == (
        'info smtp message.accepted sid=s1 peer=127.0.0.1:1 sender=a@b.test to="c d" rcpts=1 ms=0.3')
    assert fields == {"sender": "a@b.test", "to": "c d", "rcpts": 1, "size": None, "ms": "0.3", "qid": None}
