# cython: language_level=3
# cython: wraparound=False, boundscheck=False
"""MIME scanner, compiled. The twin ``mime_py`` is the specification: same
tuples for every input (tests/mime checks both, hypothesis checks they agree)."""

from libc.string cimport memchr, memcmp

from mailsrv._speedups.mime_py import F_BAD_TYPE as _F_BAD_TYPE_PY
from mailsrv._speedups.mime_py import F_TRUNCATED as _F_TRUNCATED_PY
from mailsrv._speedups.mime_py import MAX_BOUNDARY as _MAX_BOUNDARY_PY
from mailsrv._speedups.mime_py import MAX_FIELDS as _MAX_FIELDS_PY
from mailsrv._speedups.mime_py import MAX_STORED_VALUES as _MAX_STORED_VALUES_PY
from mailsrv._speedups.mime_py import NAMES as _NAMES_PY
from mailsrv._speedups.mime_py import WANTED

cdef extern from *:
    """
    /* LF count, eight bytes at a time: each byte lane of acc counts the LFs
       seen in it (exact, no borrow between lanes), summed every 255 rounds
       (pairs of lanes first, so the sum fits 16 bits). */
    static Py_ssize_t mime_count_lf(const unsigned char *p, Py_ssize_t n) {
        const unsigned long long K = 0x7F7F7F7F7F7F7F7FULL, L = 0x0A0A0A0A0A0A0A0AULL;
        Py_ssize_t c = 0, i = 0;
        while (i + 8 <= n) {
            unsigned long long acc = 0;
            int rounds = 0;
            for (; i + 8 <= n && rounds < 255; i += 8, rounds++) {
                unsigned long long x, t;
                memcpy(&x, p + i, 8);
                x ^= L;
                t = ~(((x & K) + K) | x | K);
                acc += t >> 7;
            }
            acc = (acc & 0x00FF00FF00FF00FFULL) + ((acc >> 8) & 0x00FF00FF00FF00FFULL);
            c += (Py_ssize_t)((acc * 0x0001000100010001ULL) >> 48);
        }
        for (; i < n; i++) c += p[i] == 10;
        return c;
    }
    """
    Py_ssize_t mime_count_lf(const unsigned char *p, Py_ssize_t n) nogil

cdef extern from "<string.h>" nogil:
    void *memmem(const void *haystack, size_t haystacklen, const void *needle, size_t needlelen)

F_TRUNCATED = _F_TRUNCATED_PY
F_BAD_TYPE = _F_BAD_TYPE_PY
MAX_FIELDS = _MAX_FIELDS_PY

cdef int C_TRUNCATED = _F_TRUNCATED_PY
cdef int C_BAD_TYPE = _F_BAD_TYPE_PY
cdef Py_ssize_t C_MAX_FIELDS = _MAX_FIELDS_PY
cdef Py_ssize_t C_MAX_STORED_VALUES = _MAX_STORED_VALUES_PY
cdef Py_ssize_t C_MAX_BOUNDARY = _MAX_BOUNDARY_PY
cdef frozenset _WANTED = WANTED
# wanted names by length, lower case, as the shared objects of mime_py.NAMES
cdef list _BY_LEN = [[] for _ in range(26)]
for _n in _NAMES_PY.values():
    (<list>_BY_LEN[len(_n)]).append(_n)
cdef unsigned char _LOWER[256]
cdef bytes _TSPECIALS = b'()<>@,;:\\"/[]?= \t\r\n'
cdef unsigned char _TSPEC[256]
cdef unsigned char _NAMESTART[256]

cdef int _k
for _k in range(256):
    _LOWER[_k] = _k + 32 if 65 <= _k <= 90 else _k
    _TSPEC[_k] = 0
    _NAMESTART[_k] = 0
for _k in _TSPECIALS:
    _TSPEC[_k] = 1
for _k in b"cdsfrtbimCDSFRTBIM":
    _NAMESTART[_k] = 1


cdef inline Py_ssize_t _skip_cfws(const unsigned char *v, Py_ssize_t i, Py_ssize_t n) noexcept:
    cdef unsigned char c
    cdef int depth
    while i < n:
        c = v[i]
        if c == 32 or c == 9 or c == 13 or c == 10:
            i += 1
        elif c == 40:
            depth = 1
            i += 1
            while i < n and depth:
                c = v[i]
                if c == 92:
                    i += 1
                elif c == 40:
                    depth += 1
                elif c == 41:
                    depth -= 1
                i += 1
        else:
            break
    return i


cdef inline Py_ssize_t _token(const unsigned char *v, Py_ssize_t i, Py_ssize_t n) noexcept:
    while i < n and v[i] > 32 and v[i] < 127 and not _TSPEC[v[i]]:
        i += 1
    return i


cdef inline bint _is_ws(unsigned char c) noexcept:
    return c == 32 or c == 9 or c == 13 or c == 10


cdef tuple _parse_value(bytes vb, const unsigned char *v, Py_ssize_t i, Py_ssize_t n):
    """Same as mime_py._parse_value."""
    cdef bytearray out
    cdef unsigned char c
    cdef Py_ssize_t j
    if i >= n:
        return b"", i
    if v[i] == 34:
        # fast path: a quoted-string without quoted-pairs or line ends is a slice
        j = i + 1
        while j < n and v[j] != 34 and v[j] != 92 and v[j] != 13 and v[j] != 10:
            j += 1
        if j >= n:
            return vb[i + 1:j], n
        if v[j] == 34:
            return vb[i + 1:j], _skip_cfws(v, j + 1, n)
        i += 1
        out = bytearray()
        while i < n:
            c = v[i]
            if c == 34:
                i += 1
                break
            if c == 92 and i + 1 < n:
                i += 1
                c = v[i]
            if c != 13 and c != 10:
                out.append(c)
            i += 1
        return bytes(out), _skip_cfws(v, i, n)
    if v[i] == 61:
        j = i
        while j < n and v[j] != 59 and v[j] != 32 and v[j] != 9 and v[j] != 13 and v[j] != 10:
            j += 1
        return vb[i:j], j
    j = _token(v, i, n)
    return vb[i:j], _skip_cfws(v, j, n)


cpdef tuple parse_params(bytes vb, Py_ssize_t i):
    """Same as mime_py.parse_params (for i >= 0)."""
    cdef const unsigned char *v = vb
    cdef Py_ssize_t n = len(vb), j, count = 0
    cdef list params = []
    if i < 0:
        i += n
        if i < 0:
            i = 0
    while i < n and count < 64:
        if v[i] != 59:
            i += 1
            continue
        i = _skip_cfws(v, i + 1, n)
        if i >= n:
            break
        j = _token(v, i, n)
        if j == i:
            i += 1
            continue
        name = vb[i:j]
        i = _skip_cfws(v, j, n)
        if i >= n or v[i] != 61:
            i += 1
            continue
        i = _skip_cfws(v, i + 1, n)
        value, i = _parse_value(vb, v, i, n)
        params.append((name, value))
        count += 1
    return tuple(params)


cpdef tuple parse_content_type(bytes vb):
    """Same as mime_py.parse_content_type."""
    cdef const unsigned char *v = vb
    cdef Py_ssize_t n = len(vb), i, j
    cdef bytes ctype, sub
    i = _skip_cfws(v, 0, n)
    j = _token(v, i, n)
    ctype = vb[i:j]
    i = _skip_cfws(v, j, n)
    sub = b""
    if i < n and v[i] == 47:
        i = _skip_cfws(v, i + 1, n)
        j = _token(v, i, n)
        sub = vb[i:j]
        i = j
    elif ctype and _skip_cfws(v, i, n) >= n:
        return ctype, b"", ()
    if not ctype or not sub:
        ctype = sub = b""
    return ctype, sub, parse_params(vb, i)


cdef inline int _hexval(unsigned char c) noexcept:
    if 48 <= c <= 57:
        return c - 48
    if 97 <= c <= 102:
        return c - 87
    if 65 <= c <= 70:
        return c - 55
    return -1


cdef bytes _pct_decode(bytes vb):
    """Same as mime_py._pct_decode."""
    cdef const unsigned char *v = vb
    cdef Py_ssize_t n = len(vb), i = 0
    cdef bytearray out
    if memchr(v, 37, <size_t>n) == NULL:
        return vb
    out = bytearray()
    while i < n:
        if v[i] == 37 and i + 2 < n and _hexval(v[i + 1]) >= 0 and _hexval(v[i + 2]) >= 0:
            out.append(_hexval(v[i + 1]) * 16 + _hexval(v[i + 2]))
            i += 3
        else:
            out.append(v[i])
            i += 1
    return bytes(out)


cpdef bytes rfc2231_boundary(tuple params):
    """Same as mime_py.rfc2231_boundary (the rare path: no plain boundary parameter)."""
    cdef dict secs = {}
    cdef bytes name, value, rest, num, out = b""
    cdef bint encoded
    cdef Py_ssize_t idx, i, first, second
    for name, value in params:
        if len(name) < 9 or name[:9].lower() != b"boundary*":
            continue
        rest = name[9:]
        encoded = len(rest) == 0 or rest.endswith(b"*")
        num = rest[:len(rest) - 1] if rest.endswith(b"*") else rest
        if len(num) == 0:
            idx = 0
        elif num.isdigit() and len(num) < 4:
            idx = int(num)
        else:
            continue
        if idx not in secs:
            secs[idx] = (encoded, value)
    i = 0
    while i in secs:
        encoded, value = secs[i]
        if encoded:
            if i == 0:
                first = value.find(b"'")
                second = value.find(b"'", first + 1) if first >= 0 else -1
                if second >= 0:
                    value = value[second + 1:]
            value = _pct_decode(value)
        out += value
        i += 1
    return out


cdef inline bytes _unfold(bytes v):
    if b"\n" in v or b"\r" in v:
        return v.replace(b"\r\n", b"").replace(b"\n", b"")
    return v


cdef inline Py_ssize_t _find_lf(const unsigned char *p, Py_ssize_t i, Py_ssize_t end) noexcept:
    cdef const void *r
    if i >= end:
        return -1
    r = memchr(p + i, 10, <size_t>(end - i))
    if r == NULL:
        return -1
    return <const unsigned char *>r - p


cdef inline object _wanted(const unsigned char *p, Py_ssize_t start, Py_ssize_t length):
    """The shared name object when p[start:start+length] is a wanted name (any case), else None."""
    cdef bytes cand
    cdef const unsigned char *c
    cdef Py_ssize_t i
    for cand in <list>_BY_LEN[length]:
        c = cand
        i = 0
        while i < length and _LOWER[p[start + i]] == c[i]:
            i += 1
        if i == length:
            return cand
    return None


cpdef tuple scan_header(bytes raw, Py_ssize_t start, Py_ssize_t end, Py_ssize_t max_value):
    """Same as mime_py.scan_header."""
    cdef Py_ssize_t d, dk
    cdef bint dclose
    cdef Py_ssize_t n = len(raw)
    if start < 0:
        start = 0
    if end > n:
        end = n
    return _header(raw, start, end, max_value, [], &d, &dk, &dclose)


cdef tuple _header(bytes raw, Py_ssize_t start, Py_ssize_t end, Py_ssize_t max_value, list bounds,
                   Py_ssize_t *out_d, Py_ssize_t *out_k, bint *out_close):
    """Same as mime_py._header: (fields, body); the delimiter that cut it in out_*."""
    cdef const unsigned char *p = raw
    cdef list fields = []
    cdef Py_ssize_t pos = start, nl, le, nxt, colon, cur = -1, vstart = 0, ne, stop, stored = 0, k
    cdef unsigned char c
    cdef const void *r
    cdef object found
    cdef bint have_bounds = len(bounds) > 0
    out_d[0] = -1
    out_k[0] = -1
    out_close[0] = False
    while pos < end:
        if have_bounds and p[pos] == 45 and pos + 1 < end and p[pos + 1] == 45:
            k = _match_delim(p, pos, end, bounds, out_close)
            if k >= 0:
                if cur >= 0:
                    stop = pos if pos < vstart + max_value else vstart + max_value
                    fields[cur] = (fields[cur][0], raw[vstart:stop])
                out_d[0] = pos
                out_k[0] = k
                return tuple(fields), pos
        nl = _find_lf(p, pos, end)
        if nl < 0:
            le = end
            nxt = end
        else:
            le = nl
            nxt = nl + 1
        if le > pos and p[le - 1] == 13:
            le -= 1
        if le == pos:
            if cur >= 0:
                stop = pos if pos < vstart + max_value else vstart + max_value
                fields[cur] = (fields[cur][0], raw[vstart:stop])
            return tuple(fields), nxt
        c = p[pos]
        if c == 32 or c == 9:
            pos = nxt
            continue
        if cur >= 0:
            stop = pos if pos < vstart + max_value else vstart + max_value
            fields[cur] = (fields[cur][0], raw[vstart:stop])
            stored += stop - vstart
            cur = -1
        r = memchr(p + pos, 58, <size_t>(le - pos)) if le > pos else NULL
        if r != NULL:
            colon = <const unsigned char *>r - p
            if colon > pos and _NAMESTART[c]:
                ne = colon
                while ne > pos and (p[ne - 1] == 32 or p[ne - 1] == 9):
                    ne -= 1
                if 2 <= ne - pos <= 25:
                    found = _wanted(p, pos, ne - pos)
                    if (found is not None and len(fields) < C_MAX_FIELDS
                            and stored < C_MAX_STORED_VALUES * max_value):
                        cur = len(fields)
                        vstart = colon + 1
                        fields.append((found, b""))
        pos = nxt
    if cur >= 0:
        stop = end if end < vstart + max_value else vstart + max_value
        fields[cur] = (fields[cur][0], raw[vstart:stop])
    return tuple(fields), end


cdef inline Py_ssize_t _count_lines(const unsigned char *p, Py_ssize_t start, Py_ssize_t end) noexcept:
    if end <= start:
        return 0
    return mime_count_lf(p + start, end - start)


cdef Py_ssize_t _match_delim(const unsigned char *p, Py_ssize_t i, Py_ssize_t n, list bounds,
                             bint *out_close):
    """Same as mime_py._match_delim: index in bounds or -1; close flag in out_close."""
    cdef Py_ssize_t k = len(bounds) - 1, best = -1, blen = -1, bl, j
    cdef bytes b
    out_close[0] = False
    while k >= 0:
        b = <bytes>bounds[k]
        bl = len(b)
        if bl > blen and i + 2 + bl <= n and memcmp(p + i + 2, <const char *>b, bl) == 0:
            best = k
            blen = bl
        k -= 1
    if best >= 0:
        j = i + 2 + blen
        out_close[0] = j + 1 < n and p[j] == 45 and p[j + 1] == 45
    return best


cdef Py_ssize_t _find_delim(const unsigned char *p, Py_ssize_t pos, Py_ssize_t n, list bounds,
                            Py_ssize_t *out_k, bint *out_close):
    cdef Py_ssize_t i = pos, k, j
    cdef const void *r
    out_k[0] = -1
    out_close[0] = False
    if len(bounds) == 0:
        return -1
    while i < n:
        if i + 1 < n and p[i] == 45 and p[i + 1] == 45:
            k = _match_delim(p, i, n, bounds, out_close)
            if k >= 0:
                out_k[0] = k
                return i
        # next line start with "--": look for '-' (rare in base64 and most text)
        j = i + 1
        while True:
            if j >= n:
                return -1
            r = memchr(p + j, 45, <size_t>(n - j))
            if r == NULL:
                return -1
            j = <const unsigned char *>r - p
            if p[j - 1] == 10 and j + 1 < n and p[j + 1] == 45:
                break
            j += 1
        i = j
    return -1


cdef inline Py_ssize_t _end_before(const unsigned char *p, Py_ssize_t i, Py_ssize_t floor) noexcept:
    if i > floor and p[i - 1] == 10:
        i -= 1
        if i > floor and p[i - 1] == 13:
            i -= 1
    return i


cdef inline Py_ssize_t _line_after(const unsigned char *p, Py_ssize_t i, Py_ssize_t n) noexcept:
    cdef Py_ssize_t nl = _find_lf(p, i, n)
    return n if nl < 0 else nl + 1


cdef tuple _close(const unsigned char *p, list node, Py_ssize_t end):
    cdef Py_ssize_t bstart = node[1]
    if end < bstart:
        end = bstart
    return (node[0], bstart, end, _count_lines(p, bstart, end) if node[3] else 0, node[4], node[5], node[6],
            node[7], tuple(node[8]), node[9])


def scan(bytes raw, Py_ssize_t max_depth=100, Py_ssize_t max_parts=5000, Py_ssize_t max_value=65536):
    """The part tree of one message (see mime_py)."""
    cdef const unsigned char *p = raw
    cdef Py_ssize_t n = len(raw)
    cdef list stack = [], bounds = [], bowner = []
    cdef Py_ssize_t budget = max_parts, start = 0, d, dk, body, owner, nxt, end, b
    cdef bint dclose, digest = False, deep, lines, searched
    cdef int flags
    cdef tuple fields, params
    cdef bytes ctype, sub, cte, ctype_l, sub_l, boundary, name, value
    cdef list node, child
    while True:
        budget -= 1
        fields, body = _header(raw, start, n, max_value, bounds, &d, &dk, &dclose)
        searched = d >= 0
        ctype = sub = cte = b""
        params = ()
        flags = 0
        for name, value in fields:
            if name == b"content-type" and not ctype and not flags & C_BAD_TYPE:
                ctype, sub, params = parse_content_type(_unfold(value))
                if not ctype:
                    flags |= C_BAD_TYPE
            elif name == b"content-transfer-encoding" and not cte:
                cte = _unfold(value).strip(b" \t").lower()
        if ctype:
            ctype_l = ctype.lower()
            sub_l = sub.lower()
        elif digest and not flags & C_BAD_TYPE:
            ctype_l = b"message"
            sub_l = b"rfc822"
        else:
            ctype_l = sub_l = b""
        lines = ctype_l == b"text" or ctype_l == b"message" or (not ctype_l and not flags & C_BAD_TYPE)
        node = [start, body, n, lines, ctype, sub, params, fields, [], flags, -1, False]
        stack.append(node)
        deep = len(stack) >= max_depth or budget <= 0
        if ctype_l == b"multipart":
            boundary = b""
            for pname, pvalue in params:
                if pname.lower() == b"boundary":
                    boundary = pvalue[:C_MAX_BOUNDARY]
                    break
            if not boundary:
                boundary = rfc2231_boundary(params)[:C_MAX_BOUNDARY]
            if boundary:
                if deep:
                    node[9] = node[9] | C_TRUNCATED
                else:
                    bounds.append(boundary)
                    bowner.append(len(stack) - 1)
                    node[11] = sub_l == b"digest"
                    d = _find_delim(p, body, n, bounds, &dk, &dclose)
                    searched = True
        elif ctype_l == b"message" and (sub_l == b"rfc822" or sub_l == b"global"):
            if cte == b"" or cte == b"7bit" or cte == b"8bit" or cte == b"binary":
                if deep:
                    node[9] = node[9] | C_TRUNCATED
                else:
                    start = body
                    digest = False
                    continue
        if not searched:
            d = _find_delim(p, body, n, bounds, &dk, &dclose)
        while True:
            if d < 0:
                while len(stack) > 1:
                    done = _close(p, <list>stack.pop(), n)
                    (<list>(<list>stack[len(stack) - 1])[8]).append(done)
                return _close(p, <list>stack[0], n)
            owner = bowner[dk]
            while len(stack) - 1 > owner:
                child = <list>stack.pop()
                if <Py_ssize_t>child[10] == d:
                    done = _close(p, child, d)
                else:
                    end = _end_before(p, d, <Py_ssize_t>child[1])
                    if <Py_ssize_t>child[1] == d:
                        b = _end_before(p, d, <Py_ssize_t>child[0])
                        child[1] = b
                        end = b
                    done = _close(p, child, end)
                (<list>(<list>stack[len(stack) - 1])[8]).append(done)
            del bounds[dk + 1:]
            del bowner[dk + 1:]
            nxt = _line_after(p, d, n)
            if dclose or budget <= 0:
                if not dclose:
                    (<list>stack[owner])[9] = (<list>stack[owner])[9] | C_TRUNCATED
                (<list>stack[owner])[10] = nxt
                del bounds[dk:]
                del bowner[dk:]
                d = _find_delim(p, nxt, n, bounds, &dk, &dclose)
                continue
            start = nxt
            digest = (<list>stack[owner])[11]
            break
