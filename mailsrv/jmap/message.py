"""RFC 8621 §4.1 views of a message over ``mailsrv.mime``: header forms, body parts, body values, preview.

Pure functions. Structure-only properties (body part lists, the header fields
the MIME parser keeps: From/To/Subject/Date/Message-ID/Content-*...) come from
a :class:`~mailsrv.mime.MessageStructure`, which the store caches at delivery;
the raw bytes are needed only for other header fields, part headers, decoded
sizes of encoded parts, body values and the preview (``email.needs_raw``,
:func:`parts_need_raw`). There is no other parser: what JMAP shows of a
message is what IMAP shows of it.
"""

from __future__ import annotations

import email.utils
import functools
import html
import re
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from mailsrv import mime
from mailsrv._speedups.mime_py import WANTED
from mailsrv.mime import MessageStructure, Part
from mailsrv.mime.body import iter_header_lines
from mailsrv.mime.headers import lookup_charset, message_ids, unfold

# RFC 8621 §4.1.2.3: the header fields for which asAddresses/asGroupedAddresses are defined.
ADDRESS_HEADERS = frozenset(
    "from sender reply-to to cc bcc resent-from resent-sender resent-reply-to resent-to resent-cc resent-bcc".split()
)
MESSAGE_ID_HEADERS = frozenset("message-id in-reply-to references resent-message-id".split())
DATE_HEADERS = frozenset("date resent-date".split())
URL_HEADERS = frozenset("list-help list-unsubscribe list-subscribe list-post list-owner list-archive".split())
TEXT_HEADERS = frozenset("subject comments keywords list-id".split())
#: every header field RFC 5322 or RFC 2369 defines (asRaw only for those not listed above)
KNOWN_HEADERS = ADDRESS_HEADERS | MESSAGE_ID_HEADERS | DATE_HEADERS | URL_HEADERS | TEXT_HEADERS | frozenset(
    "return-path received resent-date".split()
)
FORMS = ("Raw", "Text", "Addresses", "GroupedAddresses", "MessageIds", "Date", "URLs")
#: the header fields a cached structure keeps (every occurrence, value up to [mime] max_value bytes)
STRUCTURAL = frozenset(n.decode() for n in WANTED)
#: transfer encodings whose decoded size is the encoded size (RFC 2045 §6.2)
IDENTITY_ENCODINGS = frozenset(("7bit", "8bit", "binary"))


def form_allowed(name: str, form: str) -> bool:
    """RFC 8621 §4.1.2: which parsed forms a header field may be asked for."""
    n = name.lower()
    if form == "Raw":
        return True
    unknown = n not in KNOWN_HEADERS
    if form == "Text":
        return n in TEXT_HEADERS or unknown
    if form in ("Addresses", "GroupedAddresses"):
        return n in ADDRESS_HEADERS or unknown
    if form == "MessageIds":
        return n in MESSAGE_ID_HEADERS or unknown
    if form == "Date":
        return n in DATE_HEADERS or unknown
    if form == "URLs":
        return n in URL_HEADERS or unknown
    return False


# --- header fields ---------------------------------------------------------------------


def header_list(raw: Any, part: Part | None = None) -> list[tuple[str, bytes]]:
    """(name as written, raw value after the colon with its folding) of each field of ``part``'s
    header, or of the message's header if ``part`` is None (no parse needed)."""
    out = []
    start, end = (0, len(raw)) if part is None else (part.header_start, part.body_start)
    for _n, s, e in iter_header_lines(raw, start, end):
        field = bytes(raw[s:e])
        colon = field.find(b":")
        name = field[:colon].rstrip(b" \t")
        # RFC 5322 §3.6.8: field-name = 1*ftext; an mbox "From " line or a body line in a part
        # without a header block is not a header field
        if _FIELD_NAME.fullmatch(name) is None:
            continue
        out.append((name.decode("ascii"), field[colon + 1 :].rstrip(b"\r\n")))
    return out


_FIELD_NAME = re.compile(rb"[!-9;-~]+")


def values_of(headers: Iterable[tuple[str, bytes]], name: str) -> list[bytes]:
    n = name.lower()
    return [v for k, v in headers if k.lower() == n]


def field_values(structure: MessageStructure, raw: Any, part: Part | None, name: str) -> list[bytes]:
    """Every value of header field ``name`` of ``part`` (the message if None): from the structure when
    it keeps that field, else from ``raw`` (which must then be given)."""
    p = part if part is not None else structure.root
    n = name.lower()
    if n in STRUCTURAL:
        return [v.rstrip(b"\r\n") for v in p.field_all(n.encode())]
    assert raw is not None, "raw bytes needed for a non-structural header field"
    return mime.header_values(raw, p, n.encode())


# --- RFC 8621 §4.1.2 parsed forms ------------------------------------------------------


def as_raw(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def as_text(value: bytes) -> str:
    # RFC 8621 §4.1.2.2: unfold, decode RFC 2047 encoded words, trim surrounding whitespace.
    return mime.decode_header(value).strip()


def as_addresses(value: bytes) -> list[dict[str, Any]]:
    return [_no_placeholder(a) for a in mime.jmap_addresses(value)]


def as_grouped_addresses(value: bytes) -> list[dict[str, Any]]:
    groups = mime.jmap_addresses(value, grouped=True)
    return [{**g, "addresses": [_no_placeholder(a) for a in g["addresses"]]} for g in groups]


def _no_placeholder(a: dict[str, Any]) -> dict[str, Any]:
    # deviation from mailsrv.mime: IMAP's placeholder for an empty local part (RFC 3501 §7.4.2) is not
    # an address; "<>" (a null path) has the empty addr-spec
    if a["email"] == "MISSING_MAILBOX":
        return {**a, "email": ""}
    return a


def as_message_ids(value: bytes) -> list[str] | None:
    return message_ids(value) or None


def as_date(value: bytes) -> str | None:
    try:
        dt = email.utils.parsedate_to_datetime(unfold(value).strip().decode("latin-1"))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return rfc3339(dt)


def rfc3339(dt: datetime) -> str:
    s = dt.isoformat(timespec="seconds")
    return s[:-6] + "Z" if s.endswith("+00:00") else s


def utc_date(ts: float) -> str:
    """RFC 3339 UTC date of a POSIX time, in whole seconds (RFC 8620 §1.4 UTCDate)."""
    return _utc_date(int(ts))


@functools.lru_cache(maxsize=4096)  # each Email/get of a page asks again for its messages' receivedAt
def _utc_date(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))  # as datetime's, without a datetime


def as_urls(value: bytes) -> list[str] | None:
    urls = re.findall(r"<([^<>]*)>", unfold(value).decode("utf-8", "replace"))
    return [u.strip() for u in urls] or None


def parse_form(value: bytes, form: str) -> Any:
    if form == "Raw":
        return as_raw(value)
    if form == "Text":
        return as_text(value)
    if form == "Addresses":
        return as_addresses(value)
    if form == "GroupedAddresses":
        return as_grouped_addresses(value)
    if form == "MessageIds":
        return as_message_ids(value)
    if form == "Date":
        return as_date(value)
    return as_urls(value)


# --- body parts (RFC 8621 §4.1.4) ------------------------------------------------------


def part_id(part: Part) -> str | None:
    """The partId of a part: its IMAP section ("1" for the body of a single-part message), None for a multipart."""
    if part.is_multipart:
        return None
    return part.section or "1"


def leaves(structure: MessageStructure) -> list[Part]:
    """Every part with a partId, in order (embedded messages stay single leaves, RFC 8621 §4.1.4)."""
    out: list[Part] = []

    def walk(p: Part) -> None:
        if p.is_multipart:
            for k in p.children:
                walk(k)
        else:
            out.append(p)

    walk(structure.root)
    return out


def find_part(structure: MessageStructure, pid: str) -> Part | None:
    return next((p for p in leaves(structure) if part_id(p) == pid), None)


def body_lists(structure: MessageStructure) -> tuple[list[Part], list[Part], list[Part]]:
    """textBody, htmlBody, attachments (the algorithm of RFC 8621 §4.1.4, in mailsrv.mime)."""
    return mime.split_body(structure)


def part_size(raw: Any, part: Part) -> int:
    """RFC 8621 §4.1.4 size: octets after transfer decoding (raw is needed only for encoded leaves)."""
    if part.is_multipart or part.encoding in IDENTITY_ENCODINGS:
        return part.size
    return mime.binary_size(raw, part)


def parts_need_raw(structure: MessageStructure, body_props: Iterable[str]) -> bool:
    """Whether the asked body part properties need the message bytes."""
    props = set(body_props)
    if any(p == "headers" or (p.startswith("header:") and p.split(":")[1].lower() not in STRUCTURAL) for p in props):
        return True
    if "size" in props:
        return any(p.encoding not in IDENTITY_ENCODINGS for p in leaves(structure))
    return False


def charset_of(part: Part) -> str | None:
    # RFC 8621 §4.1.4: the charset parameter, or us-ascii for text/* without one; lower case
    if part.is_multipart:
        return None
    cs = part.charset
    return cs.lower() if cs else None


def decode_text(raw: Any, part: Part) -> tuple[str, bool]:
    """(text, isEncodingProblem) of a text part, decoded with its charset."""
    data = mime.decoded_body(raw, part)
    declared = part.params.get("charset")
    name = (declared or "us-ascii").strip().strip('"').lower()
    if name in ("us-ascii", "ascii"):
        name = "utf-8"  # 8-bit in a us-ascii part is common; UTF-8 is a superset
    codec = lookup_charset(name) if name != "utf-8" else "utf-8"
    if codec is not None:
        try:
            return data.decode(codec), False
        except UnicodeDecodeError:
            pass
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        # RFC 8621 §4.1.4 isEncodingProblem: malformed octets or an unknown charset
        return data.decode(codec or "utf-8", "replace"), True


def html_to_text(value: str) -> str:
    value = re.sub(r"(?is)<(script|style)\b.*?</\1\s*>", " ", value)
    value = re.sub(r"(?s)<!--.*?-->", " ", value)
    value = re.sub(r"(?s)<[^>]*>", " ", value)
    return html.unescape(value)


def text_of(raw: Any, parts: list[Part]) -> str:
    """The text a reader sees: the given text/* parts decoded (HTML reduced to text), joined by spaces."""
    out = []
    for p in parts:
        if p.type != "text":
            continue
        value = decode_text(raw, p)[0]
        out.append(html_to_text(value) if p.subtype == "html" else value)
    return " ".join(out)


#: RFC 8621 §4.1.4: preview is at most 256 characters
PREVIEW_CHARS = 256


def preview(raw: Any, structure: MessageStructure) -> str:
    """RFC 8621 §4.1.4 preview: the start of the text body, white space collapsed."""
    return mime.preview(raw, structure, PREVIEW_CHARS)


def truncate_utf8(value: str, max_bytes: int) -> tuple[str, bool]:
    """Cut ``value`` to at most ``max_bytes`` UTF-8 octets on a character boundary."""
    if max_bytes <= 0:
        return value, False
    data = value.encode("utf-8")
    if len(data) <= max_bytes:
        return value, False
    return data[:max_bytes].decode("utf-8", "ignore"), True
