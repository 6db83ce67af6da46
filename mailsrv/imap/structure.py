"""A MIME part tree with byte offsets, ENVELOPE and BODYSTRUCTURE (RFC 9051 §7.5.2), BODY[section].

The server answers ENVELOPE, BODYSTRUCTURE and BODY[section] from the structure the
store cached at delivery (``mailsrv.mime.MessageStructure``). This walker is the
fallback for what that cache does not cover: stores without structures (the
in-memory store of the tests), HEADER.FIELDS and BINARY of sub-parts, and the
text of messages SEARCH scans. It works on the raw bytes, so offsets and sizes are
exact octet counts, and it is bounded (nesting depth and part count).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mailsrv.imap.grammar import Section
from mailsrv.imap.response import nstring, paren, string

#: Deepest multipart / message nesting followed (deeper parts are treated as opaque).
MAX_DEPTH = 40
#: Most parts in one message that are structured.
MAX_PARTS = 2000

_HEADER_END = re.compile(rb"\r?\n\r?\n")
#: no leading ``\s*``: tried at every position of a long run of white space (folded lines) before a ";"
#: it made finditer quadratic (100 KB of it in a Content-Type took 12 s a call)
_PARAM = re.compile(rb';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s;]*)', re.S)


@dataclass
class Part:
    start: int  # first header byte
    body: int  # first body byte
    end: int  # one past the last body byte
    headers: list[tuple[bytes, bytes]]
    maintype: bytes = b"TEXT"
    subtype: bytes = b"PLAIN"
    params: list[tuple[bytes, bytes]] = field(default_factory=list)
    children: list[Part] = field(default_factory=list)
    #: message/rfc822 (and message/global): the encapsulated message
    message: Part | None = None

    def header(self, name: bytes) -> bytes | None:
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None


def _parse_headers(raw: bytes, start: int, end: int) -> tuple[list[tuple[bytes, bytes]], int]:
    """Headers of ``raw[start:end]``; returns them and the body offset."""
    m = _HEADER_END.search(raw, start, end)
    if raw.startswith(b"\r\n", start) or raw.startswith(b"\n", start):
        hdr_end = start
        body = start + (2 if raw.startswith(b"\r\n", start) else 1)
    elif m is None:
        hdr_end = body = end
    else:
        hdr_end, body = m.start(), m.end()
    headers: list[tuple[bytes, bytes]] = []
    for line in re.split(rb"\r?\n(?![ \t])", raw[start:hdr_end]):
        name, sep, value = line.partition(b":")
        if sep and name and b" " not in name.strip():
            headers.append((name.strip(), re.sub(rb"\r?\n", b"", value).strip()))
    return headers, body


def _content_type(value: bytes | None, default: tuple[bytes, bytes]) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]]:
    if not value:
        return default[0], default[1], [(b"CHARSET", b"us-ascii")] if default[0] == b"TEXT" else []
    head, _, rest = value.partition(b";")
    main, _, sub = head.strip().partition(b"/")
    if not main or not sub:
        return b"TEXT", b"PLAIN", [(b"CHARSET", b"us-ascii")]
    params = []
    for m in _PARAM.finditer(b";" + rest):
        v = m.group(2)
        if v.startswith(b'"'):
            v = re.sub(rb"\\(.)", rb"\1", v[1:-1])
        params.append((m.group(1).upper(), v))
    return main.strip().upper(), sub.strip().upper(), params


def parse(raw: bytes, start: int = 0, end: int | None = None, *, depth: int = 0,
          default: tuple[bytes, bytes] = (b"TEXT", b"PLAIN"), budget: list[int] | None = None) -> Part:
    """The part tree of ``raw[start:end]``."""
    if end is None:
        end = len(raw)
    if budget is None:
        budget = [MAX_PARTS]
    budget[0] -= 1
    headers, body = _parse_headers(raw, start, end)
    part = Part(start, body, end, headers)
    ctype = part.header(b"Content-Type")
    part.maintype, part.subtype, part.params = _content_type(ctype, default)
    if depth >= MAX_DEPTH or budget[0] <= 0:
        return part
    if part.maintype == b"MULTIPART":
        boundary = dict(part.params).get(b"BOUNDARY")
        if not boundary:
            part.maintype, part.subtype = b"TEXT", b"PLAIN"
            return part
        child_default = (b"MESSAGE", b"RFC822") if part.subtype == b"DIGEST" else (b"TEXT", b"PLAIN")
        delim = re.compile(rb"(?:^|\r?\n)--" + re.escape(boundary) + rb"(--)?[ \t]*(?:\r?\n|$)", re.M)
        pos = body
        seen_first = False
        for m in delim.finditer(raw, body, end):
            if seen_first and budget[0] > 0:
                part.children.append(parse(raw, pos, m.start(), depth=depth + 1, default=child_default, budget=budget))
            seen_first = True
            pos = m.end()
            if m.group(1):
                break
        if not part.children:
            part.children.append(Part(end, end, end, []))
    elif part.maintype == b"MESSAGE" and part.subtype in (b"RFC822", b"GLOBAL"):
        part.message = parse(raw, body, end, depth=depth + 1, budget=budget)
    return part


# --- ENVELOPE -----------------------------------------------------------------------

#: an unterminated quoted string, comment or <...> runs to the end: else each of its starts was scanned
#: to the end again ('(\\' 20 000 times in a To: took 18 s to split)
_ADDR_SPLIT = re.compile(
    rb'((?:"(?:[^"\\]|\\.)*(?:"|\\?\Z)|\((?:[^()\\]|\\.)*(?:\)|\\?\Z)|<[^>]*(?:>|\Z)|[^,"(<:;])*)([,:;]?)', re.S)


def _addresses(value: bytes | None) -> bytes:
    """RFC 9051 §7.5.2 address list: ``((name adl mailbox host) ...)`` with group syntax."""
    if value is None:
        return b"NIL"
    out: list[bytes] = []
    for item, sep in _ADDR_SPLIT.findall(value):
        item = item.strip()
        if sep == b":":
            out.append(b"(NIL NIL " + string(item.strip(b'"')) + b" NIL)")
            continue
        if item:
            out.append(_address(item))
        if sep == b";":
            out.append(b"(NIL NIL NIL NIL)")
    return paren(out) if out else b"NIL"


def _address(item: bytes) -> bytes:
    name: bytes | None = None
    # a "<" or "(" after the last ">" or ")" never matches: it is not searched (each would be a scan to the end)
    close = item.rfind(b">") + 1
    m = re.search(rb"<([^>]*)>", item[:close]) if close else None
    if m:
        spec = m.group(1)
        name = item[: m.start()].strip()
        if name.startswith(b'"') and name.endswith(b'"') and len(name) >= 2:
            name = re.sub(rb"\\(.)", rb"\1", name[1:-1])
        name = name or None
    else:
        close = item.rfind(b")") + 1
        spec = (re.sub(rb"\([^)]*\)", b"", item[:close]) + item[close:]).strip()
        c = re.search(rb"\(([^)]*)\)", item[:close])
        if c:
            name = c.group(1) or None
    adl = None
    if spec.startswith(b"@") and b":" in spec:
        adl, _, spec = spec.partition(b":")
    local, at, host = spec.rpartition(b"@")
    if not at:
        local, host = spec, b""
    local = local.strip(b'"') if local.startswith(b'"') else local
    return paren([nstring(name), nstring(adl), nstring(local or None), nstring(host or None)])


def envelope(part: Part) -> bytes:
    h = part.header
    frm = h(b"From")
    sender = h(b"Sender") or frm
    reply_to = h(b"Reply-To") or frm
    return paren(
        [
            nstring(h(b"Date")),
            nstring(h(b"Subject")),
            _addresses(frm),
            _addresses(sender),
            _addresses(reply_to),
            _addresses(h(b"To")),
            _addresses(h(b"Cc")),
            _addresses(h(b"Bcc")),
            nstring(h(b"In-Reply-To")),
            nstring(h(b"Message-ID")),
        ]
    )


# --- BODYSTRUCTURE --------------------------------------------------------------------


def _params(params: list[tuple[bytes, bytes]]) -> bytes:
    if not params:
        return b"NIL"
    return paren([string(k) + b" " + string(v) for k, v in params])


def _disposition(part: Part) -> bytes:
    value = part.header(b"Content-Disposition")
    if not value:
        return b"NIL"
    kind, _, rest = value.partition(b";")
    params = []
    for m in _PARAM.finditer(b";" + rest):
        v = m.group(2)
        if v.startswith(b'"'):
            v = v[1:-1]
        params.append((m.group(1).upper(), v))
    return paren([string(kind.strip().upper()), _params(params)])


def _language(part: Part) -> bytes:
    value = part.header(b"Content-Language")
    if not value:
        return b"NIL"
    langs = [x.strip() for x in value.split(b",") if x.strip()]
    return string(langs[0]) if len(langs) == 1 else paren([string(x) for x in langs])


def bodystructure(raw: bytes, part: Part, extended: bool = True) -> bytes:
    """``body`` (extended = BODYSTRUCTURE, else BODY) of ``part``."""
    if part.children:
        items = b"".join(bodystructure(raw, c, extended) for c in part.children)
        out = [items + b" " + string(part.subtype)]
        if extended:
            out += [_params(part.params), _disposition(part), _language(part), nstring(part.header(b"Content-Location"))]
        return b"(" + b" ".join(out) + b")"
    size = part.end - part.body
    enc = part.header(b"Content-Transfer-Encoding")
    fields_ = [
        string(part.maintype),
        string(part.subtype),
        _params(part.params),
        nstring(part.header(b"Content-ID")),
        nstring(part.header(b"Content-Description")),
        string(enc.upper() if enc else b"7BIT"),
        str(size).encode(),
    ]
    lines = raw.count(b"\n", part.body, part.end)
    if part.message is not None:
        fields_ += [envelope(part.message), bodystructure(raw, part.message, extended), str(lines).encode()]
    elif part.maintype == b"TEXT":
        fields_.append(str(lines).encode())
    if extended:
        fields_ += [nstring(part.header(b"Content-MD5")), _disposition(part), _language(part),
                    nstring(part.header(b"Content-Location"))]
    return paren(fields_)


# --- sections ----------------------------------------------------------------------------


class NoSuchPart(Exception):
    pass


def find_part(root: Part, parts: tuple[int, ...]) -> Part:
    """RFC 9051 §6.4.5: part numbers; a non-multipart message has part 1 = its body."""
    cur = root
    for n in parts:
        if cur.message is not None and not cur.children:
            cur = cur.message
        if cur.children:
            if n > len(cur.children):
                raise NoSuchPart
            cur = cur.children[n - 1]
        elif n == 1:
            # part 1 of a non-multipart is the body itself
            cur = Part(cur.start, cur.body, cur.end, cur.headers, cur.maintype, cur.subtype, cur.params, [], cur.message)
        else:
            raise NoSuchPart
    return cur


def section_bytes(raw: bytes, root: Part, section: Section) -> bytes:
    """The bytes of BODY[section]; empty for a part that does not exist (RFC 9051 allows NIL or empty)."""
    if not section.parts and not section.text:
        return raw
    try:
        part = find_part(root, section.parts) if section.parts else root
    except NoSuchPart:
        return b""
    text = section.text
    if text in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT") and section.parts:
        # HEADER/TEXT of a part number apply to its encapsulated message.
        if part.message is None:
            return b""
        part = part.message
    if text == "":
        return raw[part.body : part.end]
    if text == "TEXT":
        return raw[part.body : part.end]
    if text == "MIME":
        return raw[part.start : part.body]
    header = raw[part.start : part.body]
    if text == "HEADER":
        return header
    wanted = {f.lower() for f in section.fields}
    keep_if_listed = text == "HEADER.FIELDS"
    out = bytearray()
    for block in re.split(rb"(?<=\n)(?![ \t])", header):
        if not block or block in (b"\r\n", b"\n"):
            continue
        name = block.split(b":", 1)[0].strip().lower()
        if (name in wanted) == keep_if_listed:
            out += block
    out += b"\r\n"
    return bytes(out)
