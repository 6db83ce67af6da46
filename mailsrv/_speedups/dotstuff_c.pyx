# cython: language_level=3, boundscheck=False, wraparound=False
"""DATA transparency (RFC 5321 §4.5.2), compiled. The twin ``mailsrv.smtp.dotstuff_py`` is the
specification: the same states, the same payloads, the same ``bare_newline`` verdicts.

The end of data is ``CRLF . CRLF`` only (SMTP smuggling, CVE-2023-51764 family); a payload with a
CR not followed by LF or an LF not preceded by CR sets ``bare_newline`` (RFC 5321 §2.3.8).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memchr, memcpy


cdef inline Py_ssize_t _line_dot(const char* p, Py_ssize_t i, Py_ssize_t n) noexcept:
    """First k >= i with p[k:k+3] == CR LF ".", or -1 (bytes.find(b"\\r\\n.", i))."""
    cdef const char* q
    while i + 2 < n:
        q = <const char*>memchr(p + i, 13, n - 2 - i)
        if q == NULL:
            return -1
        i = q - p
        if p[i + 1] == 10 and p[i + 2] == 46:
            return i
        i += 1
    return -1


cdef inline bint _bare(const char* p, Py_ssize_t n) noexcept:
    """A CR not followed by LF or an LF not preceded by CR in p[:n]."""
    cdef Py_ssize_t k = 0, e
    cdef const char* lf
    cdef const char* cr
    while k < n:
        lf = <const char*>memchr(p + k, 10, n - k)
        if lf == NULL:
            return memchr(p + k, 13, n - k) != NULL  # a CR that no LF follows
        e = lf - p
        if e == k or p[e - 1] != 13:
            return True  # the LF at e stands alone
        cr = <const char*>memchr(p + k, 13, e - 1 - k)
        if cr != NULL:
            return True  # a CR before the CR LF ending this line
        k = e + 1
    return False


cdef class DotDecoder:
    """Feed raw DATA bytes; collect the unstuffed message until ``CRLF.CRLF`` (see the twin)."""

    cdef public bint done
    cdef public bint bare_newline
    cdef public object size
    cdef bytes _pend
    cdef bint _bol

    def __init__(self):
        self.done = False
        self.bare_newline = False
        self.size = 0
        self._pend = b""
        self._bol = True  # DATA starts at the beginning of a line

    def feed(self, data):
        if self.done:
            return b"", 0
        if type(data) is not bytes:
            data = bytes(data)
        cdef bytes pend = self._pend
        cdef bytes buf = pend + data if pend else data
        cdef Py_ssize_t npend = PyBytes_GET_SIZE(pend)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(buf)
        cdef const char* p = PyBytes_AS_STRING(buf)
        cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
        cdef char* o = PyBytes_AS_STRING(out)
        cdef Py_ssize_t w = 0, i = 0, j, end, rem
        cdef Py_ssize_t consumed_to = -1
        cdef bint bol = self._bol
        while True:
            if bol:
                rem = n - i  # i is at a line start
                if rem == 0:
                    break
                if rem < 3 and p[i] == 46 and (rem == 1 or p[i + 1] == 13):
                    break  # could be the end marker: wait for more
                if p[i] == 46:  # "."
                    if rem >= 3 and p[i + 1] == 13 and p[i + 2] == 10:
                        consumed_to = i + 3
                        self.done = True
                        break
                    i += 1  # RFC 5321 §4.5.2: drop the stuffed dot
                bol = False
            j = _line_dot(p, i, n)
            if j < 0:
                # no line-start dot ahead; keep a trailing CR / CRLF that may begin one
                if n >= 2 and p[n - 2] == 13 and p[n - 1] == 10:
                    end = n
                    bol = True
                elif n >= 1 and p[n - 1] == 13:
                    end = n - 1
                else:
                    end = n
                if end > i:
                    memcpy(o + w, p + i, end - i)
                    w += end - i
                i = end
                break
            memcpy(o + w, p + i, j + 2 - i)
            w += j + 2 - i
            i = j + 2
            bol = True
        self._bol = bol
        self._pend = b"" if self.done else buf[i:]
        cdef bytes payload = out if w == n else out[:w]
        if w:
            if _bare(o, w):
                self.bare_newline = True
            self.size += w
        return payload, ((consumed_to - npend) if self.done else len(data))
