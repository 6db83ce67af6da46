"""A streamed FETCH BINARY of an encoded part reads and decodes the part once (RFC 3516)."""

from __future__ import annotations

import base64
import hashlib
import os
import quopri
from pathlib import Path

import pytest
from imaptest import Raw, ServerHandle
from test_binary_stream import _read_fetch
from test_real_store import real  # noqa: F401 - the fixture


@pytest.mark.parametrize("cte", ["base64", "quoted-printable"])
def test_a_streamed_binary_part_is_read_and_decoded_once(real: ServerHandle, tmp_path: Path,  # noqa: F811
                                                         monkeypatch: pytest.MonkeyPatch, cte: str) -> None:
    payload = os.urandom(3 * 1024 * 1024) if cte == "base64" else b"caf\xe9 = ok\r\n" * 300_000
    body = base64.encodebytes(payload) if cte == "base64" else quopri.encodestring(payload)
    body = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    msg = (b"From: a@example.test\r\nSubject: once\r\nMIME-Version: 1.0\r\n"
           b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n'
           b"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: " + cte.encode()
           + b"\r\n\r\n" + body + b"\r\n--b--\r\n")
    src = tmp_path / "once.eml"
    src.write_bytes(msg)
    want = quopri.decodestring(body) if cte == "quoted-printable" else payload

    async def put() -> type:
        acct = await real.store.account("1", None)
        await acct.append("INBOX", src)
        return type(acct)

    cls = real.call(put(), timeout=60)
    read = {"bytes": 0}
    original = cls.read_message

    async def counting(self: object, name: str, uid: int, offset: int = 0, length: int | None = None) -> bytes:
        data: bytes = await original(self, name, uid, offset, length)
        read["bytes"] += len(data)
        return data

    monkeypatch.setattr(cls, "read_message", counting)
    raw = Raw(real.host, real.port)
    raw.sock.settimeout(60)
    try:
        assert raw.cmd(b"a LOGIN alice@example.test wonderland")[-1].startswith(b"a OK")
        raw.cmd(b"s SELECT INBOX")
        raw.send(b"f1 UID FETCH 1 (BINARY.PEEK[2])\r\n")
        head, digest, n = _read_fetch(raw, b"f1")
        assert n == len(want) and digest == hashlib.sha256(want).hexdigest()
        assert head.endswith((b" ~{%d}\r\n" if b"\x00" in want else b" {%d}\r\n") % len(want))
        # the encoded part (the bulk of the message) was read once, not once per pass
        assert len(body) <= read["bytes"] < len(body) + 64 * 1024, (read["bytes"], len(body))
        raw.send(b"f2 UID FETCH 1 (BINARY.PEEK[2]<1000.5000>)\r\n")
        head, digest, n = _read_fetch(raw, b"f2")
        assert digest == hashlib.sha256(want[1000:6000]).hexdigest()
    finally:
        raw.close()
    # the decoded copy had no name and is gone; the maildir's tmp/ holds nothing of it
    assert not [p for p in tmp_path.rglob("tmp/*") if p.is_file()]
