"""The per-worker store: accounts by id, local delivery to many targets, observers, notification."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, cast

from mailsrv import log
from mailsrv._speedups import quota as quota_impl
from mailsrv.config import MimeConfig, StoreConfig
from mailsrv.store import headers, journal, notify, reserve
from mailsrv.store import maildir as md
from mailsrv.store.account import SNAPSHOT_CACHE_MESSAGES, Account
from mailsrv.store.engine import Engine, Pending, SyncResult, new_id, parse_for_index
from mailsrv.store.rows import LateParse
from mailsrv.store.types import (
    DeliveryResult,
    DeliveryTarget,
    MailboxNotFound,
    QuotaLimits,
    StoreError,
    StoreObserver,
    TemporaryFailure,
)
from mailsrv.store.usage import BOOK_NAME, UsageBook
from mailsrv.util import fsio, timeline

if TYPE_CHECKING:
    from mailsrv.mime import MessageStructure

logger = log.get("store")
T = TypeVar("T")

#: Deliveries run at most ``io_threads // DELIVERY_JOBS`` pool jobs at once (at least 2). More
#: threads in fsync and SQLite fight over the GIL: measured on 2 cores (50 sessions, 50 mailboxes)
#: 3-4 concurrent jobs deliver 20-25 % more than 8, and the rest of the pool stays free for reads.
#: Deferred deliveries (group commit) run as rounds instead: one pool job does the work of every
#: delivery that joined the round, then one syncfs for all of them (no job per delivery and no
#: sync job after it; on tmpfs, 10-50 sessions: 0.2-0.5 pool jobs per message instead of 1.5-1.8,
#: a fifth of the context switches); as many rounds at once, so that one links while another
#: waits for the disk (2, 4 and 8 measured alike).
DELIVERY_JOBS = 2
#: seconds a domain's quota limits are reused before the directory is asked again
DOMAIN_LIMITS_TTL = 5.0
#: a domain's limits without a quota source (a QuotaLimits is frozen: one for every caller)
_UNLIMITED = QuotaLimits()
#: a delivered message up to this size is handed to observers (search indexing after delivery)
#: from the delivery's own bytes, held until its UID is published, instead of being read back
KEEP_RAW = 256 * 1024
#: ... and at most this many such bytes held by the deliveries of a process that wait for the
#: indexer (counted per target): beyond it (an indexer that stalls while mail arrives, a delivery
#: to a large group) a delivery holds none and search reads the file back, so memory stays bounded
RAW_HELD_MAX = 16 << 20
#: seconds Store.close() waits at most for deliveries in flight (their pool job and sync) to answer
CLOSE_WAIT = 30.0
#: seconds the background indexer leaves a file another process (worker) linked into new/ for that
#: process's own indexer, which holds its parse (and search its bytes): with two workers delivering
#: to the same mailboxes, each indexing the other's files read and parsed about half the messages
#: twice (probe, random recipients over 50 mailboxes, quiet machine: store + search rounds ~172 ->
#: ~141 us of CPU per message; bench/README.md). Older files are taken (their deliverer died before
#: indexing, or another program wrote them); readers (IMAP, POP3, JMAP) take every file at once.
FOREIGN_GRACE = 2.0
#: an Indexer key: look at the mailbox's new/ for files older than FOREIGN_GRACE
RECHECK = ""
#: Indexer.stats: thread CPU seconds of the index batches, messages added, those parsed from their
#: file (another process delivered them), those left to it, ours found indexed before the batch
STATS = ("cpu_s", "added", "foreign", "foreign_left", "done_before")
#: the error of a delivery's results when the store was closing: its job never ran
CLOSING = "store closing"
#: seconds between two looks of a worker for delivery journals of dead processes (a worker killed and
#: not replaced: its replacement replays them at its start; the master at its own start)
ADOPT_EVERY = 60.0


def account_root(data_dir: Path | str, account_id: str | int, store: str | None = None) -> Path:
    """Where an account's maildir is: ``data_dir / store``, the directory's ``store`` field (relative
    to ``server.data_dir``), or without one ``data_dir/mail/<account id>``. The one place this is
    derived: delivery, IMAP, POP3, JMAP and the quota CLI call it."""
    return Path(data_dir) / store if store else Path(data_dir) / "mail" / str(account_id)


#: a deferred copy linked by a delivery job: (account, mailbox, key, its path in new/)
_Linked = tuple[Account, str, str, str]
#: a delivery job's value: (results, index changes to publish, copies left to the indexer)
_JobOut = tuple[list[DeliveryResult], list[tuple[Account, SyncResult]], list[_Linked]]


def _parent(path: Path | str) -> str:
    """``str(path.parent)`` of a file's path, without building a Path (~1 us on a delivery's loop
    and again in its round: once per message each): "/" for a file at the root, "." for a bare name."""
    head, sep, _ = os.fspath(path).rpartition("/")
    return head or sep or "."


class Store:
    """One per worker process: ``Store(config.store, config.server.data_dir)``."""

    def __init__(self, config: StoreConfig | None = None, data_dir: Path | str = ".", *,
                 hostname: str = "", mime: MimeConfig | None = None) -> None:
        self.config = config or StoreConfig()
        #: ``[mime]`` parser bounds (``config.mime``) for every parse the store does
        self.mime = mime
        self.data_dir = Path(data_dir)
        self.hostname = hostname or os.uname().nodename
        self.io = fsio.FileIO(self.config.io_threads, name="mailsrv-store")
        self.dirsync = fsio.DirSyncer(self.io, self.config.group_commit_delay)
        #: background index jobs of this process give way to its delivery rounds this long at most
        fsio.foreground.budget = self.config.index_give_way
        #: group commit of deferred deliveries: one syncfs per round for every file and new/ entry
        #: linked before it (Linux); None elsewhere (each delivery fsyncs its file and directories)
        self.fssync = (fsio.FsSyncer(self.io, self.config.group_commit_delay, lanes=self._lanes())
                       if self.config.syncfs and fsio.have_syncfs() else None)
        if self.fssync is not None:  # its syncfs reports the writeback errors of every write from now on
            with contextlib.suppress(OSError):  # (not made yet: opened at the first sync)
                fsio.watch_fs(self.data_dir)
        #: open accounts, least recently used first (at most ``config.account_cache``)
        self._accounts: dict[str, Account] = {}
        #: accounts evicted from ``_accounts`` that someone still holds: handed out again, not duplicated
        self._evicted: weakref.WeakValueDictionary[str, Account] = weakref.WeakValueDictionary()
        #: (account id, mailbox) -> messages of each snapshot the accounts keep for warm opens, least
        #: recently opened first, and their total (at most SNAPSHOT_CACHE_MESSAGES beyond the newest)
        self._snapshots: dict[tuple[str, str], int] = {}
        self._snapshot_messages = 0
        self._hibernating: set[asyncio.Task[None]] = set()
        self._delivery_slots = asyncio.Semaphore(self._lanes())
        self._opening: dict[str, asyncio.Future[Account]] = {}
        self._observers: list[StoreObserver] = []
        self._notifier: notify.Notifier | None = None
        #: assigns UIDs to deliveries acknowledged before indexing (``deliver(uids=False)``)
        self.indexer = Indexer(self)
        #: per-domain quota usage shared by every worker (store/usage.py)
        self.usage = UsageBook(self.data_dir / BOOK_NAME)
        #: domain -> its (storage, messages) limits, from the directory (set_domain_quota_source)
        self.domain_quota_source: Callable[[str], Awaitable[tuple[int | None, int | None]]] | None = None
        self._domain_limits: dict[str, tuple[float, QuotaLimits]] = {}
        #: deliver() calls running, and set while there are none (close() waits for it)
        self._delivering = 0
        self._idle = asyncio.Event()
        self._idle.set()
        #: follow-ups of deliveries cancelled after their round began (close() waits for them)
        self._follow_ups: set[asyncio.Future[object]] = set()
        self._closing = False
        #: the delivery journal (``start()`` with ``[store] journal``): group deliveries durable by one
        #: fdatasync of their records, their links by a checkpoint's syncfs later (store/journal.py)
        self.journal: journal.Journal | None = None
        self._checkpointer: asyncio.Task[None] | None = None
        self._adopter: asyncio.Task[None] | None = None
        self._adopt_stop = asyncio.Event()
        self._checkpoint_due = asyncio.Event()  # the journal holds records
        self._checkpoint_now = asyncio.Event()  # ... and it fills up, or the store closes: no interval
        #: spool directory -> this process's reserve of empty files there (store/reserve.py), made
        #: at its first consuming delivery
        self._reserves: dict[str, reserve.Reserve] = {}
        self._reserves_lock = threading.Lock()

    async def start(self) -> None:
        """Before serving (the worker calls it): replay the delivery journals of processes gone
        (their deliveries acknowledged before a crash: links a power cut did not keep), then open
        this process's journal (``[store] journal``; deferred group deliveries only). A journal that
        cannot be replayed (logged) stays for the next start. Journals left are replayed whatever
        ``[store] journal`` says now (files of processes that ran with it on). A store never started
        delivers without a journal."""
        cfg = self.config
        if not fsio.have_syncfs():  # (journals are made only where syncfs is: none to replay)
            return
        where = journal.journal_dir(self.data_dir)
        try:
            await self.io.run(journal.replay, where)
        except (OSError, sqlite3.Error) as exc:  # the files stay for the next start (or a sibling's)
            logger.error("journal.replay_failed", error=str(exc))
        if not (cfg.journal and cfg.deferred_index and self.fssync is not None):
            return
        jr = journal.Journal(where, cfg.journal_size_mib << 20)
        try:
            await self.io.run(jr.create)
        except OSError as exc:  # deliveries keep the syncfs path
            logger.error("journal.create_failed", error=str(exc))
            return
        self.journal = self.fssync.journal = jr
        self._checkpointer = asyncio.get_running_loop().create_task(self._checkpoints(jr))
        self._adopter = asyncio.get_running_loop().create_task(self._adopt(where))

    async def _adopt(self, where: Path) -> None:
        """Every ADOPT_EVERY seconds: replay the journals of processes gone meanwhile (their links are
        in the page cache: only the files are removed, unless a power cut came too)."""
        while not self._closing:
            with contextlib.suppress(TimeoutError):  # close() ends the wait
                await asyncio.wait_for(self._adopt_stop.wait(), ADOPT_EVERY)
            if self._closing:
                return
            try:
                await self.io.run(journal.replay, where)
            except (OSError, sqlite3.Error) as exc:
                logger.error("journal.replay_failed", error=str(exc))

    async def _checkpoints(self, jr: journal.Journal) -> None:
        """The checkpointer: while the journal holds records, one checkpoint every
        ``journal_interval`` seconds (at once when its file fills up); a last one at close."""
        interval = self.config.journal_interval
        while not self._closing:
            await self._checkpoint_due.wait()  # records appended (or closing)
            if not self._closing and not jr.urgent:
                with contextlib.suppress(TimeoutError):  # close() or a filling file ends the wait
                    await asyncio.wait_for(self._checkpoint_now.wait(), interval)
            self._checkpoint_due.clear()
            self._checkpoint_now.clear()
            if self._closing:
                break
            try:
                await self.io.run(jr.checkpoint)
            except OSError as exc:  # broken: deliveries fall back to syncfs; the records stay for replay
                logger.error("journal.checkpoint_failed", error=str(exc))
                return

    def _kick_checkpoint(self) -> None:
        """A round appended records: the checkpointer runs within ``journal_interval`` (at once when urgent)."""
        jr = self.journal
        if jr is not None and jr.pending:
            self._checkpoint_due.set()
            if jr.urgent:
                self._checkpoint_now.set()

    def _lanes(self) -> int:
        """Delivery pool jobs (or group-commit rounds) at once: see DELIVERY_JOBS."""
        return max(2, self.config.io_threads // DELIVERY_JOBS)

    # --- accounts -------------------------------------------------------------

    async def account(self, account_id: str, maildir: Path | None = None, *, domain: str | None = None) -> Account:
        """The account (opened and created on first use). ``maildir`` and ``domain`` come from the directory.

        ``domain`` puts the account's usage into that domain's quota root (store/usage.py).
        """
        acct = self.account_now(account_id)
        if acct is not None:
            if domain is not None and acct.engine.domain != domain:
                await acct.set_domain(domain)
            return acct
        fut = self._opening.get(account_id)
        if fut is not None:
            return await asyncio.shield(fut)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._opening[account_id] = fut
        try:
            root = Path(maildir) if maildir is not None else account_root(self.data_dir, account_id)
            engine = Engine(account_id, root, max_parse_size=self.config.max_parse_size, hostname=self.hostname,
                            mime_limits=self.mime, expunge_history=self.config.expunge_history,
                            expunge_history_days=self.config.expunge_history_days,
                            syncfs=self.config.syncfs)
            acct = Account(self, account_id, root, engine)
            engine.usage = self.usage
            if domain is None:  # reported with its domain earlier (by any process)?
                known = await acct._run(self.usage.account_usage, account_id)
                domain = known[0] if known is not None else None
            engine.domain = domain
            await acct._run(engine.open)
            await acct._run(engine.report_usage)  # heals a report lost to a crash
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: a later waiter re-raises it
            raise
        finally:
            self._opening.pop(account_id, None)
        self._accounts[account_id] = acct
        self._evict()
        await self.indexer.adopt(acct)  # deliveries acknowledged before a crash may wait in new/
        fut.set_result(acct)
        return acct

    def set_domain_quota_source(self, source: Callable[[str], Awaitable[tuple[int | None, int | None]]]) -> None:
        """Where domain limits come from (the worker passes ``directory.domain_quota``)."""
        self.domain_quota_source = source
        self._domain_limits.clear()

    async def domain_limits(self, domain: str) -> QuotaLimits:
        """The limits of a domain's quota root (unlimited without a source), reused DOMAIN_LIMITS_TTL s."""
        limits = self.domain_limits_now(domain)
        if limits is not None:
            return limits
        source = self.domain_quota_source
        assert source is not None
        now = time.monotonic()
        limits = QuotaLimits(*(await source(domain)))
        if len(self._domain_limits) > 4096:
            self._domain_limits.clear()
        self._domain_limits[domain] = (now, limits)
        return limits

    def domain_limits_now(self, domain: str) -> QuotaLimits | None:
        """:meth:`domain_limits` without a coroutine when it needs no query (no source, or the domain's limits
        were fetched less than DOMAIN_LIMITS_TTL s ago); None: await :meth:`domain_limits`."""
        if self.domain_quota_source is None:
            return _UNLIMITED
        hit = self._domain_limits.get(domain)
        # not the loop's time: get_running_loop costs a getpid(2) on Python 3.11
        if hit is not None and time.monotonic() - hit[0] < DOMAIN_LIMITS_TTL:
            return hit[1]
        return None

    def account_now(self, account_id: str, domain: str | None = None) -> Account | None:
        """:meth:`account` without a coroutine when this worker has the account open and (given ``domain``) its
        usage in that domain's quota root: the same account, now the most recently used. None: await
        :meth:`account` (it opens the account, or moves it to ``domain``'s root)."""
        acct = self._accounts.pop(account_id, None)
        if acct is None:
            acct = self._evicted.pop(account_id, None)
            if acct is None:
                return None
        self._accounts[account_id] = acct  # most recently used
        self._evict()
        return acct if domain is None or acct.engine.domain == domain else None

    def cached_account(self, account_id: str) -> Account | None:
        """The account if this worker has it open, else None (sync; opens nothing)."""
        return self._accounts.get(account_id) or self._evicted.get(account_id)

    def _evict(self) -> None:
        """Close the least recently used accounts beyond ``config.account_cache``.

        Safe while they are in use: the Account stays valid (kept in ``_evicted`` while anyone
        holds it, so the same object is handed out again); only its caches are dropped and its
        index connection closed under the engine lock; the next call reopens it.
        """
        while len(self._accounts) > self.config.account_cache:
            old_id = next(iter(self._accounts))
            old = self._accounts.pop(old_id)
            self._evicted[old_id] = old
            for name in old._snaps:
                self._forget_snapshot(old_id, name)
            old._snaps.clear()
            old._paths.clear()
            task = asyncio.get_running_loop().create_task(self.io.run(old.engine.hibernate))
            self._hibernating.add(task)
            task.add_done_callback(self._hibernated)

    def _keep_snapshot(self, acct: Account, mailbox: str, messages: int) -> None:
        """``acct`` now keeps its snapshot of ``mailbox`` (``messages`` long) for warm opens: drop the
        least recently kept snapshots of any account while all of them hold more than
        SNAPSHOT_CACHE_MESSAGES messages (this one stays). Event loop only."""
        self._forget_snapshot(acct.id, mailbox)
        self._snapshots[(acct.id, mailbox)] = messages
        self._snapshot_messages += messages
        while self._snapshot_messages > SNAPSHOT_CACHE_MESSAGES and len(self._snapshots) > 1:
            old_id, old_name = next(iter(self._snapshots))
            self._forget_snapshot(old_id, old_name)
            holder = self.cached_account(old_id)
            if holder is not None:
                holder._snaps.pop(old_name, None)

    def _forget_snapshot(self, account_id: str, mailbox: str) -> None:
        self._snapshot_messages -= self._snapshots.pop((account_id, mailbox), 0)

    def _hibernated(self, task: asyncio.Task[None]) -> None:
        self._hibernating.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("account.close_failed", error=str(task.exception()))

    def add_observer(self, observer: StoreObserver) -> None:
        self._observers.append(observer)

    async def close(self, grace: float = CLOSE_WAIT) -> None:
        """Stop: deliveries in flight finish first (each answers ok or tempfail, at most ``grace``
        seconds), later ones are tempfail at once; then every acknowledged delivery is indexed and
        the engines and the pool are closed."""
        self._closing = True
        try:
            await asyncio.wait_for(self._quiesce(), grace)
        except TimeoutError:
            logger.warning("store.close_timeout", deliveries=self._delivering, follow_ups=len(self._follow_ups))
        if self._checkpointer is not None:
            self._checkpoint_due.set()
            self._checkpoint_now.set()
            self._adopt_stop.set()
            await self._checkpointer
        if self._adopter is not None:
            await self._adopter
        if self.journal is not None:  # a last checkpoint, then its files go (kept for replay on error)
            jr = self.journal
            logger.info("store.journal", appended=jr.appended, syncs=jr.syncs, checkpoints=jr.checkpoints,
                        broken=str(jr.broken or ""))
            try:
                await self.io.run(jr.close)
            except OSError as exc:
                logger.error("journal.close_failed", error=str(exc))
        await self.indexer.flush()  # every acknowledged delivery indexed before the engines close
        if self.fssync is not None and self.fssync.rounds:  # where a delivery's wait went (bench/README)
            logger.info("store.rounds", **{k: round(v, 3) for k, v in self.fssync.stats().items()})
        if self.indexer.rounds:
            logger.info("store.indexer", rounds=self.indexer.rounds, batches=self.indexer.batches,
                        queued=self.indexer.queued,
                        **{k: round(v, 4) if k == "cpu_s" else int(v) for k, v in self.indexer.stats.items()})
        if self._hibernating:
            await asyncio.gather(*self._hibernating, return_exceptions=True)
        for acct in [*self._accounts.values(), *self._evicted.values()]:
            await self.io.run(acct.engine.close)
        for res in list(self._reserves.values()):  # its files go (a process killed leaves them to spool.clean)
            await self.io.run(res.close)
        self.usage.close()  # a connection close: no I/O worth a pool round trip
        self._accounts.clear()
        self._evicted.clear()
        if self._notifier is not None:
            self._notifier.close()
            self._notifier = None
        await asyncio.get_running_loop().run_in_executor(None, self.io.shutdown)

    async def _quiesce(self) -> None:
        """Return once no delivery, group-commit round or follow-up of a cancelled delivery runs."""
        while True:
            await self._idle.wait()
            busy = [*self._follow_ups, *(self.fssync.tasks if self.fssync is not None else ())]
            if not busy:
                if self._delivering:  # began meanwhile (before close): wait for it too
                    continue
                return
            await asyncio.wait(busy)  # not wait_for/gather: a timeout must not cancel the rounds
            await asyncio.sleep(0)  # a finished round's follow-ups (call_soon) become tasks

    # --- notification ---------------------------------------------------------

    def _notifier_for_loop(self) -> notify.Notifier:
        loop = asyncio.get_running_loop()
        if self._notifier is None or self._notifier.loop is not loop:
            self._notifier = notify.Notifier(loop)
        return self._notifier

    def _wake(self, account_id: str) -> None:
        if self._notifier is not None:
            self._notifier.wake(account_id)

    # --- delivery -------------------------------------------------------------

    async def deliver(self, spool_path: Path, targets: Sequence[DeliveryTarget], *,
                      internal_date: float | None = None, uids: bool = True,
                      data: bytes | None = None, consume: bool = False,
                      durable: Callable[[list[DeliveryResult], OSError | None], object] | None = None
                      ) -> list[DeliveryResult]:
        """Deliver one spooled message to many (account, mailbox) targets; see docs/store-api.md.

        Returns when every ``ok`` copy is durable: its file and its ``new/`` entry fsync'd
        (hard links share the spool file's inode: one file fsync covers every copy).
        ``uids=True``: also its UID is committed and returned (same job: concurrent
        deliveries into one mailbox share the index transaction). ``uids=False`` (local
        delivery: SMTP, bounces; honoured when ``store.deferred_index`` is on): the UID is
        assigned by the background indexer, batched across deliveries (``uid`` is None);
        a file durable in ``new/`` is mail in maildir terms, and every reader and every
        restart indexes what waits there, so nothing acknowledged is lost on a crash.
        ``data``: the spool file's content when the caller holds it in memory (it must be the
        same bytes): the job parses it instead of reading the file back. When there is no file
        at ``spool_path`` yet (a spool that never left memory), the job creates it from ``data``
        first (one pool job instead of two; this delivery's sync makes it durable with the
        links); a failed write removes it again and every target is tempfail.
        ``consume``: the caller has no further use for the file at ``spool_path`` (nor has anyone
        else): the job moves it into the last target's ``new/`` (a rename instead of a link and the
        caller's unlink) or removes it, so that once the job has run (any return but a "store
        closing" tempfail) there is no file at ``spool_path``.
        ``durable(results, sync error or None)``: called in the group-commit round's thread right after
        its sync, before this call returns, with the copies' results as the job made them (a copy
        ``ok`` with no error is durable; the results returned are the same then). Only a delivery
        served by a round calls it (``uids=False``, deferred index, no quota-bound target, store not
        closing): a caller must not rely on it being called. Quick, thread-safe, never raising
        (fsio's ``run_synced(durable=)``; mailsrv.smtp.early sends an SMTP 250 from it).
        """
        spool_path = spool_path if isinstance(spool_path, Path) else Path(spool_path)
        if self._closing:  # a stopping worker: the sender retries with another (or this one restarted)
            return [DeliveryResult(t, "tempfail", None, CLOSING) for t in targets]
        self._delivering += 1
        self._idle.clear()
        # background index and search jobs give way (between slices) from the call to the answer, not
        # only while its round runs: after the round the loop still has to take its result and answer,
        # and a job resumed at the round's end ran beside that (one session, 3 alternated pairs:
        # deliveries overlapping a batch and slower than 1.5 ms 23-38 % -> 11-20 %, p99 4.9-5.1 ->
        # 4.0-4.6 ms on a loaded machine)
        fsio.foreground.enter()
        try:
            out = await self._deliver(spool_path, targets, internal_date, uids, data, consume, durable)
            if timeline.on:
                timeline.mark("stored")
            return out
        finally:
            fsio.foreground.leave()
            self._delivering -= 1
            if not self._delivering:
                self._idle.set()

    async def _deliver(self, spool_path: Path, targets: Sequence[DeliveryTarget], internal_date: float | None,
                       uids: bool, data: bytes | None, consume: bool = False,
                       durable: Callable[[list[DeliveryResult], OSError | None], object] | None = None
                       ) -> list[DeliveryResult]:
        email_id = ""  # made in the job: new_id reads urandom, a GIL round trip on the loop thread
        targets = list(targets)
        index = uids or not self.config.deferred_index
        # group commit: the job only links; one syncfs shared with every concurrent delivery makes
        # the files and their new/ entries durable (quota-bound targets are indexed in the job,
        # which wants its files durable first: the old way)
        group = not index and self.fssync is not None and not any(_limited(t) for t in targets)
        try:
            if group:
                assert self.fssync is not None
                # one pool job per round for every delivery that joined it and the round's syncfs (the
                # links share the spool's file system); no job of its own, no separate sync job
                # a caller cancelled (SMTP client gone) after the round began its links: the links
                # are not undone, so they are followed up as on return (synced, then indexed once)
                (results, published, later), err = await self.fssync.run_synced(
                    _parent(spool_path), self._deliver_job, spool_path, targets, internal_date, email_id,
                    index, group, data, consume, durable is not None,
                    abandoned=lambda out, err: self._follow_up(self._after_links(spool_path, out[0], out[2], err)),
                    durable=None if durable is None else lambda out, err: durable(out[0], err))
            else:
                async with self._delivery_slots:  # see DELIVERY_JOBS
                    results, published, later = await self.io.run(
                        self._deliver_job, spool_path, targets, internal_date, email_id, index, group, data,
                        consume)
                err = None
        except OSError as exc:
            logger.error("deliver.spool_unreadable", path=str(spool_path), error=str(exc))
            return [DeliveryResult(t, "tempfail", None, f"spool unreadable: {exc.strerror}") for t in targets]
        if err is None:
            for acct, res in published:  # none for a group delivery (it indexes nothing in its job)
                await acct._publish(res)
            return self._hand_on(results, later)  # no coroutine of its own on the common path
        return await self._after_links(spool_path, results, later, err)

    async def _after_links(self, spool_path: Path, results: list[DeliveryResult],
                           later: list[_Linked], err: OSError | None) -> list[DeliveryResult]:
        """After a delivery's job (in the loop): hand its deferred copies to the indexer, or when the
        round's sync failed (``err``) take their links out of ``new/`` again and turn its ``ok``
        copies into tempfail (the sender retries: a link left there would be indexed later, a
        duplicate). The results to return."""
        if err is None or not later:
            return self._hand_on(results, later)
        logger.error("deliver.sync_failed", path=str(spool_path), error=str(err))
        try:  # this process's syncs skip them meanwhile (Pending.unsynced)
            await self.io.run(_take_back, [x[3] for x in later])
        finally:
            for acct, _, key, _ in later:
                acct.engine.pending.pop(key, None)
        return [r if r.status != "ok" else DeliveryResult(r.target, "tempfail", None, f"syncfs: {err}")
                for r in results]

    def _hand_on(self, results: list[DeliveryResult], later: list[_Linked]) -> list[DeliveryResult]:
        """:meth:`_after_links` of a delivery whose copies are durable: they go to the indexer."""
        for acct, mailbox, key, _ in later:
            pend = acct.engine.pending.get(key)
            if pend is not None:
                pend.unsynced = False  # durable: any sync may index it now
                # a watcher of this process woken by the link (inotify) refreshed before this and
                # skipped the file: wake it again rather than wait for the indexer's round
                self._wake(acct.id)
            self.indexer.add(acct, mailbox, key)
        if self.journal is not None:
            self._kick_checkpoint()
        return results

    def _follow_up(self, coro: Awaitable[object]) -> None:
        """Run a cancelled delivery's follow-up (``_after_links``) as a task that close() waits for."""
        task = asyncio.ensure_future(coro)
        self._follow_ups.add(task)
        task.add_done_callback(self._follow_ups.discard)

    def _deliver_job(self, spool: Path, targets: list[DeliveryTarget], internal_date: float | None,
                     email_id: str, index: bool = True, group: bool = False, data: bytes | None = None,
                     consume: bool = False, answered_early: bool = False) -> _JobOut:
        """Blocking: parse the spool once, link it into each target, fsync, index unless deferred (I/O pool).

        Returns (results, index changes to publish, (account, mailbox, key) left to the indexer).
        ``group``: no fsync here, the caller's syncfs round makes the links durable (copies made
        across file systems excepted: those are fsync'd here). ``consume``: no file is left at
        ``spool`` when this returns or raises (see :meth:`deliver`). A consuming group round with the
        journal whose caller is answered from the round's thread (``answered_early``: a ``durable``
        hook) returns an ``fsio.After`` whose ``then`` makes the file and the links after the sync
        (:meth:`_deliver_journaled`): its round hands ``then``'s value, the tuple above, to the caller.
        Only then: a caller answered on the loop gains nothing from links after the sync (its answer
        waits for them) and keeps what a failed link means before the sync (tempfail: the sender's, or
        Sieve's queue, retry) instead of a copy left to the journal's replay at the next start.
        """
        if not consume:
            return self._deliver_links(spool, targets, internal_date, email_id, index, group, data, False)
        if (answered_early and group and data is not None and self.journal is not None and self.journal.ready
                and len(data) <= self.config.journal_max_message):  # (broken: no record, syncfs below)
            done = self._deliver_journaled(spool, targets, internal_date, email_id, data)
            if done is not None:  # (None: the journal took no record: links before the sync, as below)
                return cast(_JobOut, done)
        taken: str | None = None
        try:
            if data is not None:  # a spool that never left memory: into a reserved file when one is ready
                taken = self._write_reserved(spool, data)
            return self._deliver_links(spool, targets, internal_date, email_id, index, group, data, True, taken)
        except BaseException:
            for path in (spool, taken):
                if path is not None:
                    with contextlib.suppress(FileNotFoundError):  # moved, or never made: nothing to remove
                        os.unlink(path)
            raise

    def _write_reserved(self, spool: Path, data: bytes) -> str | None:
        """Blocking: ``data`` written into a file of this process's spool reserve (store/reserve.py),
        no fsync; the file's path, or None when the reserve is empty or its file was removed
        underneath (then the caller creates ``spool`` as before). Used for ``consume`` deliveries,
        whose caller wrote no file at ``spool`` and has no use for one after (a sealed spool): the
        message is linked and moved from the reserved file, and ``spool`` never exists."""
        directory = str(spool).rpartition("/")[0]
        res = self._reserves.get(directory)
        if res is None:
            with self._reserves_lock:
                res = self._reserves.setdefault(directory, reserve.Reserve(directory))
        path = res.take()
        if path is None:
            return None
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # removed by a clean (a process of the same pid gone, a tool)
            return None
        try:
            _write_all(fd, data)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        return path

    def _deliver_links(self, spool: Path, targets: list[DeliveryTarget], internal_date: float | None,
                       email_id: str, index: bool, group: bool, data: bytes | None, consume: bool,
                       taken: str | None = None
                       ) -> tuple[list[DeliveryResult], list[tuple[Account, SyncResult]], list[_Linked]]:
        """:meth:`_deliver_job`; ``consume``: the spool is renamed into the last target (a group round:
        its sync covers the rename; else the file is fsync'd by its spool path first), or removed.
        ``taken``: the reserved file that holds ``data`` (:meth:`_write_reserved`), linked instead of
        ``spool`` (which does not exist)."""
        move_last = consume and group
        moved = False
        email_id = email_id or new_id("E")
        size = -1
        created = False  # the spool holds ``data`` (it may differ from a file the caller wrote)
        src: Path | str = spool  # the file linked into the targets
        if taken is not None and data is not None:
            src, size, created = taken, len(data), True
        elif data is not None:
            try:
                _create_spool(spool, data)  # the caller's spool never left memory (one syscall less
                size = len(data)            # than a stat that fails first)
                created = True
            except FileExistsError:  # written by the caller (or the policy rewrote it): use the file
                pass
        if size < 0:
            size = os.stat(spool).st_size
        if internal_date is not None:
            os.utime(src, (internal_date, internal_date))
        # a group round answers before the MIME parse (not needed to make the copies durable): whoever
        # indexes one of its copies first (the index batch, or a reader) parses it, once for all of them
        late = LateParse(self._parse) if group else None
        if data is not None and len(data) == size:
            raw = data[:self.config.max_parse_size]
        elif late is not None and size > KEEP_RAW:
            raw = b""  # not kept: its parse reads the file
        else:
            with open(spool, "rb") as fh:
                raw = fh.read(self.config.max_parse_size)
        structure: bytes | None = None
        thread: headers.ThreadHeaders | None = None
        parsed: MessageStructure | None = None
        if late is None:
            structure, thread, parsed = parse_for_index(raw, "", self.mime)  # one scan for both
        keep = raw if len(raw) == size <= KEEP_RAW else None  # the whole file (one object for every target)
        del raw
        out: list[DeliveryResult | None] = [None] * len(targets)
        linked: list[tuple[int, Account, str, str, str, str]] = []  # (index, account, mailbox, key, new/ dir, name)
        copied: set[str] = set()  # new/ dirs that got a copy (another file system), not a link
        for i, t in enumerate(targets):
            acct: Account = t.account
            try:
                outcome = self._link_one(src, t, size, email_id, structure, thread, keep,
                                         move_last and i == len(targets) - 1, parsed, late)
                moved = move_last and i == len(targets) - 1 and outcome[0] == "ok"
            except (StoreError, OSError, sqlite3.Error) as exc:
                out[i] = _failed(t, exc)
                continue
            if outcome[0] == "over_quota":
                out[i] = DeliveryResult(t, "over_quota", None, outcome[1])
            else:
                linked.append((i, acct, outcome[1], outcome[2], outcome[3], outcome[5]))
                if outcome[4] == "copy":
                    copied.add(outcome[3])
        # Durability: the links share the spool's inode, so one fsync of it makes every copy's data
        # durable; it comes after the links so that (ext4, xfs) its journal commit carries the new
        # directory entries too, and the fsync of each new/ below finds little left to write.
        failed_dirs: dict[str, OSError] = {}
        if linked and not group:
            try:
                fsio.fsync_file(src)
            except OSError as exc:
                logger.error("deliver.fsync_failed", file=str(src), error=str(exc))
                failed_dirs = {x[4]: exc for x in linked}
        # the new/ entries: one fsync per directory for all targets of this delivery
        for d in dict.fromkeys(x[4] for x in linked if x[4] not in failed_dirs and (not group or x[4] in copied)):
            try:
                fsio.fsync_dir(d)
            except OSError as exc:
                logger.error("deliver.fsync_failed", dir=d, error=str(exc))
                failed_dirs[d] = exc
        self.dirsync.fsyncs += len({x[4] for x in linked})
        self.dirsync.rounds += 1
        # the UIDs: index each (account, mailbox) once; a concurrent delivery may already have done it
        published: list[tuple[Account, SyncResult]] = []
        later: list[_Linked] = []
        groups: dict[tuple[int, str], list[tuple[int, Account, str, str, str, str]]] = {}
        for x in linked:
            if x[4] in failed_dirs:
                i, acct, _, key, d, name = x
                _take_back([os.path.join(d, name)])  # not durable: the sender retries (no duplicate)
                acct.engine.pending.pop(key, None)
                out[i] = DeliveryResult(targets[i], "tempfail", None, f"fsync: {failed_dirs[d]}")
                continue
            if not group:  # durable now: any sync may index it (a group round's sync is still to come)
                pend = x[1].engine.pending.get(x[3])
                if pend is not None:
                    pend.unsynced = False
            if not index and not _limited(targets[x[0]]):
                later.append((x[1], x[2], x[3], os.path.join(x[4], x[5])))
                out[x[0]] = DeliveryResult(targets[x[0]], "ok", None, None)
                continue
            groups.setdefault((id(x[1]), x[2]), []).append(x)
        for items in groups.values():
            acct, mailbox = items[0][1], items[0][2]
            keys = [x[3] for x in items]
            try:
                uids, res = self._index_keys(acct, mailbox, keys)
            except (StoreError, OSError, sqlite3.Error) as exc:
                logger.warning("deliver.index_deferred", account=acct.id, mailbox=mailbox, error=str(exc))
                uids, res = {}, None
            if res is not None and res.changed:
                published.append((acct, res))
            for i, _, _, key, _, _ in items:
                acct.engine.pending.pop(key, None)  # another process may have indexed it
                out[i] = DeliveryResult(targets[i], "ok", uids.get(key), None)
        if group and created and self.journal is not None and len(data or b"") <= self.config.journal_max_message:
            out = self._journal_links(spool, out, later, internal_date, data or b"")
        if consume and not moved:  # after the fsync of its links (not a group round): no longer needed
            with contextlib.suppress(FileNotFoundError):
                os.unlink(src)
        return [r for r in out if r is not None], published, later

    def _parse(self, raw: bytes) -> tuple[bytes | None, headers.ThreadHeaders, MessageStructure | None]:
        """Blocking: :func:`parse_for_index` of a delivered message with this store's ``[mime]`` bounds."""
        return parse_for_index(raw[:self.config.max_parse_size], "", self.mime)

    def _journal_links(self, spool: Path, out: list[DeliveryResult | None], later: list[_Linked],
                       internal_date: float | None, data: bytes) -> list[DeliveryResult | None]:
        """Blocking, in a group round's job after the links: one journal record for the delivery's
        linked copies (their new/ entries and the bytes), so that the round's sync is the journal's
        fdatasync (``fsio.journaled``) instead of a syncfs. No room in the journal (until its next
        checkpoint): the round syncs the file system as before. A failed append takes the links back
        and turns their copies into tempfail (as a failed sync does); ``later`` is emptied then."""
        assert self.journal is not None
        if not later:
            fsio.journaled()  # nothing linked: nothing to make durable
            return out
        targets: list[journal.Target] = []
        for acct, _, key, path in later:  # (str paths: a few us less than os.path per target)
            folder, _, name = path.rpartition("/new/")
            targets.append(_record_target(acct, folder, name, key))
        mtime = internal_date if internal_date is not None else time.time()
        try:
            if not self.journal.append(journal.meta(targets, mtime), _parent(spool), data):
                return out
        except OSError as exc:
            logger.error("journal.append_failed", error=str(exc))
            _take_back([x[3] for x in later])
            for acct, _, key, _ in later:
                acct.engine.pending.pop(key, None)
            later.clear()  # (a group delivery's ok copies are all in it: no quota-bound target)
            return [r if r is None or r.status != "ok" else DeliveryResult(r.target, "tempfail", None, f"journal: {exc}")
                    for r in out]
        fsio.journaled()
        return out

    @staticmethod
    def _index_keys(acct: Account, mailbox: str, keys: list[str],
                    lazy_commit: bool = False) -> tuple[dict[str, int], SyncResult | None]:
        """UIDs of ``keys`` (files in the mailbox's new/), indexing new/ first unless someone already did.

        Runs under the engine lock: while one thread commits, the others wait and then usually
        find their files indexed by it (group commit without a separate round trip).
        """
        eng = acct.engine

        def index() -> tuple[dict[str, int], SyncResult | None]:
            if not any(k in eng.pending for k in keys):
                return eng.uids_for_keys(mailbox, keys), None  # indexed by a concurrent sync
            res = eng.sync(mailbox, lazy_commit=lazy_commit)
            uids = {a.info.key: a.info.uid for a in res.added}
            uids = {k: uids[k] for k in keys if k in uids}
            if len(uids) < len(keys):
                uids = eng.uids_for_keys(mailbox, keys)
            return uids, res

        return _repairing(eng, index)

    def _link_one(self, spool: Path | str, t: DeliveryTarget, size: int, email_id: str,
                  structure: bytes | None, thread: headers.ThreadHeaders | None,
                  raw: bytes | None = None, move: bool = False,
                  parsed: MessageStructure | None = None, late: LateParse | None = None) -> tuple[str, ...]:
        """Blocking: quota check and hard link into the target's ``new/`` (not yet fsync'd); ``move``:
        rename the spool there instead (its last target, when the caller has no further use for it).
        ("ok", mailbox, key, new/ dir, "link" or "copy", name) or ("over_quota", what)."""
        plan = self._plan_one(t, size, email_id, structure, thread, raw, parsed, late)
        if plan[0] != "ok":
            return plan
        try:
            return self._make_link(spool, t, plan, move)
        except BaseException:
            t.account.engine.pending.pop(plan[2], None)
            raise

    def _plan_one(self, t: DeliveryTarget, size: int, email_id: str, structure: bytes | None,
                  thread: headers.ThreadHeaders | None, raw: bytes | None = None,
                  parsed: MessageStructure | None = None, late: LateParse | None = None) -> tuple[str, ...]:
        """Blocking: a copy's quota check, key and name in ``new/``, its Pending entry (registered:
        the caller pops it if the copy is not made) and its folder (the index asked on a cache miss,
        INBOX when the mailbox is gone): ("ok", mailbox, key, folder, name) or ("over_quota", what).
        Writes nothing but the folder's keyword letters (durable before the link)."""
        acct: Account = t.account
        eng = acct.engine
        # no limits, nothing to check: skip the usage read (it waits for the account's lock, which
        # the indexer holds through its fsyncs)
        code = eng.quota_check(size, 1, t.limits, t.domain_limits) if _limited(t) else quota_impl.OK
        if code != quota_impl.OK:
            return ("over_quota", "storage" if code == quota_impl.OVER_STORAGE else "messages")
        mailbox = t.mailbox
        key = f"{fsio.unique_name(self.hostname)},S={size}"
        flags = frozenset(md.canonical_flag(f) for f in t.flags)
        # keywords (Sieve imap4flags, docs/sieve.md) get their folder's letters, durable before the link
        kw = eng.keyword_letters(mailbox, flags) if flags and not all(f.startswith("\\") for f in flags) else None
        name = md.filename(key, flags, kw) if md.flags_to_info(flags, kw) else key
        pend = Pending(email_id, structure, thread, raw, unsynced=True, parsed=parsed, late=late)
        if raw is not None:
            _RAW_HELD.hold(pend)
        eng.pending[key] = pend
        folder: Path | None = eng.folder_cache.get(mailbox)
        if folder is None:
            try:
                mailbox, folder, name = _look_up_folder(t, mailbox, key, name)
            except BaseException:
                eng.pending.pop(key, None)
                raise
        return ("ok", mailbox, key, str(folder), name)

    @staticmethod
    def _make_link(spool: Path | str, t: DeliveryTarget, plan: tuple[str, ...], move: bool) -> tuple[str, ...]:
        """Blocking: the link (``move``: the rename) of ``spool`` into the folder :meth:`_plan_one` found;
        a folder renamed or deleted since is looked up again. :meth:`_link_one`'s value."""
        _, mailbox, key, folder, name = plan
        try:
            return ("ok", mailbox, key, f"{folder}/new", _link_or_copy(spool, f"{folder}/new/{name}", move), name)
        except FileNotFoundError:  # renamed or deleted since: ask the index
            t.account.engine.folder_cache.pop(mailbox, None)
        mailbox, where, name = _look_up_folder(t, mailbox, key, name)
        return ("ok", mailbox, key, f"{where}/new", _link_or_copy(spool, f"{where}/new/{name}", move), name)

    def _deliver_journaled(self, spool: Path, targets: list[DeliveryTarget], internal_date: float | None,
                           email_id: str, data: bytes) -> _JobOut | fsio.After | None:
        """:meth:`_deliver_job` of a consuming group round with the journal (the SMTP path): before the
        round's sync only what the record needs (each copy's key, name and folder, its Pending entry,
        the record); the file and its links after it, in the round's thread (``fsio.After``:
        :meth:`_links_after_sync`), off the path to the reply: the record alone makes the copies
        durable (replay writes back every recorded copy missing from ``new/``). None when the journal
        takes no record now (full until its next checkpoint, broken, closing): nothing is left, the
        caller links before the sync as :meth:`_deliver_links` does (the round's syncfs)."""
        jr = self.journal
        assert jr is not None
        email_id = email_id or new_id("E")
        size = len(data)
        keep = data if size <= KEEP_RAW and size <= self.config.max_parse_size else None
        late = LateParse(self._parse)  # parsed by whoever indexes a copy first (as in _deliver_links)
        out: list[DeliveryResult | None] = [None] * len(targets)
        plans: list[tuple[int, tuple[str, ...]]] = []
        for i, t in enumerate(targets):
            try:
                plans.append((i, self._plan_one(t, size, email_id, None, None, keep, None, late)))
            except (StoreError, OSError, sqlite3.Error) as exc:
                out[i] = _failed(t, exc)
        if not plans:
            fsio.journaled()  # nothing to make durable
            return [r for r in out if r is not None], [], []
        # (a group round has no quota-bound target: every plan is "ok")
        rec = [_record_target(targets[i].account, p[3], p[4], p[2]) for i, p in plans]
        mtime = internal_date if internal_date is not None else time.time()
        try:
            token = jr.append(journal.meta(rec, mtime), _parent(spool), data, deferred=True)
        except OSError as exc:  # the journal is broken: as a failed sync, the sender retries
            logger.error("journal.append_failed", error=str(exc))
            for i, p in plans:
                targets[i].account.engine.pending.pop(p[2], None)
            return [r or DeliveryResult(t, "tempfail", None, f"journal: {exc}")
                    for r, t in zip(out, targets, strict=True)], [], []
        if not token:
            for i, p in plans:
                targets[i].account.engine.pending.pop(p[2], None)
            return None
        fsio.journaled()
        for i, _ in plans:
            out[i] = DeliveryResult(targets[i], "ok", None, None)
        results = [r for r in out if r is not None]

        def then(err: OSError | None) -> _JobOut:
            # in the round's thread after its sync and every caller's durable hook; never raises
            error: BaseException | None = None
            try:
                if err is not None:  # the record may not be durable: nothing is linked, the sender retries
                    logger.error("deliver.sync_failed", path=str(spool), error=str(err))
                    for i, p in plans:
                        targets[i].account.engine.pending.pop(p[2], None)
                    return ([r if r.status != "ok" else DeliveryResult(r.target, "tempfail", None, f"syncfs: {err}")
                             for r in results], [], [])
                later, error = self._links_after_sync(spool, targets, data, internal_date, plans)
                return results, [], later
            except Exception as exc:  # (a bug: the copies stay acknowledged, the record for replay)
                logger.error("deliver.links_failed", error=repr(exc))
                error = exc
                return results, [], []
            finally:
                jr.linked(token, error)

        return fsio.After((results, [], []), then)

    def _links_after_sync(self, spool: Path, targets: list[DeliveryTarget], data: bytes, internal_date: float | None,
                          plans: list[tuple[int, tuple[str, ...]]]) -> tuple[list[_Linked], BaseException | None]:
        """Blocking, in a round's thread after its sync (the copies are acknowledged): ``data`` into a
        reserved file (or ``spool`` when the reserve is empty) and its links as planned (the last one a
        rename). Never raises: a copy not made (ENOSPC, EIO, its folder gone and INBOX too) is logged,
        its Pending entry dropped, and left to the journal's replay (the caller breaks the journal with
        the first error, returned). Returns the copies made (for the indexer) and that error."""
        later: list[_Linked] = []
        error: BaseException | None = None
        src: Path | str | None = None
        moved = False
        copied: set[str] = set()
        try:
            src = self._write_reserved(spool, data)
            if src is None:
                with contextlib.suppress(FileExistsError):  # written by the caller: the same bytes
                    _create_spool(spool, data)
                src = spool
            if internal_date is not None:
                os.utime(src, (internal_date, internal_date))
        except Exception as exc:
            error = exc
        last = plans[-1][0]
        for i, plan in plans:
            t = targets[i]
            if src is not None:
                try:
                    _, mailbox, key, new_dir, how, name = self._make_link(src, t, plan, i == last)
                    moved = i == last
                    if how == "copy":
                        copied.add(new_dir)
                    later.append((t.account, mailbox, key, f"{new_dir}/{name}"))
                    continue
                except Exception as exc:
                    error = error or exc
            t.account.engine.pending.pop(plan[2], None)
            logger.error("deliver.link_after_sync_failed", account=t.account.id, folder=plan[3], name=plan[4],
                         error=str(error))
        for d in copied:  # another file system than the journal's: its checkpoint's syncfs misses it
            try:
                fsio.fsync_dir(d)
            except OSError as exc:
                logger.error("deliver.fsync_failed", dir=d, error=str(exc))
                error = error or exc
        if src is not None and not moved:
            with contextlib.suppress(OSError):
                os.unlink(src)
        self.dirsync.fsyncs += len({x[3].rpartition("/")[0] for x in later})
        self.dirsync.rounds += 1
        return later, error


class Indexer:
    """Background UID assignment for deliveries acknowledged once durable in ``new/`` (group commit).

    Deliveries add (account, mailbox, key); a round waits ``store.index_delay`` for more to
    join, then indexes every waiting mailbox in at most ``INDEX_JOBS`` pool jobs: one index
    transaction (uidlist fsync + commit) per mailbox for all its deliveries of the round,
    then publishes (IDLE, JMAP push and the search observer see the message after its UID is
    committed). Deliveries arriving during a round wait for the next one, so under load the
    batches grow instead of the backlog. A reader opening or refreshing the mailbox indexes
    the waiting files itself (they are in ``new/``); the indexer then finds them done.
    A batch works in slices (per mailbox, and every ``engine.GIVE_WAY_EVERY`` messages) and gives
    way to the process's delivery rounds between them (``fsio.give_way``, bounded per batch).
    With several worker processes delivering into one mailbox, a batch takes the files this
    process delivered and leaves another's for ``FOREIGN_GRACE`` (its indexer holds their parse),
    then looks again (``_recheck_later``): a file whose deliverer died is taken once that old.
    """

    #: pool jobs one round runs at once (the rest of the pool stays free for deliveries and reads)
    INDEX_JOBS = 2

    def __init__(self, store: Store) -> None:
        self.store = store
        self._waiting: dict[tuple[str, str], tuple[Account, str, list[str | None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._hurry = asyncio.Event()  # set by flush(): skip the delay
        #: rounds run, mailbox transactions and messages handed in, seconds rounds waited to start
        #: (for tests and the bench)
        self.rounds = 0
        self.batches = 0
        self.queued = 0
        self.waited = 0.0
        #: mailboxes to look at again for files another process delivered (``_recheck_later``)
        self._rechecks: set[tuple[str, str]] = set()
        #: what the index transactions did: thread CPU, messages, those another process delivered
        #: (parsed again here), those left for it (FOREIGN_GRACE), ours found indexed already
        self.stats = dict.fromkeys(STATS, 0.0)

    def add(self, acct: Account, mailbox: str, key: str | None) -> None:
        """Index ``key`` (a durable file in ``mailbox``'s new/) soon; None: whatever waits in new/;
        ``RECHECK``: what waits there longer than ``FOREIGN_GRACE``. Call on the store's loop."""
        entry = self._waiting.get((acct.id, mailbox))
        if entry is None or entry[0] is not acct:
            entry = self._waiting[(acct.id, mailbox)] = (acct, mailbox, [])
        entry[2].append(key)
        self.queued += 1
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def _recheck_later(self, acct: Account, mailbox: str) -> None:
        """A round left files another process delivered in ``mailbox``'s new/ (``FOREIGN_GRACE``):
        look again once they are older than that, so that they are indexed even if that process
        died before its indexer ran (its files are then taken here, each once)."""
        if (acct.id, mailbox) in self._rechecks:
            return
        self._rechecks.add((acct.id, mailbox))
        asyncio.get_running_loop().call_later(FOREIGN_GRACE + 0.05, self._recheck, acct, mailbox)

    def _recheck(self, acct: Account, mailbox: str) -> None:
        self._rechecks.discard((acct.id, mailbox))
        if not self.store._closing:
            self.add(acct, mailbox, RECHECK)

    async def adopt(self, acct: Account) -> None:
        """A just opened account: index its INBOX in the background if files wait in its new/
        (acknowledged by a process killed before its indexer ran), so that quota usage and JMAP
        states count them before anyone opens the mailbox. Other folders wait for a reader."""
        if not self.store.config.deferred_index:
            return
        try:
            waiting = await self.store.io.run(_has_files, acct.root / "new")
        except OSError:
            return
        if waiting:
            self.add(acct, "INBOX", None)

    @property
    def waiting(self) -> int:
        """Deliveries not yet handed to an index job."""
        return sum(bool(k) for e in self._waiting.values() for k in e[2])

    async def flush(self) -> None:
        """Index what waits now (no delay) and return once every delivery added before the call is
        indexed (or its indexing failed)."""
        while self._task is not None:
            self._hurry.set()
            await asyncio.shield(self._task)

    async def _run(self) -> None:
        cfg = self.store.config
        delay = cfg.index_delay
        longest = max(delay, cfg.index_delay_busy)
        try:
            while self._waiting:
                waited = 0.0
                if delay and not self._hurry.is_set():
                    with contextlib.suppress(TimeoutError):  # let concurrent deliveries join this round
                        await asyncio.wait_for(self._hurry.wait(), delay)
                    waited = delay
                    # while this process's delivery rounds keep running, wait longer (up to
                    # index_delay_busy): fewer, larger index transactions per mailbox, so fewer pages
                    # (index WAL, quota, search, directories) for the deliveries' syncs to write per message
                    while waited < longest and fsio.foreground.busy and not self._hurry.is_set():
                        step = min(delay, longest - waited)
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._hurry.wait(), step)
                        waited += step
                self._hurry.clear()
                # a batch that grew gives way in proportion (the budget is per batch)
                budget = cfg.index_give_way * max(1.0, waited / delay) if delay else None
                self.waited += waited
                batch, self._waiting = list(self._waiting.values()), {}
                self.rounds += 1
                self.batches += len(batch)
                n = min(len(batch), self.INDEX_JOBS)
                outs = await asyncio.gather(*(self.store.io.run(_index_batch, batch[j::n], budget)
                                              for j in range(n)), return_exceptions=True)
                for out in outs:
                    if isinstance(out, BaseException):
                        logger.error("index.batch_failed", error=f"{type(out).__name__}: {out}")
                        continue
                    published, recheck, stats = out
                    for k, v in stats.items():
                        self.stats[k] += v
                    for acct, res in published:
                        await acct._publish(res)
                    for acct, mailbox in recheck:
                        self._recheck_later(acct, mailbox)
        finally:
            self._task = None


def _create_spool(path: Path, data: bytes) -> None:
    """Blocking: create ``path`` (O_EXCL) holding ``data``, no fsync; on failure nothing is left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, data)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


def _write_all(fd: int, data: bytes) -> None:
    """Blocking: write all of ``data`` to ``fd``, then close it (also on error)."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _failed(t: DeliveryTarget, exc: Exception) -> DeliveryResult:
    """The tempfail of a copy that could not be made (a StoreError is expected; others are logged)."""
    if isinstance(exc, StoreError):
        return DeliveryResult(t, "tempfail", None, str(exc))
    err = f"{type(exc).__name__}: {exc}"
    logger.error("deliver.failed", account=getattr(t.account, "id", "?"), error=err)
    return DeliveryResult(t, "tempfail", None, err)


def _look_up_folder(t: DeliveryTarget, mailbox: str, key: str, name: str) -> tuple[str, Path, str]:
    """Blocking: (mailbox, folder, name in new/) of a copy from the index, cached in the engine; INBOX
    when ``mailbox`` is gone (the name then loses its keyword letters: they were the other folder's)."""
    eng = t.account.engine
    try:
        folder = eng.folder_path(mailbox)
    except (MailboxNotFound, StoreError):
        mailbox = "INBOX"
        folder = eng.folder_path(mailbox)
        if name != key:
            flags = frozenset(md.canonical_flag(f) for f in t.flags)
            name = md.filename(key, flags) if md.flags_to_info(flags) else key
    if len(eng.folder_cache) > 64:
        eng.folder_cache.clear()
    eng.folder_cache[mailbox] = folder
    return mailbox, folder, name


def _record_target(acct: Account, folder: str, name: str, key: str) -> journal.Target:
    """A copy as its journal record holds it: (account root, folder, name in new/, key), absolute
    (the replay may run in another process, in another directory)."""
    root = str(acct.root)
    if root[:1] != "/" or folder[:1] != "/":
        root, folder = os.path.abspath(root), os.path.abspath(folder)
    return (root, folder, name, key)


def _limited(t: DeliveryTarget) -> bool:
    """Does a quota bound this target? Its delivery is indexed at once: quota usage is counted at
    indexing, and the next RCPT-time check must see this message."""
    limits = [t.limits, getattr(t, "domain_limits", None)]
    return any(x is not None and (x.storage is not None or x.messages is not None) for x in limits)


def _has_files(directory: Path) -> bool:
    with os.scandir(directory) as it:
        return any(not e.name.startswith(".") for e in it)


class _RawBudget:
    """The bytes ``Pending.raw`` holds in this process (any thread), at most ``RAW_HELD_MAX``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.held = 0

    def hold(self, pend: Pending) -> None:
        """Count ``pend.raw`` until ``pend`` is collected, or drop it from ``pend`` when over budget."""
        assert pend.raw is not None
        n = len(pend.raw)
        with self.lock:
            if self.held + n > RAW_HELD_MAX:
                pend.raw = None
                return
            self.held += n
        pend.held = _Held(self, n)  # (a token freed with pend: a third of weakref.finalize's cost)

    def _give(self, n: int) -> None:
        with self.lock:
            self.held -= n


class _Held:
    """``n`` bytes a :class:`_RawBudget` counts until this token (``Pending.held``) is collected."""

    __slots__ = ("budget", "n")

    def __init__(self, budget: _RawBudget, n: int) -> None:
        self.budget = budget
        self.n = n

    def __del__(self) -> None:
        self.budget._give(self.n)


_RAW_HELD = _RawBudget()


def _index_batch(batch: list[tuple[Account, str, list[str | None]]], budget: float | None = None
                 ) -> tuple[list[tuple[Account, SyncResult]], list[tuple[Account, str]], dict[str, float]]:
    """Blocking (I/O pool): one index transaction per mailbox for its waiting deliveries; ``budget``:
    seconds it gives way to delivery rounds at most (default ``[store] index_give_way``).

    Returns the changes to publish, the mailboxes where files another process delivered were
    left for it (the indexer looks at them again after ``FOREIGN_GRACE``), and this job's part of
    ``Indexer.stats``. A failure (index busy, disk trouble) only leaves the files in new/, where
    the next sync of that mailbox, by anyone, picks them up.
    """
    published: list[tuple[Account, SyncResult]] = []
    recheck: list[tuple[Account, str]] = []
    stats = dict.fromkeys(STATS, 0.0)
    t0 = time.thread_time()
    # the mailboxes' usage reports reach the per-domain book in one write after the job (store/usage.py)
    with fsio.background(budget), batch[0][0].store.usage.held() if batch else contextlib.nullcontext():
        for acct, mailbox, keys in batch:
            fsio.give_way()
            parsed = acct.engine.files_parsed
            res, left = _index_one(acct, mailbox, keys)
            stats["foreign"] += acct.engine.files_parsed - parsed  # not delivered here: parsed again
            stats["foreign_left"] += left
            if left:
                recheck.append((acct, mailbox))
            if res is None:
                stats["done_before"] += sum(bool(k) for k in keys)
            elif res.changed:
                published.append((acct, res))
                stats["added"] += len(res.added)
    stats["cpu_s"] = time.thread_time() - t0
    return published, recheck, stats


def _index_one(acct: Account, mailbox: str, keys: list[str | None]) -> tuple[SyncResult | None, int]:
    """Blocking: :func:`_index_batch` for one mailbox: its changes (None when there was nothing
    of ours left to index, or indexing failed), and how many files another process delivered
    were left in new/ for it (``FOREIGN_GRACE``)."""
    eng = acct.engine

    def index() -> tuple[SyncResult | None, int]:
        if None in keys:  # whatever waits in new/ (Indexer.adopt)
            return eng.sync(mailbox, lazy_commit=True), 0
        mine = [k for k in keys if k and k in eng.pending]
        if RECHECK not in keys and not mine:
            return None, 0  # indexed meanwhile (a reader, or our previous round took them with its own)
        new = f"{eng.folder_cache.get(mailbox) or eng.folder_path(mailbox)}/new"
        if not (mine and os.path.lexists(f"{new}/{mine[-1]}")):  # (one stat: a file without flags is named so)
            ours, old, young = _waiting_files(eng, new)
            if not ours and not old:  # ours indexed by a reader or another process meanwhile, and nothing
                return None, young    # of others' waits beyond the grace: no transaction (~150-300 us)
        res = eng.sync(mailbox, lazy_commit=True, foreign_grace=FOREIGN_GRACE)
        return res, eng.foreign_left

    try:
        res, left = _repairing(eng, index)
    except (StoreError, OSError, sqlite3.Error) as exc:
        logger.warning("index.deferred_failed", account=acct.id, mailbox=mailbox, error=str(exc))
        res, left = None, 0
    for key in keys:
        if key:
            eng.pending.pop(key, None)  # indexed, by us or by a reader
    return res, left


def _waiting_files(eng: Engine, new: str) -> tuple[int, int, int]:
    """Blocking: the files in a mailbox's ``new`` directory that this process delivered (and synced),
    and those it did not, older and younger than FOREIGN_GRACE by their ctime: (ours, old, young).
    With none of the first two, a background sync would take nothing: the caller makes no transaction."""
    since = time.time() - FOREIGN_GRACE
    ours = old = young = 0
    with os.scandir(new) as it:
        for e in it:
            if e.name.startswith("."):
                continue
            pend = eng.pending.get(md.split_filename(e.name)[0])
            if pend is not None:
                ours += not pend.unsynced  # (an unsynced one is not taken before its sync)
                continue
            try:
                ctime = e.stat().st_ctime
            except FileNotFoundError:  # indexed (renamed into cur/) meanwhile
                continue
            if ctime > since:
                young += 1
            else:
                old += 1
    return ours, old, young


def _repairing(eng: Engine, fn: Callable[[], T]) -> T:
    """``fn()`` (an index transaction of ``eng``); a corrupt index is repaired (rebuilt) and ``fn``
    run once more. Busy or locked (OperationalError) is raised at once."""
    for attempt in (1, 2):
        try:
            with eng.lock:
                return fn()
        except sqlite3.OperationalError:
            raise
        except sqlite3.DatabaseError as exc:
            if attempt == 2:
                raise
            eng.repair(exc)
    raise AssertionError("unreachable")


def _take_back(paths: list[str]) -> None:
    """Blocking: unlink the ``new/`` entries of deliveries whose sync failed. One already gone was
    taken into ``cur/`` by another process (it was visible there: the sender's retry duplicates it)."""
    for p in paths:
        try:
            os.unlink(p)
        except FileNotFoundError:
            logger.warning("deliver.taken_before_sync", file=p)
        except OSError as exc:
            logger.error("deliver.take_back_failed", file=p, error=str(exc))


def _link_or_copy(src: Path | str, to: str, move: bool = False) -> str:
    """Hard link ``src`` as ``to`` ("link"; ``move``: rename it there), or copy it durably across file
    systems ("copy")."""
    import errno
    import shutil

    try:
        if move:
            os.rename(src, to)  # one syscall for link + unlink; atomic as the link is (maildir: a whole
        else:                   # file appears in new/)
            os.link(src, to)
        return "link"
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        dst = Path(to)
        tmp = dst.parent.parent / "tmp" / dst.name
        shutil.copyfile(src, tmp)
        fsio.fsync_file(tmp)
        st = os.stat(src)
        os.utime(tmp, (st.st_atime, st.st_mtime))
        os.rename(tmp, dst)
        if move:
            os.unlink(src)
        return "copy"


__all__ = ["Indexer", "Store", "TemporaryFailure", "account_root"]
