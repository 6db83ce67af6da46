"""Sieve match types and comparators (RFC 5228 §2.7): :is, :contains, :matches over
"i;ascii-casemap" and "i;octet" (RFC 4790 §9.2, §9.3), and :regex (draft-ietf-sieve-regex-01).

``:matches`` patterns are compiled once into segments split at ``*``; matching
takes each segment at its leftmost place (correct for ``*``/``?`` globs, no
backtracking), so the work is O(len(value) * len(pattern)) whatever the
pattern: a hostile ``*a*a*a*a*b`` costs no more than a long literal.

``:regex`` runs on RE2 (google-re2), an automaton without backtracking: matching is linear in the
value whatever the pattern (``(a+)+b`` is harmless); a pattern is at most MAX_REGEX characters and its
compiled program at most REGEX_MEMORY bytes (larger ones are compile errors).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any

import re2

COMPARATORS = ("i;ascii-casemap", "i;octet", "i;ascii-numeric")
#: RFC 5231 §5 relational operators
RELATIONS = ("gt", "ge", "lt", "le", "eq", "ne")
_INFINITY = (1, 0, "")  # :func:`_number` of a value without leading digits: above every number
_CASEMAP = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
#: :regex bounds: characters of a pattern, bytes of its compiled automaton (RE2's max_mem)
MAX_REGEX = 1024
REGEX_MEMORY = 1 << 20


def compile_regex(pattern: str, fold: bool) -> Any:
    """A :regex key: POSIX extended syntax (draft-ietf-sieve-regex §3) plus Perl's digit, word and space classes and word boundaries;
    ``fold``: i;ascii-casemap. Raises ValueError for an invalid or too large pattern."""
    if len(pattern) > MAX_REGEX:
        raise ValueError(f"regex longer than {MAX_REGEX} characters")
    o = re2.Options()
    o.posix_syntax = o.perl_classes = o.word_boundary = True
    o.case_sensitive = not fold  # deviation: RE2 folds non-ASCII letters too
    o.max_mem = REGEX_MEMORY
    o.log_errors = False
    try:
        return re2.compile(pattern, o)
    except re2.error as exc:
        msg = exc.args[0] if exc.args else exc
        raise ValueError(f"bad regex: {msg.decode('utf-8', 'replace') if isinstance(msg, bytes) else msg}") from None


def casemap(s: str) -> str:
    """RFC 4790 §9.2: only US-ASCII letters fold (``"É"`` stays as it is)."""
    return s.translate(_CASEMAP)


#: a "?" inside a segment
ANY = None
Segment = tuple["str | None", ...]


@dataclass(frozen=True)
class Glob:
    """A compiled :matches pattern ``S0*S1*...*Sk``: the value starts with S0, ends with Sk and holds
    S1..Sk-1 in order between them (k = 0: the value is S0)."""

    segments: tuple[Segment, ...]

    def match(self, value: str) -> bool:
        segs = self.segments
        head = segs[0]
        if len(segs) == 1:
            return len(value) == len(head) and _at(value, 0, head)
        tail = segs[-1]
        end = len(value) - len(tail)
        if end < len(head) or not _at(value, 0, head) or not _at(value, end, tail):
            return False
        pos = len(head)
        for s in segs[1:-1]:
            if s:
                found = _find(value, s, pos, end)
                if found < 0:
                    return False
                pos = found + len(s)
        return True


    def captures(self, value: str, original: str) -> list[str] | None:
        """RFC 5229 §3.2: what each wildcard matched, in pattern order (``value`` as compared, folded;
        the pieces come from ``original``, of the same length), or None when it does not match.
        Each ``*`` but the last takes as little as it can, as :meth:`match` places the segments."""
        segs = self.segments
        head = segs[0]

        def anys(seg: Segment, at: int) -> list[str]:
            return [original[at + i] for i, c in enumerate(seg) if c is ANY]

        if len(segs) == 1:
            return anys(head, 0) if len(value) == len(head) and _at(value, 0, head) else None
        tail = segs[-1]
        end = len(value) - len(tail)
        if end < len(head) or not _at(value, 0, head) or not _at(value, end, tail):
            return None
        caps = anys(head, 0)
        pos = len(head)
        for s in segs[1:-1]:
            found = _find(value, s, pos, end) if s else pos
            if found < 0:
                return None
            caps.append(original[pos:found])
            caps += anys(s, found)
            pos = found + len(s)
        caps.append(original[pos:end])
        return caps + anys(tail, end)


def _at(value: str, pos: int, seg: Segment) -> bool:
    for k, c in enumerate(seg):
        if c is not ANY and value[pos + k] != c:
            return False
    return True


def _find(value: str, seg: Segment, start: int, end: int) -> int:
    if ANY not in seg:
        return value.find("".join(seg), start, end)  # type: ignore[arg-type]
    for p in range(start, end - len(seg) + 1):
        if _at(value, p, seg):
            return p
    return -1


def compile_glob(pattern: str) -> Glob:
    """RFC 5228 §2.7.1: ``*`` any run, ``?`` one character, ``\\`` makes the next one literal."""
    segments: list[Segment] = []
    cur: list[str | None] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            segments.append(tuple(cur))
            cur = []
        elif c == "?":
            cur.append(ANY)
        elif c == "\\" and i + 1 < n:
            i += 1
            cur.append(pattern[i])
        else:
            cur.append(c)
        i += 1
    segments.append(tuple(cur))
    return Glob(tuple(segments))


@dataclass(frozen=True)
class Matcher:
    """One key of a test under its match type and comparator, ready to apply."""

    kind: str  # "is" | "contains" | "matches" | "value" | "count" (RFC 5231)
    key: str  # folded for i;ascii-casemap
    fold: bool
    glob: Glob | None = None
    relation: str = ""  # :value / :count: "gt" | "ge" | "lt" | "le" | "eq" | "ne"
    numeric: bool = False  # i;ascii-numeric
    regex: Any = None  # :regex: the compiled RE2 pattern (folds by itself)

    def __call__(self, value: str) -> bool:
        if self.numeric:  # RFC 4790 §9.1: equality and order of the leading digits
            return _related(_number(value), _number(self.key), self.relation or "eq")
        if self.regex is not None:
            return self.regex.search(value) is not None
        if self.fold:
            value = casemap(value)
        if self.kind == "is":
            return value == self.key
        if self.kind == "contains":
            return self.key in value
        if self.kind == "matches":
            assert self.glob is not None
            return self.glob.match(value)
        return _related(value, self.key, self.relation)


    @property
    def comparator(self) -> str:
        return "i;ascii-numeric" if self.numeric else "i;ascii-casemap" if self.fold else "i;octet"

    def capture(self, value: str) -> list[str] | None:
        """A :matches key: ``[value, wildcard matches...]`` when it matches (RFC 5229 §3.2 ${0}..); a
        :regex key: ``[match, groups...]`` (draft-ietf-sieve-regex §4; an unmatched group is "")."""
        if self.regex is not None:
            m = self.regex.search(value)
            return None if m is None else [m.group(0), *(g or "" for g in m.groups())]
        assert self.glob is not None
        caps = self.glob.captures(casemap(value) if self.fold else value, value)
        return None if caps is None else [value, *caps]


def _number(s: str) -> tuple[int, int, str]:
    """RFC 4790 §9.1: the value of the leading US-ASCII digits, none is positive infinity; as a key
    that orders like the number (no int(): a header of 5 000 digits passed its 4 300-digit limit)."""
    n = 0
    while n < len(s) and "0" <= s[n] <= "9":
        n += 1
    if not n:
        return _INFINITY
    digits = s[:n].lstrip("0")
    return (0, len(digits), digits)


def _related(a: tuple[int, int, str] | str, b: tuple[int, int, str] | str, rel: str) -> bool:
    if rel == "eq":
        return a == b
    if rel == "ne":
        return a != b
    if rel == "gt":
        return a > b  # type: ignore[operator]
    if rel == "ge":
        return a >= b  # type: ignore[operator]
    if rel == "lt":
        return a < b  # type: ignore[operator]
    return a <= b  # type: ignore[operator]


def matcher(kind: str, key: str, comparator: str, relation: str = "") -> Matcher:
    """Raises ValueError for a :regex key that does not compile (compile_regex)."""
    fold = comparator == "i;ascii-casemap"
    if kind == "regex":  # not folded here: \S is not \s
        return Matcher(kind, key, fold, regex=compile_regex(key, fold))
    if fold:
        key = casemap(key)
    return Matcher(kind, key, fold, compile_glob(key) if kind == "matches" else None, relation,
                   comparator == "i;ascii-numeric")
