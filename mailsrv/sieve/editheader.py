"""RFC 5293 editheader on the raw message: the edits a script made (mailsrv.sieve.interp keeps its own
view of the fields in step), applied to the header block that delivery stores. Pure: bytes in, bytes out.

An edit is ``("add", Name, value, last)`` or ``("delete", name, positions)``: the 0-based occurrences,
among that field's occurrences at that moment, to remove. Fields are split as
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
