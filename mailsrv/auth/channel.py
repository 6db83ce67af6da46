"""TLS channel binding data for SCRAM-SHA-256-PLUS (RFC 5929 tls-server-end-point).

Python's ssl module cannot export keying material, so tls-exporter (RFC 9266)
is not available; tls-server-end-point works on TLS 1.2 and 1.3 and is what
we offer. The data is a hash of our own certificate, so it is computed once.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from mailsrv.auth.sasl import ChannelBinding


def endpoint_binding(cert_der: bytes) -> ChannelBinding:
    """RFC 5929 §4.1: the certificate hashed with its signature hash (SHA-256 when that is MD5/SHA-1)."""
    cert = x509.load_der_x509_certificate(cert_der)
    algo = cert.signature_hash_algorithm
    if algo is None or isinstance(algo, hashes.MD5 | hashes.SHA1):
        algo = hashes.SHA256()
    h = hashes.Hash(algo)
    h.update(cert_der)
    return ChannelBinding("tls-server-end-point", h.finalize())


def endpoint_binding_from_file(cert_pem: str | Path) -> ChannelBinding:
    """Binding for the first certificate of a PEM chain file (the server's own)."""
    text = Path(cert_pem).read_text()
    start = text.find(ssl.PEM_HEADER)
    end = text.find(ssl.PEM_FOOTER, start)
    if start < 0 or end < 0:
        raise ValueError(f"{cert_pem}: no PEM certificate")
    return endpoint_binding(ssl.PEM_cert_to_DER_cert(text[start:end + len(ssl.PEM_FOOTER)] + "\n"))


def channel_binding(ssl_object: ssl.SSLObject | ssl.SSLSocket | None, cert_der: bytes) -> ChannelBinding | None:
    """The binding to offer on a connection: None without TLS, else tls-server-end-point of ``cert_der``."""
    if ssl_object is None:
        return None
    return endpoint_binding(cert_der)
