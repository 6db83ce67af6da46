"""Server TLS contexts: TLS 1.2 minimum, modern ciphers, one certificate for all listeners."""

from __future__ import annotations

import ssl

from mailsrv.config import TlsConfig


class TlsSetupError(Exception):
    """The certificate or key cannot be loaded; the message names the file."""


def server_context(cfg: TlsConfig) -> ssl.SSLContext:
    """Build the server-side context described by ``cfg``.

    Raises :class:`TlsSetupError` with an operator-readable message.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if cfg.min_version == "TLSv1.3" else ssl.TLSVersion.TLSv1_2
    # No compression (CRIME), fresh ECDH keys, server picks the cipher order.
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_SINGLE_ECDH_USE | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        ctx.set_ciphers(cfg.ciphers)
    except ssl.SSLError as exc:
        raise TlsSetupError(f"tls.ciphers: no usable cipher in {cfg.ciphers!r} ({exc})") from None
    try:
        ctx.load_cert_chain(str(cfg.cert), str(cfg.key))
    except FileNotFoundError as exc:
        raise TlsSetupError(f"tls: file not found: {exc.filename}") from None
    except PermissionError as exc:
        raise TlsSetupError(f"tls: permission denied: {exc.filename}") from None
    except ssl.SSLError as exc:
        raise TlsSetupError(f"tls: cannot load {cfg.cert} / {cfg.key}: {exc.reason or exc}") from None
    # RFC 8314 and RFC 7525: ALPN is not used by the mail protocols; JMAP over HTTPS uses HTTP/1.1.
    return ctx


def describe(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> dict[str, str]:
    """Fields for logs and Received headers: protocol version and cipher."""
    if ssl_object is None:
        return {}
    cipher = ssl_object.cipher()
    return {"tls": ssl_object.version() or "?", "cipher": cipher[0] if cipher else "?"}
