"""Raw message -> searchable :class:`Document`: decoded, normalised fields and sort columns.

Headers are unfolded and their RFC 2047 words decoded; bodies are decoded from
base64 / quoted-printable and their charset; HTML is reduced to text; the
filenames of attachments count as body text. Every text field is then
normalised (:func:`mailsrv._speedups.tokenize.normalize`), so the index, the
confirmation step and the brute-force scan compare exactly the same strings.

(The MIME walk uses the standard library parser in compat32 mode, which never
raises on malformed input; when ``mailsrv.mime`` exposes decoded text parts
this module switches to it without changing its output contract.)
"""

from __future__ import annotations

import email
import email.header
import email.message
import email.utils
import html
import re
from dataclasses import dataclass, field

from mailsrv._speedups.tokenize import normalize

__all__ = ["FIELDS", "Document", "base_subject", "extract", "html_to_text"]

#: text fields of a Document, in storage order
FIELDS: tuple[str, ...] = ("from", "to", "cc", "bcc", "subject", "message-id", "headers", "body")
#: separator between the header lines of the "headers" field (normalize removes controls)
HEADER_SEP = "\x01"

#: at most this many header fields of one message are searchable (hostile input)
MAX_HEADERS = 1000
#: at most this many MIME parts are looked at
MAX_PARTS = 1000


@dataclass(slots=True)
class Document:
    """What the index knows of one message besides the store's MessageInfo."""

    text: dict[str, str] = field(default_factory=dict)  # field -> normalised text
    sent_date: float | None = None  # Date: header, epoch seconds
    from_addr: str = ""  # RFC 5256 sort keys (case-folded)
    from_display: str = ""
    to_addr: str = ""
    to_display: str = ""
    cc_addr: str = ""
    subject: str = ""  # RFC 5256 §2.1 base subject
    has_attachment: bool = False

    def columns(self) -> tuple:
        return (
            self.sent_date,
            self.from_addr,
            self.from_display,
            self.to_addr,
            self.to_display,
            self.cc_addr,
            self.subject,
            self.has_attachment,
        )

    @classmethod
    def from_columns(cls, text: dict[str, str], cols: tuple | list) -> Document:
        return cls(text, cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], cols[6], bool(cols[7]))


_TAGS_DROP = re.compile(r"(?is)<(script|style|head)\b.*?</\1\s*>|<!--.*?-->")
_TAG_BREAK = re.compile(r"(?i)<\s*(br|/p|/div|/tr|/li|/h[1-6]|p|div|tr|li|td|th)\b[^>]*>")
_TAG = re.compile(r"<[^>]*>")


def html_to_text(markup: str) -> str:
    """HTML -> its visible text: scripts, styles and comments dropped, entities decoded."""
    s = _TAGS_DROP.sub(" ", markup)
    s = _TAG_BREAK.sub("\n", s)
    s = _TAG.sub("", s)
    return html.unescape(s)


# RFC 5256 §2.1 base subject: strip trailers "(fwd)", leaders "re:", "fw:", "[blob]".
_SUBJ_TRAILER = re.compile(r"(?:\s*\(fwd\)|\s+)$", re.I)
_SUBJ_LEADER = re.compile(r"^(?:\s*(?:\[[^\[\]]*\]\s*)*(?:re|fwd?)\s*(?:\[[^\[\]]*\])?:\s*)", re.I)
_SUBJ_BLOB = re.compile(r"^\s*\[[^\[\]]*\]\s*")
_SUBJ_FWD = re.compile(r"^\[fwd:\s*(.*)\]$", re.I)
_WS = re.compile(r"\s+")


def base_subject(subject: str) -> str:
    """RFC 5256 §2.1 base subject (case-folded, whitespace collapsed)."""
    s = _WS.sub(" ", subject).strip()
    while True:
        # (2) trailers
        while True:
            t = _SUBJ_TRAILER.sub("", s)
            if t == s:
                break
            s = t
        # (3)-(5) leaders and blobs, repeated
        while True:
            t = _SUBJ_LEADER.sub("", s, count=1)
            if t == s:
                b = _SUBJ_BLOB.sub("", s, count=1)
                if b != s and b:
                    t = b
            if t == s:
                break
            s = t
        # (6) [fwd: ...]
        m = _SUBJ_FWD.match(s)
        if not m:
            break
        s = m.group(1).strip()
    return s.casefold()


def _decode_header(value: str) -> str:
    """Unfold and decode RFC 2047 words of a header value read as compat32 str."""
    value = value.replace("\r", "").replace("\n", "")
    if "=?" not in value:
        return _undo_surrogates(value)
    try:
        parts = email.header.decode_header(value)
    except Exception:  # malformed encoded words: keep the raw text
        return _undo_surrogates(value)
    out = []
    for chunk, charset in parts:
        if isinstance(chunk, bytes):
            out.append(_decode(chunk, charset))
        else:
            out.append(_undo_surrogates(chunk))
    return "".join(out)


def _undo_surrogates(s: str) -> str:
    """compat32 keeps 8-bit header bytes as surrogate escapes: decode them as UTF-8 or cp1252."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        raw = s.encode("utf-8", "surrogateescape")
        return _decode(raw, None)


_CHARSET_ALIASES = {"gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030", "cp936": "gb18030"}


def _decode(data: bytes, charset: str | None) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    cs = (charset or "").strip().strip('"').lower() or "cp1252"
    cs = _CHARSET_ALIASES.get(cs, cs)
    if cs in ("us-ascii", "ascii"):
        cs = "cp1252"
    try:
        return data.decode(cs, "replace")
    except LookupError:
        return data.decode("cp1252", "replace")


def _first_address(value: str) -> tuple[str, str]:
    """(addr-mailbox local part, display name or address), both case-folded (RFC 5256, RFC 5957)."""
    if not value:
        return "", ""
    pairs = email.utils.getaddresses([value])
    if not pairs:
        return "", ""
    name, addr = pairs[0]
    local = addr.rpartition("@")[0] if "@" in addr else addr
    return local.casefold(), (name.strip() or addr).casefold()


def _payload_text(part: email.message.Message) -> str:
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return ""
    return _decode(data, part.get_content_charset())


def extract(raw: bytes, max_text: int = 1 << 20) -> Document:
    """Parse ``raw`` into a Document; never raises on malformed mail.

    At most ``max_text`` characters of body text are kept (the rest is not
    searchable; SearchConfig.max_text_bytes).
    """
    msg = email.message_from_bytes(raw)
    doc = Document()
    headers: list[str] = []
    values: dict[str, list[str]] = {}
    for name, value in msg.items()[:MAX_HEADERS]:
        lname = name.strip().lower()
        text = _decode_header(str(value))
        values.setdefault(lname, []).append(text)
        headers.append(normalize(f"{lname}: {text}"))
    t = doc.text
    for f in ("from", "to", "cc", "bcc", "subject", "message-id"):
        t[f] = normalize(" ".join(values.get(f, ())))
    t["headers"] = HEADER_SEP.join(headers)
    doc.subject = base_subject(values.get("subject", [""])[0])
    doc.from_addr, doc.from_display = _first_address(values.get("from", [""])[0])
    doc.to_addr, doc.to_display = _first_address(values.get("to", [""])[0])
    doc.cc_addr, _ = _first_address(values.get("cc", [""])[0])
    date = values.get("date", [""])[0]
    if date:
        try:
            dt = email.utils.parsedate_to_datetime(date)
        except (TypeError, ValueError, IndexError, OverflowError):
            dt = None
        if dt is not None:
            try:
                doc.sent_date = dt.timestamp()
            except (OverflowError, OSError, ValueError):
                doc.sent_date = None
    body: list[str] = []
    size = 0
    for n, part in enumerate(msg.walk()):
        if n >= MAX_PARTS or size >= max_text:
            break
        if part.is_multipart():
            continue
        filename = part.get_filename(None)
        disposition = (part.get_content_disposition() or "").lower()
        if filename or disposition == "attachment":
            doc.has_attachment = True
        if filename:
            name = _decode_header(str(filename))
            body.append(name)
            size += len(name)
        ctype = part.get_content_type()
        if ctype == "text/plain" or (ctype.startswith("text/") and ctype != "text/html"):
            text = _payload_text(part)
        elif ctype == "text/html":
            text = html_to_text(_payload_text(part))
        else:
            continue
        body.append(text)
        size += len(text)
    t["body"] = normalize("\n".join(body))[:max_text]
    return doc
