"""Large APPEND literals, and the decoded part of a big FETCH BINARY, go to a file, not to
memory (DESIGN.md: message bodies are streamed).

The connection loop writes a literal bigger than :data:`STREAM_AT` into the
account's maildir ``tmp/`` (same file system as the mail, so the store
hard-links it) and puts a short token in the command instead; the session
turns the token back into the file's path. Tokens carry a per-connection
random nonce, so a client cannot name a spool file by sending a token itself.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from mailsrv.util import fsio

#: Literals of APPEND larger than this are spooled to a file.
STREAM_AT = 256 * 1024
#: Bytes read from the socket and written per step.
CHUNK = 64 * 1024


class LiteralSpool:
    """The spool files of one connection's current command."""

    def __init__(self) -> None:
        self.nonce = secrets.token_hex(8).encode()
        self.files: dict[bytes, Path] = {}
        self._n = 0

    def path_of(self, token: bytes) -> Path | None:
        return self.files.get(token)

    async def take(self, read: object, size: int, directory: Path) -> bytes:
        """Copy ``size`` bytes from ``read(n)`` (an async callable) into a new file; returns its token."""
        loop = asyncio.get_running_loop()
        path = directory / ("imap-append." + fsio.unique_name())
        self._n += 1
        token = b"mailsrv-spool:" + self.nonce + b":%d" % self._n
        self.files[token] = path
        fd = await loop.run_in_executor(None, lambda: os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            remaining = size
            while remaining:
                chunk = await read(min(remaining, CHUNK))  # type: ignore[operator]
                remaining -= len(chunk)
                await loop.run_in_executor(None, os.write, fd, chunk)
            # The store links this file into the maildir: it must be on disk first.
            await loop.run_in_executor(None, os.fsync, fd)
        finally:
            await loop.run_in_executor(None, os.close, fd)
        return token

    async def cleanup(self) -> None:
        """Remove this command's spool files (the store has linked or copied what it kept)."""
        if not self.files:
            return
        paths = list(self.files.values())
        self.files.clear()

        def unlink_all() -> None:
            for p in paths:
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass

        await asyncio.get_running_loop().run_in_executor(None, unlink_all)


class DecodedSpool:
    """The decoded bytes of a part, in an unlinked temporary file: a streamed FETCH BINARY decodes
    the part once (learning its size and NUL for the literal's prefix) and sends from here.

    Every file call runs on the executor (DESIGN.md: no blocking file I/O on the loop). Use as an
    async context manager; the file is gone when it closes (it never had a name).
    """

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.size = 0
        self.nul = False
        self._fh: Any = None

    async def __aenter__(self) -> DecodedSpool:
        where = self.directory

        def create() -> Any:
            return tempfile.TemporaryFile(prefix="imap-binary.", dir=where if where and where.is_dir() else None)

        self._fh = await asyncio.get_running_loop().run_in_executor(None, create)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._fh is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._fh.close)
            self._fh = None

    async def write(self, data: bytes) -> None:
        self.size += len(data)
        self.nul = self.nul or b"\x00" in data
        await asyncio.get_running_loop().run_in_executor(None, self._fh.write, data)

    async def chunks(self, start: int, end: int, size: int) -> AsyncIterator[bytes]:
        """The bytes ``[start, end)`` written so far, ``size`` at a time."""
        fh = self._fh

        def read(pos: int, n: int) -> bytes:
            fh.seek(pos)
            return bytes(fh.read(n))

        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, fh.flush)
        pos = start
        while pos < end:
            data = await loop.run_in_executor(None, read, pos, min(size, end - pos))
            if not data:
                return
            pos += len(data)
            yield data
