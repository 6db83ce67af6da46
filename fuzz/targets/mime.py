"""MIME: the message parser and what IMAP and JMAP read from its structure; header decoding
(RFC 2047 words, RFC 2231 parameters); addresses (RFC 5322 headers, RFC 5321 paths, SMTPUTF8)."""

from __future__ import annotations

from fuzz.harness import Target, corpus_header_values, corpus_messages
from mailsrv import mime
from mailsrv.mime import headers
from mailsrv.smtp import grammar as smtp_grammar

LIMITS = [mime.MimeLimits(), mime.MimeLimits(max_depth=3, max_parts=20, max_value=40)]

SEED_MESSAGES = [
    b"Subject: =?utf-8?q?h=C3=A9?=\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
    b"Content-Type: text/plain; charset*=utf-8''%C3%A9\r\nContent-Transfer-Encoding: base64\r\n\r\naGk=\r\n"
    b"--b\r\nContent-Type: message/rfc822\r\n\r\nFrom: a@b\r\n\r\nx\r\n--b--\r\n",
]


def _message(data: bytes) -> None:
    """Parse never raises; every view of the structure answers; the cache round-trips."""
    raw = data[1:]
    st = mime.parse(raw, LIMITS[data[0] % 2] if data else None)
    assert mime.MessageStructure.from_cache(st.to_cache()) == st
    st.imap_envelope()
    st.imap_bodystructure(extended=True)
    st.imap_bodystructure(extended=False)
    _ = (st.subject, st.date, st.sent_at, st.message_id, st.in_reply_to, st.references)
    st.addresses(b"from")
    for part in st.parts():
        assert 0 <= part.header_start <= part.body_start <= part.body_end <= len(raw)
        _ = (part.params, part.charset, part.encoding, part.disposition, part.filename, part.language,
             part.content_id, part.description, part.location, part.lines)
        rng = st.section_range(part.section + ".MIME" if part.section else "HEADER")
        assert rng is None or 0 <= rng[0] <= rng[1] <= len(raw)
        assert mime.binary_size(raw, part) == sum(len(c) for c in mime.iter_binary(raw, part, 512))
        assert mime.decoded_size(raw, part) == len(mime.decoded_body(raw, part))
        mime.part_text(raw, part, 2000)
    mime.header_fields(raw, st, "", (b"subject", b"from"), False)
    mime.jmap_body_parts(raw, st)
    mime.preview(raw, st)


def _header(data: bytes) -> None:
    """Header values: nothing here raises on bad input (mailsrv/mime/headers.py)."""
    headers.decode_words(data)
    mime.decode_header(data)
    headers.merge_params(headers.parse_params_lenient(data), "utf-8")
    headers.mime_token(data)
    headers.message_ids(data)


def _address(data: bytes) -> None:
    for a in headers.parse_addresses(data):
        assert a.mailbox is None or isinstance(a.mailbox, str)
    mime.jmap_addresses(data, grouped=True)
    for utf8 in (False, True):
        try:
            smtp_grammar.parse_mailbox(data, utf8=utf8)
        except smtp_grammar.SmtpError:
            pass


TARGETS = [
    Target("mime_message", _message, lambda: [b"\x00" + m for m in corpus_messages()] + [b"\x01" + m for m in SEED_MESSAGES],
           max_len=32768),
    Target("mime_header", _header,
           lambda: corpus_header_values((b"subject", b"content-type", b"content-disposition", b"message-id",
                                         b"references"))[:400]
           + [b"=?iso-8859-1?b?aGk=?= =?utf-8?q?a_b?=", b"attachment; filename*0*=utf-8''a%20; filename*1=b"],
           max_len=4096),
    Target("address", _address,
           lambda: corpus_header_values((b"from", b"to", b"cc", b"reply-to"))[:400]
           + [b'"J\\"o" <j@x.example>, group: a@b, <@r:c@d>;', b"j\xc3\xb6rg@b\xc3\xbccher.example"],
           max_len=4096),
]
