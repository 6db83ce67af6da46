"""MIME engine: parse a message once, then answer IMAP, JMAP and search from the cached structure.

Parse at delivery, store ``to_cache()`` in the index, and never re-parse::

    parse(raw: bytes, limits: MimeLimits | None = None) -> MessageStructure   # never raises
    MessageStructure.to_cache() -> bytes          # compact, versioned (first byte = version)
    MessageStructure.from_cache(data) -> MessageStructure   # ValueError on another version or a
                                                  # corrupt blob: re-parse the message then

MessageStructure (no raw bytes needed):
    .imap_envelope() -> bytes                     # RFC 3501 ENVELOPE, Dovecot-identical wire bytes
    .imap_bodystructure(extended=True) -> bytes   # BODYSTRUCTURE; extended=False gives BODY
    .part(section: str) -> Part | None            # "1.2" (RFC 3501 §6.4.5 numbering)
    .section_range(spec: str) -> (start, end) | None   # "", "HEADER", "TEXT", "1.2", "1.2.MIME",
                                                  # "2.HEADER", "2.TEXT": byte range in raw
    .parts() -> Iterator[Part]; .root -> Part; .size; .header_end
    .subject -> str | None (RFC 2047 decoded); .date -> str | None (as written);
    .sent_at -> datetime | None (aware, JMAP sentAt)
    .addresses(b"from") -> list[Address(name, route, mailbox, host)]   # raw; see jmap_addresses
    .message_id -> str | None; .in_reply_to / .references -> list[str]  (no angle brackets)
    .field(b"name") -> raw bytes | None           # only structural + envelope + References fields

Part: .section, .type, .subtype, .mime_type, .params (decoded, RFC 2231 merged, read leniently:
    ``name=my file.pdf`` is "my file.pdf"; .raw_params() is Dovecot's strict reading), .charset,
    .encoding, .disposition, .filename, .content_id, .description, .language, .location, .size (encoded
    octets), .lines, .children, .message (embedded message of message/rfc822), .header_start,
    .body_start, .body_end, .is_multipart, .imap_envelope(), .imap_bodystructure(extended),
    .bare_text() (a text/plain leaf without disposition or filename, from the scanned fields: the
    search extraction's shortcut)

Functions that need the message bytes (``raw`` = the whole stored message, bytes/mmap):
    header_fields(raw, structure, section="", names=(b"subject",), exclude=False) -> bytes
                                                  # BODY[<section>.HEADER.FIELDS(.NOT) (...)]
    binary_size(raw, part) -> int                 # RFC 3516 BINARY.SIZE (= len of iter_binary)
    iter_binary(raw, part, chunk=65536) -> Iterator[bytes]   # RFC 3516 BINARY[section]: a leaf
                                                  # decoded; a multipart/message with every base64/QP
                                                  # part inside decoded and its header rewritten to
                                                  # "Content-Transfer-Encoding: binary" (as Dovecot)
    decoded_size(raw, part) -> int                # octets after undoing the part's own CTE (JMAP size)
    iter_decoded(raw, part, chunk=65536) -> Iterator[bytes]   # base64/QP decoded, streaming
    decoded_body(raw, part) -> bytes ; part_text(raw, part) -> str  (charset-decoded)
    preview(raw, structure, max_chars=200) -> str # RFC 8970 PREVIEW / JMAP preview
    header_values(raw, part, name) -> list[bytes] # every occurrence of any header field, raw
    decode_header(value: bytes) -> str            # RFC 2047 words, any Python charset

JMAP (RFC 8621 §4.1.4) and search:
    jmap_body_parts(raw | None, structure) -> {"bodyStructure", "textBody", "htmlBody",
        "attachments", "hasAttachment"}: EmailBodyPart dicts; partId is the IMAP section
        ("1" for the body of a single-part message, None for multiparts), blobId None (the
        store fills it); with raw=None sizes are encoded sizes and "headers" is empty
    split_body(structure) -> (textBody, htmlBody, attachments) as Part lists
    text_parts(structure) -> list[Part]           # what a reader sees as the text (search, preview)
    jmap_addresses(value: bytes, grouped=False) -> [{"name", "email"}] or
        [{"name", "addresses": [...]}] (RFC 8621 §4.1.2.3/4)

Limits (``MimeLimits`` is ``mailsrv.config.MimeConfig``, config section ``[mime]``): nesting
depth (the message is depth 1; the 100th nested container stays an unparsed
application/octet-stream leaf, as in Dovecot), parts per message, bytes kept of a header value.
Beyond them the structure is cut short, never an exception. Time is linear in the message
size (one pass; delimiter search is memchr-fast), memory bounded by the limits.
"""

from __future__ import annotations

from mailsrv._speedups import mime as _scanner
from mailsrv.config import MimeConfig
from mailsrv.mime.body import (
    binary_size,
    decoded_body,
    decoded_size,
    header_fields,
    header_values,
    iter_binary,
    iter_decoded,
    part_text,
    preview,
)
from mailsrv.mime.headers import Address, decode_words, parse_addresses
from mailsrv.mime.jmap import jmap_addresses, jmap_body_parts, split_body, text_parts
from mailsrv.mime.structure import CACHE_VERSION, MessageStructure, Part

__all__ = [
    "CACHE_VERSION",
    "Address",
    "MessageStructure",
    "MimeConfig",
    "MimeLimits",
    "Part",
    "binary_size",
    "decode_header",
    "decoded_body",
    "decoded_size",
    "header_fields",
    "header_values",
    "iter_binary",
    "iter_decoded",
    "jmap_addresses",
    "jmap_body_parts",
    "parse",
    "parse_addresses",
    "part_text",
    "preview",
    "split_body",
    "text_parts",
]


#: Parser bounds (DESIGN.md "What bad input gets"): the ``[mime]`` config section.
#: ``max_depth``: nesting of multiparts and message/rfc822; ``max_parts``: MIME parts
#: per message; ``max_value``: bytes kept of one structural header value.
MimeLimits = MimeConfig

DEFAULT_LIMITS = MimeConfig()


def parse(raw: bytes, limits: MimeConfig | None = None) -> MessageStructure:
    """Parse one message (CRLF or LF line ends). Never raises; best effort on malformed mail."""
    lim = limits or DEFAULT_LIMITS
    try:
        tree = _scanner.scan(bytes(raw), lim.max_depth, lim.max_parts, lim.max_value)
    except RecursionError:  # pragma: no cover - max_depth keeps the recursion bounded
        tree = (0, len(raw), len(raw), 0, b"", b"", (), (), (), 1)
    return MessageStructure(tree)


def decode_header(value: bytes) -> str:
    """Unfold and decode an unstructured header value (RFC 2047, any charset Python knows)."""
    from mailsrv.mime.headers import unfold

    return decode_words(unfold(value).strip(b" \t"))
