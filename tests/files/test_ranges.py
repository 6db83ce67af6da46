"""The Range / If-Range / If-None-Match parsers and file names: RFC examples and hypothesis."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailsrv.files.names import MAX_NAME, clean_name, content_disposition
from mailsrv.files.ranges import ByteRange, Unsatisfiable, if_range_holds, none_match, parse_range


@pytest.mark.parametrize(("header", "size", "want"), [
    # RFC 9110 §14.1.2 examples over a 10 000-octet representation
    ("bytes=0-499", 10000, ByteRange(0, 500)),
    ("bytes=500-999", 10000, ByteRange(500, 1000)),
    ("bytes=-500", 10000, ByteRange(9500, 10000)),
    ("bytes=9500-", 10000, ByteRange(9500, 10000)),
    ("bytes=0-0", 10000, ByteRange(0, 1)),
    ("bytes=-1", 10000, ByteRange(9999, 10000)),
    ("BYTES = 5-", 10, ByteRange(5, 10)),
    ("bytes=5-100", 10, ByteRange(5, 10)),  # last-pos past the end: cut
    ("bytes=-100", 10, ByteRange(0, 10)),  # suffix longer than the file: all of it
    ("bytes=, 1-2 ,", 10, ByteRange(1, 3)),  # empty list elements
    # ignored: the whole file
    ("bytes=0-0,-1", 10000, None),  # several ranges
    ("items=0-5", 10, None),
    ("bytes=5-1", 10, None),  # last < first: invalid
    ("bytes=a-b", 10, None),
    ("bytes=1", 10, None),
    ("bytes=", 10, None),
    ("bytes 0-5", 10, None),
    ("bytes=\u0661-2", 10, None),  # an Arabic-Indic digit is not DIGIT
    ("bytes=-", 10, None),
    ("bytes=" + "9" * 20 + "-", 10, None),
])
def test_examples(header: str, size: int, want: ByteRange | None) -> None:
    assert parse_range(header, size) == want


@pytest.mark.parametrize(("header", "size"), [("bytes=10-", 10), ("bytes=10-20", 10), ("bytes=-0", 10),
                                              ("bytes=0-", 0), ("bytes=-5", 0)])
def test_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(header, size)


def test_content_range() -> None:
    assert ByteRange(5, 10).content_range(10) == "bytes 5-9/10"


def test_conditions() -> None:
    tag = '"abc"'
    assert if_range_holds(None, tag) and if_range_holds(' "abc" ', tag)
    assert not if_range_holds('"abd"', tag) and not if_range_holds("Wed, 21 Oct 2015 07:28:00 GMT", tag)
    assert not if_range_holds('W/"abc"', tag)  # If-Range needs the strong comparison
    assert none_match('"x", W/"abc"', tag) and none_match("*", tag)
    assert not none_match(None, tag) and not none_match('"abcd"', tag)


def reference(header: str, size: int) -> ByteRange | None | str:
    """An independent reading of RFC 9110 §14.1-14.2 (one range only), by regular expression."""
    m = re.fullmatch(r"[ \t]*bytes[ \t]*=((?:[ \t]*,)*)[ \t]*([0-9]*)-([0-9]*)[ \t]*((?:,[ \t]*)*)", header,
                     re.IGNORECASE | re.ASCII)
    if m is None:
        return None
    first, last = m.group(2), m.group(3)
    if len(first) > 19 or len(last) > 19 or (not first and not last):
        return None
    if not first:
        n = int(last)
        return "416" if n == 0 or size == 0 else ByteRange(max(0, size - n), size)
    if last and int(last) < int(first):
        return None
    if int(first) >= size:
        return "416"
    return ByteRange(int(first), min(size, int(last) + 1) if last else size)


def outcome(header: str, size: int) -> ByteRange | None | str:
    try:
        return parse_range(header, size)
    except Unsatisfiable:
        return "416"


ranges = st.one_of(
    st.text(alphabet="bytes=0123456789-, \t", max_size=30),
    st.builds(lambda a, b, pad: f"{pad}bytes={a}-{b}{pad}", st.integers(0, 300).map(str) | st.just(""),
              st.integers(0, 300).map(str) | st.just(""), st.sampled_from(["", " ", "\t"])),
    st.text(max_size=40),
)


@given(ranges, st.integers(0, 250))
def test_agrees_with_the_reference(header: str, size: int) -> None:
    got = outcome(header, size)
    assert got == reference(header, size)
    if isinstance(got, ByteRange):
        assert 0 <= got.start < got.stop <= size


@given(st.text(max_size=600))
def test_clean_names_are_safe(name: str) -> None:
    out = clean_name(name)
    assert out and len(out.encode("utf-8")) <= MAX_NAME
    assert "/" not in out and "\\" not in out and not out.startswith(".")
    assert not any(ord(c) < 32 or ord(c) == 127 or c in "\u202e\u2028\u200b" for c in out)
    assert clean_name(out) == out  # idempotent
    cd = content_disposition(out)
    assert cd.isascii() and cd.count('"') == 2 and "\r" not in cd and "\n" not in cd


def test_clean_name_examples() -> None:
    assert clean_name("C:\\Users\\a\\report.pdf") == "report.pdf"
    assert clean_name("../../etc/passwd") == "passwd"
    assert clean_name("..") == "file" and clean_name("") == "file"
    long = "长" * 200 + ".tar.gz"
    out = clean_name(long)
    assert out.endswith(".gz") and len(out.encode()) <= MAX_NAME
