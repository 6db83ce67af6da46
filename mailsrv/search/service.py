"""Per-worker search service: opens mailbox indexes, keeps them in step, answers queries.

Invariants:
* One :class:`MailboxIndex` object per (account, mailbox) in a process; all of
  its work is serialised by its asyncio lock and runs in the service's thread
  pool (file I/O and CPU-heavy evaluation never run on the event loop).
* Results are exactly those of :func:`mailsrv.search.scan.matches` over the
  messages of the view given to :meth:`MailboxIndex.search`.
* Several processes share the files: appends and snapshots take the
  exclusive ``flock``; every operation first reads what others appended.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from pyroaring import BitMap

from mailsrv import log
from mailsrv._speedups import search as hot
from mailsrv.config import SearchConfig
from mailsrv.mime import MessageStructure
from mailsrv.search.extract import FIELDS, Document, extract
from mailsrv.search.index import Evaluator, IndexCore, ViewState
from mailsrv.search.query import Query, SearchError, SortKey
from mailsrv.search.storage import (
    CorruptIndex,
    Files,
    TextStore,
    encode_added,
    encode_record,
    fsync_dir,
    journal_generation,
    load_snapshot,
    log_header,
    read_log,
    snapshot_meta,
    write_all,
    write_snapshot,
)
from mailsrv.util import fsio

__all__ = ["Columns", "Exists", "MailboxIndex", "Reader", "SearchService"]

logger = log.get("search")

#: fields whose n-gram dictionaries are built right after an index is loaded
WARM_FIELDS = ("body", "subject", "from", "to", "cc", "headers")

#: a single-key SORT of more hits than this filters a cached whole-mailbox order
SORT_CACHE_MIN = 2000

#: index objects kept per worker that are not loaded (beyond [search] cache_mailboxes loaded ones)
UNLOADED_INDEXES = 4096
#: messages in the loaded indexes of a worker, all mailboxes together (least recently used out first;
#: the one in use stays): ~1 KB of postings and locations each for short mail (a 100 000-message
#: mailbox of bench/imap.py's: 98 MiB), up to ~5 KB for long mail; [search] cache_mailboxes alone
#: bounded the count, so 16 large mailboxes could hold gigabytes
CACHE_MESSAGES = 200_000

#: text cache bytes tolerated beyond twice the live records before it is compacted
COMPACT_SLACK = 1 << 20
#: unloaded indexes whose journal and text file stay open between delivery rounds (2 fds each)
APPENDERS_OPEN = 128

#: messages extracted in between two fsio.give_way() calls of a round after delivery (~25 us each)
GIVE_WAY_EVERY = 32

#: bytes of delivered messages held for indexing (the store's ``raw=``) at most, in all mailboxes of
#: a process: beyond it (a backlog, a delivery to many mailboxes) messages are read back instead
RAW_HELD_MAX = 8 << 20
T = TypeVar("T")

#: reads the raw message with this UID (the store's ``read_message``)
Reader = Callable[[int], Awaitable[bytes]]
#: reads several messages at once (one store job): uid -> raw, the unreadable ones left out
ReadMany = Callable[[Sequence[int]], Awaitable[dict[int, bytes]]]
#: the same, blocking, safe in any thread: a search pool job reads and indexes a batch at once
ReadManyBlocking = Callable[[Sequence[int]], dict[int, bytes]]
#: the worker's map from (account_id, mailbox_id) to (directory, reader[, batch reader[, blocking
#: batch reader]]), for observer events
Resolver = Callable[[str, str], "tuple[Path, Reader] | tuple[Path, Reader, ReadMany] | "
                                "tuple[Path, Reader, ReadMany, ReadManyBlocking] | None"]
#: blocking, safe in any thread: does the store still have mailbox (account_id, mailbox_id)? False
#: once it was deleted, in any worker
Exists = Callable[[str, str], bool]


class Columns(NamedTuple):
    """Stored sort values of one message (RFC 5256 / RFC 5957)."""

    sent_date: float | None
    from_addr: str
    from_display: str
    to_addr: str
    to_display: str
    cc_addr: str
    subject: str
    has_attachment: bool
    sent_day: int | None  # calendar day of Date: in its own zone (date.toordinal())


def _remove_locked(files: Files) -> None:
    files.remove_all_locked(wait=True)


class MailboxGone(Exception):
    """A round after delivery found its mailbox deleted (in another worker): nothing is made."""


class _Appender(NamedTuple):
    """The open journal and text file of an index that deliveries append to (not loaded)."""

    log_fd: int
    log_ino: int
    snap_key: tuple[int, int, int]  # the snapshot's (inode, mtime, size) when they were opened
    text: TextStore


class MailboxIndex:
    """The search index of one mailbox. Obtain it from :meth:`SearchService.mailbox`."""

    def __init__(
        self, service: SearchService, mailbox_id: str, directory: Path, read: Reader, account_id: str = ""
    ) -> None:
        self.service = service
        self.config = service.config
        self.account_id = account_id
        self.mailbox_id = mailbox_id
        self.files = Files(directory, mailbox_id)
        self.read = read
        #: batch reader for indexing after delivery (else one ``read`` per message)
        self.read_many: ReadMany | None = None
        #: blocking batch reader: the batch is read in the search job that indexes it (one pool job
        #: per batch instead of a store job to read it and a search job to index it)
        self.read_many_blocking: ReadManyBlocking | None = None
        self.lock = asyncio.Lock()
        #: set while a round after delivery holds ``lock``: a search waiting for the lock counts on
        #: it, and the round gives way to delivery rounds no more (fsio.give_way)
        self.round_hold: fsio.Wanted | None = None
        self._tlock = threading.Lock()  # guards the fields below across executor threads
        #: the journal and text file an unloaded index appends to, kept open between rounds
        self._app: _Appender | None = None
        self.core = IndexCore()
        self.locs: dict[int, tuple[int, int]] = {}
        self.gen = -1
        self.log_fd = -1
        self.log_ino = -1
        self.log_pos = 0
        self.text: TextStore | None = None
        self.since_snapshot = 0
        self.view = ViewState()
        self._sort_cache: dict[SortKey, tuple[tuple, list[int]]] = {}
        #: UIDs delivered and not yet indexed; one task drains them in batches (SearchService.message_added)
        self.pending: list[int] = []
        #: its mailbox was deleted (SearchService.drop): no round indexes it, so none makes its files again
        self.dropped = False
        #: a round after delivery runs (under ``_tlock``): a missing index is made only for a mailbox
        #: the store still has (:meth:`_still_there`)
        self._delivering = False
        #: the delivered bytes of some of them (the store's ``raw=``): indexed without a read
        self.raws: dict[int, bytes] = {}
        #: the store's parse of some of those (``message_added``'s structure): extracted without a parse
        self.parsed: dict[int, MessageStructure] = {}
        #: statistics for tests and the benchmark
        self.stats = {"indexed": 0, "confirmed": 0, "rebuilds": 0, "snapshots": 0, "text_compactions": 0, "loads": 0,
                      "appended": 0}

    # --- blocking part (runs in the service's threads) ---------------------------

    def _close_files(self) -> None:
        self._drop_appender()
        if self.log_fd >= 0:
            os.close(self.log_fd)
            self.log_fd = -1
        if self.text is not None:
            self.text.close()
            self.text = None

    def _open_log(self) -> None:
        if self.log_fd >= 0:
            os.close(self.log_fd)
        self.log_fd = os.open(
            self.files.log, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
        )
        self.log_ino = os.fstat(self.log_fd).st_ino
        self.log_pos = 0

    def _reset(self, gen: int) -> None:
        """Start an empty index of generation ``gen`` on disk. Caller holds the exclusive lock."""
        self._close_files()
        f = self.files
        text = f.text_for(gen)
        self.core = IndexCore()
        self.locs = {}
        self._sort_cache.clear()
        self.text = TextStore(text)
        write_snapshot(f.snap, self.core, self.locs, gen, text.name)
        self._new_log(gen)
        f.remove_texts(keep=text)
        self.gen = gen
        self.since_snapshot = 0
        self.stats["rebuilds"] += 1

    def _new_log(self, gen: int) -> None:
        tmp = self.files.log.with_name(self.files.log.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, log_header(gen))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.files.log)
        fsync_dir(self.files.directory)
        self._open_log()

    def _load(self) -> None:
        """(Re)load snapshot and journal; rebuild when they are missing or corrupt."""
        self.files.ensure_dir()
        with self.files.locked(exclusive=True):
            self._load_locked()

    def _load_locked(self) -> None:
        """:meth:`_load` for a caller that holds the exclusive lock."""
        self._close_files()
        try:
            core, locs, gen, text = load_snapshot(self.files.snap)
            text_path = self.files.directory / text
            if not text_path.exists() and locs:
                raise CorruptIndex(f"{text_path} missing")
        except FileNotFoundError:
            self._still_there()
            self._reset(time.time_ns())
            return
        except (CorruptIndex, OSError) as exc:
            self._still_there()
            logger.warning("index.corrupt", mailbox=self.mailbox_id, error=str(exc))
            self._reset(time.time_ns())
            return
        self.core, self.locs, self.gen = core, locs, gen
        self._sort_cache.clear()
        self.stats["loads"] += 1
        self.text = TextStore(text_path)
        self._open_log()
        _, _, stale = read_log(self.log_fd, gen, 0)
        if stale:  # crash between snapshot and new journal: the old one is folded in
            self._new_log(gen)
        self.since_snapshot = 0
        self._tail(truncate=True)
        # deliveries append to the journal of an index nobody loaded (_append_unloaded): fold a
        # long one now, so that the next process to load it replays little
        self._maybe_snapshot()

    def _still_there(self) -> None:
        """Before a round after delivery makes a missing index (caller holds the exclusive lock):
        raise :class:`MailboxGone` when the store no longer has the mailbox. Another worker may
        have deleted it (``mailbox_deleted`` runs only in the deleting worker) and removed its
        files under this lock (:meth:`Files.remove_all_locked`): checked under the lock, so either
        that removal comes after what this round writes, or this round sees the mailbox gone. The
        lock file this round opened is removed with it. A search (``_delivering`` false) rebuilds."""
        exists = self.service.exists
        if self._delivering and exists is not None and not exists(self.account_id, self.mailbox_id):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.files.lock)
            raise MailboxGone(self.mailbox_id)

    def _current(self) -> bool:
        """True when our snapshot and journal are still the ones on disk."""
        if self.gen < 0:
            return False
        try:
            ino = os.stat(self.files.log).st_ino
        except FileNotFoundError:
            return False
        return ino == self.log_ino and self.files.snap.exists()

    def _tail(self, truncate: bool = False) -> bool:
        """Apply journal records appended by any process since our position.

        Returns False when the files were replaced (another process wrote a
        snapshot or rebuilt): the caller reloads. ``truncate`` (exclusive
        lock held) cuts a torn tail left by a writer that died.
        """
        if not self._current():
            return False
        records, pos, stale = read_log(self.log_fd, self.gen, self.log_pos)
        if stale:
            return False
        for rec in records:
            self._apply(rec)
        self.log_pos = pos
        if truncate and os.fstat(self.log_fd).st_size > pos:
            logger.warning("journal.torn", mailbox=self.mailbox_id, offset=pos)
            os.ftruncate(self.log_fd, pos)
        return True

    def _tail_exclusive(self) -> None:
        """Catch up while holding the exclusive lock (reloading if needed)."""
        if not self._tail(truncate=True):
            self._load_locked()

    def _apply(self, rec: dict[str, Any]) -> None:
        self.since_snapshot += 1
        if "a" in rec:
            uid = int(rec["a"])
            if uid in self.core.indexed:
                return
            assert self.text is not None
            try:
                text = self.text.read(int(rec["o"]), int(rec["l"]))
            except CorruptIndex as exc:
                logger.warning("text.corrupt", mailbox=self.mailbox_id, uid=uid, error=str(exc))
                return  # not indexed: found missing and re-indexed at the next search
            self.core.add(uid, Document.from_columns(text, rec["c"]))
            self.locs[uid] = (int(rec["o"]), int(rec["l"]))
        elif "x" in rec:
            uids = [int(u) for u in rec["x"]]
            self.core.remove(uids)
            for u in uids:
                self.locs.pop(u, None)

    def _add_docs(self, docs: list[tuple[int, Document]]) -> None:
        """Index ``docs`` durably enough (journal + text, no fsync: the index is a cache)."""
        with self.files.locked(exclusive=True):
            self._tail_exclusive()
            assert self.text is not None
            blobs = []
            for uid, doc in docs:
                if uid in self.core.indexed:
                    continue
                blob = TextStore.encode(doc.text)
                off = self.text.append(blob)
                blobs.append(encode_added(uid, off, len(blob), doc.columns()))
                self.core.add(uid, doc)
                self.locs[uid] = (off, len(blob))
                self.stats["indexed"] += 1
            if blobs:
                data = b"".join(blobs)
                os.write(self.log_fd, data)
                self.log_pos += len(data)
                self.since_snapshot += len(blobs)
            self._maybe_snapshot()

    def _append_unloaded(self, docs: list[tuple[int, Document]]) -> bool:
        """Append ``docs`` to the text cache and journal of an index this process has not loaded.

        Delivery-time indexing of mailboxes nobody searches here: the cost is the append, never a
        load of the snapshot (O(mailbox)). The records are applied by whoever loads or tails the
        journal (idempotent per UID). False, and nothing written, when there is no current
        snapshot and journal to append to: the caller loads (or rebuilds) the index instead.
        Records lost to a torn or stale journal are cache misses: the next search indexes the
        messages it finds unindexed (``_catch_up``), so no search misses a message.
        """
        with self.files.locked(exclusive=True):
            app = self._appender()
            if app is None:
                return False
            try:
                texts = [TextStore.encode(doc.text) for _, doc in docs]
                off = app.text.size()
                recs = []
                for (uid, doc), blob in zip(docs, texts, strict=True):
                    recs.append(encode_added(uid, off, len(blob), doc.columns()))
                    off += len(blob)
                if recs:
                    app.text.append_many(texts)
                    write_all(app.log_fd, b"".join(recs))
            except OSError:
                self._drop_appender()
                raise
            self.stats["indexed"] += len(recs)
            self.stats["appended"] += len(recs)
        return True

    def _appender(self) -> _Appender | None:
        """The journal and text file to append to, kept open from the last round while the
        snapshot and journal on disk are the same (a held file's inode is not reused); None when
        there is no current snapshot and journal. Caller holds the exclusive lock and ``_tlock``."""
        f = self.files
        try:
            st = os.stat(f.snap)
        except FileNotFoundError:
            self._drop_appender()
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        app = self._app
        if app is not None:
            try:
                ino = os.stat(f.log).st_ino
            except FileNotFoundError:
                ino = -1
            if app.snap_key == key and ino == app.log_ino:
                return app
            self._drop_appender()
        try:
            gen, text_name = snapshot_meta(f.snap)
            fd = os.open(f.log, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        except (FileNotFoundError, CorruptIndex):
            return None
        try:
            text_path = f.directory / text_name
            # a missing text file is corruption the full load must see (it rebuilds): never
            # create it here
            if journal_generation(fd) != gen or not text_path.exists():
                os.close(fd)
                return None
            app = _Appender(fd, os.fstat(fd).st_ino, key, TextStore(text_path))
        except BaseException:
            os.close(fd)
            raise
        self._app = app
        self.service._appending(self)
        return app

    def _drop_appender(self) -> None:
        """Close the files kept for appending (caller holds ``_tlock``, or owns the index)."""
        app, self._app = self._app, None
        if app is not None:
            self.service._appended(self)
            os.close(app.log_fd)
            app.text.close()

    def _expunge(self, uids: list[int]) -> None:
        with self.files.locked(exclusive=True):
            self._tail_exclusive()
            gone = [u for u in uids if u in self.core.indexed]
            if not gone:
                return
            data = encode_record({"x": gone})
            os.write(self.log_fd, data)
            self.log_pos += len(data)
            self.core.remove(gone)
            for u in gone:
                self.locs.pop(u, None)
            self.since_snapshot += 1
            self._maybe_snapshot()

    def _maybe_snapshot(self, force: bool = False) -> None:
        """Fold the journal into a new snapshot. Caller holds the exclusive lock."""
        # amortised: a large mailbox folds its journal less often (at most 1/8 replayed at open)
        threshold = max(self.config.snapshot_every, len(self.core.indexed) // 8)
        if not force and self.since_snapshot < threshold:
            return
        gen = max(self.gen + 1, time.time_ns())
        self.core.compact()
        assert self.text is not None
        old_text = self.text
        live = sum(n for _, n in self.locs.values())
        if old_text.size() > 2 * live + COMPACT_SLACK:
            # more than half of the text cache is expunged mail: copy the live records
            path = self.files.text_for(gen)
            self.locs = old_text.copy_live(self.locs, path)
            self.text = TextStore(path)
            self.stats["text_compactions"] += 1
        write_snapshot(self.files.snap, self.core, self.locs, gen, self.text.path.name)
        self.gen = gen
        self._new_log(gen)
        if self.text is not old_text:
            old_text.close()
            self.files.remove_texts(keep=self.text.path)
        self.log_pos = 0
        self.since_snapshot = 0
        self.stats["snapshots"] += 1

    def _prepare(self, view: Any) -> list[int]:
        """Catch up with the journal and the view; return the UIDs of the view not indexed."""
        with self._tlock:
            ok = False
            if self.gen >= 0:
                with self.files.locked(exclusive=False):
                    ok = self._tail()
            if not ok:
                self._load()
            self.view.sync(view)
            return list(self.view.uids - self.core.indexed)

    def _text_of(self, uid: int) -> dict[str, str]:
        assert self.text is not None
        off, n = self.locs[uid]
        try:
            return self.text.read(off, n)
        except CorruptIndex:
            return {}

    def _find(self, cand: BitMap, fields: tuple[int, ...], needle: bytes) -> list[int]:
        assert self.text is not None
        return hot.confirm(self.text.buffer(), cand, self.locs, fields, len(FIELDS), needle)

    def _evaluate(self, q: Query, unreadable: dict[int, Document]) -> BitMap:
        with self._tlock:
            ev = Evaluator(self.core, self.view, self._text_of, unreadable.__getitem__, self._find)
            out = ev.run(q)
            self.stats["confirmed"] += ev.confirmed
            return out

    # --- async API -----------------------------------------------------------------

    def _warm(self) -> None:
        """Build the n-gram term dictionaries a reload left for later (substring queries need them)."""
        for f in WARM_FIELDS:
            with self._tlock:
                ti = self.core.fields[f]
                if ti.grams is None:
                    ti.build_grams()

    async def _catch_up(self, view: Any) -> dict[int, Document]:
        """Index every message of ``view`` not indexed yet; returns the unreadable ones."""
        loaded = self.stats["loads"]
        missing = await self.service.run(self._prepare, view)
        if self.stats["loads"] != loaded:
            self.service.background(self.service.run(self._warm))
        unreadable: dict[int, Document] = {}
        batch = self.config.batch
        for i in range(0, len(missing), batch):
            chunk = missing[i : i + batch]
            raws: list[tuple[int, bytes]] = []
            # one store job for the batch (a first search over 20 000 messages made 20 000 pool round
            # trips); what it did not read, one by one (which says why)
            got = await self._read_async(chunk) if self.read_many is not None else {}
            for uid in chunk:
                raw = got.get(uid)
                if raw is None:
                    try:
                        raw = await self.read(uid)
                    except Exception as exc:  # MessageGone, I/O error: scanned as empty
                        logger.debug("read.failed", mailbox=self.mailbox_id, uid=uid, error=str(exc))
                        unreadable[uid] = Document()
                        continue
                raws.append((uid, raw))
            if raws:
                await self.service.run(self._extract_and_add, raws, False)
        return unreadable

    def _read_and_add(self, read_many: ReadManyBlocking, uids: list[int], held: dict[int, bytes],
                      parsed: dict[int, MessageStructure] | None = None) -> None:
        """Blocking (search pool): read a batch after delivery (but the messages in ``held``) and
        index it; a failed read is skipped (the next search indexes what it finds missing).
        ``parsed``: the structures of some held ones (see :meth:`_extract_and_add`)."""
        many: dict[int, bytes] = {}
        unread = [uid for uid in uids if uid not in held]
        if unread:
            try:
                many = read_many(unread)
            except Exception as exc:  # mailbox gone, I/O error
                logger.debug("read.failed", mailbox=self.mailbox_id, error=str(exc))
        raws = [(uid, raw) for uid in uids if (raw := held.get(uid, many.get(uid))) is not None]
        if raws:
            self._extract_and_add(raws, parsed=parsed)

    def _extract_and_add(self, raws: list[tuple[int, bytes]], deliver: bool = True,
                         parsed: dict[int, MessageStructure] | None = None) -> None:
        """Blocking: index ``raws``. ``deliver`` (false for a client's search): a round after delivery,
        which never makes the index of a mailbox deleted meanwhile (in any worker: :meth:`_still_there`).
        ``parsed``: uid -> the store's parse of that raw (delivery), not parsed again."""
        limit = self.config.max_text_bytes
        parsed = parsed or {}
        docs = []
        for i, (uid, raw) in enumerate(raws):
            if i and not i % GIVE_WAY_EVERY:  # a round after delivery gives way to delivery rounds
                fsio.give_way(self.round_hold)
            docs.append((uid, extract(raw, limit, parsed.get(uid))))
        with self._tlock:
            if self.dropped:  # deleted since its round took it (SearchService.drop): nothing to make again
                return
            self._delivering = deliver
            try:
                self._add_extracted(docs)
            except MailboxGone:
                self._gone()
            finally:
                self._delivering = False

    def _gone(self) -> None:
        """The store no longer has the mailbox (:class:`MailboxGone`; caller holds ``_tlock``): forget
        the index as :meth:`SearchService.drop` would, so that nothing here (a later round, the flush
        at stop) makes its files again."""
        logger.debug("index.mailbox_gone", mailbox=self.mailbox_id)
        self.dropped = True
        self._close_files()
        self.gen = -1
        self.core = IndexCore()
        self.locs = {}

    def _add_extracted(self, docs: list[tuple[int, Document]]) -> None:
        """:meth:`_extract_and_add` after the extraction (caller holds ``_tlock``)."""
        if self.gen < 0:  # not loaded in this process: append only (delivery-time indexing)
            if self._app is None:
                self.files.ensure_dir()
            if self._append_unloaded(docs):
                return
            self._load()
            if not self.locs:  # a new (empty) index: made, then appended to as by any other worker,
                self._close_files()  # not kept loaded (that is a search's; loaded, each delivery
                self.gen = -1        # would be tokenised here, and snapshots written)
                self.core = IndexCore()
                if self._append_unloaded(docs):
                    return
                self._load()
        self._add_docs(docs)

    @contextlib.asynccontextmanager
    async def _reading(self) -> AsyncIterator[None]:
        """``lock`` for a client's search: a round after delivery holding it gives way no more."""
        hold = self.round_hold if self.lock.locked() else None
        if hold is not None:
            fsio.foreground.want(hold, 1)
        try:
            await self.lock.acquire()
        finally:
            if hold is not None:
                fsio.foreground.want(hold, -1)
        try:
            yield
        finally:
            self.lock.release()

    async def search(self, query: Query, view: Any) -> BitMap:
        """UIDs of ``view`` matching ``query`` (exact). See docs/search-api.md."""
        async with self._reading():
            unreadable = await self._catch_up(view)
            return await self.service.run(self._evaluate, query, unreadable)

    async def sort(self, query: Query, keys: Sequence[SortKey], view: Any) -> list[int]:
        """UIDs of ``view`` matching ``query``, ordered by ``keys`` then UID (RFC 5256 §3)."""
        async with self._reading():
            unreadable = await self._catch_up(view)
            hits = await self.service.run(self._evaluate, query, unreadable)
            return await self.service.run(self._sort, hits, list(keys))

    def _sort(self, hits: BitMap, keys: list[SortKey]) -> list[int]:
        with self._tlock:
            if len(keys) == 1 and len(hits) > SORT_CACHE_MIN:
                # one criterion (JMAP's usual receivedAt): filter a cached whole-mailbox order
                order = self._sorted_all(keys[0])
                return [u for u in order if u in hits]
            return self._sort_keys(list(hits), keys)

    def _sorted_all(self, key: SortKey) -> list[int]:
        """Every UID of the view ordered by ``key`` (then UID), cached until the mailbox changes."""
        stamp = (self.view.stamp, self.core.version)
        hit = self._sort_cache.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        order = self._sort_keys(list(self.view.uids), [key])
        if len(self._sort_cache) >= 8:
            self._sort_cache.clear()
        self._sort_cache[key] = (stamp, order)
        return order

    def _sort_keys(self, order: list[int], keys: list[SortKey]) -> list[int]:
        """``order`` (ascending UIDs) sorted by ``keys``; stable, so ties stay in UID order."""
        infos = self.view.infos
        cols = self.core.cols
        empty = (None, "", "", "", "", "", "", False, None)
        for k in reversed(keys):
            c = k.column
            if c == "arrival":
                order.sort(key=lambda u: infos[u].internal_date, reverse=k.reverse)
            elif c == "size":
                order.sort(key=lambda u: infos[u].size, reverse=k.reverse)
            elif c == "date":

                def date(u: int) -> float:
                    s = cols.get(u, empty)[0]
                    return float(infos[u].internal_date) if s is None else float(s)

                order.sort(key=date, reverse=k.reverse)
            elif c.startswith("keyword:"):
                flag = self.view.flags.get(c[8:].casefold(), BitMap())
                order.sort(key=lambda u: u not in flag, reverse=k.reverse)
            else:
                i = _SORT_COL.get(c)
                if i is None:
                    raise SearchError(f"unknown sort column {c!r}")
                order.sort(key=lambda u: cols.get(u, empty)[i], reverse=k.reverse)
        return order

    def columns(self, uid: int) -> Columns | None:
        """Stored sort values of ``uid`` (None when not indexed). Sync."""
        c = self.core.cols.get(uid)
        return Columns(*c) if c is not None else None

    async def rebuild(self, view: Any) -> None:
        """Drop the index files and index every message of ``view`` again."""
        async with self.lock:

            def reset() -> None:
                with self._tlock:
                    self.files.ensure_dir()
                    with self.files.locked(exclusive=True):
                        self._reset(time.time_ns())
                    self.view = ViewState()

            await self.service.run(reset)
            await self._catch_up(view)

    async def index_uids(self, uids: Sequence[int], held: dict[int, bytes] | None = None) -> None:
        """Index these messages now (after delivery); reading failures are skipped. ``held``: the
        bytes of some of them (as delivered), not read again."""
        held = held or {}
        async with self.lock:
            # an index not loaded here is appended to, not loaded (_append_unloaded)
            todo = [uid for uid in dict.fromkeys(uids) if uid not in self.core.indexed]
            if self.read_many_blocking is not None and todo:
                await self.service.run(self._read_and_add, self.read_many_blocking, todo, held)
                return
            got = {**held, **await self._read_async([uid for uid in todo if uid not in held])}
            raws = [(uid, got[uid]) for uid in todo if uid in got]
            if raws:
                await self.service.run(self._extract_and_add, raws)

    async def _read_async(self, uids: list[int]) -> dict[int, bytes]:
        """uid -> raw of ``uids`` by the async readers (one ``read_many``, else one ``read`` each);
        the unreadable ones (expunged, I/O errors) are left out: the next search indexes them."""
        if not uids:
            return {}
        if self.read_many is not None:
            try:
                return await self.read_many(uids)
            except Exception as exc:  # mailbox gone, I/O error: indexed at the next search
                logger.debug("read.failed", mailbox=self.mailbox_id, error=str(exc))
                return {}
        out: dict[int, bytes] = {}
        got = await asyncio.gather(*(self.read(uid) for uid in uids), return_exceptions=True)
        for uid, raw in zip(uids, got, strict=True):
            if isinstance(raw, BaseException):
                if not isinstance(raw, Exception):
                    raise raw
                logger.debug("read.failed", mailbox=self.mailbox_id, uid=uid, error=str(raw))
            else:
                out[uid] = raw
        return out

    def _locked_load(self) -> None:
        with self._tlock:
            self._load()

    async def expunged(self, uids: Sequence[int]) -> None:
        async with self.lock:
            if self.gen < 0:
                await self.service.run(self._locked_load)

            def run() -> None:
                with self._tlock:
                    self._expunge(list(uids))

            await self.service.run(run)

    async def flush(self) -> None:
        """Write a snapshot now (shutdown)."""
        async with self.lock:
            if self.gen < 0:
                return

            def run() -> None:
                with self._tlock:
                    self._delivering = True  # as a round: never makes a deleted mailbox's index again
                    try:
                        with self.files.locked(exclusive=True):
                            self._tail_exclusive()
                            if self.since_snapshot:
                                self._maybe_snapshot(force=True)
                    except MailboxGone:
                        self._gone()
                    finally:
                        self._delivering = False

            await self.service.run(run)

    def close(self) -> None:
        with self._tlock:
            self._close_files()
            self.gen = -1


_SORT_COL = {
    "from": 1,
    "displayfrom": 2,
    "to": 3,
    "displayto": 4,
    "cc": 5,
    "subject": 6,
}


#: a round's work for one mailbox: its index, the UIDs, the bytes held (uid -> raw), the blocking
#: reader of the others, and the store's parse of some held ones (uid -> structure)
_Work = tuple[MailboxIndex, list[int], dict[int, bytes], ReadManyBlocking | None, dict[int, MessageStructure]]


class SearchService:
    """One per worker process: the mailbox indexes it has open, and the store observer."""

    def __init__(self, config: SearchConfig | None = None, resolver: Resolver | None = None,
                 exists: Exists | None = None) -> None:
        self.config = config or SearchConfig()
        self.resolver = resolver
        #: the store still has a mailbox (blocking): a round after delivery makes no index for one deleted
        #: meanwhile in another worker (MailboxIndex._still_there); None: never checked
        self.exists = exists
        self._pool: ThreadPoolExecutor = ThreadPoolExecutor(  # its rounds give way: fsio.pool_thread
            max_workers=self.config.threads, thread_name_prefix="search", initializer=lambda: fsio.pool_thread(self._pool))
        self._open: OrderedDict[tuple[str, str], MailboxIndex] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        #: mailboxes with deliveries waiting to be indexed (in arrival order; MailboxIndex.pending)
        self._waiting: dict[MailboxIndex, None] = {}
        #: a task indexes the waiting deliveries (one round at a time, up to ``batch`` messages each:
        #: a delivery to 5000 mailboxes never reads 5000 messages into memory ahead of the indexer)
        self._draining = False
        #: indexes with open append files (MailboxIndex._app), least recently used first
        self._appenders: OrderedDict[MailboxIndex, None] = OrderedDict()
        self._app_lock = threading.RLock()
        #: bytes held in the MailboxIndex.raws (at most RAW_HELD_MAX)
        self.raw_held = 0
        #: rounds after delivery: their thread CPU, messages, and those read back (no held bytes)
        self.stats = {"rounds": 0, "cpu_s": 0.0, "messages": 0, "read_back": 0}

    def _appending(self, idx: MailboxIndex) -> None:
        """``idx`` opened its append files (its ``_tlock`` held): close the least recently used
        others' beyond APPENDERS_OPEN (one in use in another thread is left for a later call)."""
        with self._app_lock:
            self._appenders[idx] = None
            self._appenders.move_to_end(idx)
            for old in list(self._appenders):
                if len(self._appenders) <= APPENDERS_OPEN:
                    break
                if old is not idx and old._tlock.acquire(blocking=False):
                    try:
                        old._drop_appender()
                    finally:
                        old._tlock.release()

    def _appended(self, idx: MailboxIndex) -> None:
        with self._app_lock:
            self._appenders.pop(idx, None)

    #: the store hands message_added the delivered bytes (``raw=``) when it holds them
    wants_raw = True

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await fsio.submit(asyncio.get_running_loop(), self._pool, functools.partial(fn, *args))

    def mailbox(self, account_id: str, mailbox_id: str, directory: Path, read: Reader, *,
                for_search: bool = True, read_many: ReadMany | None = None) -> MailboxIndex:
        """The index of one mailbox (cached; files are opened at first use). Sync.

        ``for_search``: the caller will search it (load it), so it counts against
        ``[search] cache_mailboxes`` at once; False for indexing after delivery (appends).
        ``read_many``: reads a batch in one store job (a search's catch-up), else ``read`` each."""
        key = (account_id, mailbox_id)
        idx = self._open.get(key)
        if idx is not None:
            self._open.move_to_end(key)
            idx.read = read
            if read_many is not None:
                idx.read_many = read_many
            return idx
        idx = MailboxIndex(self, mailbox_id, directory, read, account_id)
        if read_many is not None:
            idx.read_many = read_many
        self._open[key] = idx
        self._trim(idx, int(for_search))
        return idx

    def _trim(self, keep: MailboxIndex | None = None, loading: int = 0) -> None:
        """Close least recently used indexes: ``[search] cache_mailboxes`` and CACHE_MESSAGES bound the
        loaded ones (their memory; ``loading`` more are about to load), UNLOADED_INDEXES all of them (one
        that deliveries only append to costs a few hundred bytes). One in use (searching, or
        indexing deliveries) stays: a later call closes it."""
        loaded = [i for i in self._open.values() if i.gen >= 0]
        excess_loaded = len(loaded) + loading - self.config.cache_mailboxes
        excess_messages = sum(len(i.locs) for i in loaded) - CACHE_MESSAGES
        excess_all = len(self._open) - UNLOADED_INDEXES
        for old_key in list(self._open):  # least recently used first
            if excess_loaded <= 0 and excess_messages <= 0 and excess_all <= 0:
                break
            old = self._open[old_key]
            if old is keep or old.lock.locked() or old in self._waiting:  # in use: a later call closes it
                continue
            if old.gen >= 0 and (excess_loaded > 0 or excess_messages > 0):
                excess_loaded -= 1
                excess_messages -= len(old.locs)
            elif excess_all <= 0:
                continue
            excess_all -= 1
            del self._open[old_key]
            old.close()

    def mailbox_deleted(self, account_id: str, mailbox_id: str) -> None:
        """StoreObserver (optional hook): a mailbox was deleted; its index files go with it (:meth:`drop`)."""
        idx = self._open.get((account_id, mailbox_id))
        directory = idx.files.directory if idx is not None else None
        if directory is None and self.resolver is not None:
            found = self.resolver(account_id, mailbox_id)
            directory = found[0] if found is not None else None
        if directory is not None:
            self.drop(account_id, mailbox_id, directory)

    def drop(self, account_id: str, mailbox_id: str, directory: Path) -> None:
        """Forget a deleted mailbox and remove its files (sync, small), under their lock: at once when it
        is free, else in the pool once the holder lets it go (:meth:`idle` waits for that)."""
        idx = self._open.pop((account_id, mailbox_id), None)
        if idx is not None:
            # its waiting deliveries are never indexed: a round would make the deleted mailbox's files again
            idx.dropped = True
            self._waiting.pop(idx, None)
            idx.pending = []
            self.raw_held -= sum(map(len, idx.raws.values()))
            idx.raws.clear()
            idx.parsed.clear()
            idx.close()
        files = Files(directory, mailbox_id)
        if not files.remove_all_locked(wait=False):  # a round holds its lock (here or in another worker)
            self.background(self.run(_remove_locked, files))

    # --- StoreObserver ---------------------------------------------------------------

    def background(self, coro: Awaitable[None]) -> None:
        async def guarded() -> None:
            try:
                await coro
            except Exception as exc:  # an observer must not raise
                logger.warning("observer.failed", error=str(exc))

        task = asyncio.get_running_loop().create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _index_for(self, account_id: str, mailbox_id: str) -> MailboxIndex | None:
        idx = self._open.get((account_id, mailbox_id))
        if idx is None and self.resolver is not None:
            found = self.resolver(account_id, mailbox_id)
            if found is not None:
                idx = self.mailbox(account_id, mailbox_id, found[0], found[1], for_search=False)
                if len(found) > 2:
                    idx.read_many = found[2]  # the 3-tuple form
                if len(found) > 3:
                    idx.read_many_blocking = found[3]  # the 4-tuple form
        return idx

    def message_added(self, account_id: str, mailbox_id: str, info: Any, structure: Any,
                      raw: bytes | None = None) -> None:
        """Index the new message soon after delivery, on this loop (never delays the reply).

        Deliveries wait in rounds: the UIDs that arrive while a round is read and indexed form
        the next one, which indexes every waiting mailbox (up to ``[search] batch`` messages in
        all) in one executor job, one journal append per mailbox; so indexing does less work
        per message the busier the worker is, however many mailboxes the mail goes to.
        ``raw``: the message's bytes as delivered, indexed instead of reading the file back
        (held while :data:`RAW_HELD_MAX` allows).
        """
        if not self.config.enabled:
            return
        idx = self._index_for(account_id, mailbox_id)
        if idx is not None:
            idx.pending.append(info.uid)
            if raw is not None and self.raw_held + len(raw) <= RAW_HELD_MAX and info.uid not in idx.raws:
                idx.raws[info.uid] = raw
                self.raw_held += len(raw)
                if structure is not None:  # the store's parse of these bytes: the round does not parse again
                    idx.parsed[info.uid] = structure
            self._waiting[idx] = None
            if not self._draining:
                self._draining = True
                self.background(self._drain())

    async def _drain(self) -> None:
        """Index the waiting deliveries in rounds until none is left."""
        try:
            while self._waiting:
                await self._round()
        finally:
            self._draining = False
            if self._waiting:  # a failed round: what came meanwhile gets a task of its own
                self._draining = True
                self.background(self._drain())

    def _take(self, budget: int
              ) -> list[tuple[MailboxIndex, list[int], dict[int, bytes], dict[int, MessageStructure]]]:
        """Up to ``budget`` waiting UIDs (and their held bytes) of mailboxes not in use, oldest first."""
        taken = []
        for idx in list(self._waiting):
            if budget <= 0:
                break
            if idx.lock.locked():  # a search or an expunge: its mailbox waits for a later round
                continue
            uids, idx.pending = idx.pending[:budget], idx.pending[budget:]
            del self._waiting[idx]
            if idx.pending:  # the rest after the other mailboxes
                self._waiting[idx] = None
            held = {u: raw for u in uids if (raw := idx.raws.pop(u, None)) is not None}
            parsed = {u: p for u in held if (p := idx.parsed.pop(u, None)) is not None}
            self.raw_held -= sum(map(len, held.values()))
            budget -= len(uids)
            taken.append((idx, uids, held, parsed))
        return taken

    async def _round(self) -> None:
        """One round: take waiting UIDs, read those neither held nor readable in the job, and index
        all of them in one pool job with each mailbox's lock held. A mailbox whose reading or
        indexing fails is skipped (the next search indexes what it finds missing)."""
        taken = self._take(self.config.batch)
        if not taken:  # every waiting mailbox is in use: wait for the first
            async with next(iter(self._waiting)).lock:
                return
        locked: list[MailboxIndex] = []
        hold = fsio.Wanted()  # a search waiting for one of these mailboxes: the round gives way no more
        try:
            work: list[_Work] = []
            for idx, uids, held, parsed in taken:
                await idx.lock.acquire()
                locked.append(idx)
                idx.round_hold = hold
                todo = [uid for uid in dict.fromkeys(uids) if uid not in idx.core.indexed]
                if not todo:
                    continue
                if idx.read_many_blocking is None and any(uid not in held for uid in todo):
                    held = {**held, **await idx._read_async([uid for uid in todo if uid not in held])}
                    todo = [uid for uid in todo if uid in held]
                work.append((idx, todo, held, idx.read_many_blocking, parsed))
            if work:
                self.stats["rounds"] += 1
                self.stats["messages"] += sum(len(w[1]) for w in work)
                self.stats["read_back"] += sum(u not in w[2] for w in work for u in w[1])
                self.stats["cpu_s"] += await self.run(self._index_round, work)
        finally:
            for idx in locked:
                idx.round_hold = None
                idx.lock.release()
        if any(idx.gen >= 0 for idx in locked):  # a round loaded (or built) an index: keep the bound
            self._trim()

    @staticmethod
    def _index_round(work: list[_Work]) -> float:
        """Blocking (search pool): index a round's mailboxes one after another, giving way to the
        process's delivery rounds between slices (util/fsio.py). Returns its thread CPU seconds."""
        t0 = time.thread_time()
        with fsio.background():
            for idx, uids, held, read_blocking, parsed in work:
                fsio.give_way(idx.round_hold)
                SearchService._index_one(idx, uids, held, read_blocking, parsed)
        return time.thread_time() - t0

    @staticmethod
    def _index_one(idx: MailboxIndex, uids: list[int], held: dict[int, bytes],
                   read_blocking: ReadManyBlocking | None, parsed: dict[int, MessageStructure] | None = None) -> None:
        """Blocking: :meth:`_index_round` for one mailbox."""
        try:
            if read_blocking is not None:
                idx._read_and_add(read_blocking, uids, held, parsed)
            else:
                idx._extract_and_add([(uid, held[uid]) for uid in uids if uid in held], parsed=parsed)
        except Exception as exc:  # I/O error, a vanished mailbox: the next search catches up
            logger.warning("index.failed", mailbox=idx.mailbox_id, error=str(exc))

    def messages_expunged(self, account_id: str, mailbox_id: str, uids: list[int]) -> None:
        idx = self._open.get((account_id, mailbox_id))
        if idx is not None:
            gone = set(uids)
            if idx.pending:  # not indexed yet, and never to be: held bytes would index them after the expunge
                idx.pending = [u for u in idx.pending if u not in gone]
            for uid in gone.intersection(idx.raws):
                self.raw_held -= len(idx.raws.pop(uid))
                idx.parsed.pop(uid, None)
            self.background(idx.expunged(list(uids)))

    def flags_changed(self, account_id: str, mailbox_id: str, infos: list[Any]) -> None:
        """Flags are read from the session's view: nothing to do."""

    async def idle(self) -> None:
        """Wait until the background indexing started by observer events is done (tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks))

    async def close(self) -> None:
        await self.idle()
        if self.stats["rounds"]:
            logger.info("search.rounds", **{k: round(v, 4) for k, v in self.stats.items()})
        for idx in list(self._open.values()):
            try:
                await idx.flush()
            except OSError as exc:
                logger.warning("flush.failed", mailbox=idx.mailbox_id, error=str(exc))
            idx.close()
        self._open.clear()
        self._pool.shutdown(wait=True)
