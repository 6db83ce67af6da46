"""Tokenizer and term-scan hot paths: compiled modules agree with their twins; substring property."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailsrv._speedups import search_py, tokenize_py
from mailsrv._speedups.tokenize import normalize, query_terms, terms

IMPLS = ["py"]
try:
    from mailsrv._speedups import search_c, tokenize_c  # type: ignore[attr-defined]

    IMPLS.append("c")
except ImportError:  # the guard test below fails in that case
    tokenize_c = search_c = None


@pytest.fixture(params=IMPLS)
def tok(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    return tokenize_py if request.param == "py" else tokenize_c


mixed = st.text(
    alphabet=st.sampled_from(
        list("abcxyzÉéßſﬁ ï\t\n\r\x00-.,!?:;@<>") + list("季度报告第三已发送会議확인부탁ｶﾀカタ") + ["\u0301", "\u3000", "😀"]
    ),
    max_size=80,
)


def test_compiled_modules_load() -> None:
    """Guard: the compiled tokenizer and term scan must load when speedups are required."""
    env = dict(os.environ, MAILSRV_REQUIRE_SPEEDUPS="1")
    env.pop("MAILSRV_NO_SPEEDUPS", None)
    code = "from mailsrv._speedups import tokenize, search; print(tokenize.IMPL, search.IMPL)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["c", "c"]


def test_examples(tok) -> None:  # type: ignore[no-untyped-def]
    t = tok.normalize("  Re:\tCAFÉ  ﬁle\r\n Straße\x00第三季度报告 ")
    assert t == "re: café file strasse 第三季度报告"
    assert tok.terms(t) == [
        "re", "café", "file", "strasse",
        "第", "第三", "三", "三季", "季", "季度", "度", "度报", "报", "报告", "告",
    ]  # fmt: skip
    assert tok.terms("x" * 70) == ["x" * 64, "x" * 38]
    assert tok.terms("") == []
    assert tok.normalize("") == ""


@pytest.mark.speedups
@settings(max_examples=600, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=120) | st.sampled_from(["", " ", "\x7f", "A\x1fB"]))
def test_ascii_shortcut_is_the_general_normalize(text: str) -> None:
    """ASCII text takes a one-pass path in both twins: the same result as the general steps."""
    if tokenize_c is None:
        pytest.fail("compiled tokenizer missing")
    want = tokenize_py.normalize_general(text)
    assert tokenize_py.normalize(text) == want
    assert tokenize_c.normalize(text) == want
    assert tokenize_c.normalize_general(text) == want


#: the compiled ASCII path copies 8 bytes at a time when none is a separator: runs of word bytes
#: (capitals, the bytes around the separators' and capitals' ranges) cut by separators at any offset
_WORDISH = st.text(alphabet=st.sampled_from(list("@AZ[`az{~!09") + ["\x7f", " ", "\t", "\x00", "\x1f", "\r", "\n"]),
                   max_size=200)


@pytest.mark.speedups
@settings(max_examples=600, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("@AZ[`az{~!09")), min_size=1, max_size=40), _WORDISH,
       st.integers(0, 15))
def test_ascii_word_runs(word: str, text: str, shift: int) -> None:
    """The eight-byte blocks of the compiled ASCII path: the general steps' result at every alignment."""
    if tokenize_c is None:
        pytest.fail("compiled tokenizer missing")
    for t in (" " * shift + word * 9 + text, "x" * shift + text + word * 3 + "\x7f" + word, word * 8):
        assert tokenize_c.normalize(t) == tokenize_py.normalize_general(t)


def test_ascii_word_runs_examples(tok) -> None:  # type: ignore[no-untyped-def]
    assert tok.normalize("ABCDEFGHIJKLMNOPQRSTUVWXYZ@[`{") == "abcdefghijklmnopqrstuvwxyz@[`{"
    assert tok.normalize("\x7f" * 9 + "Hello,World!ABCDEFGH\x7fIJ  \r\n" + "K" * 17 + "\x00") == (
        "hello,world!abcdefgh ij " + "k" * 17)


@pytest.mark.speedups
@settings(max_examples=400, deadline=None)
@given(mixed)
def test_twins_agree(text: str) -> None:
    if tokenize_c is None:
        pytest.fail("compiled tokenizer missing")
    assert tokenize_c.normalize(text) == tokenize_py.normalize(text)
    n = tokenize_py.normalize(text)
    assert tokenize_c.terms(n) == tokenize_py.terms(n)
    for cp in (ord(c) for c in text):
        assert tokenize_c.is_cjk(cp) == tokenize_py.is_cjk(cp)


@pytest.mark.speedups
@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="abcé季度", max_size=6), max_size=30), st.text(alphabet="abcé季度", max_size=3))
def test_term_scan_twins_agree(vocab: list[str], word: str) -> None:
    if search_c is None:
        pytest.fail("compiled term scan missing")
    assert search_c.terms_containing(word, vocab) == search_py.terms_containing(word, vocab)
    ids = list(range(0, len(vocab), 2))
    assert search_c.filter_containing(word, vocab, ids) == search_py.filter_containing(word, vocab, ids)
    assert search_py.terms_containing(word, vocab) == [i for i, t in enumerate(vocab) if word in t]


@settings(max_examples=400, deadline=None)
@given(mixed, st.integers(0, 80), st.integers(0, 80))
def test_substring_property(text: str, a: int, b: int) -> None:
    """Any substring q of normalised text: its narrowing terms are found among the text's terms."""
    t = normalize(text)
    q = t[min(a, b) : max(a, b)]
    words, cjk = query_terms(q)
    tt = terms(t)
    for w in words:
        assert any(w in term for term in tt), (q, w)
    for c in cjk:
        assert c in tt, (q, c)


def test_normalize_is_idempotent_on_examples() -> None:
    for s in ["Ⅻ ＡＢＣ", "ǅ", "ﬃ", "İstanbul", "ΣΑΣ", "第三　季度"]:
        n = normalize(s)
        assert normalize(n) == n


@pytest.mark.speedups
@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(st.text(alphabet="ab季 é", max_size=8), min_size=3, max_size=3), max_size=12),
    st.text(alphabet="ab季 é", max_size=3),
    st.sampled_from([(0,), (1,), (2,), (0, 2)]),
    st.integers(0, 5),
)
def test_confirm_twins_agree(records: list[list[str]], needle: str, fields: tuple[int, ...], cut: int) -> None:
    """Candidate confirmation over a text cache: both implementations, also on torn records."""
    if search_c is None:
        pytest.fail("compiled term scan missing")
    import struct

    buf = bytearray()
    locs: dict[int, tuple[int, int]] = {}
    expected = []
    for uid, rec in enumerate(records, start=1):
        parts = [t.encode() for t in rec]
        blob = struct.pack("<3I", *(len(p) for p in parts)) + b"".join(parts)
        locs[uid] = (len(buf), len(blob))
        buf += blob
        if any(needle in rec[f] for f in fields):
            expected.append(uid)
    cand = list(range(0, len(records) + 2))
    n = needle.encode()
    assert search_py.confirm(bytes(buf), cand, locs, fields, 3, n) == expected
    assert search_c.confirm(bytes(buf), cand, locs, fields, 3, n) == expected
    torn = bytes(buf[: max(0, len(buf) - cut)])
    assert search_c.confirm(torn, cand, locs, fields, 3, n) == search_py.confirm(torn, cand, locs, fields, 3, n)


@pytest.mark.speedups
@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.sampled_from(["a", "b", "季度", "ü", "xyz"]), max_size=8), max_size=10), st.booleans())
def test_add_postings_twins_agree(docs: list[list[str]], as_sets: bool) -> None:
    """Terms as a list (repetitions) or as a set (IndexCore.add's, iterated without a copy)."""
    from pyroaring import BitMap

    if search_c is None:
        pytest.fail("compiled term scan missing")
    posts: list[dict[str, BitMap | int]] = [{}, {}]
    for uid, terms_ in enumerate(docs, start=1):
        given_terms = set(terms_) if as_sets else terms_
        new_py = search_py.add_postings(posts[0], uid, given_terms, BitMap)
        new_c = search_c.add_postings(posts[1], uid, given_terms, BitMap)
        assert sorted(new_py) == sorted(new_c)
    assert posts[0] == posts[1]
    for t, v in posts[0].items():
        want = [u for u, d in enumerate(docs, start=1) if t in d]
        assert ([v] if isinstance(v, int) else list(v)) == want
        assert isinstance(v, int) == (len(want) == 1)


@pytest.mark.speedups
@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.text(alphabet="aab报告 ", min_size=0, max_size=300), min_size=1, max_size=6),
    st.integers(0, 10**6),
    st.integers(1, 12),
    st.booleans(),
)
def test_confirm_long_haystacks(bodies: list[str], seed: int, nlen: int, from_text: bool) -> None:
    """The compiled substring search (16-byte SIMD blocks + tail) agrees with ``in`` on long texts."""
    if search_c is None:
        pytest.fail("compiled term scan missing")
    import random
    import struct

    rng = random.Random(seed)
    if from_text and any(bodies):
        src = rng.choice([b for b in bodies if b])
        i = rng.randrange(len(src))
        needle = src[i : i + nlen]
    else:
        needle = "".join(rng.choice("ab报告") for _ in range(nlen))
    buf = bytearray()
    locs: dict[int, tuple[int, int]] = {}
    for uid, body in enumerate(bodies, start=1):
        part = body.encode()
        blob = struct.pack("<1I", len(part)) + part
        locs[uid] = (len(buf), len(blob))
        buf += blob
    want = [u for u, body in enumerate(bodies, start=1) if needle in body]
    n = needle.encode()
    assert search_c.confirm(bytes(buf), list(locs), locs, (0,), 1, n) == want
    assert search_py.confirm(bytes(buf), list(locs), locs, (0,), 1, n) == want


@pytest.mark.speedups
@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(["a", "Z", "0", "9", " ", "-", "@", ".", "\x00", "\x7f", "_", "x" * 31, "y" * 33,
                                 "z" * 64, "w" * 65, "q" * 97]), max_size=40).map("".join)
       | st.text(alphabet=st.characters(max_codepoint=127), max_size=300))
def test_ascii_terms_are_the_general_terms(text: str) -> None:
    """The compiled tokenizer's ASCII pass (bytes, no str per character): the twin's terms, long
    words' windows included."""
    if tokenize_c is None:
        pytest.fail("compiled tokenizer missing")
    assert tokenize_c.terms(text) == tokenize_py.terms(text)
