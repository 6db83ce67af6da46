"""Large APPEND literals go to a file, not to memory (DESIGN.md: message bodies are streamed).

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
from pathlib import Path

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
