# cython: language_level=3
"""Search index hot loops, compiled. The twin ``search_py`` is the specification."""

from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.unicode cimport PyUnicode_Find


def terms_containing(str word, list vocab):
    cdef list out = []
    cdef Py_ssize_t i, n = PyList_GET_SIZE(vocab)
    cdef object t
    for i in range(n):
        t = <object>PyList_GET_ITEM(vocab, i)
        if PyUnicode_Find(t, word, 0, len(<str>t), 1) >= 0:
            out.append(i)
    return out


def filter_containing(str word, list vocab, ids):
    cdef list out = []
    cdef Py_ssize_t n = PyList_GET_SIZE(vocab)
    cdef Py_ssize_t i
    cdef object t
    for i in ids:
        if i < 0 or i >= n:
            raise IndexError("term id out of range")
        t = <object>PyList_GET_ITEM(vocab, i)
        if PyUnicode_Find(t, word, 0, len(<str>t), 1) >= 0:
            out.append(i)
    return out


cdef extern from *:
    """
    #include <string.h>
    #if defined(__SSE2__)
    #include <emmintrin.h>
    /* Substring search: SSE2 filter on the needle's first and last byte, then memcmp
       (W. Mula, "SIMD-friendly algorithms for substring searching"); memmem for the tail. */
    static const void *mailsrv_find(const unsigned char *h, size_t hl,
                                    const unsigned char *n, size_t nl) {
        size_t i = 0;
        if (nl == 0) return h;
        if (hl < nl) return NULL;
        if (nl == 1) return memchr(h, n[0], hl);
        {
            const __m128i first = _mm_set1_epi8((char)n[0]);
            const __m128i last = _mm_set1_epi8((char)n[nl - 1]);
            for (; i + nl - 1 + 16 <= hl; i += 16) {
                __m128i bf = _mm_loadu_si128((const __m128i *)(h + i));
                __m128i bl = _mm_loadu_si128((const __m128i *)(h + i + nl - 1));
                unsigned mask = (unsigned)_mm_movemask_epi8(
                    _mm_and_si128(_mm_cmpeq_epi8(first, bf), _mm_cmpeq_epi8(last, bl)));
                while (mask) {
                    unsigned bit = (unsigned)__builtin_ctz(mask);
                    if (memcmp(h + i + bit + 1, n + 1, nl - 2) == 0) return h + i + bit;
                    mask &= mask - 1;
                }
            }
        }
        return i < hl ? memmem(h + i, hl - i, n, nl) : NULL;
    }
    #else
    static const void *mailsrv_find(const unsigned char *h, size_t hl,
                                    const unsigned char *n, size_t nl) {
        return memmem(h, hl, n, nl);
    }
    #endif
    """
    const void *mailsrv_find(const unsigned char *h, size_t hl, const unsigned char *n, size_t nl) nogil


def confirm(buf, cand, dict locs, tuple fields, int nfields, bytes needle):
    cdef const unsigned char[:] view = buf
    cdef Py_ssize_t size = view.shape[0]
    cdef Py_ssize_t head = 4 * nfields
    cdef const unsigned char *base = &view[0] if size > 0 else NULL
    cdef const char *nd = needle
    cdef Py_ssize_t nlen = len(needle)
    cdef list out = []
    cdef Py_ssize_t off, n, total, start, k, f, i
    cdef unsigned int lens[64]
    cdef object loc
    if nfields > 64 or nfields < 1:
        raise ValueError("nfields out of range")
    cdef list flist = [int(x) for x in fields]
    for x in flist:
        if x < 0 or x >= nfields:
            raise ValueError("field index out of range")
    for uid in cand:
        loc = locs.get(uid)
        if loc is None:
            continue
        off = loc[0]
        n = loc[1]
        if off < 0 or n < head or off + n > size:
            continue
        total = 0
        for i in range(nfields):
            k = off + 4 * i
            lens[i] = (<unsigned int>base[k]) | (<unsigned int>base[k + 1] << 8) | (
                <unsigned int>base[k + 2] << 16) | (<unsigned int>base[k + 3] << 24)
            total += lens[i]
        if total + head != n:
            continue
        for f in flist:
            start = off + head
            for i in range(f):
                start += lens[i]
            if nlen == 0:
                out.append(uid)
                break
            if lens[f] >= <unsigned int>nlen and mailsrv_find(
                base + start, lens[f], <const unsigned char *>nd, nlen
            ) != NULL:
                out.append(uid)
                break
    return out


def add_postings(dict post, uid, terms, factory):
    cdef list new = []
    cdef object bm
    for t in (terms if type(terms) is set else set(terms)):  # a set (IndexCore.add's) is not copied
        bm = post.get(t)
        if bm is None:
            post[t] = uid
            new.append(t)
        elif type(bm) is int:
            if bm != uid:
                post[t] = factory([bm, uid])
        else:
            bm.add(uid)
    return new


# --- header fields for search extraction (twin: search_py.header_texts) ---------------------------

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeASCII
from libc.string cimport memchr


cdef tuple _field(const unsigned char *p, bytes name, Py_ssize_t a, Py_ssize_t b):
    cdef Py_ssize_t vs = a, ve = b, i, n = 0, lo, hi
    cdef const unsigned char *colon = <const unsigned char *>memchr(p + a, 58, b - a)  # ':'
    cdef bint ascii = True
    cdef bytes value, plain
    cdef char *q
    if colon != NULL:
        vs = (colon - p) + 1
    while ve > vs and (p[ve - 1] == 13 or p[ve - 1] == 10):  # rstrip(b"\r\n")
        ve -= 1
    value = PyBytes_FromStringAndSize(<const char *>p + vs, ve - vs)
    # unfolded (CR and LF removed), stripped of spaces and tabs
    plain = PyBytes_FromStringAndSize(NULL, ve - vs)
    q = PyBytes_AS_STRING(plain)
    for i in range(vs, ve):
        if p[i] != 13 and p[i] != 10:
            if p[i] >= 128:
                ascii = False
            q[n] = <char>p[i]
            n += 1
    if not ascii:
        return (name, value, None)
    lo, hi = 0, n
    while lo < hi and (q[lo] == 32 or q[lo] == 9):
        lo += 1
    while hi > lo and (q[hi - 1] == 32 or q[hi - 1] == 9):
        hi -= 1
    for i in range(lo, hi - 1):
        if q[i] == 61 and q[i + 1] == 63:  # "=?": an encoded word, perhaps
            return (name, value, None)
    return (name, value, PyUnicode_DecodeASCII(q + lo, hi - lo, NULL))


cdef bytes _lower_name(const unsigned char *p, Py_ssize_t a, Py_ssize_t colon):
    cdef Py_ssize_t e = colon, i
    cdef bytes name
    cdef char *q
    cdef unsigned char c
    while e > a and (p[e - 1] == 32 or p[e - 1] == 9):
        e -= 1
    name = PyBytes_FromStringAndSize(NULL, e - a)
    q = PyBytes_AS_STRING(name)
    for i in range(a, e):
        c = p[i]
        q[i - a] = <char>(c + 32 if 65 <= c <= 90 else c)
    return name


def header_texts(bytes raw, Py_ssize_t start, Py_ssize_t end, Py_ssize_t limit):
    cdef list out = []
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(raw)
    cdef Py_ssize_t pos, nxt, cur_start = -1, k
    cdef const unsigned char *nl
    cdef bytes cur_name = b""
    if limit <= 0:
        return out
    pos = start if start > 0 else 0
    if end > size:
        end = size
    while pos < end:
        nl = <const unsigned char *>memchr(p + pos, 10, end - pos)
        nxt = end if nl == NULL else (nl - p) + 1
        if (nxt - pos == 1 and p[pos] == 10) or (nxt - pos == 2 and p[pos] == 13 and p[pos + 1] == 10):
            break  # the empty line
        if (p[pos] == 32 or p[pos] == 9) and cur_start >= 0:
            pos = nxt  # a continuation line
            continue
        if cur_start >= 0:
            out.append(_field(p, cur_name, cur_start, pos))
            if PyList_GET_SIZE(out) >= limit:
                return out
            cur_start = -1
        k = pos
        while k < nxt and p[k] != 58:
            k += 1
        if k < nxt and k > pos:
            cur_name = _lower_name(p, pos, k)
            cur_start = pos
        pos = nxt
    if cur_start >= 0:
        out.append(_field(p, cur_name, cur_start, pos))
    return out
