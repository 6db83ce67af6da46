"""RFC 8621 §4.1 views of a raw message: header forms, body structure, body values, preview.

Pure functions over the message bytes (stdlib ``email`` parser; move to
``mailsrv.mime`` once it exposes RFC 8621 body parts).
"""

from __future__ import annotations

import email.header
import email.parser
import email.policy
import email.utils
import html
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.headerregistry import AddressHeader
from email.message import Message
from typing import Any


class _RawPolicy(email.policy.Compat32):
    """compat32, but keep the header value exactly as written after the colon (RFC 8621 Raw)."""

    def header_source_parse(self, sourcelines: list[str]) -> tuple[str, str]:
        name, value = sourcelines[0].split(":", 1)
        value = value + "".join(sourcelines[1:])
        return (name, value.rstrip("\r\n"))

    def header_fetch_parse(self, name: str, value: str) -> str:
        # msg.get() (Content-Type, Content-Transfer-Encoding...) sees the value without the leading blank
        return str(super().header_fetch_parse(name, value.lstrip(" \t")))


_POLICY = _RawPolicy(linesep="\r\n")

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


def to_text(raw: str) -> str:
    """Surrogate-escaped header text -> str, 8-bit octets read as UTF-8."""
    try:
        return raw.encode("ascii", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return raw


def _unfold(value: str) -> str:
    return re.sub(r"\r?\n(?=[ \t])", "", value)


def as_text(raw: str) -> str:
    # RFC 8621 §4.1.2.2: unfold, decode RFC 2047 encoded words, trim surrounding whitespace.
    value = _unfold(to_text(raw))
    try:
        decoded = str(email.header.make_header(email.header.decode_header(value)))
    except Exception:
        decoded = value
    return decoded.strip()


def as_grouped_addresses(raw: str) -> list[dict[str, Any]]:
    value = _unfold(to_text(raw)).strip()
    if not value:
        return []
    try:
        kwds: dict[str, Any] = {}
        AddressHeader.parse(value, kwds)
    except Exception:
        return []
    out = []
    for g in kwds.get("groups", ()):
        addrs = [{"name": a.display_name or None, "email": a.addr_spec} for a in g.addresses if a.addr_spec]
        out.append({"name": g.display_name, "addresses": addrs})
    return out


def as_addresses(raw: str) -> list[dict[str, Any]]:
    return [a for g in as_grouped_addresses(raw) for a in g["addresses"]]


def as_message_ids(raw: str) -> list[str] | None:
    ids = re.findall(r"<([^<>\s]+)>", to_text(raw))
    return ids or None


def as_date(raw: str) -> str | None:
    try:
        dt = email.utils.parsedate_to_datetime(_unfold(to_text(raw)).strip())
    except (TypeError, ValueError, IndexError):
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return rfc3339(dt)


def rfc3339(dt: datetime) -> str:
    s = dt.isoformat(timespec="seconds")
    return s[:-6] + "Z" if s.endswith("+00:00") else s


def utc_date(ts: float) -> str:
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def as_urls(raw: str) -> list[str] | None:
    urls = re.findall(r"<([^<>]*)>", to_text(raw))
    return [u.strip() for u in urls] or None


def parse_form(raw: str, form: str) -> Any:
    if form == "Raw":
        return to_text(raw)
    if form == "Text":
        return as_text(raw)
    if form == "Addresses":
        return as_addresses(raw)
    if form == "GroupedAddresses":
        return as_grouped_addresses(raw)
    if form == "MessageIds":
        return as_message_ids(raw)
    if form == "Date":
        return as_date(raw)
    return as_urls(raw)


@dataclass
class Part:
    """One RFC 8621 EmailBodyPart, with the Message it came from."""

    part_id: str | None
    msg: Message
    type: str
    subparts: list[Part] = field(default_factory=list)

    @property
    def headers(self) -> list[tuple[str, str]]:
        return list(self.msg._headers)  # type: ignore[attr-defined]

    def header_values(self, name: str) -> list[str]:
        n = name.lower()
        return [v for k, v in self.headers if k.lower() == n]

    @property
    def name(self) -> str | None:
        try:
            fn = self.msg.get_filename()
        except Exception:
            fn = None
        if fn is None:
            try:
                fn = self.msg.get_param("name", header="content-type")  # type: ignore[assignment]
            except Exception:
                fn = None
            if isinstance(fn, tuple):
                fn = email.utils.collapse_rfc2231_value(fn)
        return as_text(fn) if isinstance(fn, str) else None

    @property
    def charset(self) -> str | None:
        cs = self.msg.get_param("charset")
        if isinstance(cs, tuple):
            cs = email.utils.collapse_rfc2231_value(cs)
        if isinstance(cs, str) and cs:
            return cs.lower()
        return "us-ascii" if self.type.startswith("text/") else None

    @property
    def disposition(self) -> str | None:
        d = self.msg.get_content_disposition()
        return d.lower() if d else None

    def content(self) -> bytes:
        if self.msg.is_multipart():
            return b""
        payload = self.msg.get_payload(decode=True)
        if isinstance(payload, bytes):
            return payload
        # message/rfc822 and friends: the encapsulated message as written
        inner = self.msg.get_payload()
        if isinstance(inner, list) and inner and isinstance(inner[0], Message):
            return inner[0].as_bytes(policy=_POLICY)
        return b""


@dataclass
class ParsedMessage:
    root: Part
    leaves: dict[str, Part]

    @property
    def headers(self) -> list[tuple[str, str]]:
        return self.root.headers


def parse(raw: bytes) -> ParsedMessage:
    msg = email.parser.BytesParser(policy=_POLICY).parsebytes(raw)
    leaves: dict[str, Part] = {}
    counter = [0]

    def build(m: Message, parent_type: str | None) -> Part:
        ctype = _content_type(m, parent_type)
        if ctype.startswith("multipart/") and m.is_multipart():
            part = Part(None, m, ctype)
            payload = m.get_payload()
            assert isinstance(payload, list)
            part.subparts = [build(sub, ctype) for sub in payload if isinstance(sub, Message)]
            return part
        counter[0] += 1
        pid = str(counter[0])
        part = Part(pid, m, ctype)
        leaves[pid] = part
        return part

    return ParsedMessage(build(msg, None), leaves)


def _content_type(m: Message, parent_type: str | None) -> str:
    if m.get("content-type") is None:
        # RFC 2046 §5.1.5: in multipart/digest the default is message/rfc822.
        return "message/rfc822" if parent_type == "multipart/digest" else "text/plain"
    return m.get_content_type()


def _is_inline_media(t: str) -> bool:
    return t.startswith(("image/", "audio/", "video/"))


def body_lists(root: Part) -> tuple[list[Part], list[Part], list[Part]]:
    """textBody, htmlBody, attachments: the algorithm of RFC 8621 §4.1.4, transcribed."""
    text: list[Part] = []
    htm: list[Part] = []
    att: list[Part] = []

    def walk(parts: list[Part], mtype: str, in_alt: bool, h: list[Part] | None, t: list[Part] | None) -> None:
        tlen = len(t) if t is not None else -1
        hlen = len(h) if h is not None else -1
        for i, part in enumerate(parts):
            is_multi = part.type.startswith("multipart/")
            is_inline = (
                part.disposition != "attachment"
                and (part.type in ("text/plain", "text/html") or _is_inline_media(part.type))
                and (i == 0 or (mtype != "related" and (_is_inline_media(part.type) or not part.name)))
            )
            if is_multi:
                sub = part.type.split("/", 1)[1]
                walk(part.subparts, sub, in_alt or sub == "alternative", h, t)
            elif is_inline:
                if mtype == "alternative":
                    if part.type == "text/plain" and t is not None:
                        t.append(part)
                    elif part.type == "text/html" and h is not None:
                        h.append(part)
                    elif part.type not in ("text/plain", "text/html"):
                        att.append(part)
                    continue
                if in_alt:
                    if part.type == "text/plain":
                        h = None
                    if part.type == "text/html":
                        t = None
                if t is not None:
                    t.append(part)
                if h is not None:
                    h.append(part)
                if (t is None or h is None) and _is_inline_media(part.type):
                    att.append(part)
            else:
                att.append(part)
        if mtype == "alternative" and t is not None and h is not None:
            if tlen == len(t) and hlen != len(h):
                t.extend(h[hlen:])
            if hlen == len(h) and tlen != len(t):
                h.extend(t[tlen:])

    walk([root], "mixed", False, htm, text)
    return text, htm, att


def decode_text(part: Part) -> tuple[str, bool]:
    """(text, isEncodingProblem) of a text part, decoded with its charset."""
    data = part.content()
    charset = part.charset or "us-ascii"
    if charset in ("us-ascii", "ascii"):
        charset = "utf-8"  # 8-bit in a us-ascii part is common; UTF-8 is a superset
    try:
        return data.decode(charset), False
    except (LookupError, UnicodeDecodeError):
        try:
            return data.decode("utf-8"), False
        except UnicodeDecodeError:
            return data.decode(charset if _codec_ok(charset) else "utf-8", "replace"), True


def _codec_ok(name: str) -> bool:
    import codecs

    try:
        codecs.lookup(name)
    except LookupError:
        return False
    return True


def html_to_text(value: str) -> str:
    value = re.sub(r"(?is)<(script|style)\b.*?</\1\s*>", " ", value)
    value = re.sub(r"(?s)<[^>]*>", " ", value)
    return html.unescape(value)


def preview(text_body: list[Part], html_body: list[Part]) -> str:
    # RFC 8621 §4.1.4: up to 256 characters, whitespace collapsed.
    for part in text_body or html_body:
        if part.type == "text/plain":
            value, _ = decode_text(part)
        elif part.type == "text/html":
            value = html_to_text(decode_text(part)[0])
        else:
            continue
        return " ".join(value.split())[:256]
    return ""


def truncate_utf8(value: str, max_bytes: int) -> tuple[str, bool]:
    """Cut ``value`` to at most ``max_bytes`` UTF-8 octets on a character boundary."""
    if max_bytes <= 0:
        return value, False
    data = value.encode("utf-8")
    if len(data) <= max_bytes:
        return value, False
    return data[:max_bytes].decode("utf-8", "ignore"), True
