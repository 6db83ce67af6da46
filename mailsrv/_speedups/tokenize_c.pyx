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

cdef extern from *:
    int __builtin_ctzll(unsigned long long) nogil

# the first byte in memory is the word's lowest (x86, arm64): the first separator is the lowest flag
cdef uint64_t _one_word = 1
cdef bint _LITTLE = (<unsigned char *>&_one_word)[0] == 1


cdef inline uint64_t _ge(uint64_t x, uint64_t k) noexcept:
    return (x + (128 - k) * _ONES) & _HIGH


# each ASCII byte as normalize keeps it (capitals lowered), 0 for a separator (control, space, DEL)
cdef unsigned char _KEEP[128]
cdef int _k
for _k in range(128):
    _KEEP[_k] = 0 if _k <= 32 or _k == 127 else (_k + 32 if 65 <= _k <= 90 else _k)


cdef str _normalize_ascii(str text):
    """normalize() of ASCII text in one pass: lower case; controls, DEL and space runs -> one space.

    Eight bytes at a time (SWAR): the bytes before the block's first separator are copied at once
    with their capitals lowered, then the separator is skipped (~3 instructions a byte for mail text
    instead of ~15); the last bytes (and a big-endian machine's) one by one."""
    cdef Py_ssize_t i = 0, j = 0, k, n = len(text)
    cdef const unsigned char *src = PyUnicode_1BYTE_DATA(text)
    cdef unsigned char c
    cdef uint64_t x, sep
    cdef bint pending = False
    cdef unsigned char *out = <unsigned char *>malloc(n + 8)  # whole blocks are stored: 8 bytes slack
    if out == NULL:
        raise MemoryError()
    try:
        while _LITTLE and i + 8 <= n:
            memcpy(&x, src + i, 8)
            sep = ~(_ge(x, 33) & ~_ge(x, 127)) & _HIGH  # 0x80 in each control, space or DEL
            if sep == 0:
                k = 8
            else:
                k = __builtin_ctzll(sep) >> 3  # the kept bytes before the first separator
            if k:
                if pending:
                    out[j] = 32
                    j += 1
                    pending = False
                x |= (_ge(x, 65) & ~_ge(x, 91)) >> 2  # A-Z -> a-z (0x20 in each capital)
                memcpy(out + j, &x, 8)  # j + 8 <= i + 8 <= n + 8: within the slack
                j += k
                i += k
            if k < 8:  # src[i] is a separator
                pending = j > 0
                i += 1
        while i < n:  # the tail: byte by byte
            c = _KEEP[src[i]]
            i += 1
            if c == 0:
                pending = j > 0
                continue
            if pending:
                out[j] = 32
                j += 1
                pending = False
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
