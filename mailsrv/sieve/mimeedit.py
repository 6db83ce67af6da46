"""RFC 5703 §5 ``replace`` and §6 ``enclose``: their compiled nodes and the bytes they make. Pure: the
run (mailsrv.sieve.interp) turns them into header edits plus a new body (an ``("body", "", bytes,
None)`` edit: everything after the header block, its empty line included), which delivery applies
as it applies editheader's (mailsrv.sieve.editheader.apply_edits)."""

from __future__ import annotations

import quopri
from dataclasses import dataclass

from mailsrv.sieve.editheader import PROTECTED, encoded_value
from mailsrv.sieve.message import addresses_of, header_fields

#: RFC 5703 §5: octets of a replacement or enclose text (after variables); the message made stays
#: within the delivery's BODY_MAX as well (mailsrv.delivery.sieve)
MAX_TEXT = 64 * 1024
#: octets of the message replace or enclose make (a larger one is a runtime error: the message is kept)
MAX_MESSAGE = 2 << 20
#: RFC 5703 §6: fields of the enclosed message the new one copies when :headers does not set them
ENCLOSE_COPIED = ("date", "from", "to", "cc", "message-id")
#: fields of the replaced entity that describe its content (RFC 2045 §3, RFC 2183): dropped with it
CONTENT_FIELDS = ("mime-version", "content-type", "content-transfer-encoding", "content-disposition",
                  "content-id", "content-description", "content-language", "content-location", "content-md5")


@dataclass(frozen=True)
class Replace:
    """RFC 5703 §5: replace the current part (outside a loop: the message's body) with ``text`` (a
    text/plain part, or with ``mime`` a MIME entity: its own fields and body); ``subject`` and ``from_``
    set the message's Subject and From."""

    text: str
    mime: bool
    subject: str | None
    from_: str | None


@dataclass(frozen=True)
class Enclose:
    """RFC 5703 §6: the message becomes a message/rfc822 part of a new multipart/mixed one whose first
    part is ``text``; ``subject`` and ``headers`` ("Name: value" each) are the new message's."""

    text: str
    subject: str | None
    headers: tuple[str, ...]


def crlf(data: bytes) -> bytes:
    """``data`` with every line ending CRLF (RFC 5322 §2.3)."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def text_entity(text: str) -> bytes:
    """``text`` as a text/plain entity in UTF-8 (quoted-printable when it is not US-ASCII or has a line
    longer than RFC 5322 §2.1.1's 998 characters)."""
    if text.isascii() and all(len(line) <= 998 for line in text.splitlines()):
        return b"Content-Type: text/plain; charset=us-ascii\r\n\r\n" + crlf(text.encode())
    body = crlf(quopri.encodestring(crlf(text.encode("utf-8"))))
    return (b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
            + body)


def mime_entity(text: str) -> bytes:
    """A ``replace :mime`` string as an entity: its fields, the empty line, its body (a string without
    the empty line is taken as a body: text/plain by RFC 2045's default)."""
    data = crlf(text.encode("utf-8"))
    if data.startswith(b"\r\n") or b"\r\n\r\n" in data:
        return data
    if header_fields(data + b"\r\n\r\n") and not data.endswith(b"\r\n"):
        return data + b"\r\n\r\n"  # fields only: an empty body
    return b"\r\n" + data


def split_entity(entity: bytes) -> tuple[list[tuple[str, bytes]], bytes]:
    """An entity's fields and the rest (the empty line, then the body)."""
    if entity.startswith(b"\r\n"):
        return [], entity
    end = entity.find(b"\r\n\r\n")
    return header_fields(entity), entity[end + 2:]


def field_name(name: str) -> str:
    """A lower-cased field name as it is written: "content-type" -> "Content-Type"."""
    return "-".join(w[:1].upper() + w[1:] for w in name.split("-")).replace("Mime-", "MIME-").replace("-Id", "-ID")


def boundary(*inside: bytes) -> str:
    """A multipart boundary that occurs in none of ``inside`` (RFC 2046 §5.1.1)."""
    n = 0
    while True:
        b = f"=_mailsrv_sieve_{n:04d}"
        if not any(b.encode() in x for x in inside):
            return b
        n += 1


def enclosure(text: str, message: bytes) -> tuple[str, bytes]:
    """RFC 5703 §6: the new body (the empty line first) around ``message``, and its Content-Type."""
    first = text_entity(text)
    b = boundary(first, message)
    body = (b"\r\nThis is a MIME message.\r\n--" + b.encode() + b"\r\n" + first + b"\r\n--" + b.encode()
            + b"\r\nContent-Type: message/rfc822\r\nContent-Disposition: inline\r\n\r\n" + message
            + (b"" if message.endswith(b"\r\n") else b"\r\n") + b"--" + b.encode() + b"--\r\n")
    return f'multipart/mixed; boundary="{b}"', body


def one_address(value: str) -> bool:
    """``value`` is one mailbox with a domain ("a@b.example", "Name <a@b.example>"): ``replace :from``."""
    got = addresses_of([value.encode("utf-8", "surrogatepass")])
    return len(got) == 1 and not any(x.startswith("MISSING_") for x in got[0])


def header_field(line: str) -> tuple[str, bytes] | None:
    """An :headers string "Name: value" as (Name, value as written), None when it is not a field or
    names a protected one (RFC 5293 §7, as editheader)."""
    name, colon, value = line.partition(":")
    name = name.strip()
    if not colon or not name or any(not ("!" <= ch <= "~") or ch == ":" for ch in name):
        return None
    if name.lower() in PROTECTED or name.lower() in CONTENT_FIELDS:
        return None
    return name, encoded_value(value)
