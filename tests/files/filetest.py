"""A JMAP server with file links (tests/jmap/jmaptest.py's, plus ``[files]``), and small helpers."""

from __future__ import annotations

import contextlib
import email.policy
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
from jmaptest import Server, basic

from mailsrv.config import FilesConfig, JmapConfig
from mailsrv.files import FileLinks

__all__ = ["LinkServer", "basic", "message", "put", "serving"]


class LinkServer(Server):
    def __init__(self, tmp: Path, files: FilesConfig | None = None, jmap: JmapConfig | None = None) -> None:
        super().__init__(tmp, jmap)
        self.files_root = tmp / "files"
        self.links = FileLinks(files or FilesConfig(), self.files_root, self.io)
        self.app.files = self.links

    async def stop(self) -> None:
        self.links.close()
        await super().stop()

    def rows(self) -> list[Any]:
        """Every link row, whatever its state (blocking; small)."""
        return self.links.store.list(live_only=False)

    def leftovers(self) -> list[Path]:
        """Files under tmp/ and data/ (an aborted upload must leave none)."""
        return [p for p in self.files_root.rglob("*") if p.is_file() and p.parent.name != "files"]


async def put(http: aiohttp.ClientSession, server: Server, name: str, data: Any,
              headers: dict[str, str] | None = None) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
    """PUT /files/NAME; returns (status, JSON body, headers)."""
    async with http.put(f"{server.url}/files/{name}", data=data,
                        headers=basic() if headers is None else headers) as r:
        return r.status, await r.json(content_type=None), r.headers


@contextlib.asynccontextmanager
async def serving(tmp: Path, files: FilesConfig | None = None, jmap: JmapConfig | None = None
                  ) -> AsyncIterator[LinkServer]:
    """A started :class:`LinkServer`, stopped at the end."""
    s = LinkServer(tmp, files, jmap)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


def message(attachment: bytes, name: str = "数据.bin", eol: str = "\r\n") -> bytes:
    msg = EmailMessage()
    msg["From"] = "alice@example.test"
    msg["To"] = "bob@example.test"
    msg["Subject"] = "figures"
    msg.set_content("See the attached figures.\n")
    msg.add_attachment(attachment, maintype="application", subtype="octet-stream", filename=name)
    msg.add_attachment(b"small", maintype="application", subtype="octet-stream", filename="small.bin")
    inner = EmailMessage()
    inner["Subject"] = "forwarded"
    inner.set_content("x")
    inner.add_attachment(attachment, maintype="application", subtype="octet-stream", filename="inner.bin")
    msg.add_attachment(inner)
    return msg.as_bytes(policy=email.policy.default.clone(linesep=eol))
