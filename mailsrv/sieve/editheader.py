"""RFC 5293 editheader on the raw message: the edits a script made (mailsrv.sieve.interp keeps its own
view of the fields in step), applied to the header block that delivery stores. Pure: bytes in, bytes out.

An edit is ``("add", Name, value, last)`` or ``("delete", name, positions)``: the 0-based occurrences,
among that field's occurrences at that moment, to remove; RFC 5703 replace and enclose add
``("body", "", body, None)``: the message's new body (what follows the header block, its empty line
first; :func:`body_of`). Fields are split as
:func:`mailsrv.sieve.message.header_fields` splits them, so positions agree.
"""

from __future__ import annotations

from email.header import Header

#: RFC 5293 §7: fields no script may add or delete (trace and auto-reply safety); silently kept
PROTECTED = frozenset({"received", "auto-submitted", "return-path"})
#: characters of an added value (RFC 5322 §2.1.1: lines of at most 998; folded below that)
MAX_VALUE = 998

Edit = tuple[str, str, object, object]


def encoded_value(value: str) -> bytes:
    """An added field's value as it is written: one line, RFC 2047 words when it is not US-ASCII."""
    text = " ".join(value.split())[:MAX_VALUE]
    if text.isascii():
        return b" " + text.encode()
    return b" " + Header(text, "utf-8").encode(maxlinelen=76).replace("\n", "\r\n").encode()


def head_end(data: bytes) -> int:
    """Where the header block of ``data`` ends: the offset just past its last field's line end (the
    empty line follows), -1 when there is no empty line in ``data``."""
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        return end + 2
    end = data.find(b"\n\n")
    return end + 1 if end >= 0 else -1


def body_of(edits: list[Edit] | tuple[Edit, ...]) -> bytes | None:
    """The body the last RFC 5703 replace or enclose among ``edits`` made (None: the message's own)."""
    for e in reversed(edits):
        if e[0] == "body":
            assert isinstance(e[2], bytes)
            return e[2]
    return None


def apply_edits(head: bytes, edits: list[Edit] | tuple[Edit, ...]) -> bytes:
    """``head`` (a header block: fields, each line ending in CRLF or LF, without the empty line) with
    ``edits`` made in order."""
    entries: list[tuple[str, bytes]] = []  # (lower-cased name or "" for a line that is no field, lines)
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and entries:
            name, raw = entries[-1]
            entries[-1] = (name, raw + line)
            continue
        colon = line.find(b":")
        name = line[:colon].strip().decode("latin-1").lower() if colon > 0 else ""
        entries.append((name, line))
    for kind, name, a, b in edits:
        if kind == "body":  # the body's: body_of
            continue
        if kind == "add":
            assert isinstance(a, bytes)
            line = name.encode("ascii") + b":" + a + b"\r\n"
            entry = (name.lower(), line)
            if b:
                entries.append(entry)
            else:  # RFC 5293 §4: at the beginning, by default (after Return-Path: the first line stays it)
                entries.insert(1 if entries and entries[0][0] == "return-path" else 0, entry)
        else:
            assert isinstance(a, tuple)
            drop = set(a)
            seen = -1
            kept = []
            for e in entries:
                if e[0] == name:
                    seen += 1
                    if seen in drop:
                        continue
                kept.append(e)
            entries = kept
    return b"".join(raw for _, raw in entries)
