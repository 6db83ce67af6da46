"""The async face of one account: mailbox operations, snapshots, watches (docs/store-api.md).

Every blocking call runs in the store's I/O pool through :meth:`Account._run`,
which turns OS and SQLite trouble into :class:`TemporaryFailure` (after one
automatic rebuild of a corrupt index) and never lets it crash a worker.
After each write, :meth:`Account._publish` tells observers and watchers.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from mailsrv import log
from mailsrv._speedups import fileread
from mailsrv._speedups import quota as quota_impl
from mailsrv.store import maildir, notify
from mailsrv.store.engine import Engine, Pending, SyncResult, parse_for_index
from mailsrv.store.folders import UIDLIST_NAME
from mailsrv.store.types import (
    Changes,
    ChangesSince,
    MailboxInfo,
    MessageGone,
    MessageInfo,
    OverQuota,
    QuotaLimits,
    QuotaUsage,
    StoreError,
    TemporaryFailure,
)
from mailsrv.util import fsio

if TYPE_CHECKING:
    from mailsrv.mime import MessageStructure
    from mailsrv.store.store import Store

logger = log.get("store")
T = TypeVar("T")

#: mailboxes per account whose last snapshot is kept for warm opens
SNAPSHOT_CACHE = 8
#: messages in the snapshots kept for warm opens per worker, all accounts together (least recently
#: opened out first; the one just opened always stays): ~490 bytes each (MessageInfo and its strings,
#: two list slots), so ~95 MiB; without it 1 000 open accounts x 8 mailboxes had no bound in bytes
SNAPSHOT_CACHE_MESSAGES = 200_000
#: message file paths per account remembered for read_message
PATH_CACHE = 4096


def _raise_quota(code: int) -> None:
    if code == quota_impl.OVER_STORAGE:
        raise OverQuota("STORAGE")
    if code == quota_impl.OVER_MESSAGES:
        raise OverQuota("MESSAGE")


class Account:
    """One user's mail. Obtain with ``await store.account(id, maildir)``."""

    def __init__(self, store: Store, account_id: str, root: Path, engine: Engine) -> None:
        self.store = store
        self.id = account_id
        self.root = root
        self.engine = engine
        self._sync_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._sync_running: set[str] = set()
        #: last snapshot per mailbox name (LRU): a warm open only applies the changes since
        self._snaps: dict[str, MailboxView] = {}
        #: (mailbox, uid) -> file path last read (read_message without an index lookup)
        self._paths: dict[tuple[str, int], Path] = {}

    # --- plumbing ---------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        for attempt in (1, 2):
            try:
                return await self.store.io.run(fn, *args)
            except StoreError:
                raise
            except sqlite3.OperationalError as exc:
                logger.error("index.unavailable", account=self.id, error=str(exc))
                raise TemporaryFailure(f"index unavailable: {exc}") from exc
            except sqlite3.DatabaseError as exc:
                if attempt == 2:
                    raise TemporaryFailure(f"index unusable: {exc}") from exc
                await self.store.io.run(self.engine.repair, exc)
            except OSError as exc:
                logger.error("store.io_error", account=self.id, error=f"{type(exc).__name__}: {exc}")
                raise TemporaryFailure(f"{exc.strerror or exc}") from exc
        raise AssertionError("unreachable")

    async def _publish(self, res: SyncResult) -> None:
        if not res.changed:
            return
        self.store._wake(self.id)
        observers = self.store._observers
        if not observers:
            return
        from mailsrv.mime import MessageStructure

        for added in res.added:
            blob = added.structure
            try:
                structure = added.parsed or (MessageStructure.from_cache(blob) if blob is not None else None)
            except ValueError:  # another parser version's blob, or a corrupt one: parse again
                structure = await self._reparse(added.mailbox_guid, added.info.uid)
            for obs in observers:
                try:
                    if added.raw is not None and getattr(obs, "wants_raw", False):
                        obs.message_added(self.id, added.mailbox_guid, added.info, structure,  # type: ignore[call-arg,arg-type]
                                          raw=added.raw)
                    else:
                        obs.message_added(self.id, added.mailbox_guid, added.info, structure)  # type: ignore[arg-type]
                except Exception as exc:
                    logger.exception("observer.failed", exc, account=self.id)
        for guid, uids in res.expunged.items():
            for obs in observers:
                try:
                    obs.messages_expunged(self.id, guid, uids)
                except Exception as exc:
                    logger.exception("observer.failed", exc, account=self.id)
        for guid, infos in res.flags.items():
            for obs in observers:
                try:
                    obs.flags_changed(self.id, guid, infos)
                except Exception as exc:
                    logger.exception("observer.failed", exc, account=self.id)

    async def sync(self, mailbox: str) -> None:
        """Pick up files in ``new/`` and outside changes, batched with concurrent callers.

        Returns after a sync that started after the call has committed.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._sync_waiters.setdefault(mailbox, []).append(fut)
        if mailbox not in self._sync_running:
            self._sync_running.add(mailbox)
            loop.create_task(self._sync_loop(mailbox))
        await fut

    async def _sync_loop(self, mailbox: str) -> None:
        try:
            while self._sync_waiters.get(mailbox):
                batch = self._sync_waiters.pop(mailbox)
                try:
                    res = await self._run(self.engine.sync, mailbox)
                except BaseException as exc:
                    for f in batch:
                        if not f.done():
                            f.set_exception(exc)
                    continue
                await self._publish(res)
                for f in batch:
                    if not f.done():
                        f.set_result(None)
        finally:
            self._sync_running.discard(mailbox)

    async def _sync_if_needed(self, mailbox: str) -> None:
        """Index what waits in ``new/`` before a read. A sync that cannot write (full disk, index
        locked) is logged and the read goes on with the state last committed: readers keep
        working, the mail waiting in ``new/`` is indexed by the next sync that can."""
        if await self._run(self.engine.needs_sync, mailbox):
            try:
                await self.sync(mailbox)
            except TemporaryFailure as exc:
                logger.warning("sync.deferred", account=self.id, mailbox=mailbox, error=str(exc))

    # --- folders ----------------------------------------------------------------

    async def list_mailboxes(self) -> list[MailboxInfo]:
        return await self._run(self.engine.list_mailboxes)

    async def mailbox_status(self, name: str) -> MailboxInfo:
        await self._sync_if_needed(name)
        return await self._run(self.engine.status, name)

    async def create_mailbox(self, name: str, special_use: str | None = None) -> MailboxInfo:
        info = await self._run(self.engine.create_mailbox, name, special_use)
        self.store._wake(self.id)
        return info

    async def rename_mailbox(self, old: str, new: str) -> None:
        self._paths.clear()
        await self._run(self.engine.rename_mailbox, old, new)
        self.store._wake(self.id)

    async def delete_mailbox(self, name: str) -> None:
        self._paths.clear()
        guid = (await self._run(self.engine.status, name)).id
        await self._run(self.engine.delete_mailbox, name)
        self.store._wake(self.id)
        for obs in self.store._observers:  # optional hook (StoreObserver): what they keep per mailbox goes
            gone = getattr(obs, "mailbox_deleted", None)
            if gone is None:
                continue
            try:
                gone(self.id, guid)
            except Exception as exc:
                logger.exception("observer.failed", exc, account=self.id)

    async def subscribe(self, name: str, subscribed: bool = True) -> None:
        await self._run(self.engine.subscribe, name, subscribed)
        self.store._wake(self.id)

    # --- snapshots ----------------------------------------------------------------

    async def open_mailbox(self, name: str) -> MailboxView:
        """A new snapshot of a mailbox for a session. MailboxNotFound."""
        cached = self._snaps.pop(name, None)
        if cached is not None:
            try:
                await cached.refresh()
            except StoreError:
                cached = None
        if cached is None:
            await self._sync_if_needed(name)
            info, msgs = await self._run(self.engine.snapshot, name)
            cached = MailboxView(self, info, msgs)
        self._snaps[name] = cached
        while len(self._snaps) > SNAPSHOT_CACHE:
            oldest = next(iter(self._snaps))
            del self._snaps[oldest]
            self.store._forget_snapshot(self.id, oldest)
        self.store._keep_snapshot(self, name, len(cached.messages))
        return cached.clone()

    async def changes_since(self, mailbox: str, modseq: int) -> ChangesSince:
        await self._sync_if_needed(mailbox)
        info, changed, gone, ids, truncated = await self._run(self.engine.changes_since, mailbox, modseq)
        return ChangesSince(changed, gone, info.highestmodseq, ids, truncated)

    async def claim_recent(self, mailbox: str, upto: int | None = None) -> int:
        """RFC 3501 \\Recent: the first UID not yet recent in any session; with ``upto``, claim
        ``[returned, upto)`` for the caller (atomic across processes). See Engine.claim_recent."""
        return await self._run(self.engine.claim_recent, mailbox, upto)

    async def recent_count(self, mailbox: str) -> int:
        """How many messages no session has seen as \\Recent yet (STATUS RECENT)."""
        return await self._run(self.engine.recent_count, mailbox)

    # --- quota --------------------------------------------------------------------

    async def quota_usage(self) -> QuotaUsage:
        return await self._run(self.engine.quota_usage)

    async def quota_check(self, size: int, limits: QuotaLimits,
                          domain_limits: QuotaLimits | None = None) -> Literal["ok", "over_quota"]:
        """Would one more message of ``size`` octets fit under the account's and the domain's limits?"""
        if domain_limits is None:
            domain_limits = await self.domain_limits()
        code = await self._run(self.engine.quota_check, size, 1, limits, domain_limits)
        return "ok" if code == quota_impl.OK else "over_quota"

    @property
    def domain(self) -> str | None:
        """The domain whose quota root holds this account's usage (None: not known yet)."""
        return self.engine.domain

    async def set_domain(self, domain: str) -> None:
        """Put the account's usage into ``domain``'s quota root (the directory's domain of the user)."""
        self.engine.domain = domain
        await self._run(self.engine.report_usage)

    async def domain_limits(self) -> QuotaLimits:
        """The limits of the account's domain quota root (unlimited when the domain is not known)."""
        domain = self.engine.domain
        return QuotaLimits() if domain is None else await self.store.domain_limits(domain)

    async def domain_usage(self) -> QuotaUsage | None:
        """Usage of the account's whole domain (every user's), or None if the domain is not known."""
        domain = self.engine.domain
        if domain is None:
            return None
        return await self._run(self.store.usage.domain_usage, domain)

    # --- messages -----------------------------------------------------------------

    async def append(self, mailbox: str, data: bytes | Path, flags: frozenset[str] = frozenset(),
                     internal_date: float | None = None, limits: QuotaLimits = QuotaLimits(),
                     domain_limits: QuotaLimits | None = None) -> int:
        """Store a message; returns its UID once it is durable. OverQuota, MailboxNotFound."""
        from mailsrv.store.maildir import canonical_flag

        flags = frozenset(canonical_flag(f) for f in flags)
        if isinstance(data, Path):
            size = (await self._run(os.stat, data)).st_size
        else:
            size = len(data)
        if domain_limits is None:
            domain_limits = await self.domain_limits()
        _raise_quota(await self._run(self.engine.quota_check, size, 1, limits, domain_limits))
        folder = await self._run(self.engine.folder_path, mailbox)
        pend = await self._run(self._prepare, data)
        if isinstance(data, Path):
            uid, res = await self._run(self.engine.import_new, mailbox, data, flags, internal_date, pend, True)
        else:
            tmp = folder / "tmp" / fsio.unique_name(self.engine.hostname)
            await self._run(_write_fsync, tmp, data)
            try:
                uid, res = await self._run(self.engine.import_new, mailbox, tmp, flags, internal_date, pend, False)
            finally:
                if tmp.exists():
                    await self._run(tmp.unlink)
        await self._publish(res)
        return uid

    def _prepare(self, data: bytes | Path) -> Pending:
        if isinstance(data, Path):
            with open(data, "rb") as fh:
                raw = fh.read(self.engine.max_parse_size)
        else:
            raw = data[: self.engine.max_parse_size]
        structure, thread, parsed = parse_for_index(raw, self.id, self.engine.mime_limits)
        return Pending(structure=structure, thread=thread, parsed=parsed)

    async def copy(self, src: str, uids: Sequence[int], dst: str,
                   limits: QuotaLimits = QuotaLimits(),
                   domain_limits: QuotaLimits | None = None) -> list[tuple[int, int]]:
        if domain_limits is None:
            domain_limits = await self.domain_limits()
        mapping, res = await self._run(lambda: self.engine.copy(src, uids, dst, move=False, limits=limits,
                                                                domain_limits=domain_limits))
        await self._publish(res)
        return mapping

    async def move(self, src: str, uids: Sequence[int], dst: str) -> list[tuple[int, int]]:
        mapping, res = await self._run(lambda: self.engine.copy(src, uids, dst, move=True))
        await self._publish(res)
        return mapping

    async def store_flags(self, mailbox: str, uids: Sequence[int], flags: frozenset[str],
                          mode: Literal["add", "remove", "replace"],
                          unchanged_since: int | None = None) -> tuple[list[MessageInfo], list[int]]:
        if mode not in ("add", "remove", "replace"):
            raise ValueError(f"bad mode {mode!r}")
        modified, failed, res = await self._run(self.engine.store_flags, mailbox, uids, flags, mode,
                                                unchanged_since)
        await self._publish(res)
        return modified, failed

    async def expunge(self, mailbox: str, uids: Sequence[int] | None = None,
                      only_deleted: bool = True, unseen_only: bool = False) -> list[int]:
        """Remove ``uids`` (all: None) that are ``\\Deleted`` (unless not ``only_deleted``) and, with
        ``unseen_only``, not ``\\Seen`` (checked in the same transaction); returns the UIDs removed."""
        done, res = await self._run(self.engine.expunge, mailbox, uids, only_deleted, unseen_only)
        await self._publish(res)
        return done

    async def read_message(self, mailbox: str, uid: int, offset: int = 0, length: int | None = None) -> bytes:
        """Raw bytes of a message (or a range of it). MessageGone if it was expunged or vanished.

        One I/O-pool round trip; the file name comes from a per-account cache (no index lookup)
        while the file stays where it was.
        """
        return await self._run(self._read_blocking, mailbox, uid, offset, length)

    async def read_messages(self, mailbox_id: str, uids: Sequence[int]) -> dict[int, bytes]:
        """Raw bytes of several messages of the mailbox with id ``mailbox_id``, in one I/O-pool job
        (indexing after delivery); expunged or unreadable ones are left out. MailboxNotFound."""
        return await self._run(self._read_many_blocking, mailbox_id, list(uids))

    def read_messages_blocking(self, mailbox_id: str, uids: Sequence[int]) -> dict[int, bytes]:
        """*Blocking*, any thread (not the loop): :meth:`read_messages` for another component's pool
        job (search indexing after delivery reads and indexes a batch in one job)."""
        return self._read_many_blocking(mailbox_id, list(uids))

    def _read_many_blocking(self, mailbox_id: str, uids: list[int]) -> dict[int, bytes]:
        name, paths = self.engine.files_of(mailbox_id, uids)
        out: dict[int, bytes] = {}
        # one call for the batch: compiled, it holds the GIL twice, not four times per file (the loop's turn)
        for uid, data in zip(paths, fileread.read_files(list(paths.values()), -1), strict=True):
            if data is not None:
                out[uid] = data
                continue
            try:  # renamed by a flag change meanwhile: ask the index
                out[uid] = self._read_blocking(name, uid, 0, None)
            except (MessageGone, OSError):
                pass
        return out

    def _read_blocking(self, mailbox: str, uid: int, offset: int, length: int | None) -> bytes:
        """(pool) Message keys are unique, so a cached path that still exists is still that message."""
        ck = (mailbox, uid)
        path = self._paths.get(ck)
        if path is not None:
            try:
                return fileread.read_range(path, offset, length)
            except FileNotFoundError:  # renamed by a flag change or expunged: ask the index
                self._paths.pop(ck, None)
        for _attempt in (1, 2):
            path = self.engine.locate(mailbox, uid)
            try:
                data = fileread.read_range(path, offset, length)
            except FileNotFoundError:
                continue  # renamed by a flag change meanwhile: locate again
            if len(self._paths) >= PATH_CACHE:
                for old in list(self._paths)[: PATH_CACHE // 4]:
                    self._paths.pop(old, None)
            self._paths[ck] = path
            return data
        raise MessageGone(f"{mailbox} uid {uid}")

    async def message_path(self, mailbox: str, uid: int) -> Path:
        """Where the file is now (for sendfile-style streaming); may move after any flag change."""
        return await self._run(self.engine.locate, mailbox, uid)

    async def structures(self, mailbox: str, uids: Sequence[int]) -> dict[int, MessageStructure]:
        from mailsrv.mime import MessageStructure, parse

        blobs = await self._run(self.engine.structures, mailbox, list(uids))
        out: dict[int, MessageStructure] = {}
        for uid, blob in blobs.items():
            if blob is not None:
                try:
                    out[uid] = MessageStructure.from_cache(blob)
                    continue
                except ValueError:  # another parser version's entry, or a corrupt one
                    pass
            # not parsed at delivery (parser failure), or stale: parse now and rewrite the entry
            raw = await self.read_message(mailbox, uid)
            st = await self.store.io.run(parse, raw, self.engine.mime_limits)
            out[uid] = st
            try:
                await self._run(self.engine.set_structure, mailbox, uid, st.to_cache())
            except StoreError as exc:  # the parse is still good for this caller
                logger.warning("structure.cache_not_written", account=self.id, mailbox=mailbox, uid=uid,
                               error=str(exc))
        return out

    async def _reparse(self, mailbox_guid: str, uid: int) -> MessageStructure | None:
        """Parse a message whose cached structure is unusable, rewriting the entry (observer path)."""
        from mailsrv.mime import parse

        try:
            name = await self._run(self.engine.mailbox_name, mailbox_guid)
            raw = await self.read_message(name, uid)
            st = await self.store.io.run(parse, raw, self.engine.mime_limits)
            await self._run(self.engine.set_structure, name, uid, st.to_cache())
            return st
        except (StoreError, ValueError) as exc:
            logger.warning("structure.reparse_failed", account=self.id, uid=uid, error=str(exc))
            return None

    async def find_email(self, email_id: str) -> list[tuple[str, int]]:
        return await self._run(self.engine.find_email, email_id)

    async def recent_with_msgid(self, msgid: str, since: float
                                ) -> list[tuple[str, int, frozenset[str], float, int]]:
        """(mailbox, uid, flags, internal date, modseq) of the messages saved since ``since`` (epoch seconds), only
        when this account ever indexed a message whose Message-ID is ``msgid`` (<> stripped); else []
        at the cost of one index lookup. The caller checks which of them carry that Message-ID."""
        rows = await self._run(self.engine.recent_with_msgid, msgid, since)
        return [(m, u, frozenset(f.split()), d, q) for m, u, f, d, q in rows]

    # --- notification -----------------------------------------------------------

    def watch(self, mailbox: str | None = None) -> notify.Watch:
        """Start watching this account for changes by any process (call inside the event loop).

        mailsrv's own writes touch the account's notify file, watched either way. ``mailbox`` None:
        also every folder's new/ (other programs' deliveries anywhere: JMAP push); a name: only what
        that mailbox's refresh looks at (an IMAP SELECT), its new/, cur/ and uidlist (see
        :data:`notify.CUR_MASK`): four kernel watches instead of one per folder plus three, found
        without the index (or the engine lock) unless the folder is not where its name puts it. Raises the store's errors (MailboxNotFound) and OSError (ENOSPC:
        ``fs.inotify.max_user_watches``); nothing stays watched for the call then.
        """
        notifier = self.store._notifier_for_loop()
        key = self.id
        try:
            notifier.add_path(key, self.engine.notify_path, notify.FILE_MASK)
            if mailbox is None:
                for d in self.engine.folder_new_dirs():
                    notifier.add_path(key, d, notify.DIR_MASK)
            else:
                # the folder as its name makes it (create and rename make it so): no index look-up
                # under the engine lock on the loop, which waited for any index batch holding it
                folder = _folder_of(str(self.engine.root), mailbox)
                if folder is None or not notifier.add_path(key, os.path.join(folder, "new"), notify.DIR_MASK):
                    folder = str(self.engine.folder_path(mailbox))  # another program's odd name; or not there
                    notifier.add_path(key, os.path.join(folder, "new"), notify.DIR_MASK)
                notifier.add_path(key, os.path.join(folder, "cur"), notify.CUR_MASK)
                notifier.add_path(key, os.path.join(folder, UIDLIST_NAME), notify.FILE_MASK)
        except BaseException:
            notifier.release_unwatched(key)
            raise
        w = notify.Watch(notifier, key)
        notifier.register(w)
        return w


class MailboxView:
    """A session's snapshot of a mailbox; changes only when the session calls :meth:`refresh`."""

    def __init__(self, account: Account, info: MailboxInfo, messages: list[MessageInfo]) -> None:
        self.account = account
        self.name = info.name
        self.id = info.id
        self.uidvalidity = info.uidvalidity
        self.uidnext = info.uidnext
        self.highestmodseq = info.highestmodseq
        self.messages = messages
        self._uids = [m.uid for m in messages]
        #: expunged UIDs a ``refresh(hold_expunged=True)`` kept in the view, for the next refresh to report
        self.held: list[int] = []

    def clone(self) -> MailboxView:
        """An independent view with the same state (MessageInfo objects are immutable and shared)."""
        other = MailboxView.__new__(MailboxView)
        other.account = self.account
        other.name, other.id = self.name, self.id
        other.uidvalidity, other.uidnext, other.highestmodseq = self.uidvalidity, self.uidnext, self.highestmodseq
        other.messages = list(self.messages)
        other._uids = list(self._uids)
        other.held = list(self.held)
        return other

    def adopt(self, i: int, m: MessageInfo) -> None:
        """Hold ``m`` at position ``i`` instead of the equal object there, and its uid int too: sessions
        with one mailbox selected share their MessageInfo objects (imap/shared.py)."""
        if self.messages[i] != m:
            raise ValueError(f"adopt: message {m.uid} differs from position {i}")
        self.messages[i] = m
        self._uids[i] = m.uid

    def by_uid(self, uid: int) -> MessageInfo | None:
        i = bisect.bisect_left(self._uids, uid)
        if i < len(self._uids) and self._uids[i] == uid:
            return self.messages[i]
        return None

    def seq_of(self, uid: int) -> int | None:
        """1-based sequence number of ``uid`` in this view, or None."""
        i = bisect.bisect_left(self._uids, uid)
        return i + 1 if i < len(self._uids) and self._uids[i] == uid else None

    async def refresh(self, hold_expunged: bool = False) -> Changes:
        """Apply changes made since the snapshot (by anyone). StoreError if the mailbox was replaced.

        ``hold_expunged``: messages expunged meanwhile stay in the view, with their sequence numbers
        (for a session inside a command that must not report EXPUNGE: RFC 9051 §7.5.1), and the
        next refresh without it reports them."""
        acct = self.account
        engine, name, since = acct.engine, self.name, self.highestmodseq

        def look() -> Any:
            # One pool job when nothing waits in new/ (the usual case: a refresh after every command)
            return None if engine.needs_sync(name) else engine.changes_since(name, since)

        got = await acct._run(look)
        if got is None:
            await acct._sync_if_needed(name)
            got = await acct._run(engine.changes_since, name, since)
        info, changed, gone, _, _ = got
        if info.uidvalidity != self.uidvalidity or info.id != self.id:
            raise StoreError(f"{self.name}: UIDVALIDITY changed (mailbox replaced)")
        expunged = sorted(u for u in gone if self.by_uid(u) is not None)
        if hold_expunged:
            if expunged:
                self.held = sorted(set(self.held).union(expunged))
            expunged = []
        elif self.held:
            expunged = sorted(set(expunged).union(self.held))
            self.held = []
        if expunged:
            dead = set(expunged)
            self.messages = [m for m in self.messages if m.uid not in dead]
            self._uids = [m.uid for m in self.messages]
        added: list[MessageInfo] = []
        flags: list[MessageInfo] = []
        top = self._uids[-1] if self._uids else 0
        for m in changed:
            if m.uid > top:
                added.append(m)
                continue
            i = bisect.bisect_left(self._uids, m.uid)
            if i < len(self._uids) and self._uids[i] == m.uid:
                if self.messages[i] != m:
                    self.messages[i] = m
                    flags.append(m)
        if added:
            added.sort(key=lambda m: m.uid)
            self.messages.extend(added)
            self._uids.extend(m.uid for m in added)
        self.uidnext = max(self.uidnext, info.uidnext)
        self.highestmodseq = max(self.highestmodseq, info.highestmodseq)
        return Changes(added, expunged, flags, self.uidnext, self.highestmodseq)


def _folder_of(root: str, mailbox: str) -> str | None:
    """The directory ``mailbox`` has when mailsrv made it (maildir.folder_dir); None for a bad name."""
    try:
        d = maildir.folder_dir(mailbox)
    except maildir.NameError_:
        return None
    return os.path.join(root, d) if d else root


def _write_fsync(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
