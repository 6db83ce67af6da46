"""Search tokenizer, pure Python: the specification of ``tokenize_c``.

``normalize`` maps text to the form every search comparison uses (NFKC,
Unicode case folding, control characters and whitespace runs collapsed to one
space). ``terms`` splits normalised text into index terms:

* a run of letters/digits (``str.isalnum``) that is not CJK is one *word*;
  words longer than ``MAX_WORD`` are indexed as overlapping windows
  ``w[k*MAX_WORD : (k+2)*MAX_WORD]`` so that every substring of up to
  ``MAX_WORD`` characters lies inside one window;
* a run of CJK characters (Han, kana, Hangul) gives every single character
  and every overlapping pair (bigram), so that "季度报告" (query bigrams
  季度 度报 报告) finds "第三季度报告已发送";
* everything else separates terms.

The property the engine relies on: if ``q`` is a substring of ``t`` then every
word of ``terms(q)`` of at most ``MAX_WORD`` characters is a substring of some
word term of ``terms(t)``, and every CJK term of ``terms(q)`` is a term of
``terms(t)``.
"""

from __future__ import annotations

import unicodedata

__all__ = ["MAX_WORD", "is_cjk", "normalize", "normalize_general", "query_terms", "runs", "terms"]

#: longest word term; longer words are indexed as windows of 2 * MAX_WORD
MAX_WORD = 32


def is_cjk(cp: int) -> bool:
    """True for code points of scripts written without spaces between words."""
    return (
        0x3040 <= cp <= 0x30FF  # Hiragana, Katakana
        or 0x3400 <= cp <= 0x4DBF  # CJK Extension A
        or 0x4E00 <= cp <= 0x9FFF  # CJK Unified Ideographs
        or 0xAC00 <= cp <= 0xD7AF  # Hangul syllables
        or 0x1100 <= cp <= 0x11FF  # Hangul Jamo
        or 0x3130 <= cp <= 0x318F  # Hangul compatibility Jamo
        or 0x31F0 <= cp <= 0x31FF  # Katakana phonetic extensions
        or 0xF900 <= cp <= 0xFAFF  # CJK compatibility ideographs
        or 0xFF66 <= cp <= 0xFF9D  # halfwidth Katakana
        or 0x20000 <= cp <= 0x3FFFF  # CJK Extensions B..H
    )


#: ASCII controls (every ASCII separator but the space) -> space
_ASCII_SEP = str.maketrans({c: " " for c in [*range(32), 127]})


def normalize(text: str) -> str:
    """NFKC, case fold, NFKC again; controls and whitespace runs -> one space; stripped."""
    if text.isascii():
        # NFKC leaves ASCII as it is and folds it to lower case; its separators are the controls,
        # DEL and the space (the same result as :func:`normalize_general`; tests check it)
        return " ".join(text.lower().translate(_ASCII_SEP).split())
    return normalize_general(text)


def normalize_general(text: str) -> str:
    """:func:`normalize` for any text, step by step."""
    t = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    out: list[str] = []
    space = True  # drop leading whitespace
    for ch in t:
        if ch.isspace() or ord(ch) < 32 or ord(ch) == 127:
            if not space:
                out.append(" ")
                space = True
        else:
            out.append(ch)
            space = False
    if out and space:
        out.pop()
    return "".join(out)


def _word(word: str, out: list[str]) -> None:
    n = len(word)
    if n <= MAX_WORD:
        out.append(word)
        return
    k = 0
    while True:
        out.append(word[k : k + 2 * MAX_WORD])
        if k + 2 * MAX_WORD >= n:
            return
        k += MAX_WORD


def _cjk(run: str, out: list[str]) -> None:
    n = len(run)
    for i in range(n):
        out.append(run[i])
        if i + 1 < n:
            out.append(run[i : i + 2])


def terms(text: str) -> list[str]:
    """Index terms of normalised ``text``, in order, with repetitions."""
    out: list[str] = []
    start = -1  # start of the current run
    cjk = False  # kind of the current run
    n = len(text)
    for i in range(n):
        cp = ord(text[i])
        if is_cjk(cp):
            kind = 2
        elif text[i].isalnum():
            kind = 1
        else:
            kind = 0
        if start >= 0 and (kind == 0 or (kind == 2) != cjk):
            if cjk:
                _cjk(text[start:i], out)
            else:
                _word(text[start:i], out)
            start = -1
        if kind and start < 0:
            start = i
            cjk = kind == 2
    if start >= 0:
        if cjk:
            _cjk(text[start:n], out)
        else:
            _word(text[start:n], out)
    return out


def runs(text: str) -> list[tuple[bool, str]]:
    """Maximal runs of ``text``: (is_cjk, run) for word and CJK runs, in order."""
    out: list[tuple[bool, str]] = []
    start = -1
    cjk = False
    for i, ch in enumerate(text):
        kind = 2 if is_cjk(ord(ch)) else (1 if ch.isalnum() else 0)
        if start >= 0 and (kind == 0 or (kind == 2) != cjk):
            out.append((cjk, text[start:i]))
            start = -1
        if kind and start < 0:
            start = i
            cjk = kind == 2
    if start >= 0:
        out.append((cjk, text[start:]))
    return out


def query_terms(text: str) -> tuple[list[str], list[str]]:
    """Split normalised query ``text`` into (words, cjk_terms) for narrowing.

    Every word must be a substring of some word term of a matching message;
    every CJK term must be a term of it. Words longer than ``MAX_WORD`` are
    left out (they cannot narrow); a CJK run of one character gives that
    character, a longer run its bigrams.
    """
    words: list[str] = []
    cjk: list[str] = []
    for is_c, run in runs(text):
        if not is_c:
            if len(run) <= MAX_WORD:
                words.append(run)
        elif len(run) == 1:
            cjk.append(run)
        else:
            cjk.extend(run[i : i + 2] for i in range(len(run) - 1))
    return words, cjk
