"""A :class:`~mailsrv.net.connection.Connection` as a line protocol's session sees it (POP3, ManageSieve).

The sessions own no socket: they write, drain, upgrade to TLS and ask for the TLS channel binding
through this object, which the protocol's server module extends with how it reads a continuation.
"""

from __future__ import annotations

import ssl
from typing import Any, Protocol

from mailsrv.auth import ChannelBinding, endpoint_binding_from_file
from mailsrv.net.connection import Connection
from mailsrv.net.service import ServiceContext


def listener_binding(ctx: ServiceContext, logger: Any, event: str) -> ChannelBinding | None:
    """RFC 5929 tls-server-end-point of a TLS-capable listener (SCRAM-SHA-256-PLUS): a hash of our
    certificate, the same for every connection; None without TLS or when the certificate is unreadable
    (logged as ``event``)."""
    if ctx.ssl_context is None:
        return None
    try:
        return endpoint_binding_from_file(ctx.config.tls.cert)
    except (OSError, ValueError) as exc:
        logger.warning(event, error=str(exc))
        return None


class SessionChannel(Protocol):
    """What a line-protocol session needs of its connection (a session module extends it with how it
    reads a continuation); :class:`StreamChannel` is the real thing, tests pass fakes."""

    @property
    def tls_active(self) -> bool: ...

    @property
    def peer_host(self) -> str: ...

    @property
    def starttls_available(self) -> bool:
        """True while the listener can upgrade this plain connection (STLS, STARTTLS)."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    async def starttls(self) -> None: ...

    def channel_binding(self) -> Any:
        """``mailsrv.auth.ChannelBinding`` for SCRAM-PLUS, or None."""


class StreamChannel:
    """What every line-protocol session asks of its connection, over a :class:`Connection`."""

    __slots__ = ("conn", "_tls_context", "_binding")

    def __init__(self, conn: Connection, tls_context: ssl.SSLContext | None,
                 binding: ChannelBinding | None) -> None:
        self.conn = conn
        self._tls_context = tls_context
        self._binding = binding

    @property
    def tls_active(self) -> bool:
        return self.conn.tls_active

    @property
    def peer_host(self) -> str:
        return self.conn.peer_host

    @property
    def starttls_available(self) -> bool:
        """True while the listener can upgrade this plain connection (STLS, STARTTLS)."""
        return self._tls_context is not None and not self.conn.tls_active

    def write(self, data: bytes) -> None:
        self.conn.write(data)

    async def drain(self) -> None:
        await self.conn.drain()

    async def starttls(self) -> None:
        assert self._tls_context is not None
        # RFC 2595 §3.1: plain text pipelined after the upgrade command is dropped, the handshake goes on
        self.conn.discard_pipelined()
        await self.conn.starttls(self._tls_context)

    def channel_binding(self) -> Any:
        """``mailsrv.auth.ChannelBinding`` for SCRAM-PLUS once TLS is up, else None."""
        if self._binding is None or self.conn.writer.get_extra_info("ssl_object") is None:
            return None
        return self._binding
