"""FETCH data items (RFC 9051 §7.5.2, RFC 3516 BINARY, RFC 7162 MODSEQ, RFC 8474, RFC 8514).

:func:`render` turns one message's metadata (and its bytes, when an item
needs them) into the parenthesised ``msg-att`` list of a FETCH response.
"""

from __future__ import annotations

import base64
import binascii
import quopri
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mailsrv.imap.flaglines import flags_text
from mailsrv.imap.grammar import FetchAtt, Section
from mailsrv.imap.response import date_time, flag_list, literal, string
from mailsrv.imap.structure import (
    NoSuchPart,
    Part,
    bodystructure,
    envelope,
    find_part,
    section_bytes,
)

#: items answered from the index alone
META_ONLY = {"FLAGS", "UID", "INTERNALDATE", "RFC822.SIZE", "MODSEQ", "EMAILID", "THREADID", "SAVEDATE"}


class UnknownCte(Exception):
    """BINARY of a part with a Content-Transfer-Encoding we cannot decode (RFC 3516 §4.3: [UNKNOWN-CTE])."""


def needs_content(atts: Iterable[FetchAtt]) -> bool:
    return any(a.name not in META_ONLY for a in atts)


#: answered by the cached MIME structure (``MessageStructure.imap_envelope`` / ``imap_bodystructure``)
STRUCTURE_ITEMS = {"ENVELOPE", "BODYSTRUCTURE"}


@dataclass(frozen=True)
class Plan:
    """What a FETCH needs besides the index: the structure, the header bytes, or the whole message."""

    names: frozenset[str]
    wants_structure: bool
    header_only: bool
    needs_body: bool
    #: only items of the index: no structure, no bytes
    index_only: bool
    #: every byte item is a BODY[...] section a cached structure can locate (no HEADER.FIELDS)
    ranged: bool


def _is_header_att(a: FetchAtt) -> bool:
    if a.name == "RFC822.HEADER":
        return True
    return (a.name in ("BODY", "BODY.PEEK") and a.section is not None and not a.section.parts
            and a.section.text in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT"))


def plan(atts: Iterable[FetchAtt]) -> Plan:
    atts = list(atts)
    names = frozenset(a.name for a in atts if a.section is None)
    structure = any(a.name in STRUCTURE_ITEMS or (a.name == "BODY" and a.section is None) for a in atts)
    header = any(_is_header_att(a) for a in atts)
    body = any(
        a.name not in META_ONLY and a.name not in STRUCTURE_ITEMS and not (a.name == "BODY" and a.section is None)
        and not _is_header_att(a)
        for a in atts
    )
    index_only = all(a.name in META_ONLY for a in atts)
    ranged = body and all(_is_ranged(a) or a.name in META_ONLY or a.name in STRUCTURE_ITEMS
                          or (a.name == "BODY" and a.section is None) for a in atts)
    return Plan(names, structure, header and not body, body, index_only, ranged)


def whole_message_att(atts: Iterable[FetchAtt]) -> FetchAtt | None:
    """The one streamable item when every other item is an index item, else None: BODY[] /
    BODY.PEEK[] (with a partial), RFC822, or BINARY[part] / BINARY.PEEK[part] (RFC 3516)."""
    atts = list(atts)
    whole = [a for a in atts if (a.name in ("BODY", "BODY.PEEK") and a.section == Section()) or a.name == "RFC822"
             or (a.name in ("BINARY", "BINARY.PEEK") and a.section is not None and not a.section.text)]
    if len(whole) != 1 or not all(a is whole[0] or a.name in META_ONLY for a in atts):
        return None
    return whole[0]


def _is_ranged(a: FetchAtt) -> bool:
    return (a.name in ("BODY", "BODY.PEEK") and a.section is not None
            and a.section.text in ("", "TEXT", "MIME", "HEADER"))


def sets_seen(atts: Iterable[FetchAtt]) -> bool:
    """BODY[...], BINARY[...], RFC822 and RFC822.TEXT set \\Seen (RFC 9051 §6.4.5)."""
    return any(
        (a.name in ("BODY", "BINARY") and a.section is not None) or a.name in ("RFC822", "RFC822.TEXT")
        for a in atts
    )


def _internaldate(ts: float) -> bytes:
    return date_time(datetime.fromtimestamp(int(ts), UTC))


def _decode_cte(part: Part, data: bytes) -> bytes:
    enc = (part.header(b"Content-Transfer-Encoding") or b"7bit").strip().lower()
    if enc in (b"7bit", b"8bit", b"binary"):
        return data
    if enc == b"base64":
        try:
            return base64.b64decode(re.sub(rb"[^A-Za-z0-9+/=]", b"", data), validate=False)
        except (binascii.Error, ValueError):
            raise UnknownCte from None
    if enc == b"quoted-printable":
        return quopri.decodestring(data)
    raise UnknownCte


def _binary(raw: bytes, root: Part, section: Section) -> bytes:
    if not section.parts:
        return raw
    try:
        part = find_part(root, section.parts)
    except NoSuchPart:
        raise UnknownCte from None
    if part.children or part.message is not None:
        return _binary_container(raw, section.parts)
    return _decode_cte(part, raw[part.body : part.end])


def _binary_container(raw: bytes, parts: tuple[int, ...]) -> bytes:
    """BINARY of a multipart or message/rfc822 part: RFC 3516 leaves the form open; as
    Dovecot, every base64/QP part inside is decoded and marked binary (mailsrv.mime)."""
    from mailsrv import mime

    part = mime.parse(raw).part(".".join(map(str, parts)))
    if part is None or any(p.encoding not in _KNOWN_CTE for p in part.walk()):
        raise UnknownCte  # RFC 3516 §4.3 (Dovecot refuses the whole container too)
    return b"".join(mime.iter_binary(raw, part))


_KNOWN_CTE = ("7bit", "8bit", "binary", "base64", "quoted-printable")


def _partial(data: bytes, partial: tuple[int, int] | None) -> tuple[bytes, bytes]:
    if partial is None:
        return data, b""
    start, length = partial
    return data[start : start + length], b"<%d>" % start


def render(
    atts: Iterable[FetchAtt],
    info: Any,
    raw: bytes | None,
    part: Part | None,
    *,
    uid: bool,
    modseq: bool,
    flags: frozenset[str] | None = None,
    precomputed: dict[str, bytes] | None = None,
    recent: bool = False,
    sections: dict[int, bytes] | None = None,
) -> bytes:
    """The ``( ... )`` of ``* n FETCH ( ... )``.

    ``uid``: UID FETCH (UID is always included, RFC 9051 §6.4.9); ``modseq``:
    CONDSTORE is on for the mailbox (MODSEQ is included, RFC 7162 §3.1.4.1).
    ``flags``: the flags to report when they changed implicitly (\\Seen).
    """
    out: list[bytes] = []
    seen_names: set[str] = set()

    def add(name: str, value: bytes) -> None:
        if name in seen_names:
            return
        seen_names.add(name)
        out.append(name.encode() + b" " + value)

    if uid:
        add("UID", str(info.uid).encode())
    for k, a in enumerate(atts):
        n = a.name
        if sections is not None and k in sections:
            # bytes already cut to the section (and partial) from the cached structure's offsets
            assert a.section is not None
            origin = b"<%d>" % a.partial[0] if a.partial else b""
            add(f"BODY[{a.section.spec().decode()}]{origin.decode()}", literal(sections[k]))
        elif n == "UID":
            add("UID", str(info.uid).encode())
        elif n == "FLAGS":
            add("FLAGS", flags_text(info.flags, recent))
        elif n == "INTERNALDATE":
            add("INTERNALDATE", _internaldate(info.internal_date))
        elif n == "RFC822.SIZE":
            add("RFC822.SIZE", str(info.size).encode())
        elif n == "MODSEQ":
            add("MODSEQ", b"(%d)" % info.modseq)
        elif n == "EMAILID":
            add("EMAILID", b"(" + info.email_id.encode() + b")")
        elif n == "THREADID":
            add("THREADID", b"(" + info.thread_id.encode() + b")" if info.thread_id else b"NIL")
        elif n == "SAVEDATE":
            add("SAVEDATE", _internaldate(info.saved_date))
        elif precomputed and n in precomputed and a.section is None:
            add(n, precomputed[n])
        else:
            assert raw is not None and part is not None
            if n == "ENVELOPE":
                add("ENVELOPE", envelope(part))
            elif n == "BODYSTRUCTURE":
                add("BODYSTRUCTURE", bodystructure(raw, part, True))
            elif n == "BODY" and a.section is None:
                add("BODY", bodystructure(raw, part, False))
            elif n == "RFC822":
                add("RFC822", literal(raw))
            elif n == "RFC822.HEADER":
                add("RFC822.HEADER", literal(raw[part.start : part.body]))
            elif n == "RFC822.TEXT":
                add("RFC822.TEXT", literal(raw[part.body : part.end]))
            elif n in ("BODY", "BODY.PEEK"):
                assert a.section is not None
                data, origin = _partial(section_bytes(raw, part, a.section), a.partial)
                add(f"BODY[{a.section.spec().decode()}]{origin.decode()}", literal(data))
            elif n in ("BINARY", "BINARY.PEEK"):
                assert a.section is not None
                data, origin = _partial(_binary(raw, part, a.section), a.partial)
                name = f"BINARY[{a.section.spec().decode()}]{origin.decode()}"
                # RFC 3516 §4.3: literal8 when the data holds NUL.
                add(name, (b"~" + literal(data)) if b"\x00" in data else literal(data))
            elif n == "BINARY.SIZE":
                assert a.section is not None
                add(f"BINARY.SIZE[{a.section.spec().decode()}]", str(len(_binary(raw, part, a.section))).encode())
    if modseq:
        add("MODSEQ", b"(%d)" % info.modseq)
    if flags is not None:
        add("FLAGS", flags_text(flags, recent))
    return b"(" + b" ".join(out) + b")"


def render_index(atts: Iterable[FetchAtt], info: Any, *, uid: bool, modseq: bool,
                 flag_cache: dict[frozenset[str], bytes], recent: bool = False) -> bytes:
    """:func:`render` for index items only; ``flag_cache`` shares the FLAGS text of equal flag sets
    (of messages that are not \\Recent in the session)."""
    out: list[bytes] = []
    seen: set[str] = set()
    if uid:
        out.append(b"UID %d" % info.uid)
        seen.add("UID")
    for a in atts:
        n = a.name
        if n in seen:
            continue
        seen.add(n)
        if n == "FLAGS":
            flags = info.flags
            text = flags_text(flags, True) if recent else flag_cache.get(flags)
            if text is None:
                text = flag_cache[flags] = flags_text(flags, False)
            out.append(b"FLAGS " + text)
        elif n == "UID":
            out.append(b"UID %d" % info.uid)
        elif n == "RFC822.SIZE":
            out.append(b"RFC822.SIZE %d" % info.size)
        elif n == "MODSEQ":
            out.append(b"MODSEQ (%d)" % info.modseq)
        elif n == "INTERNALDATE":
            out.append(b"INTERNALDATE " + _internaldate(info.internal_date))
        elif n == "EMAILID":
            out.append(b"EMAILID (" + info.email_id.encode() + b")")
        elif n == "THREADID":
            out.append(b"THREADID " + (b"(" + info.thread_id.encode() + b")" if info.thread_id else b"NIL"))
        elif n == "SAVEDATE":
            out.append(b"SAVEDATE " + _internaldate(info.saved_date))
    if modseq and "MODSEQ" not in seen:
        out.append(b"MODSEQ (%d)" % info.modseq)
    return b"(" + b" ".join(out) + b")"


def flags_response(seq: int, info: Any, *, uid: bool, modseq: bool, recent: bool = False) -> bytes:
    """``* n FETCH ([UID n] FLAGS (...) [MODSEQ (n)])`` for a flag change."""
    items = [b"UID %d" % info.uid] if uid else []
    items.append(b"FLAGS " + flags_text(info.flags, recent))
    if modseq:
        items.append(b"MODSEQ (%d)" % info.modseq)
    return b"* %d FETCH (" % seq + b" ".join(items) + b")\r\n"


__all__ = ["render", "flags_response", "needs_content", "sets_seen", "UnknownCte", "string", "literal", "flag_list"]
