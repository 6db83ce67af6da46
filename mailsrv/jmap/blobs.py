"""Uploaded blobs (RFC 8620 §6.1): streamed to disk, content-addressed, durable before 201.

Layout: ``<upload_dir>/<accountId>/<blobId>`` holds the octets and
``<blobId>.type`` the media type of the latest upload. The blob id is
``G`` + the first 40 hex digits of the SHA-256 of the content, so the same
octets uploaded twice are one blob. Writes go temp file -> fsync -> rename ->
fsync directory, all in the thread pool; the loop only moves chunks.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

from mailsrv.util.fsio import FileIO, fsync_dir

BLOB_RE = re.compile(r"^G[0-9a-f]{40}$")


class TooLarge(Exception):
    pass


class UploadStore:
    def __init__(self, root: Path, io: FileIO) -> None:
        self.root = root
        self.io = io

    def _dir(self, account_id: str) -> Path:
        # account ids are JMAP Ids (URL-safe base64 alphabet), never path syntax
        if not re.match(r"^[A-Za-z0-9_-]{1,255}$", account_id):
            raise ValueError("bad account id")
        return self.root / account_id

    async def put(self, account_id: str, chunks: AsyncIterator[bytes], content_type: str, max_size: int) -> tuple[str, int]:
        """Store an upload. Returns (blobId, size). Raises TooLarge past ``max_size``."""
        d = self._dir(account_id)
        await self.io.run(d.mkdir, parents=True, exist_ok=True)
        tmp = d / f".tmp.{os.getpid()}.{time.monotonic_ns()}"
        f = await self.io.run(open, tmp, "wb")

        def check(size: int) -> None:
            if size > max_size:
                raise TooLarge()

        try:
            size, sha256 = await self.io.write_chunks(f, chunks, check)
            await self.io.run(f.flush)
            await self.io.run(os.fsync, f.fileno())
        except BaseException:
            await self.io.run(f.close)
            await self.io.run(tmp.unlink, missing_ok=True)
            raise
        await self.io.run(f.close)
        blob_id = "G" + sha256[:40]

        def finish() -> None:
            os.replace(tmp, d / blob_id)
            tpath = d / f"{blob_id}.type"
            ttmp = d / f".{blob_id}.type.{os.getpid()}"
            with open(ttmp, "w", encoding="utf-8") as tf:
                tf.write(content_type)
                tf.flush()
                os.fsync(tf.fileno())
            os.replace(ttmp, tpath)
            fsync_dir(d)

        await self.io.run(finish)
        return blob_id, size

    async def path(self, account_id: str, blob_id: str) -> Path | None:
        if not BLOB_RE.match(blob_id):
            return None
        p = self._dir(account_id) / blob_id
        return p if await self.io.run(p.is_file) else None

    async def content_type(self, account_id: str, blob_id: str) -> str:
        p = self._dir(account_id) / f"{blob_id}.type"
        try:
            return (await self.io.run(p.read_text, encoding="utf-8")).strip() or "application/octet-stream"
        except OSError:
            return "application/octet-stream"

    async def read(self, account_id: str, blob_id: str, limit: int | None = None) -> bytes | None:
        p = await self.path(account_id, blob_id)
        if p is None:
            return None

        def rd() -> bytes:
            with open(p, "rb") as fh:
                return fh.read() if limit is None else fh.read(limit)

        return await self.io.run(rd)
