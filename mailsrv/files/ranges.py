"""The Range and If-Range request headers of a download (RFC 9110 §14): a pure parser.

Only one range is served; a request for several, or a header that does not parse, is answered
with the whole file (RFC 9110 §14.2: a server MAY ignore Range), so a client never gets less
than it could use.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Digits of a first-pos, last-pos or suffix-length; more is nonsense for any file we keep.
MAX_DIGITS = 19


class Unsatisfiable(Exception):
    """RFC 9110 §14.2: a valid range-set none of whose ranges overlaps the file (answer 416)."""


@dataclass(frozen=True)
class ByteRange:
    """Octets ``start`` to ``stop - 1`` of the file (``stop`` exclusive)."""

    start: int
    stop: int

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.stop - 1}/{size}"


def _pos(text: str) -> int | None:
    # RFC 9110 §14.1.1: 1*DIGIT (ASCII digits only; str.isdigit would take other scripts' digits)
    if not text or len(text) > MAX_DIGITS or not all("0" <= c <= "9" for c in text):
        return None
    return int(text)


def parse_range(value: str, size: int) -> ByteRange | None:
    """The one range of a ``Range`` header over a file of ``size`` octets.

    Returns None when the header is to be ignored (the whole file is sent): another unit, bad
    syntax, or several ranges. Raises :class:`Unsatisfiable` when it names one range that starts at
    or past the end (or a zero-length suffix). ``last-pos`` past the end is cut to the end.
    """
    # RFC 9110 §14.1.2: ranges-specifier = range-unit "=" range-set; units are case-insensitive
    unit, eq, rset = value.partition("=")
    if not eq or unit.strip(" \t").lower() != "bytes":
        return None
    specs = [s.strip(" \t") for s in rset.split(",")]
    specs = [s for s in specs if s]  # 1#element: empty list elements are allowed and ignored (RFC 9110 §5.6.1)
    if len(specs) != 1:
        return None
    first_s, dash, last_s = specs[0].partition("-")
    if not dash:
        return None
    if not first_s:  # suffix-range = "-" suffix-length
        n = _pos(last_s)
        if n is None:
            return None
        if n == 0 or size == 0:
            raise Unsatisfiable()
        return ByteRange(max(0, size - n), size)
    first = _pos(first_s)
    if first is None:
        return None
    if last_s:
        last = _pos(last_s)
        if last is None or last < first:  # RFC 9110 §14.1.1: invalid if last-pos < first-pos
            return None
        stop = min(last + 1, size)
    else:
        stop = size
    if first >= size:
        raise Unsatisfiable()
    return ByteRange(first, stop)


def if_range_holds(value: str | None, etag: str) -> bool:
    """RFC 9110 §13.1.5: Range applies only when If-Range (if sent) is our strong entity tag.
    A date or a weak tag never matches (we answer with the whole file)."""
    return value is None or value.strip(" \t") == etag


def none_match(value: str | None, etag: str) -> bool:
    """RFC 9110 §13.1.2: does If-None-Match name our entity tag (weak comparison) or ``*``?"""
    if value is None:
        return False
    for tag in value.split(","):
        tag = tag.strip(" \t")
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False
