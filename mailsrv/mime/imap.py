"""IMAP wire forms of a part tree: ENVELOPE, BODY and BODYSTRUCTURE (RFC 3501 §7.4.2, RFC 9051 §7.5.2).

Output matches Dovecot 2.3 byte for byte where the RFC leaves a choice
(quoting, literal use, defaults); tests/mime/fixtures/dovecot.json holds
Dovecot's answers for the corpus.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailsrv.mime.headers import mime_token, parse_addresses, unfold

if TYPE_CHECKING:
    from mailsrv.mime.structure import Part

__all__ = ["bodystructure", "envelope", "nstring", "string_for_humans"]

#: Dovecot switches from a quoted string to a literal after this many escapes.
_MAX_ESCAPES = 4


_EMPTY_TEXT = {
    False: b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0)',
    True: b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0 NIL NIL NIL NIL)',
}


def nstring(v: bytes | None) -> bytes:
    """RFC 3501 §4.3 nstring: NIL, a quoted string, or a literal (CR, LF, 8-bit, many escapes)."""
    if v is None:
        return b"NIL"
    escapes = v.count(b'"') + v.count(b"\\")
    if escapes > _MAX_ESCAPES or b"\r" in v or b"\n" in v or not v.isascii() or b"\x00" in v:
        return b"{%d}\r\n%s" % (len(v), v)
    if escapes:
        v = v.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    return b'"' + v + b'"'


def string_for_humans(v: bytes) -> bytes:
    """A display string (Subject, address names): CR/LF removed, white space runs
    collapsed to one space and trimmed, NUL -> 0x80; written as a literal when
    anything had to change or needs escaping (Dovecot's rule)."""
    plain = (
        b"\t" not in v
        and b"\r" not in v
        and b"\n" not in v
        and b"  " not in v
        and b'"' not in v
        and b"\\" not in v
        and b"\x00" not in v
        and v.isascii()
        and not v.startswith(b" ")
        and not v.endswith(b" ")
    )
    if plain:
        return b'"' + v + b'"'
    text = b" ".join(
        v.replace(b"\x00", b"\x80")
        .replace(b"\r", b"")
        .replace(b"\n", b"")
        .replace(b"\t", b" ")
        .split(b" ")
    )
    # collapse runs of spaces, trim both ends
    text = b" ".join(w for w in text.split(b" ") if w)
    if not text:
        return b'""'
    return b"{%d}\r\n%s" % (len(text), text)


def _value(v: bytes) -> bytes:
    """A header value as Dovecot hands it to the envelope: leading white space
    removed, each fold kept as a bare LF, the final line end removed."""
    v = v.replace(b"\r\n", b"\n").lstrip(b" \t")
    if v.endswith(b"\n"):
        v = v[:-1]
    nl = v.rfind(b"\n")
    if nl >= 0 and not v[nl + 1 :].strip(b" \t"):
        v = v[:nl] + v[nl + 1 :]  # a white-space-only last line is no fold (as Dovecot)
    return v


def _address_list(v: bytes | None) -> bytes:
    if v is None:
        return b"NIL"
    addrs = parse_addresses(v)
    if not addrs:
        return b"NIL"
    out = [b"("]
    for a in addrs:
        name = b"NIL" if a.name is None else string_for_humans(a.name.encode("latin-1"))
        out.append(
            b"(%s %s %s %s)"
            % (
                name,
                nstring(None if a.route is None else a.route.encode("latin-1")),
                nstring(None if a.mailbox is None else a.mailbox.encode("latin-1")),
                nstring(None if a.host is None else a.host.encode("latin-1")),
            )
        )
    out.append(b")")
    return b"".join(out)


def envelope(fields: dict[bytes, bytes]) -> bytes:
    """RFC 3501 §7.4.2 ENVELOPE from a message's raw header fields (name -> value)."""
    g = fields.get
    date, subject = g(b"date"), g(b"subject")
    frm = g(b"from")
    memo: dict[bytes | None, bytes] = {}

    def _addresses(v: bytes | None) -> bytes:
        # Sender and Reply-To default to From (RFC 3501 §7.4.2): format each value once
        out = memo.get(v)
        if out is None:
            out = memo[v] = _address_list(v)
        return out

    out = [
        b"(",
        nstring(None if date is None else _value(date)),
        b" ",
        b"NIL" if subject is None else string_for_humans(_value(subject)),
        b" ",
        _addresses(frm),
        b" ",
        _addresses(g(b"sender", frm)),
        b" ",
        _addresses(g(b"reply-to", frm)),
        b" ",
        _addresses(g(b"to")),
        b" ",
        _addresses(g(b"cc")),
        b" ",
        _addresses(g(b"bcc")),
        b" ",
    ]
    irt, mid = g(b"in-reply-to"), g(b"message-id")
    out += [
        nstring(None if irt is None else _value(irt)),
        b" ",
        nstring(None if mid is None else _value(mid)),
        b")",
    ]
    return b"".join(out)


def _params(params: list[tuple[bytes, bytes]]) -> bytes:
    if not params:
        return b"NIL"
    return b"(" + b" ".join(nstring(k) + b" " + nstring(v) for k, v in params) + b")"


def _dsp(part: Part) -> bytes:
    d = part.raw_disposition()
    if d is None:
        return b"NIL"
    value, params = d
    return b"(" + nstring(value) + b" " + _params(params) + b")"


def _lang(part: Part) -> bytes:
    v = part.field(b"content-language")
    if v is None:
        return b"NIL"
    langs = [w for w in unfold(v).replace(b",", b" ").split() if w]
    if not langs:
        return b"NIL"
    if len(langs) == 1:
        return nstring(langs[0])
    return b"(" + b" ".join(nstring(x) for x in langs) + b")"


def _fieldval(part: Part, name: bytes) -> bytes:
    v = part.field(name)
    return nstring(None if v is None else unfold(v).strip(b" \t"))


def bodystructure(part: Part, extended: bool = True) -> bytes:
    """RFC 3501 §7.4.2 BODYSTRUCTURE (``extended``) or BODY of the content of ``part``.

    For a message (root or embedded) ``part`` is the message node itself; a
    multipart gives the multipart form, anything else a single part.
    """
    out: list[bytes] = []
    _write(part, extended, out)
    return b"".join(out)


def _write(part: Part, ext: bool, out: list[bytes]) -> None:
    ctype, sub = part.raw_type()
    if part.is_multipart:
        out.append(b"(")
        kids = part.children
        if kids:
            for k in kids:
                _write(k, ext, out)
        else:
            # deviation: a multipart without parts still needs one body (RFC 3501 body-type-mpart)
            out.append(_EMPTY_TEXT[ext])
        out.append(b" " + nstring(sub))
        if ext:
            out += [
                b" ",
                _params(part.raw_params()),
                b" ",
                _dsp(part),
                b" ",
                _lang(part),
                b" ",
                _fieldval(part, b"content-location"),
            ]
        out.append(b")")
        return
    if ctype.lower() == b"message" and sub.lower() == b"rfc822":
        ctype, sub = b"message", b"rfc822"
    if not _is_mime(part):
        _write_plain(part, ext, out)
        return
    # RFC 2045 §6.1 mechanism := token (comments allowed around it); anything else
    # is no valid encoding and shows as the default, as in Dovecot
    enc = part.field(b"content-transfer-encoding")
    enc_v, clean = mime_token(unfold(enc)) if enc is not None else (b"", False)
    if not clean:
        enc_v = b""
    out += [
        b"(",
        nstring(ctype),
        b" ",
        nstring(sub),
        b" ",
        _params(part.raw_params()),
        b" ",
        _fieldval(part, b"content-id"),
        b" ",
        _fieldval(part, b"content-description"),
        b" ",
        # RFC 2045 §6.1 default; any spelling of 7bit is written "7bit" (as Dovecot does)
        nstring(b"7bit" if not enc_v or enc_v.lower() == b"7bit" else enc_v),
        b" %d" % part.size,
    ]
    if ctype.lower() == b"text":
        out.append(b" %d" % part.lines)
    elif part.message is not None:
        out += [b" ", envelope(part.message.fields()), b" "]
        _write(part.message, ext, out)
        out.append(b" %d" % part.lines)
    elif ctype == b"message" and sub == b"rfc822":
        # an encoded message/rfc822 is not parsed (RFC 2046 §5.2.1); Dovecot shows it empty
        out.append(
            b" (NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL) " + _EMPTY_TEXT[ext] + b" %d" % part.lines
        )
    if ext:
        out += [
            b" ",
            _fieldval(part, b"content-md5"),
            b" ",
            _dsp(part),
            b" ",
            _lang(part),
            b" ",
            _fieldval(part, b"content-location"),
        ]
    out.append(b")")


def _is_mime(part: Part) -> bool:
    """Whether the Content-* fields of ``part`` count: always inside a multipart; for a
    message (root or embedded) only with MIME-Version or Content-Type.

    RFC 2045 §4: without MIME-Version a reader may apply local conventions;
    Dovecot (and so we, for BODY/BODYSTRUCTURE) then treats the message as plain
    RFC 5322 text and ignores its Content-* fields (a Content-Type alone counts).
    """
    if not part.is_message:
        return True
    return part.field(b"mime-version") is not None or part.field(b"content-type") is not None


def _write_plain(part: Part, ext: bool, out: list[bytes]) -> None:
    """A non-MIME message body: text/plain us-ascii 7bit, no other Content-* data."""
    out.append(
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" %d %d%s)'
        % (part.size, part.lines, b" NIL NIL NIL NIL" if ext else b"")
    )
