"""Raw message -> searchable :class:`Document`: decoded, normalised fields and sort columns.

Headers are unfolded and their RFC 2047 words decoded; bodies are decoded from
base64 / quoted-printable and their charset; HTML is reduced to text; the
filenames of attachments count as body text. Every text field is then
normalised (:func:`mailsrv._speedups.tokenize.normalize`), so the index, the
confirmation step and the brute-force scan compare exactly the same strings.

The MIME structure and the decoding come from :mod:`mailsrv.mime`. Bump
:data:`EXTRACT_VERSION` whenever the output for some input changes: index
files written by another version are rebuilt.
"""

from __future__ import annotations

import datetime
import email.utils
import html
import re
from dataclasses import dataclass, field

from mailsrv import mime
from mailsrv._speedups.search import header_texts
from mailsrv._speedups.tokenize import normalize
from mailsrv.mime.headers import BASE_SUBJECT_MAX

__all__ = ["EXTRACT_VERSION", "FIELDS", "Document", "base_subject", "extract", "html_to_text"]

#: version of what :func:`extract` produces (stored in index snapshots)
EXTRACT_VERSION = 3

#: text fields of a Document, in storage order
FIELDS: tuple[str, ...] = ("from", "to", "cc", "bcc", "subject", "message-id", "headers", "body")
#: separator between the header lines of the "headers" field (normalize removes controls)
HEADER_SEP = "\x01"

#: at most this many header fields of one message are searchable (hostile input)
MAX_HEADERS = 1000
#: at most this many MIME parts are looked at
MAX_PARTS = 1000
#: header fields whose texts the Document keeps apart (its text fields; the subject's sort key)
_TEXT_FIELDS = frozenset(("from", "to", "cc", "bcc", "subject", "message-id"))
#: header fields whose first raw value gives sort columns
_FIRST_FIELDS = frozenset((b"from", b"to", b"cc", b"date"))


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
    sent_day: int | None = None  # the Date: header's own calendar day (proleptic ordinal)

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
            self.sent_day,
        )

    @classmethod
    def from_columns(cls, text: dict[str, str], cols: tuple | list) -> Document:
        return cls(text, cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], cols[6], bool(cols[7]), cols[8])


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
    s = _WS.sub(" ", subject[:BASE_SUBJECT_MAX]).strip()
    if "[" not in s and ":" not in s and "(" not in s:  # no leader, blob or trailer to strip (most mail)
        return s.casefold()
    return _base_subject_steps(s)


def _base_subject_steps(s: str) -> str:
    """:func:`base_subject` of ``s`` (whitespace already collapsed) by every step of RFC 5256 §2.1."""
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


#: a header value that is one plain ASCII addr-spec (dot-atom "@" dot-atom, RFC 5322 §3.4.1), alone or
#: in angle brackets, with white space around: most From/To/Cc values. Its sort keys need no parser
#: (the same answer as :func:`mime.jmap_addresses`; tests/search/test_extract.py checks by hypothesis)
_ATEXT = rb"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ADDR = re.compile(rb"[ \t]*(<?)(" + _ATEXT + rb"(?:\." + _ATEXT + rb")*)@(" + _ATEXT + rb"(?:\." + _ATEXT
                         + rb")*)(>?)[ \t]*")
#: a display name before such an address in angle brackets, how most other From/To values are written (~30 us
#: each by the parser): atoms (RFC 5322 §3.2.3 atext words), "Ann Smith <ann@example.com>", whose name for the
#: parser is the words joined by one space; or one quoted string without quoted pairs (§3.2.4), "\"Smith, Ann\"
#: <ann@example.com>", whose name is its text, stripped
_NAMED_ADDR = re.compile(rb"[ \t]*(?:(" + _ATEXT + rb"(?:[ \t]+" + _ATEXT + rb")*)|\"([\t\x20\x21\x23-\x5b\x5d-\x7e]*)\")[ \t]*<("
                         + _ATEXT + rb"(?:\." + _ATEXT + rb")*)@(" + _ATEXT + rb"(?:\." + _ATEXT + rb")*)>[ \t]*")


def _first_address(value: bytes) -> tuple[str, str]:
    """(addr-mailbox local part, display name or address), both case-folded (RFC 5256, RFC 5957)."""
    if not value:
        return "", ""
    m = _PLAIN_ADDR.fullmatch(value)
    if m is not None and (m[1] == b"<") == (m[4] == b">"):
        local = m[2].decode("ascii").casefold()
        return local, f"{local}@{m[3].decode('ascii').casefold()}"
    if b"=?" not in value:  # (an encoded word is atext too: the parser decodes it)
        m = _NAMED_ADDR.fullmatch(value)
        if m is not None:
            local = m[3].decode("ascii").casefold()
            name = b" ".join(m[1].split()) if m[1] is not None else m[2].strip()
            return local, name.decode("ascii").casefold() if name else f"{local}@{m[4].decode('ascii').casefold()}"
    return _parsed_first_address(value)


def _parsed_first_address(value: bytes) -> tuple[str, str]:
    """:func:`_first_address` by the full address parser."""
    try:
        addrs = mime.jmap_addresses(value)
    except Exception:  # hostile header: no sort key rather than no index
        return "", ""
    for a in addrs:
        email_ = a.get("email") or ""
        name = (a.get("name") or "").strip()
        local = email_.rpartition("@")[0] if "@" in email_ else email_
        return local.casefold(), (name or email_).casefold()
    return "", ""


#: a Date: value as RFC 5322 §3.3 writes it (an optional day name, a four-digit year, seconds, a numeric
#: zone, perhaps a comment after it): most mail. Its fields are those email.utils finds (the same answer
#: as :func:`_parsed_sent_date`; tests/search/test_sent_date.py checks by hypothesis), read without its
#: split and its passes over month and zone names. A year below 1000 (email.utils makes 0050 into 2050)
#: and the zone -0000 (a naive time for email.utils) are left to it
_DATE = re.compile(rb"[ \t]*(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun),[ \t]*)?([0-9]{1,2})[ \t]+"
                   rb"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[ \t]+([1-9][0-9]{3})[ \t]+"
                   rb"([0-9]{2}):([0-9]{2}):([0-9]{2})[ \t]+([+-])([0-9]{2})([0-9]{2})(?:[ \t]+\([^()\r\n]*\))?[ \t]*")
_MONTHS = {m: n for n, m in enumerate((b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep",
                                        b"Oct", b"Nov", b"Dec"), 1)}


def _sent_date(value: bytes) -> tuple[float, int] | None:
    """(epoch seconds, the calendar day as written in the header's own zone), or None."""
    m = _DATE.fullmatch(value)
    if m is None or (m[7] == b"-" and m[8] == b"00" and m[9] == b"00"):
        return _parsed_sent_date(value)
    zone = int(m[8]) * 3600 + int(m[9]) * 60
    try:
        dt = datetime.datetime(int(m[3]), _MONTHS[m[2]], int(m[1]), int(m[4]), int(m[5]), int(m[6]),
                               tzinfo=datetime.timezone(datetime.timedelta(seconds=-zone if m[7] == b"-" else zone)))
        return dt.timestamp(), dt.date().toordinal()
    except (ValueError, OverflowError, OSError):  # no such day or time, a zone of a day or more
        return None


def _parsed_sent_date(value: bytes) -> tuple[float, int] | None:
    """:func:`_sent_date` by email.utils."""
    try:
        dt = email.utils.parsedate_to_datetime(value.decode("latin-1"))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if dt is None:
        return None
    try:
        return dt.timestamp(), dt.date().toordinal()
    except (OverflowError, OSError, ValueError):
        return None


def extract(raw: bytes, max_text: int = 1 << 20, structure: mime.MessageStructure | None = None) -> Document:
    """Parse ``raw`` into a Document; never raises on malformed mail.

    At most ``max_text`` characters of body text are kept (the rest is not
    searchable; SearchConfig.max_text_bytes). ``structure``: ``raw``'s parse when the caller has it
    (the store's at delivery), else it is parsed here.
    """
    if structure is None:
        structure = mime.parse(raw)
    root = structure.root
    doc = Document()
    headers: list[str] = []
    values: dict[str, list[str]] = {}
    first: dict[bytes, bytes] = {}
    # the fields as mime.body.iter_header_lines finds them, plain ASCII texts made in the same pass
    # (the twin search_py.header_texts; tests/search/test_extract.py checks against the steps)
    for name, value, text in header_texts(raw, root.header_start, root.body_start, MAX_HEADERS):
        if name in _FIRST_FIELDS and name not in first:
            first[name] = value
        lname = name.decode("latin-1")
        if text is None:
            text = mime.decode_header(value)
        if lname in _TEXT_FIELDS:
            values.setdefault(lname, []).append(text)
        headers.append(normalize(f"{lname}: {text}"))
    t = doc.text
    for f in ("from", "to", "cc", "bcc", "subject", "message-id"):
        v = values.get(f)
        t[f] = normalize(" ".join(v)) if v else ""  # (no call for an absent field: normalize("") is "")
    t["headers"] = HEADER_SEP.join(headers)
    doc.subject = base_subject(values.get("subject", [""])[0])
    doc.from_addr, doc.from_display = _first_address(first.get(b"from", b""))
    doc.to_addr, doc.to_display = _first_address(first.get(b"to", b""))
    doc.cc_addr, _ = _first_address(first.get(b"cc", b""))
    if b"date" in first:
        sent = _sent_date(first[b"date"])
        if sent is not None:
            doc.sent_date, doc.sent_day = sent
    if max_text > 0 and root.bare_text():  # one text/plain part (most mail): the loop below without its walk
        try:
            text = mime.part_text(raw, root, max_text)
        except Exception:  # undecodable part: its text is not searchable
            text = ""
        t["body"] = normalize(text)[:max_text]
        return doc
    body: list[str] = []
    size = 0
    for n, part in enumerate(structure.parts()):
        if n >= MAX_PARTS or size >= max_text:
            break
        if part.is_multipart or part.message is not None:
            continue
        filename = part.filename
        if filename or part.disposition == "attachment":
            doc.has_attachment = True
        if filename:
            body.append(filename)
            size += len(filename)
        if part.type != "text" or (part.disposition == "attachment" and part.subtype != "plain"):
            continue
        try:
            text = mime.part_text(raw, part, max_text - size)
        except Exception:  # undecodable part: its text is not searchable
            continue
        if part.subtype == "html":
            text = html_to_text(text)
        body.append(text)
        size += len(text)
    t["body"] = normalize("\n".join(body))[:max_text]
    return doc
