"""COMPRESS=DEFLATE (RFC 4978): raw deflate in both directions after the tagged OK.

The connection's reader is replaced by one fed from a pump task that inflates
what the peer sends; the writer is wrapped so that every write is deflated and
sync-flushed (RFC 4978 §4: the peer must be able to decompress each response
as soon as it arrives). Inflation is bounded: a peer whose compressed data
expands past the limit is disconnected (a "zip bomb" never fills memory).
"""

from __future__ import annotations

import asyncio
import zlib
from typing import Any

#: Inflate at most this many bytes per step.
CHUNK = 64 * 1024


class DeflateWriter:
    """Looks like an ``asyncio.StreamWriter`` to :class:`mailsrv.net.connection.Connection`."""

    def __init__(self, inner: asyncio.StreamWriter) -> None:
        self.inner = inner
        self.z = zlib.compressobj(6, zlib.DEFLATED, -15)

    def write(self, data: bytes) -> None:
        self.inner.write(self.z.compress(data) + self.z.flush(zlib.Z_SYNC_FLUSH))

    async def drain(self) -> None:
        await self.inner.drain()

    def close(self) -> None:
        self.inner.close()

    async def wait_closed(self) -> None:
        await self.inner.wait_closed()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.inner.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self.inner.is_closing()

    @property
    def transport(self) -> asyncio.WriteTransport:
        """The inner writer's transport: every write goes through to it at once (nothing is held here)."""
        return self.inner.transport


class Inflater:
    """Pumps ``source`` (compressed) into a fresh StreamReader (plain)."""

    def __init__(self, source: asyncio.StreamReader, limit: int, cap: int) -> None:
        self.source = source
        self.limit = limit
        self.cap = cap
        self.reader = asyncio.StreamReader(limit=limit)
        self.z = zlib.decompressobj(-15)
        self.task = asyncio.ensure_future(self._pump())

    def _buffered(self) -> int:
        return len(self.reader._buffer)  # type: ignore[attr-defined]

    async def _pump(self) -> None:
        try:
            while True:
                data = await self.source.read(CHUNK)
                if not data:
                    break
                while data:
                    out = self.z.decompress(data, CHUNK)
                    data = self.z.unconsumed_tail
                    if out:
                        self.reader.feed_data(out)
                    # Unread inflated data is bounded like unread plain data would be
                    # (a literal is read whole): beyond the cap the peer is cut off.
                    if self._buffered() > self.cap:
                        raise ConnectionError("inflated data exceeds the limit")
                    await asyncio.sleep(0)
        except (ConnectionError, zlib.error, OSError) as exc:
            self.reader.set_exception(ConnectionResetError(str(exc)))
            return
        self.reader.feed_eof()

    def close(self) -> None:
        self.task.cancel()
