"""8BITMIME downgrade (RFC 6152 §3) and the streamed DKIM body hash: corpus messages and hypothesis."""

from __future__ import annotations

import base64
import email
import email.message
import hashlib
import io
import re
import shutil
import tempfile
from pathlib import Path

import dkim
import dkim.canonicalization
from hypothesis import given, settings
from hypothesis import strategies as st

from mailsrv.queue import downgrade
from mailsrv.queue.dkim import RelaxedBodyHash, Signer, keygen


def _crlf(data: bytes) -> bytes:
    return re.sub(rb"\r?\n", b"\r\n", data)


def _leaves(raw: bytes) -> list[tuple[str, bytes | None]]:
    msg = email.message_from_bytes(raw)
    out = []
    for part in msg.walk():
        if part.is_multipart() or part.get_content_maintype() == "message":
            continue
        payload = part.get_payload(decode=True)
        out.append((part.get_content_type(), payload if isinstance(payload, bytes) else None))
    return out


def _body_after_header(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in raw else b""


def _check_round_trip(tmp_path: Path, raw: bytes) -> bool:
    src = tmp_path / "in.eml"
    dst = tmp_path / "out.eml"
    src.write_bytes(raw)
    dst.unlink(missing_ok=True)
    changed = downgrade.downgrade(src, dst)
    if not changed:
        assert not dst.exists()
        return False
    out = dst.read_bytes()
    # the same parts with the same decoded content (QP decoding is lossless)
    before, after = _leaves(raw), _leaves(out)
    assert [t for t, _ in before] == [t for t, _ in after]
    for (_, a), (_, b) in zip(before, after, strict=True):
        if a is not None and b is not None:
            assert a.replace(b"\r\n", b"\n") == b.replace(b"\r\n", b"\n")
    # every re-encoded part is 7-bit with lines of at most 76 characters (RFC 2045 §6.7)
    for part in email.message_from_bytes(out).walk():
        if part.get("Content-Transfer-Encoding", "").lower() == "quoted-printable":
            payload = part.get_payload(decode=False)
            assert isinstance(payload, str)
            for line in payload.split("\n"):
                assert len(line.rstrip("\r")) <= 76
    return True


def test_corpus_messages_round_trip(tmp_path: Path, corpus: Path) -> None:
    files = sorted(p for p in corpus.rglob("*") if p.suffix in (".eml", ".msg", ".txt") and p.is_file())
    assert len(files) > 100
    converted = 0
    for path in files:
        raw = _crlf(path.read_bytes())
        if _check_round_trip(tmp_path, raw):
            converted += 1
            out = (tmp_path / "out.eml").read_bytes()
            # what could be converted was: no 8-bit byte left in a body of a re-encoded leaf
            for part in email.message_from_bytes(out).walk():
                if part.get("Content-Transfer-Encoding", "").lower() == "quoted-printable":
                    assert str(part.get_payload()).isascii()
    assert converted >= 5  # the corpus has real 8-bit messages (Latin-1, UTF-8, ISO-2022...)


def test_nested_multipart_and_message_rfc822(tmp_path: Path) -> None:
    raw = (b"From: a@example.test\r\nSubject: t\r\nMIME-Version: 1.0\r\n"
           b'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n'
           b"preamble\r\n--outer\r\nContent-Type: text/plain; charset=utf-8\r\n"
           b"Content-Transfer-Encoding: 8bit\r\n\r\nGr\xc3\xbc\xc3\x9fe = trailing \r\n"
           b"--outer\r\nContent-Type: message/rfc822\r\n\r\n"
           b"Subject: inner\r\nContent-Type: multipart/alternative; boundary=in\r\n\r\n"
           b"--in\r\nContent-Type: text/plain\r\n\r\nplain ascii\r\n--in\r\n"
           b"Content-Type: text/html; charset=utf-8\r\n\r\n<p>\xe2\x82\xac</p>\r\n--in--\r\n"
           b"--outer\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           b"AAEC\r\n--outer--\r\nepilogue\r\n")
    assert _check_round_trip(tmp_path, raw)
    out = (tmp_path / "out.eml").read_bytes()
    assert out.isascii()
    assert b"Gr=C3=BC=C3=9Fe =3D trailing=20\r\n--outer\r\n" in out
    assert b"plain ascii\r\n--in\r\n" in out  # an ASCII leaf is copied as it was
    assert b"<p>=E2=82=AC</p>\r\n--in--\r\n" in out
    assert b"Content-Transfer-Encoding: base64\r\n\r\nAAEC\r\n--outer--\r\nepilogue\r\n" in out
    assert out.count(b"Content-Transfer-Encoding: quoted-printable") == 2
    assert b"8bit" not in out


def test_single_part_gets_mime_version_and_long_lines_soft_break(tmp_path: Path) -> None:
    raw = b"From: a@example.test\r\nSubject: t\r\n\r\n" + "\u00e9".encode() * 3000 + b"\r\nend\r\n"
    assert _check_round_trip(tmp_path, raw)
    out = (tmp_path / "out.eml").read_bytes()
    head = out.split(b"\r\n\r\n")[0]
    assert b"MIME-Version: 1.0" in head and b"Content-Transfer-Encoding: quoted-printable" in head
    assert max(len(line) for line in out.split(b"\r\n")) <= 76


def test_7bit_message_untouched(tmp_path: Path) -> None:
    assert not _check_round_trip(tmp_path, b"From: a@example.test\r\n\r\nonly ascii\r\n")


_body_bytes = st.binary(max_size=400).map(lambda b: b.replace(b"-", b"_").replace(b"\r", b""))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_body_bytes, st.sampled_from([b"", b"8bit", b"7bit", b"base64"])), min_size=1, max_size=4))
def test_hypothesis_multipart_round_trip(parts: list[tuple[bytes, bytes]]) -> None:
    tmp = Path(tempfile.mkdtemp())
    chunks = [b"From: a@example.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"]
    for body, cte in parts:
        chunks.append(b"--b\r\nContent-Type: application/x-test\r\n")
        if cte == b"base64":
            chunks.append(b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(body).replace(b"\n", b"\r\n"))
            continue
        if cte:
            chunks.append(b"Content-Transfer-Encoding: " + cte + b"\r\n")
        chunks.append(b"\r\n" + body.replace(b"\n", b"\r\n") + b"\r\n")
    chunks.append(b"--b--\r\n")
    raw = b"".join(chunks)
    changed = _check_round_trip(tmp, raw)
    assert changed == any(cte != b"base64" and re.search(rb"[\x80-\xff]", body) for body, cte in parts)
    if changed:
        assert (tmp / "out.eml").read_bytes().isascii()
    shutil.rmtree(tmp)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600).map(lambda b: b.replace(b"\r", b"")), st.integers(1, 50))
def test_relaxed_body_hash_matches_dkimpy(body: bytes, block: int) -> None:
    body = body.replace(b"\n", b"\r\n")
    h = RelaxedBodyHash()
    for i in range(0, len(body), block):
        h.update(body[i:i + block])
    expected = hashlib.sha256(dkim.canonicalization.Relaxed.canonicalize_body(body)).digest()
    assert h.digest() == expected


def test_streamed_signature_verifies_and_matches_dkimpy(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _, record = keygen(data, "example.test", "mail")
    txt = record.split('"')[1].encode()
    signer = Signer(data, "mail")
    msg = (b"Return-Path: <alice@example.test>\r\nFrom: Alice <alice@example.test>\r\nTo: b@remote.test\r\n"
           b"Subject:  spaced   out \r\n\r\nline  one \t\r\n\r\nline two\r\n\r\n\r\n")
    path = tmp_path / "m"
    path.write_bytes(msg)
    sig = signer.sign_file("example.test", path)
    relayed = sig + msg.split(b"\r\n", 1)[1]
    assert dkim.verify(relayed, dnsfunc=lambda name, timeout=5: txt)
    ours = dict(dkim.util.parse_tag_value(sig.split(b":", 1)[1]))
    theirs = dict(dkim.util.parse_tag_value(dkim.sign(
        msg.split(b"\r\n", 1)[1], b"mail", b"example.test", signer._key("example.test") or b"",
        canonicalize=(b"relaxed", b"relaxed")).split(b":", 1)[1]))
    assert ours[b"bh"] == theirs[b"bh"]
    # a changed body no longer verifies (the body hash is really checked)
    assert not dkim.verify(relayed.replace(b"line two", b"line 2"), dnsfunc=lambda name, timeout=5: txt)
    assert signer.sign_file("nokey.test", path) == b""
    no_from = tmp_path / "nofrom"
    no_from.write_bytes(b"Subject: x\r\n\r\nbody\r\n")
    assert signer.sign_file("example.test", no_from) == b""


def test_qp_line_pieces() -> None:
    assert downgrade._qp_line(b"a\xff \r\n") == b"a=FF=20\r\n"
    assert downgrade._qp_line(b"abc") == b"abc=\r\n"  # a piece of a longer line ends in a soft break
    reader = downgrade._Reader(io.BytesIO(b"x" * (downgrade.MAX_LINE - 1) + b"\r\nnext\r\n"))
    assert reader.line().endswith(b"\r\n")  # a CRLF cut by the piece limit stays together
    assert reader.line() == b"next\r\n"
