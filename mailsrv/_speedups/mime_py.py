"""MIME scanner, pure-Python twin (the specification of ``mime_c.pyx``).

One pass over the raw message finds the part tree without copying bodies.
``scan(raw, max_depth, max_parts, max_value)`` returns the root *part tuple*::

    (header_start, body_start, body_end, body_lines,
     type, subtype, params, fields, children, flags)

- offsets index ``raw``; the body is ``raw[body_start:body_end]`` (for a part
  of a multipart, the CRLF before the next delimiter belongs to the delimiter,
  RFC 2046 §5.1.1); ``body_lines`` counts the LFs of the body (IMAP
  body-fld-lines as Dovecot counts them); 0 for parts IMAP shows without a
  line count (multiparts, non-text leaves), so large attachments are not
  read a second time for it.
- ``type``/``subtype`` are bytes as written in Content-Type (case kept); both
  empty when Content-Type is absent or invalid (the caller applies the
  RFC 2045 §5.2 default); a bare type (``text``) has an empty subtype.
- ``params`` is a tuple of ``(name, value)`` bytes pairs, quotes removed,
  RFC 2231 sections still separate (the caller merges them).
- ``fields`` is a tuple of ``(name, raw_value)`` bytes pairs for the header
  fields in :data:`WANTED` (lower-case name, first occurrence only, the value
  as written after the colon with its folding, at most ``max_value`` bytes).
- ``children`` holds the parts of a multipart, or the one embedded message of
  a message/rfc822 part, else is empty.
- ``flags``: :data:`F_TRUNCATED` on a multipart or message/rfc822 that a limit
  kept from being parsed (the message itself counts as depth 1, so with
  ``max_depth=100`` the 100th nested container is not parsed, as in Dovecot);
  :data:`F_BAD_TYPE` when Content-Type is present but invalid.

Never raises for any ``bytes`` input; time is O(len(raw) * max_depth) in the
worst case and memory O(max_parts * max_value).
"""

from __future__ import annotations

#: Header fields the structure needs (RFC 2045 content fields and MIME-Version,
#: RFC 3501 ENVELOPE fields, RFC 5322 threading fields).
WANTED = frozenset(
    (
        b"content-type",
        b"content-transfer-encoding",
        b"content-id",
        b"content-description",
        b"content-disposition",
        b"content-language",
        b"content-location",
        b"content-md5",
        b"mime-version",
        b"date",
        b"subject",
        b"from",
        b"sender",
        b"reply-to",
        b"to",
        b"cc",
        b"bcc",
        b"in-reply-to",
        b"message-id",
        b"references",
    )
)

#: The one bytes object per wanted name (both scanners return these, so a cached
#: tree shares them and marshal writes each name once).
NAMES = {n: n for n in WANTED}

#: Occurrences of wanted fields kept per header block (a bound against header floods).
MAX_FIELDS = 128
#: A header block keeps at most about this many ``max_value``s of field values
#: (a bound on the cache entry of a header flood).
MAX_STORED_VALUES = 4

#: RFC 2046 §5.1.1 caps a boundary at 70 characters; longer ones are matched on
#: their first 80 (70 plus slack, what Dovecot does), so over-long ones still split.
MAX_BOUNDARY = 80

F_TRUNCATED = 1
#: Content-Type present but not ``type/subtype`` (IMAP shows "" "", RFC 2045 §5.2 text/plain).
F_BAD_TYPE = 2

_TSPECIALS = b'()<>@,;:\\"/[]?= \t\r\n'


def _skip_cfws(v: bytes, i: int, n: int) -> int:
    """Skip white space and RFC 5322 comments (nested, with quoted-pairs)."""
    while i < n:
        c = v[i]
        if c == 32 or c == 9 or c == 13 or c == 10:
            i += 1
        elif c == 40:  # "("
            depth = 1
            i += 1
            while i < n and depth:
                c = v[i]
                if c == 92:  # "\" quoted-pair
                    i += 1
                elif c == 40:
                    depth += 1
                elif c == 41:
                    depth -= 1
                i += 1
        else:
            break
    return i


def _token(v: bytes, i: int, n: int) -> int:
    """End of an RFC 2045 token starting at i."""
    while i < n and v[i] > 32 and v[i] < 127 and v[i] not in _TSPECIALS:
        i += 1
    return i


def _parse_value(v: bytes, i: int, n: int) -> tuple[bytes, int]:
    """A parameter value at i -> (value, next): quoted-string, token, or ``=...``.

    RFC 2045 §5.1 value := token / quoted-string; as Dovecot, a value that
    starts with "=" (an unquoted RFC 2047 word) runs to ";" or white space.
    """
    if i >= n:
        return b"", i
    if v[i] == 34:  # quoted-string
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
    if v[i] == 61:  # "="
        j = i
        while j < n and v[j] != 59 and v[j] != 32 and v[j] != 9 and v[j] != 13 and v[j] != 10:
            j += 1
        return v[i:j], j
    j = _token(v, i, n)
    return v[i:j], _skip_cfws(v, j, n)


def parse_content_type(v: bytes) -> tuple[bytes, bytes, tuple]:
    """RFC 2045 §5.1: ``type "/" subtype *(";" parameter)`` -> (type, subtype, params).

    Type and subtype are empty when the value is not ``type/subtype``.
    """
    n = len(v)
    i = _skip_cfws(v, 0, n)
    j = _token(v, i, n)
    ctype = v[i:j]
    i = _skip_cfws(v, j, n)
    sub = b""
    if i < n and v[i] == 47:  # "/"
        i = _skip_cfws(v, i + 1, n)
        j = _token(v, i, n)
        sub = v[i:j]
        i = j
    elif ctype and _skip_cfws(v, i, n) >= n:
        # a bare "text": the type with an empty subtype (as Dovecot shows it)
        return ctype, b"", ()
    if not ctype or not sub:
        ctype = sub = b""
    return ctype, sub, parse_params(v, i)


def parse_params(v: bytes, i: int) -> tuple:
    """``*(";" attribute "=" value)`` from offset i (RFC 2045 §5.1), as Dovecot reads it.

    Where a parameter is broken, one character is skipped and parsing goes
    on at the next ";" (so ``a/b; ; x=1`` still gives x, and junk after a
    value is ignored). At most 64 parameters.
    """
    n = len(v)
    params: list[tuple[bytes, bytes]] = []
    while i < n and len(params) < 64:
        if v[i] != 59:  # ";"
            i += 1
            continue
        i = _skip_cfws(v, i + 1, n)
        if i >= n:
            break
        j = _token(v, i, n)
        if j == i:
            i += 1
            continue
        name = v[i:j]
        i = _skip_cfws(v, j, n)
        if i >= n or v[i] != 61:  # "="
            i += 1
            continue
        i = _skip_cfws(v, i + 1, n)
        value, i = _parse_value(v, i, n)
        params.append((name, value))
    return tuple(params)


_HEX = b"0123456789abcdefABCDEF"


def _pct_decode(v: bytes) -> bytes:
    """RFC 2231 §4 ``%XX`` octets (a ``%`` not followed by two hex digits stays)."""
    if b"%" not in v:
        return v
    out = bytearray()
    i = 0
    n = len(v)
    while i < n:
        c = v[i]
        if c == 37 and i + 2 < n and v[i + 1] in _HEX and v[i + 2] in _HEX:
            out.append(int(v[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(c)
            i += 1
    return bytes(out)


def rfc2231_boundary(params: tuple) -> bytes:
    """The boundary from RFC 2231 parameters ``boundary*``, ``boundary*0``, ``boundary*1*``...

    RFC 2231 §3-4: sections joined in order up to the first missing one (the
    first occurrence of a section number wins); an encoded section (``*`` at
    the end) is percent-decoded, and section 0 loses its ``charset'language'``
    prefix. Empty when there is none.
    """
    secs: dict[int, tuple[bool, bytes]] = {}
    for name, value in params:
        if len(name) < 9 or name[:9].lower() != b"boundary*":
            continue
        rest = name[9:]
        encoded = rest == b"" or rest.endswith(b"*")
        num = rest[:-1] if rest.endswith(b"*") else rest
        if num == b"":
            idx = 0
        elif num.isdigit() and len(num) < 4:
            idx = int(num)
        else:
            continue
        if idx not in secs:
            secs[idx] = (encoded, value)
    out = b""
    i = 0
    while i in secs:
        encoded, value = secs[i]
        if encoded:
            if i == 0:
                first = value.find(b"'")
                second = value.find(b"'", first + 1) if first >= 0 else -1
                if second >= 0:
                    value = value[second + 1 :]
            value = _pct_decode(value)
        out += value
        i += 1
    return out


def _unfold(v: bytes) -> bytes:
    return v.replace(b"\r\n", b"").replace(b"\n", b"")


def scan_header(raw: bytes, start: int, end: int, max_value: int) -> tuple[tuple, int]:
    """Header block at start -> (wanted fields, body start).

    RFC 5322 §2.2: a field is ``name ":" value`` with continuation lines
    starting with WSP; the block ends at the first empty line (LF or CRLF).
    Lines that are neither fields nor continuations are skipped.
    """
    fields, body, _, _, _ = _header(raw, start, end, max_value, [])
    return fields, body


def _header(raw: bytes, start: int, end: int, max_value: int, bounds: list) -> tuple:
    """:func:`scan_header` that also stops at a boundary line of ``bounds``.

    -> (fields, body start, delimiter offset, stack index, close); the
    delimiter offset is -1 when the header ended otherwise. A header cut by a
    delimiter has an empty body at the delimiter.
    """
    fields: list[tuple[bytes, bytes]] = []
    pos = start
    cur = -1  # index in fields of the field being continued, -1 if none
    vstart = 0
    stored = 0  # bytes kept so far: at most about MAX_STORED_VALUES * max_value
    while pos < end:
        if bounds and raw[pos] == 45 and pos + 1 < end and raw[pos + 1] == 45:
            k, close = _match_delim(raw, pos, end, bounds)
            if k >= 0:
                if cur >= 0:
                    fields[cur] = (fields[cur][0], raw[vstart : min(pos, vstart + max_value)])
                return tuple(fields), pos, pos, k, close
        nl = raw.find(b"\n", pos, end)
        if nl < 0:
            le = end
            nxt = end
        else:
            le = nl
            nxt = nl + 1
        if le > pos and raw[le - 1] == 13:
            le -= 1
        if le == pos:
            if cur >= 0:
                fields[cur] = (fields[cur][0], raw[vstart : min(pos, vstart + max_value)])
            return tuple(fields), nxt, -1, -1, False
        c = raw[pos]
        if c == 32 or c == 9:
            pos = nxt
            continue
        if cur >= 0:
            fields[cur] = (fields[cur][0], raw[vstart : min(pos, vstart + max_value)])
            stored += len(fields[cur][1])
            cur = -1
        colon = raw.find(b":", pos, le)
        if colon > pos:
            name = NAMES.get(raw[pos:colon].rstrip(b" \t").lower())
            if (
                name is not None
                and len(fields) < MAX_FIELDS
                and stored < MAX_STORED_VALUES * max_value
            ):
                cur = len(fields)
                vstart = colon + 1
                fields.append((name, b""))
        pos = nxt
    if cur >= 0:
        fields[cur] = (fields[cur][0], raw[vstart : min(end, vstart + max_value)])
    return tuple(fields), end, -1, -1, False


def _count_lines(raw: bytes, start: int, end: int) -> int:
    """IMAP body-fld-lines: the line ends in the body (Dovecot counts LFs)."""
    if end <= start:
        return 0
    return raw.count(b"\n", start, end)


def _match_delim(raw: bytes, i: int, n: int, bounds: list) -> tuple[int, bool]:
    """At a line starting ``--``: (index in bounds of the boundary it is, close), or (-1, False)."""
    best = -1
    blen = -1
    k = len(bounds) - 1
    while k >= 0:
        b = bounds[k]
        if len(b) > blen and raw.startswith(b, i + 2):
            best = k
            blen = len(b)
        k -= 1
    if best < 0:
        return -1, False
    j = i + 2 + blen
    return best, j + 1 < n and raw[j] == 45 and raw[j + 1] == 45


def _find_delim(raw: bytes, pos: int, n: int, bounds: list) -> tuple:
    """Next boundary line at or after line start ``pos`` -> (offset, stack index, close).

    RFC 2046 §5.1.1 with Dovecot's tolerance: a line starting with ``--`` and
    a boundary of any open multipart; the innermost one wins a tie, the
    longest one wins a prefix overlap; the rest of the line is ignored.
    Returns (-1, -1, False) when none is left.
    """
    i = pos
    if not bounds:
        return -1, -1, False
    while i < n:
        if i + 1 < n and raw[i] == 45 and raw[i + 1] == 45:
            k, close = _match_delim(raw, i, n, bounds)
            if k >= 0:
                return i, k, close
        j = raw.find(b"\n--", i, n)
        if j < 0:
            return -1, -1, False
        i = j + 1
    return -1, -1, False


def _end_before(raw: bytes, i: int, floor: int) -> int:
    """A part ends before the line end that precedes its delimiter at i."""
    if i > floor and raw[i - 1] == 10:
        i -= 1
        if i > floor and raw[i - 1] == 13:
            i -= 1
    return i


def _line_after(raw: bytes, i: int, n: int) -> int:
    nl = raw.find(b"\n", i, n)
    return n if nl < 0 else nl + 1


def _close(raw: bytes, node: list, end: int) -> tuple:
    if end < node[1]:
        end = node[1]
    return (
        node[0],
        node[1],
        end,
        _count_lines(raw, node[1], end) if node[3] else 0,
        node[4],
        node[5],
        node[6],
        node[7],
        tuple(node[8]),
        node[9],
    )


def scan(raw: bytes, max_depth: int = 100, max_parts: int = 5000, max_value: int = 65536) -> tuple:
    """The part tree of one message (see the module docstring)."""
    n = len(raw)
    # open nodes, root first: [hstart, bstart, bend, lines, type, sub, params, fields,
    #                           kids, flags, epilogue start or -1, digest]
    stack: list[list] = []
    bounds: list = []  # boundaries of the open multiparts, outermost first
    bowner: list = []  # index in stack of the multipart owning bounds[k]
    budget = max_parts
    start = 0
    digest = False
    while True:
        # --- open a node at ``start`` (a message or a part) -------------------
        budget -= 1
        # the header ends at its empty line or at a delimiter of an open multipart
        fields, body, d, dk, dclose = _header(raw, start, n, max_value, bounds)
        searched = d >= 0
        ctype = sub = b""
        params: tuple = ()
        cte = b""
        flags = 0
        for name, value in fields:
            if name == b"content-type" and not ctype and not flags & F_BAD_TYPE:
                ctype, sub, params = parse_content_type(_unfold(value))
                if not ctype:
                    flags |= F_BAD_TYPE
            elif name == b"content-transfer-encoding" and not cte:
                cte = _unfold(value).strip(b" \t").lower()
        if ctype:
            ctype_l = ctype.lower()
            sub_l = sub.lower()
        elif digest and not flags & F_BAD_TYPE:
            ctype_l, sub_l = b"message", b"rfc822"
        else:
            ctype_l = sub_l = b""
        # IMAP shows a line count only for text and message parts (RFC 3501 body-type-text/msg)
        lines = (
            ctype_l == b"text" or ctype_l == b"message" or (not ctype_l and not flags & F_BAD_TYPE)
        )
        node: list = [start, body, n, lines, ctype, sub, params, fields, [], flags, -1, False]
        stack.append(node)
        deep = len(stack) >= max_depth or budget <= 0
        if ctype_l == b"multipart":
            boundary = b""
            for pname, pvalue in params:
                if pname.lower() == b"boundary":
                    boundary = pvalue[:MAX_BOUNDARY]
                    break
            if not boundary:
                # deviation (Dovecot 2.3 ignores it): RFC 2231 boundary*= (cpython msg_33)
                boundary = rfc2231_boundary(params)[:MAX_BOUNDARY]
            if boundary:
                if deep:
                    node[9] |= F_TRUNCATED
                else:
                    bounds.append(boundary)
                    bowner.append(len(stack) - 1)
                    node[11] = sub_l == b"digest"
                    d, dk, dclose = _find_delim(raw, body, n, bounds)
                    searched = True
        elif ctype_l == b"message" and (sub_l == b"rfc822" or sub_l == b"global"):
            # RFC 2046 §5.2.1: only 7bit, 8bit or binary encodings may be parsed
            if cte == b"" or cte == b"7bit" or cte == b"8bit" or cte == b"binary":
                if deep:
                    node[9] |= F_TRUNCATED
                else:
                    start = body
                    digest = False
                    continue
        # --- the body runs to the next delimiter --------------------------------
        if not searched:
            d, dk, dclose = _find_delim(raw, body, n, bounds)
        while True:
            if d < 0:
                # end of input: every open node ends here
                while len(stack) > 1:
                    done = _close(raw, stack.pop(), n)
                    stack[-1][8].append(done)
                return _close(raw, stack[0], n)
            owner = bowner[dk]
            # nodes below the multipart that owns the delimiter end before it
            while len(stack) - 1 > owner:
                child = stack.pop()
                # a multipart whose close delimiter line ends right here keeps that
                # line end (no epilogue; Dovecot counts it to the inner part)
                if child[10] == d:
                    end = d
                else:
                    end = _end_before(raw, d, child[1])
                    if child[1] == d:
                        # an empty body (or a header cut by the delimiter): the line end
                        # before the delimiter is the delimiter's (RFC 2046 §5.1.1), not
                        # the header's (as Dovecot)
                        child[1] = end = _end_before(raw, d, child[0])
                done = _close(raw, child, end)
                stack[-1][8].append(done)
            del bounds[dk + 1 :]
            del bowner[dk + 1 :]
            nxt = _line_after(raw, d, n)
            if dclose or budget <= 0:
                if not dclose:
                    stack[owner][9] |= F_TRUNCATED
                stack[owner][10] = nxt  # where its epilogue starts
                # RFC 2046 §5.1.1: after the close delimiter comes the epilogue
                del bounds[dk:]
                del bowner[dk:]
                d, dk, dclose = _find_delim(raw, nxt, n, bounds)
                continue
            start = nxt
            digest = stack[owner][11]
            break
