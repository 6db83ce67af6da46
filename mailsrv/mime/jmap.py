"""RFC 8621 §4.1.4 body part lists (bodyStructure, textBody, htmlBody, attachments) and addresses."""

from __future__ import annotations

from typing import Any

from mailsrv.mime.headers import decode_words, parse_addresses
from mailsrv.mime.structure import MessageStructure, Part

__all__ = ["jmap_addresses", "jmap_body_parts", "split_body", "text_parts"]


def _inline_media(p: Part) -> bool:
    return p.type in ("image", "audio", "video")


def split_body(structure: MessageStructure) -> tuple[list[Part], list[Part], list[Part]]:
    """(textBody, htmlBody, attachments) by the algorithm of RFC 8621 §4.1.4."""
    text: list[Part] = []
    html: list[Part] = []
    atts: list[Part] = []

    def walk(
        parts: list[Part], mtype: str, in_alt: bool, tb: list[Part] | None, hb: list[Part] | None
    ) -> None:
        tlen = len(tb) if tb is not None else -1
        hlen = len(hb) if hb is not None else -1
        for i, p in enumerate(parts):
            mt = p.mime_type
            inline = (
                p.disposition != "attachment"
                and (mt in ("text/plain", "text/html") or _inline_media(p))
                and (i == 0 or (mtype != "related" and (_inline_media(p) or not p.filename)))
            )
            if p.is_multipart:
                sub = p.subtype
                walk(p.children, sub, in_alt or sub == "alternative", tb, hb)
            elif inline:
                if mtype == "alternative":
                    if mt == "text/plain" and tb is not None:
                        tb.append(p)
                    elif mt == "text/html" and hb is not None:
                        hb.append(p)
                    else:
                        atts.append(p)
                    continue
                if in_alt:
                    if mt == "text/plain":
                        hb = None
                    if mt == "text/html":
                        tb = None
                if tb is not None:
                    tb.append(p)
                if hb is not None:
                    hb.append(p)
                if (tb is None or hb is None) and _inline_media(p):
                    atts.append(p)
            else:
                atts.append(p)
        if mtype == "alternative" and tb is not None and hb is not None:
            if tlen == len(tb) and hlen != len(hb):
                tb.extend(hb[hlen:])
            if hlen == len(hb) and tlen != len(tb):
                hb.extend(tb[tlen:])

    root = structure.root
    top = [root] if not root.is_multipart else [root]
    walk(top, "mixed", False, text, html)
    return text, html, atts


def text_parts(structure: MessageStructure) -> list[Part]:
    """The parts a reader sees as the text: textBody, else htmlBody."""
    text, html, _ = split_body(structure)
    return [p for p in text if p.type == "text"] or [p for p in html if p.type == "text"]


def _part_id(p: Part) -> str | None:
    if p.is_multipart:
        return None
    return p.section or "1"


def _body_part(raw: Any, p: Part, deep: bool) -> dict[str, Any]:
    from mailsrv.mime.body import decoded_size, iter_header_lines

    headers = []
    if raw is not None:
        for _name, s, e in iter_header_lines(raw, p.header_start, p.body_start):
            field = bytes(raw[s:e])
            colon = field.find(b":")
            headers.append(
                {
                    "name": field[:colon].decode("latin-1").strip(),
                    "value": field[colon + 1 :].rstrip(b"\r\n").decode("utf-8", "replace"),
                }
            )
    d: dict[str, Any] = {
        "partId": _part_id(p),
        "blobId": None,
        "size": decoded_size(raw, p) if raw is not None and not p.is_multipart else p.size,
        "headers": headers,
        "name": p.filename,
        "type": p.mime_type,
        "charset": p.charset if p.type == "text" else p.params.get("charset"),
        "disposition": p.disposition,
        "cid": p.content_id,
        "language": p.language,
        "location": p.location,
    }
    if p.is_multipart and deep:
        d["subParts"] = [_body_part(raw, k, True) for k in p.children]
    return d


def jmap_body_parts(raw: Any, structure: MessageStructure) -> dict[str, Any]:
    """RFC 8621 Email properties bodyStructure, textBody, htmlBody, attachments, hasAttachment.

    ``raw`` may be None: sizes are then encoded sizes and ``headers`` is empty.
    ``partId`` is the IMAP section number; ``blobId`` is left None for the store to fill.
    """
    text, html, atts = split_body(structure)
    return {
        "bodyStructure": _body_part(raw, structure.root, True),
        "textBody": [_body_part(raw, p, False) for p in text],
        "htmlBody": [_body_part(raw, p, False) for p in html],
        "attachments": [_body_part(raw, p, False) for p in atts],
        "hasAttachment": bool(atts),
    }


def jmap_addresses(value: bytes, grouped: bool = False) -> list[dict[str, Any]]:
    """RFC 8621 §4.1.2.3 EmailAddress list (or §4.1.2.4 groups with ``grouped``)."""
    flat: list[dict[str, Any]] = []
    groups: list[dict[str, Any]] = [{"name": None, "addresses": flat}]
    cur = flat
    for a in parse_addresses(value):
        if a.host is None and a.mailbox is not None and a.name is None and a.route is None:
            cur = []
            groups.append({"name": decode_words(a.mailbox.encode("latin-1")), "addresses": cur})
            continue
        if a.mailbox is None:
            cur = flat if not grouped else []
            if grouped:
                groups.append({"name": None, "addresses": cur})
            continue
        email = a.mailbox if a.host in (None, "MISSING_DOMAIN") else f"{a.mailbox}@{a.host}"
        entry = {
            "name": decode_words(a.name.encode("latin-1")) if a.name else None,
            "email": email.encode("latin-1").decode("utf-8", "replace"),
        }
        cur.append(entry)
        if not grouped and cur is not flat:
            flat.append(entry)
    if grouped:
        return [g for g in groups if g["addresses"] or g["name"] is not None]
    return flat
