"""Modified UTF-7 mailbox names (RFC 3501 §5.1.3), for IMAP4rev1 clients without UTF8=ACCEPT.

Internally mailbox names are str; IMAP4rev2 / UTF8=ACCEPT clients see UTF-8,
the others see modified UTF-7.
"""

from __future__ import annotations

import base64


class Mutf7Error(ValueError):
    """Bytes that are not valid modified UTF-7."""


def encode(name: str) -> bytes:
    """str -> modified UTF-7: printable ASCII as is ("&" as "&-"), the rest as &base64-."""
    out = bytearray()
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.extend(b"&" + base64.b64encode(raw).rstrip(b"=").replace(b"/", b",") + b"-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.extend(b"&-" if ch == "&" else ch.encode("ascii"))
        else:
            pending.append(ch)
    flush()
    return bytes(out)


def decode(data: bytes) -> str:
    """Modified UTF-7 -> str. Raises :class:`Mutf7Error` for malformed input.

    RFC 3501 §5.1.3: printable US-ASCII except "&" represents itself; "&-" is "&";
    "&" base64 (with "," for "/") "-" is UTF-16BE.
    """
    out: list[str] = []
    i = 0
    n = len(data)
    while i < n:
        c = data[i]
        if c == 0x26:
            j = data.find(b"-", i + 1)
            if j < 0:
                raise Mutf7Error("unterminated &-sequence")
            chunk = data[i + 1 : j]
            if not chunk:
                out.append("&")
            else:
                b64 = chunk.replace(b",", b"/")
                if b"/" in chunk or b"=" in chunk:
                    raise Mutf7Error("invalid base64 in &-sequence")
                try:
                    raw = base64.b64decode(b64 + b"=" * (-len(b64) % 4), validate=True)
                    text = raw.decode("utf-16-be")
                except (ValueError, UnicodeDecodeError):
                    raise Mutf7Error("invalid &-sequence") from None
                # Encoded printable ASCII would have a shorter form: not canonical.
                if any(0x20 <= ord(ch) <= 0x7E for ch in text):
                    raise Mutf7Error("printable ASCII inside an &-sequence")
                out.append(text)
            i = j + 1
        elif 0x20 <= c <= 0x7E:
            out.append(chr(c))
            i += 1
        else:
            raise Mutf7Error("8-bit or control character in a modified UTF-7 name")
    return "".join(out)
