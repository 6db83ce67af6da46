"""Pure helpers over a message's header block: split fields, read tag=value lists, addresses in From.

Bytes in, values out; no I/O. Header names compare case-insensitively.
"""

from __future__ import annotations

import re
from email.utils import getaddresses

#: A header block as :func:`split_fields` returns it: (lower-cased name, unfolded value, raw bytes) per field.
Fields = list[tuple[bytes, bytes, bytes]]

# RFC 5322 §2.2: a field name is printable US-ASCII except ':'.
_FIELD = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)[ \t]*:")


def header_end(data: bytes) -> int:
    """Offset just past the blank line ending the header block (or len(data) when there is none)."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        i = data.find(sep)
        if i >= 0:
            return i + len(sep)
    return len(data)


def split_fields(data: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """The header fields as (lower-cased name, unfolded value, raw field bytes incl. line ends).

    Lines that are neither a field nor a continuation end the header block
    (RFC 5322 §2.2); the raw bytes of all fields concatenate back to that prefix.
    """
    head = data[:header_end(data)]
    out: list[tuple[bytes, bytes, bytes]] = []
    for line in head.splitlines(keepends=True):
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t") and out:
            name, _, raw = out[-1]
            out[-1] = (name, b"", raw + line)
            continue
        if not _FIELD.match(line):
            break
        out.append((b"", b"", line))
    fields = []
    for _, _, raw in out:
        name, _, value = raw.partition(b":")
        unfolded = re.sub(rb"\r?\n(?=[ \t])", b"", value).strip()
        fields.append((name.strip().lower(), unfolded, raw))
    return fields


def get_all(fields: list[tuple[bytes, bytes, bytes]], name: str) -> list[str]:
    key = name.lower().encode()
    return [v.decode("utf-8", "replace") for n, v, _ in fields if n == key]


def tag_list(value: str) -> dict[str, str]:
    """RFC 6376 §3.2 tag=value list (whitespace removed around names and values); later tags win.

    A DMARC record (RFC 7489 §6.4) uses the same syntax.
    """
    tags: dict[str, str] = {}
    for part in value.split(";"):
        name, sep, val = part.partition("=")
        name = name.strip()
        if not sep or not name:
            continue
        tags[name.lower() if name.isascii() else name] = re.sub(r"\s+", "", val) if name.lower() in (
            "b", "bh", "p") else val.strip()
    return tags


def from_domains(fields: list[tuple[bytes, bytes, bytes]]) -> list[str]:
    """Domains of the RFC5322.From addresses (RFC 7489 §6.6.1), lower-cased, in order."""
    values = get_all(fields, "from")
    out = []
    for _, addr in getaddresses(values):
        _, at, domain = addr.rpartition("@")
        if at and domain:
            out.append(domain.strip().rstrip(".").lower())
    return out
