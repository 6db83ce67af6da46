"""DKIM signing of outbound mail (RFC 6376) with per-domain keys, via dkimpy.

Keys live in ``data_dir/dkim/<domain>.<selector>.key`` (PEM, RSA 2048 by
``mailsrv dkim keygen``). The signature covers the message as relayed (our
Return-Path line stripped), with relaxed/relaxed canonicalisation.

Streaming: the body hash (RFC 6376 §3.7, ``bh=``) is computed here block by
block over the file with the relaxed body canonicalisation (§3.4.4); dkimpy
only sees the header block (bounded by :data:`MAX_HEADER`) and signs it. A
message of any size costs O(block) memory, never O(message).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from pathlib import Path
from typing import BinaryIO

from mailsrv import log
from mailsrv.config import Config
from mailsrv.queue.client import strip_return_path
from mailsrv.queue.store import Envelope

#: RFC 6376 §5.4.1 recommended signed header fields (those present are signed).
SIGNED_HEADERS = [b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"reply-to",
                  b"in-reply-to", b"references", b"mime-version", b"content-type",
                  b"content-transfer-encoding"]
#: Largest header block we sign; a message with more header than this goes out unsigned.
MAX_HEADER = 1 << 20
READ_BLOCK = 64 * 1024

logger = log.get("queue")



def _compress_wsp(data: bytes) -> bytes:
    """Runs of SP/HTAB become one SP (bytes.replace: one buffer per pass, no per-match objects)."""
    data = data.replace(b"\t", b" ")
    while b"  " in data:
        data = data.replace(b"    ", b" ").replace(b"  ", b" ")
    return data


class RelaxedBodyHash:
    """SHA-256 of a body under the relaxed body canonicalisation (RFC 6376 §3.4.4), fed in blocks.

    Per line: runs of WSP become one SP, WSP at the end of the line is removed;
    empty lines at the end of the body are ignored; a non-empty body ends with
    CRLF. Blank lines are counted, not buffered, until a non-blank line follows.
    """

    def __init__(self) -> None:
        self.h = hashlib.sha256()
        self.carry = b""  # an incomplete last line
        self.blank = 0  # CRLFs owed before the next non-blank content
        self.any = False

    def update(self, data: bytes) -> None:
        buf = self.carry + data
        cut = buf.rfind(b"\n") + 1
        self.carry = buf[cut:]
        if cut:
            self._lines(buf[:cut])

    def _lines(self, chunk: bytes) -> None:
        """``chunk`` is whole lines, the last one ending in LF."""
        # LF alone ends a line too (as dkimpy reads it), then §3.4.4 a. and b.
        chunk = _compress_wsp(chunk.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")).replace(b" \r\n", b"\r\n")
        end = len(chunk)
        while end >= 2 and chunk.endswith(b"\r\n", 0, end):
            end -= 2
        if end:
            self.h.update(b"\r\n" * self.blank + chunk[:end])
            self.any = True
            self.blank = 0
        self.blank += (len(chunk) - end) // 2

    def digest(self) -> bytes:
        if self.carry:
            # a last line without CRLF gets one; like dkimpy, its trailing WSP stays (only WSP before CRLF goes)
            self.h.update(b"\r\n" * self.blank + _compress_wsp(self.carry))
            self.any = True
            self.carry = b""
        if self.any:
            self.h.update(b"\r\n")
        return self.h.digest()


def read_header(fh: BinaryIO) -> bytes | None:
    """The header block (through the empty line) from a binary file at its start; None if over MAX_HEADER.

    Leaves ``fh`` at the first body byte.
    """
    lines = []
    size = 0
    while True:
        line = fh.readline(MAX_HEADER + 1)
        lines.append(line)
        size += len(line)
        if size > MAX_HEADER:
            return None
        if not line or line in (b"\r\n", b"\n"):
            return b"".join(lines)


def key_path(data_dir: Path, domain: str, selector: str) -> Path:
    return data_dir / "dkim" / f"{domain.lower()}.{selector}.key"


def keygen(data_dir: Path, domain: str, selector: str, bits: int = 2048) -> tuple[Path, str]:
    """Create (or reuse) the domain's key; returns its path and the DNS TXT record to publish."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    path = key_path(data_dir, domain, selector)
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(pem)
        tmp.chmod(0o600)
        tmp.replace(path)
    pub = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    record = f'{selector}._domainkey.{domain.lower()}. IN TXT "v=DKIM1; k=rsa; p={base64.b64encode(pub).decode()}"'
    return path, record


class Signer:
    def __init__(self, data_dir: Path, selector: str) -> None:
        self.data_dir = data_dir
        self.selector = selector
        self._keys: dict[str, bytes | None] = {}

    @classmethod
    def from_config(cls, cfg: Config) -> Signer | None:
        q = cfg.queue
        return cls(cfg.server.data_dir, q.dkim_selector) if q.dkim_sign else None

    def _key(self, domain: str) -> bytes | None:
        if domain not in self._keys:
            p = key_path(self.data_dir, domain, self.selector)
            self._keys[domain] = p.read_bytes() if p.exists() else None
        return self._keys[domain]

    def sign_file(self, domain: str, path: Path) -> bytes:
        """The ``DKIM-Signature`` header field for the file as relayed, or b"" (no key, unsignable). Blocking."""
        key = self._key(domain)
        if key is None:
            return b""
        with open(path, "rb") as fh:
            head = read_header(fh)
            if head is None:
                logger.warning("dkim.header_too_large", domain=domain, limit=MAX_HEADER)
                return b""
            bh = RelaxedBodyHash()
            while block := fh.read(READ_BLOCK):
                bh.update(block)
        return self.sign_header(domain, strip_return_path(head), bh.digest())

    def sign_header(self, domain: str, head: bytes, body_hash: bytes, now: float | None = None) -> bytes:
        """Sign a header block given the body hash (RFC 6376 §5): dkimpy canonicalises and signs the header."""
        import dkim

        key = self._key(domain)
        if key is None:
            return b""
        try:
            d = dkim.DKIM(head if head.endswith((b"\r\n\r\n", b"\n\n")) else head + b"\r\n")
            if not any(name.lower() == b"from" for name, _ in d.headers):
                raise dkim.ParameterError("no From header field")  # RFC 6376 §5.4: From must be signed
            pk = dkim.parse_pem_private_key(key)
            policy = dkim.CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
            d.hasher = dkim.HASH_ALGORITHMS[b"rsa-sha256"]
            fields = [
                (b"v", b"1"), (b"a", b"rsa-sha256"), (b"c", policy.to_c_value()),
                (b"d", domain.encode()), (b"i", b"@" + domain.encode()), (b"q", b"dns/txt"),
                (b"s", self.selector.encode()),
                (b"t", str(int(time.time() if now is None else now)).encode()),
                (b"h", b" : ".join(SIGNED_HEADERS)),
                (b"bh", base64.b64encode(body_hash)),
                (b"b", b"0" * 60),  # dkimpy's placeholder: b= folds onto its own line
            ]
            value: bytes = d.gen_header(fields, SIGNED_HEADERS, policy, b"DKIM-Signature", pk)
        except dkim.DKIMException as exc:
            logger.warning("dkim.unsignable", domain=domain, error=str(exc))
            return b""
        sig = b"DKIM-Signature: " + value
        return sig.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")

    async def header_for(self, env: Envelope, path: Path) -> bytes:
        """The signature for the message file ``path`` (the file as it will be sent), read in a thread."""
        if env.is_bounce or not env.sender:
            return b""
        domain = env.sender.rpartition("@")[2].lower()
        if self._key(domain) is None:
            return b""
        return await asyncio.get_running_loop().run_in_executor(None, self.sign_file, domain, path)
