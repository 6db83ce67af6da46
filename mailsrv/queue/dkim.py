"""DKIM signing of outbound mail (RFC 6376) with per-domain keys, via dkimpy.

Keys live in ``data_dir/dkim/<domain>.<selector>.key`` (PEM, RSA 2048 by
``mailsrv dkim keygen``). The signature covers the message as relayed (our
Return-Path line stripped). dkimpy signs from bytes, so the message is read
in a thread; messages are bounded by ``smtp.max_message_size``.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

from mailsrv.config import Config
from mailsrv.queue.client import strip_return_path
from mailsrv.queue.store import Envelope

#: RFC 6376 §5.4.1 recommended signed header fields (those present are signed).
SIGNED_HEADERS = [b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"reply-to",
                  b"in-reply-to", b"references", b"mime-version", b"content-type",
                  b"content-transfer-encoding"]


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

    def sign_bytes(self, domain: str, message: bytes) -> bytes:
        """The ``DKIM-Signature`` header line(s) for ``message``, or b"" without a key."""
        import dkim

        key = self._key(domain)
        if key is None:
            return b""
        msg = strip_return_path(message)
        sig: bytes = dkim.sign(msg, self.selector.encode(), domain.encode(), key,
                               include_headers=SIGNED_HEADERS, canonicalize=(b"relaxed", b"relaxed"))
        return sig.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")

    async def header_for(self, env: Envelope, path: Path) -> bytes:
        if env.is_bounce or not env.sender:
            return b""
        domain = env.sender.rpartition("@")[2].lower()
        if self._key(domain) is None:
            return b""
        loop = asyncio.get_running_loop()
        data = await loop.run_in_executor(None, path.read_bytes)
        return await loop.run_in_executor(None, self.sign_bytes, domain, data)
