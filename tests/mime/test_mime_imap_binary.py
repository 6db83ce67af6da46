"""The IMAP FETCH BINARY / BINARY.SIZE of a multipart or message/rfc822 part goes
through mailsrv.mime.iter_binary (RFC 3516; Dovecot's form, see test_mime_dovecot)."""

from __future__ import annotations

import pytest
from samples import BINARY_CONTAINERS, crlf

from mailsrv import mime
from mailsrv.imap import fetch, structure
from mailsrv.imap.grammar import FetchAtt, Section


def _fetch(raw: bytes, *atts: FetchAtt) -> bytes:
    return fetch.render(atts, None, raw, structure.parse(raw), uid=False, modseq=False)


def test_binary_of_containers_over_imap() -> None:
    raw = BINARY_CONTAINERS
    s = mime.parse(raw)
    for n, section in ((1, "1"), (2, "2")):
        part = s.part(section)
        assert part is not None
        want = b"".join(mime.iter_binary(raw, part))
        assert b"Content-Transfer-Encoding: binary" in want
        out = _fetch(
            raw, FetchAtt("BINARY.PEEK", Section((n,))), FetchAtt("BINARY.SIZE", Section((n,)))
        )
        literal = b"~{%d}\r\n" % len(want) if b"\x00" in want else b"{%d}\r\n" % len(want)
        assert out == b"(BINARY[%d] %s%s BINARY.SIZE[%d] %d)" % (n, literal, want, n, len(want))
    # a leaf is still decoded by the IMAP fetch code
    assert _fetch(raw, FetchAtt("BINARY.SIZE", Section((1, 2)))) == b"(BINARY.SIZE[1.2] 9)"


def test_binary_of_container_with_unknown_encoding_is_refused() -> None:
    raw = crlf(
        "Content-Type: multipart/mixed; boundary=o\n\n--o\nContent-Type: multipart/mixed; boundary=i\n\n"
        "--i\nContent-Transfer-Encoding: x-uuencode\n\nbegin 644 x\n--i--\n--o--\n"
    )
    with pytest.raises(fetch.UnknownCte):
        _fetch(raw, FetchAtt("BINARY.SIZE", Section((1,))))
