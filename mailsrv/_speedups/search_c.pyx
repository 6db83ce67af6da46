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
    for t in set(terms):
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
