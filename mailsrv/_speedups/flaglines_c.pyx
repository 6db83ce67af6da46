# cython: language_level=3, boundscheck=False, wraparound=False
"""FETCH FLAGS lines and flag SEARCH, compiled. The twin ``mailsrv.imap.flaglines_py`` is the specification."""

from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memcpy

from cpython cimport array

import array

cdef bytes _HEAD = b"* "
cdef bytes _UID = b" FETCH (UID "
cdef bytes _FLAGS_UID = b" FLAGS "
cdef bytes _FLAGS = b" FETCH (FLAGS "
cdef bytes _END = b")\r\n"


def flags_text(flags, bint recent):
    """``(\\Flag ...)`` in a stable order (sorted), ``\\Recent`` last when the session holds it."""
    items = sorted(flags)
    if recent:
        items.append("\\Recent")
    return b"(" + " ".join(items).encode("utf-8") + b")"


cdef inline Py_ssize_t _put(char* p, bytes b):
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    memcpy(p, PyBytes_AS_STRING(b), n)
    return n


cdef inline Py_ssize_t _put_int(char* p, unsigned long long v):
    cdef char tmp[24]
    cdef int k = 0, j
    if v == 0:
        p[0] = 48
        return 1
    while v:
        tmp[k] = <char>(48 + v % 10)
        v //= 10
        k += 1
    for j in range(k):
        p[j] = tmp[k - 1 - j]
    return k


def fetch_flags_lines(seqs, messages, bint with_uid, dict cache, recent):
    """The FETCH FLAGS responses of ``messages`` (parallel to ``seqs``) as one buffer."""
    cdef Py_ssize_t n = len(messages), i, pos = 0, need = 0
    if len(seqs) != n:
        raise ValueError("seqs and messages differ in length")
    cdef bint any_recent = bool(recent)
    cdef list texts = [None] * n
    cdef object info, flags, text
    # uids read once, in the first pass (the second only copies bytes)
    cdef unsigned long long[::1] uids = array.array("Q", bytes(8 * n)) if n else None
    for i in range(n):
        info = messages[i]
        flags = info.flags
        uid = info.uid
        if with_uid:
            uids[i] = uid
        if any_recent and uid in recent:
            text = flags_text(flags, True)
        else:
            text = cache.get(flags)
            if text is None:
                text = flags_text(flags, False)
                cache[flags] = text
        texts[i] = text
        need += PyBytes_GET_SIZE(<bytes>text) + 80
    # a range of sequence numbers (the usual 1:*) is counted, not indexed
    cdef bint counted = type(seqs) is range
    cdef long long seq = seqs.start if counted else 0, step = seqs.step if counted else 0
    buf = bytearray(need)
    cdef char* p = PyByteArray_AS_STRING(buf)
    for i in range(n):
        pos += _put(p + pos, _HEAD)
        pos += _put_int(p + pos, <unsigned long long>(seq + i * step) if counted else <unsigned long long>seqs[i])
        if with_uid:
            pos += _put(p + pos, _UID)
            pos += _put_int(p + pos, uids[i])
            pos += _put(p + pos, _FLAGS_UID)
        else:
            pos += _put(p + pos, _FLAGS)
        pos += _put(p + pos, <bytes>texts[i])
        pos += _put(p + pos, _END)
    return PyBytes_FromStringAndSize(p, pos)


def flag_positions(messages, str flag, bint want):
    """Positions (sequence number - 1) of the messages whose flags hold ``flag`` (``want``) or
    lack it (not ``want``), ascending."""
    cdef Py_ssize_t i, n = len(messages)
    cdef list out = []
    cdef bint has
    for i in range(n):
        has = flag in messages[i].flags
        if has == want:
            out.append(i)
    return out


def search_numbers(messages, positions, bint uid):
    """``b" n n ..."``: for each position its message's uid (``uid``) or its sequence number."""
    cdef Py_ssize_t k, n = len(positions), pos = 0
    buf = bytearray(n * 21 + 1)
    cdef char* p = PyByteArray_AS_STRING(buf)
    cdef Py_ssize_t i
    cdef unsigned long long v
    for k in range(n):
        i = positions[k]
        if uid:
            v = messages[i].uid
        else:
            v = i + 1
        p[pos] = 32
        pos += 1
        pos += _put_int(p + pos, v)
    return PyBytes_FromStringAndSize(p, pos)
