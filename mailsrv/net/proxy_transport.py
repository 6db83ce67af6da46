"""The client's address from a PROXY header, for a protocol that learns its peer from its transport (aiohttp).

A stream session is told its client's address directly (mailsrv.net.listener sets the Connection's
``peer_host``). aiohttp reads ``transport.get_extra_info("peername")`` into ``request.remote`` (and our
JMAP limits, lockout, IP login restrictions and logs read the same): :class:`ProxiedProtocol` hands its
inner protocol a :class:`PeerTransport` whose ``peername`` / ``sockname`` are the header's addresses.

Invariant: the wrapper changes only what ``get_extra_info`` answers for those two names; every other call
goes to the real transport, and the real transport's protocol is the wrapper (it forwards every callback).
"""

from __future__ import annotations

import asyncio
from asyncio import constants
from typing import Any

from mailsrv.net.proxy import Address


class PeerTransport:
    """A transport as the protocol behind a PROXY header sees it: the client's address as its peer."""

    #: asyncio's loop.sendfile: copy through write(), never the native path (it needs the real transport)
    _sendfile_compatible = constants._SendfileMode.FALLBACK

    def __init__(self, transport: asyncio.BaseTransport, peername: Address, sockname: Address) -> None:
        self._transport = transport
        self._names = {"peername": peername, "sockname": sockname}

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name in self._names:
            return self._names[name]
        return self._transport.get_extra_info(name, default)

    def __getattr__(self, name: str) -> Any:  # write, close, is_closing, pause_reading...
        return getattr(self._transport, name)

    def __repr__(self) -> str:
        return f"<PeerTransport peer={self._names['peername']} of {self._transport!r}>"


class ForwardingProtocol(asyncio.Protocol):
    """A protocol that hands every callback to an inner one; subclasses look at some on the way."""

    __slots__ = ("_inner",)

    def __init__(self, inner: asyncio.Protocol) -> None:
        self._inner = inner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class ProxiedProtocol(ForwardingProtocol):
    """Wraps an inner protocol so that it sees ``peername``/``sockname`` (a PROXY header's source and
    destination) instead of the proxy's connection's."""

    __slots__ = ("_peer", "_sock")

    def __init__(self, inner: asyncio.Protocol, peername: Address, sockname: Address) -> None:
        super().__init__(inner)
        self._peer = peername
        self._sock = sockname

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(PeerTransport(transport, self._peer, self._sock))  # type: ignore[arg-type]
