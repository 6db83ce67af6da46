"""File links for a worker's loop: uploads streamed to disk, link lookups, reads in bounded chunks.

Every blocking call (writes, fsync, SQLite, reads) runs in a small pool of this service's own;
the loop only moves chunks. Nothing is acknowledged before it is durable: :meth:`FileLinks.upload`
returns once the file is fsync'd, renamed into place, its directory fsync'd and the link's row
committed.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Iterable
from pathlib import Path
from typing import IO, Any

from mailsrv import log
from mailsrv.config import FilesConfig
from mailsrv.files.links import FileLink, LinkStore, OverQuota, TooLarge
from mailsrv.files.names import clean_name
from mailsrv.util.fsio import FileIO

logger = log.get("files")

#: Octets read from disk per chunk of a download (one pool job each).
READ_CHUNK = 1024 * 1024
#: Seconds between two looks of a worker at whether a sweep is due (at most).
SWEEP_LOOK = 60.0


class FileLinks:
    """One per worker (or CLI run). ``quota`` and ``max_size`` come from ``[files]``."""

    def __init__(self, config: FilesConfig, root: Path, io: FileIO | None = None) -> None:
        self.config = config
        self.store = LinkStore(root)
        self.io = io or FileIO(2, "files-io")
        self._own_io = io is None
        self._sweeper: asyncio.Task[None] | None = None
        self._settling: set[asyncio.Task[None]] = set()  # settle_later's tasks (held: the loop keeps weak refs)

    def start_sweeper(self) -> None:
        """Expire links on a timer in this process (one process of the machine sweeps per interval:
        :meth:`LinkStore.sweep_if_due`). Stopped by :meth:`close`."""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweeps())

    async def _sweeps(self) -> None:
        interval = self.config.sweep_interval
        while True:
            try:
                out = await self.io.run(self.store.sweep_if_due, interval)
                if out is not None:
                    logger.info("files.swept", expired=out[0], freed=out[1])
            except Exception as exc:  # the next pass tries again
                logger.exception("files.sweep_failed", exc)
            # a look every minute at most (cheap: a lock and a stat), so some worker sweeps on time
            await asyncio.sleep(min(interval, SWEEP_LOOK) * random.uniform(0.5, 1.0))

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self.store.close()
        if self._own_io:
            self.io.shutdown(wait=False)

    def check_size(self, owner: str, declared: int | None, used: int) -> None:
        """Raise :class:`TooLarge` or :class:`OverQuota` for a body of ``declared`` octets (None: unknown)."""
        cfg = self.config
        if declared is None:
            return
        if declared > cfg.max_size:
            raise TooLarge(f"file larger than {cfg.max_size} bytes ([files] max_size)")
        if cfg.quota and used + declared > cfg.quota:
            raise OverQuota(f"over your file quota: {used} of {cfg.quota} bytes in live links,"
                            f" this file needs {declared} more")

    async def used(self, owner: str) -> int:
        return await self.io.run(self.store.used, owner)

    async def upload(self, owner: str, owner_name: str, name: str, media_type: str,
                     chunks: AsyncIterable[bytes], declared: int | None = None,
                     days: int | None = None) -> tuple[FileLink, str]:
        """Stream ``chunks`` into a new link of ``owner``. Returns the link and its token, once durable.

        Raises :class:`TooLarge` past ``[files] max_size``, :class:`OverQuota` past the owner's quota
        (both checked against ``declared`` first, then while streaming). Whatever ends the upload
        early (an error, a client gone, a cancellation) leaves no file and no link behind.
        """
        cfg = self.config
        used = await self.used(owner) if cfg.quota else 0
        self.check_size(owner, declared, used)
        limit = cfg.max_size
        room = cfg.quota - used if cfg.quota else None
        tmp = await self.io.run(self.store.temp_path)
        f: IO[bytes] = await self.io.run(open, tmp, "xb")

        def check(size: int) -> None:
            if size > limit:
                raise TooLarge(f"file larger than {limit} bytes ([files] max_size)")
            if room is not None and size > room:
                raise OverQuota(f"over your file quota: {used} of {cfg.quota} bytes in live links")

        try:
            size, sha256 = await self.io.write_chunks(f, chunks, check)
        except BaseException:
            _discard(f, tmp)  # on the loop: cheap, and a cancelled task may not await again
            raise
        return await self._finish(tmp, f, owner=owner, owner_name=owner_name, name=clean_name(name),
                                  media_type=media_type, size=size, sha256=sha256,
                                  days=cfg.retention_days if days is None else days)

    async def from_file(self, path: Path, owner: str, owner_name: str, name: str, media_type: str,
                        days: int | None = None) -> tuple[FileLink, str]:
        """A link to a copy of the existing, durable file ``path`` (a JMAP upload): hard-linked when it
        is on the same file system, else copied. Raises as :meth:`upload`, and OSError."""
        cfg = self.config

        def fill(tmp: Path) -> tuple[int, str]:
            self.check_size(owner, path.stat().st_size, self.store.used(owner) if cfg.quota else 0)
            try:
                os.link(path, tmp)
            except OSError:  # another file system: a copy of our own
                return copy_durably(path, tmp)
            os.utime(tmp)  # young: the sweep leaves a file without a row alone for an hour
            return file_digest(tmp)

        return await self.io.run(make_link, self.store, cfg, fill, owner, owner_name, name, media_type, days)

    async def from_chunks(self, chunks: Iterable[bytes], owner: str, owner_name: str, name: str,
                          media_type: str, days: int | None = None, pending: bool = False) -> tuple[FileLink, str]:
        """A link to the octets of ``chunks``, a blocking iterable consumed in the pool (a decoded MIME
        part of a message on disk). Raises as :meth:`upload`, and OSError. ``pending``: the link waits for
        :meth:`settle` (see :meth:`LinkStore.settle`)."""
        cfg = self.config
        return await self.io.run(make_link, self.store, cfg, lambda tmp: write_durably(chunks, tmp, cfg.max_size),
                                 owner, owner_name, name, media_type, days, pending)

    async def settle(self, link_ids: list[str], keep: bool) -> None:
        """Pending links (:meth:`from_chunks`) made live once their message is accepted (``keep``), or removed.
        Never raises: a failure is logged, and the sweep removes what stays pending (PENDING_AGE)."""
        if not link_ids:
            return
        try:
            n = await self.io.run(self.store.settle, link_ids, keep)
        except Exception as exc:
            logger.exception("files.settle_failed", exc, links=len(link_ids), keep=keep)
            return
        if n != len(link_ids):
            logger.warning("files.settle_missed", links=len(link_ids), settled=n, keep=keep)

    def settle_later(self, link_ids: list[str], keep: bool) -> None:
        """:meth:`settle` in a task of its own (from a ``finally`` that a cancellation runs: it must not await)."""
        if link_ids:
            task = asyncio.ensure_future(self.settle(link_ids, keep))
            self._settling.add(task)
            task.add_done_callback(self._settling.discard)

    async def _finish(self, tmp: Path, f: IO[bytes], **args: Any) -> tuple[FileLink, str]:
        """fsync, close, commit the link: one pool job that a cancelled caller cannot cut in half;
        if the caller is gone by its end, the link it made is deleted again."""
        cfg = self.config

        def finish() -> tuple[FileLink, str]:
            try:
                f.flush()
                os.fsync(f.fileno())
                f.close()
                return self.store.commit(tmp, quota=cfg.quota, **args)
            except BaseException:
                _discard(f, tmp)
                raise

        job = asyncio.ensure_future(self.io.run(finish))
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            job.add_done_callback(self._undo)
            raise

    def _undo(self, job: asyncio.Future[tuple[FileLink, str]]) -> None:
        if job.cancelled() or job.exception() is not None:
            return
        link = job.result()[0]
        logger.info("files.upload_abandoned", id=link.id, size=link.size)
        asyncio.ensure_future(self.io.run(self.store.delete, link.id))

    async def find(self, token: str) -> FileLink | None:
        return await self.io.run(self.store.find, token)

    async def get(self, link_id: str) -> FileLink | None:
        return await self.io.run(self.store.get, link_id)

    async def list(self, owner: str) -> list[FileLink]:
        return await self.io.run(self.store.list, owner)

    async def delete(self, link_id: str, owner: str | None = None) -> FileLink | None:
        return await self.io.run(self.store.delete, link_id, owner)

    async def count_download(self, link_id: str) -> None:
        await self.io.run(self.store.count_download, link_id)

    async def open(self, link: FileLink) -> IO[bytes] | None:
        """The link's data file open for reading, or None when it is gone (expired meanwhile)."""
        try:
            return await self.io.run(open, self.store.data_path(link.id), "rb")
        except FileNotFoundError:
            return None

    async def read(self, fh: IO[bytes], start: int, stop: int) -> AsyncGenerator[bytes, None]:
        """Octets ``start`` to ``stop - 1`` of ``fh``, :data:`READ_CHUNK` at a time (closes ``fh``)."""
        try:
            pos = start
            while pos < stop:
                block = await self.io.run(os.pread, fh.fileno(), min(READ_CHUNK, stop - pos), pos)
                if not block:
                    raise OSError(f"file shorter than its link says ({pos} of {stop})")
                pos += len(block)
                yield block
        finally:
            fh.close()


def make_link(store: LinkStore, cfg: FilesConfig, fill: Callable[[Path], tuple[int, str]], owner: str,
              owner_name: str, name: str, media_type: str, days: int | None = None,
              pending: bool = False) -> tuple[FileLink, str]:
    """Blocking: ``fill(tmp)`` writes a new temp file durably and returns its (size, SHA-256 hex); the
    file then becomes a link of ``owner`` (``[files]`` quota, ``days`` or retention_days). Returns
    the link and its token. Raises :class:`FileLinkError`, OSError; leaves no temp file."""
    tmp = store.temp_path()
    try:
        size, sha256 = fill(tmp)
        return store.commit(tmp, owner=owner, owner_name=owner_name, name=clean_name(name), media_type=media_type,
                            size=size, sha256=sha256, days=cfg.retention_days if days is None else days,
                            quota=cfg.quota, pending=pending)
    finally:
        tmp.unlink(missing_ok=True)


def _discard(f: IO[bytes], tmp: Path) -> None:
    try:
        f.close()
    except OSError:
        pass
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass


def file_digest(path: Path) -> tuple[int, str]:
    """(size, SHA-256 hex) of a file, read in chunks (blocking)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(READ_CHUNK):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def write_durably(chunks: Iterable[bytes], dest: Path, limit: int | None = None) -> tuple[int, str]:
    """Write ``chunks`` into the new file ``dest`` and fsync it (blocking). Returns (size, SHA-256 hex).
    Raises :class:`TooLarge` past ``limit`` octets (``dest`` is then the caller's to remove)."""
    digest = hashlib.sha256()
    size = 0
    with open(dest, "xb") as fout:
        for block in chunks:
            size += len(block)
            if limit is not None and size > limit:
                raise TooLarge(f"file larger than {limit} bytes ([files] max_size)")
            digest.update(block)
            fout.write(block)
        fout.flush()
        os.fsync(fout.fileno())
    return size, digest.hexdigest()


def copy_durably(src: Path, dest: Path) -> tuple[int, str]:
    """Copy ``src`` to the new file ``dest`` and fsync it (blocking). Returns (size, SHA-256 hex)."""
    with open(src, "rb") as fin:
        return write_durably(iter(lambda: fin.read(READ_CHUNK), b""), dest)
