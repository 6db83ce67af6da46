"""Hypothesis: random and mutated messages; both scanners agree and nothing raises."""

from __future__ import annotations

from pathlib import Path

import pytest
from corpus_files import message_paths, normalise
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailsrv import mime
from mailsrv._speedups import mime_py

try:
    from mailsrv._speedups import mime_c
except ImportError:  # the guard test reports it
    mime_c = None  # type: ignore[assignment]

pytestmark = pytest.mark.speedups

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"
SEEDS = (
    [normalise((CORPUS / rel).read_bytes())[:20000] for rel in message_paths(CORPUS)]
    if CORPUS.is_dir()
    else []
)

LIMITS = [(100, 5000, 65536), (3, 20, 40)]

# Fragments that steer random input into the interesting states.
TOKENS = [
    b"\r\n",
    b"\n",
    b"\r\n\r\n",
    b"--",
    b"--b",
    b"--b--",
    b"--bb",
    b" ",
    b"\t",
    b":",
    b";",
    b'"',
    b"\\",
    b"(",
    b")",
    b"<",
    b">",
    b"@",
    b",",
    b"=?utf-8?B?5Lit?=",
    b"=?gb2312?Q?=D6=D0?=",
    b"=?",
    b"?=",
    b"Content-Type: multipart/mixed; boundary=b\r\n",
    b"Content-Type: multipart/digest; boundary=bb\r\n",
    b"Content-Type: multipart/mixed; boundary*=us-ascii'en'%62\r\n",
    b"Content-Type: multipart/mixed; boundary*0*=''%62; boundary*1=b\r\n",
    b"Content-Type: multipart/mixed; boundary*1=b; boundary*0=b; BOUNDARY*2*=%\r\n",
    b"Content-Type: application/pdf; name=my file.pdf ; x\r\n",
    b"Content-Type: message/rfc822\r\n",
    b"Content-Type: text/plain; charset*=utf-8''%E4%B8%AD; name*0*=x; name*1=y\r\n",
    b"Content-Type: text\r\n",
    b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n",
    b'Content-Disposition: attachment; filename="a b.txt"\r\n',
    b'From: "a, b" <x@y>, g: c@d, e (f);\r\n',
    b"To: <@r:x@y>\r\n",
    b"Subject: hi\r\n",
    b"Message-ID: <m@x>\r\n",
    b"\xff\xfe\x80",
    b"QUJD==\r\n",
    b"=E4=B8=AD=\r\n",
]

messages = st.one_of(
    st.binary(max_size=2000),
    st.lists(st.sampled_from(TOKENS) | st.binary(max_size=8), max_size=120).map(b"".join),
)


def mutate(seed: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    data = bytearray(seed)
    for pos, cut, insert in edits:
        if data:
            p = pos % (len(data) + 1)
            data[p : p + cut] = insert
        else:
            data += insert
    return bytes(data)


edits = st.lists(
    st.tuples(
        st.integers(0, 1 << 20),
        st.integers(0, 64),
        st.sampled_from(TOKENS) | st.binary(max_size=16),
    ),
    max_size=12,
)


def check(raw: bytes) -> None:
    """Both scanners agree; every public function answers without raising."""
    for lim in LIMITS:
        tree = mime_py.scan(raw, *lim)
        if mime_c is not None:
            assert mime_c.scan(raw, *lim) == tree
        s = mime.MessageStructure(tree)
        s.imap_envelope()
        s.imap_bodystructure(True)
        s.imap_bodystructure(False)
        assert mime.MessageStructure.from_cache(s.to_cache()) == s
        parts = list(s.parts())
        assert len(parts) <= lim[1] + 1
        for p in parts:
            assert 0 <= p.header_start <= p.body_start <= p.body_end <= len(raw)
            p.filename, p.charset, p.content_id, p.language, p.location, p.description  # noqa: B018
            size = mime.binary_size(raw, p)
            assert size == sum(len(c) for c in mime.iter_binary(raw, p, chunk=1024))
            assert 0 <= mime.decoded_size(raw, p)
            if p.section:
                assert s.part(p.section) is not None
                assert s.section_range(p.section + ".MIME") is not None
        s.subject, s.references, s.message_id, s.in_reply_to, s.sent_at  # noqa: B018
        for name in (b"from", b"to", b"cc"):
            s.addresses(name)
            mime.jmap_addresses(s.field(name) or b"")
        mime.jmap_body_parts(raw, s)
        mime.preview(raw, s)
        mime.header_fields(raw, s, "", [b"subject", b"from"])


def test_compiled_twin_present() -> None:
    assert mime_c is not None, "mailsrv._speedups.mime_c is not built"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_random_messages(raw: bytes) -> None:
    check(raw)
    check(raw.replace(b"\r\n", b"\n"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10**6), edits)
def test_mutated_corpus_messages(index: int, changes: list[tuple[int, int, bytes]]) -> None:
    assert SEEDS, "corpus missing"
    check(mutate(SEEDS[index % len(SEEDS)], changes))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_header_helpers_never_raise(value: bytes) -> None:
    mime.parse_addresses(value)
    mime.jmap_addresses(value, grouped=True)
    mime.decode_header(value)
    from mailsrv.mime.headers import merge_params, message_ids

    message_ids(value)
    merge_params([(b"name*0*", value), (b"name*1", value), (b"filename", value)])
    assert mime_py.parse_content_type(value) == (mime_c or mime_py).parse_content_type(value)
    assert mime_py.parse_params(value, 0) == (mime_c or mime_py).parse_params(value, 0)
    from mailsrv.mime.headers import mime_token, parse_params_lenient

    parse_params_lenient(value)
    token, clean = mime_token(value)
    assert token in value and (token or not clean)
    params = mime_py.parse_params(value, 0) + ((b"boundary*", value), (b"boundary*1*", value))
    assert mime_py.rfc2231_boundary(params) == (mime_c or mime_py).rfc2231_boundary(params)


@settings(max_examples=200, deadline=None)
@given(
    st.binary(max_size=3000),
    st.sampled_from(["base64", "quoted-printable", "7bit"]),
    st.integers(1024, 4096),
    st.booleans(),
)
def test_streaming_decode_equals_one_shot(payload: bytes, cte: str, chunk: int, crlf: bool) -> None:
    """iter_decoded in chunks gives what one decode of the whole body gives."""
    import base64
    import binascii

    if cte == "base64":
        body = base64.encodebytes(payload)
    elif cte == "quoted-printable":
        body = binascii.b2a_qp(payload)
    else:
        body = payload
    if crlf:
        body = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    raw = f"Content-Transfer-Encoding: {cte}\r\n\r\n".encode() + body
    part = mime.parse(raw).root
    got = b"".join(mime.iter_decoded(raw, part, chunk=chunk))
    if cte == "base64":
        assert got == payload
    elif cte == "quoted-printable":
        assert got == binascii.a2b_qp(body)
    else:
        assert got == body
    assert mime.binary_size(raw, part) == len(got)
