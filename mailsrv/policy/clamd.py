"""Virus scanning through a running clamd (ClamAV) over its socket with INSTREAM.

Protocol (clamd(8)): ``zINSTREAM\\0``, then chunks of <4-byte big-endian
length><data>, a zero-length chunk to end; the reply, NUL-terminated, is
``stream: OK``, ``stream: <Signature> FOUND`` or ``... ERROR``. The message is
streamed from its spool file, never held whole in memory.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

#: Bytes per INSTREAM chunk (clamd's default StreamMaxLength is 25 MB in total).
CHUNK = 64 * 1024


class ClamdUnavailable(Exception):
    """clamd could not be reached or did not answer in time, or answered with an error."""


@dataclass(frozen=True)
class ScanResult:
    status: Literal["clean", "infected"]
    signature: str = ""


class Clamd:
    """``socket`` is a unix socket path, or ``host:port`` for TCP."""

    def __init__(self, socket: str, *, timeout: float = 30.0) -> None:
        self.socket = socket
        self.timeout = timeout

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.socket.startswith("/") or ":" not in self.socket:
            return await asyncio.open_unix_connection(self.socket)
        host, _, port = self.socket.rpartition(":")
        return await asyncio.open_connection(host.strip("[]"), int(port))

    async def ping(self) -> bool:
        try:
            reader, writer = await asyncio.wait_for(self._open(), self.timeout)
        except (OSError, TimeoutError):
            return False
        try:
            writer.write(b"zPING\0")
            await writer.drain()
            return (await asyncio.wait_for(reader.readuntil(b"\0"), self.timeout)) == b"PONG\0"
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return False
        finally:
            writer.close()

    async def scan_file(self, path: Path, *, limit: int | None = None) -> ScanResult:
        """Scan the first ``limit`` bytes of ``path`` (all when None). Raises ClamdUnavailable."""
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(self._scan(path, limit, loop), self.timeout)
        except TimeoutError:
            raise ClamdUnavailable("clamd timed out") from None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise ClamdUnavailable(f"clamd: {exc}") from None

    async def scan_bytes(self, data: bytes) -> ScanResult:
        try:
            return await asyncio.wait_for(self._scan_chunks([data]), self.timeout)
        except TimeoutError:
            raise ClamdUnavailable("clamd timed out") from None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise ClamdUnavailable(f"clamd: {exc}") from None

    async def _scan(self, path: Path, limit: int | None, loop: asyncio.AbstractEventLoop) -> ScanResult:
        reader, writer = await self._open()
        try:
            writer.write(b"zINSTREAM\0")
            left = limit if limit is not None else -1
            with open(path, "rb") as f:  # noqa: ASYNC230 - reads go through the executor below
                while left != 0:
                    n = CHUNK if left < 0 else min(CHUNK, left)
                    chunk = await loop.run_in_executor(None, f.read, n)
                    if not chunk:
                        break
                    if left > 0:
                        left -= len(chunk)
                    writer.write(struct.pack("!I", len(chunk)) + chunk)
                    await writer.drain()
            writer.write(struct.pack("!I", 0))
            await writer.drain()
            return _parse(await reader.readuntil(b"\0"))
        finally:
            writer.close()

    async def _scan_chunks(self, chunks: list[bytes]) -> ScanResult:
        reader, writer = await self._open()
        try:
            writer.write(b"zINSTREAM\0")
            for chunk in chunks:
                for i in range(0, len(chunk), CHUNK):
                    part = chunk[i:i + CHUNK]
                    writer.write(struct.pack("!I", len(part)) + part)
            writer.write(struct.pack("!I", 0))
            await writer.drain()
            return _parse(await reader.readuntil(b"\0"))
        finally:
            writer.close()


def _parse(raw: bytes) -> ScanResult:
    text = raw.rstrip(b"\0").decode("utf-8", "replace").strip()
    _, _, verdict = text.partition(": ")
    if verdict == "OK":
        return ScanResult("clean")
    if verdict.endswith(" FOUND"):
        return ScanResult("infected", verdict[: -len(" FOUND")].strip())
    raise ClamdUnavailable(f"clamd answered {text!r}")
