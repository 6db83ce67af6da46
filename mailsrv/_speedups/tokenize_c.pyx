# cython: language_level=3
"""Search tokenizer hot path, compiled. The twin ``tokenize_py`` is the specification."""

import unicodedata

from mailsrv._speedups.tokenize_py import MAX_WORD as _MAX_WORD_PY
from mailsrv._speedups.tokenize_py import query_terms as _query_terms_py
from mailsrv._speedups.tokenize_py import runs as _runs_py

MAX_WORD = _MAX_WORD_PY
cdef Py_ssize_t _MAX = _MAX_WORD_PY

_nfkc = unicodedata.normalize


cdef inline bint _is_cjk(Py_UCS4 cp) noexcept:
    return (
        (0x3040 <= cp <= 0x30FF)
        or (0x3400 <= cp <= 0x4DBF)
        or (0x4E00 <= cp <= 0x9FFF)
        or (0xAC00 <= cp <= 0xD7AF)
        or (0x1100 <= cp <= 0x11FF)
        or (0x3130 <= cp <= 0x318F)
        or (0x31F0 <= cp <= 0x31FF)
        or (0xF900 <= cp <= 0xFAFF)
        or (0xFF66 <= cp <= 0xFF9D)
        or (0x20000 <= cp <= 0x3FFFF)
    )


def is_cjk(int cp):
    return _is_cjk(<Py_UCS4>cp) if 0 <= cp <= 0x10FFFF else False


cdef extern from "Python.h":
    int PyUnicode_IS_ASCII(object o)
    const unsigned char *PyUnicode_1BYTE_DATA(object o)
    object PyUnicode_FromKindAndData(int kind, const void *buffer, Py_ssize_t size)
    int PyUnicode_1BYTE_KIND

from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

# SWAR over 8 ASCII bytes (each < 128): _ge(x, k) has 0x80 in each byte >= k (no carry crosses a byte)
cdef uint64_t _ONES = 0x0101010101010101ULL
cdef uint64_t _HIGH = 0x8080808080808080ULL


cdef inline uint64_t _ge(uint64_t x, uint64_t k) noexcept:
    return (x + (128 - k) * _ONES) & _HIGH


cdef str _normalize_ascii(str text):
    """normalize() of ASCII text in one pass: lower case; controls, DEL and space runs -> one space.

    Eight bytes at a time while none of them is a separator (a word run: copied with its capitals
    lowered, ~2 instructions a byte instead of ~15), byte by byte around the separators."""
    cdef Py_ssize_t i = 0, j = 0, end, n = len(text)
    cdef const unsigned char *src = PyUnicode_1BYTE_DATA(text)
    cdef unsigned char c
    cdef uint64_t x
    cdef bint pending = False
    cdef unsigned char *out = <unsigned char *>malloc(n + 8)
    if out == NULL:
        raise MemoryError()
    try:
        while i < n:
            if i + 8 <= n:
                memcpy(&x, src + i, 8)
                if (_ge(x, 33) & ~_ge(x, 127)) == _HIGH:  # no control, space or DEL among them
                    if pending:
                        out[j] = 32
                        j += 1
                        pending = False
                    x |= (_ge(x, 65) & ~_ge(x, 91)) >> 2  # A-Z -> a-z (0x20 in each capital)
                    memcpy(out + j, &x, 8)
                    i += 8
                    j += 8
                    continue
                end = i + 8
            else:
                end = n
            while i < end:  # a block with a separator (or the tail): byte by byte
                c = src[i]
                i += 1
                if c <= 32 or c == 127:
                    pending = j > 0
                    continue
                if pending:
                    out[j] = 32
                    j += 1
                    pending = False
                if 65 <= c <= 90:
                    c += 32
                out[j] = c
                j += 1
        return <str>PyUnicode_FromKindAndData(PyUnicode_1BYTE_KIND, out, j)
    finally:
        free(out)


def normalize(str text):
    if PyUnicode_IS_ASCII(text):
        return _normalize_ascii(text)
    return normalize_general(text)


def normalize_general(str text):
    cdef str t = _nfkc("NFKC", _nfkc("NFKC", text).casefold())
    cdef list out = []
    cdef Py_ssize_t i, n = len(t), start = -1
    cdef Py_UCS4 ch
    cdef bint sep
    cdef bint pending = False  # a space is owed before the next kept character
    for i in range(n):
        ch = t[i]
        sep = ch.isspace() or ch < 32 or ch == 127
        if sep:
            if start >= 0:
                out.append(t[start:i])
                start = -1
                pending = True
        else:
            if start < 0:
                if pending and out:
                    out.append(" ")
                pending = False
                start = i
    if start >= 0:
        out.append(t[start:n])
    return "".join(out)


cdef inline void _word(str text, Py_ssize_t a, Py_ssize_t b, list out):
    cdef Py_ssize_t n = b - a, k
    if n <= _MAX:
        out.append(text[a:b])
        return
    k = 0
    while True:
        out.append(text[a + k : a + min(k + 2 * _MAX, n)])
        if k + 2 * _MAX >= n:
            return
        k += _MAX


cdef inline void _cjk(str text, Py_ssize_t a, Py_ssize_t b, list out):
    cdef Py_ssize_t i
    for i in range(a, b):
        out.append(text[i])
        if i + 1 < b:
            out.append(text[i : i + 2])


cdef inline bint _ascii_alnum(unsigned char c) noexcept:
    return (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122)


cdef inline void _ascii_word(const unsigned char *src, Py_ssize_t a, Py_ssize_t b, list out):
    """:func:`_word` over ASCII data: each term made from the bytes (no str slicing)."""
    cdef Py_ssize_t n = b - a, k
    if n <= _MAX:
        out.append(PyUnicode_FromKindAndData(PyUnicode_1BYTE_KIND, src + a, n))
        return
    k = 0
    while True:
        out.append(PyUnicode_FromKindAndData(PyUnicode_1BYTE_KIND, src + a + k, min(k + 2 * _MAX, n) - k))
        if k + 2 * _MAX >= n:
            return
        k += _MAX


cdef list _ascii_terms(str text):
    """:func:`terms` of ASCII text: its letters and digits are str.isalnum's, and none is CJK."""
    cdef list out = []
    cdef const unsigned char *src = PyUnicode_1BYTE_DATA(text)
    cdef Py_ssize_t i, n = len(text), start = -1
    for i in range(n):
        if _ascii_alnum(src[i]):
            if start < 0:
                start = i
        elif start >= 0:
            _ascii_word(src, start, i, out)
            start = -1
    if start >= 0:
        _ascii_word(src, start, n, out)
    return out


def terms(str text):
    if PyUnicode_IS_ASCII(text):
        return _ascii_terms(text)
    cdef list out = []
    cdef Py_ssize_t i, n = len(text), start = -1
    cdef int kind
    cdef bint cjk = False
    cdef Py_UCS4 ch
    for i in range(n):
        ch = text[i]
        if _is_cjk(ch):
            kind = 2
        elif ch.isalnum():
            kind = 1
        else:
            kind = 0
        if start >= 0 and (kind == 0 or (kind == 2) != cjk):
            if cjk:
                _cjk(text, start, i, out)
            else:
                _word(text, start, i, out)
            start = -1
        if kind and start < 0:
            start = i
            cjk = kind == 2
    if start >= 0:
        if cjk:
            _cjk(text, start, n, out)
        else:
            _word(text, start, n, out)
    return out


runs = _runs_py
query_terms = _query_terms_py
