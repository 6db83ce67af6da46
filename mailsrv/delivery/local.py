"""Local delivery: who a recipient is (directory), whether it may receive (policy, quota), and durable copies (store).

Groups are expanded at delivery time from the directory's streaming
``expand`` in batches, so a 5000-member group becomes 5000 hard links of one
spool file, never 5000 copies in memory; every account gets one copy per
message however many of its addresses (aliases, groups) were recipients.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from mailsrv import log
from mailsrv.directory import Account, Kind, Resolution
from mailsrv.store import DeliveryResult, DeliveryTarget, MailboxExists, QuotaLimits, account_root
from mailsrv.store.store import CLOSING

if TYPE_CHECKING:
    from mailsrv.delivery.archive import ArchivePlan

logger = log.get("delivery")

#: Targets handed to one ``store.deliver`` call (bounds memory for huge groups).
DELIVERY_BATCH = 256
#: folders :meth:`LocalDelivery.ensure_folder` remembers as existing (per worker)
FOLDERS_KNOWN = 10_000
#: Seconds a recipient's resolution (kind, account, quota and policy flags) is reused at RCPT
#: time; dropped at once when the directory's change stamp moves (any commit, by any process).
RESOLVE_TTL = 1.0
#: Resolutions kept (a busy MX sees a few thousand distinct recipients a second at most).
RESOLVE_CACHE = 4096
#: Seconds between two looks at the directory's change stamp (two stats on the event loop, which
#: release the GIL to busy pool threads): a directory change is seen within this time.
STAMP_INTERVAL = 0.005


class RcptCheck(NamedTuple):
    """The decision at RCPT time: an SMTP reply plus what to do with the recipient later (a named tuple:
    one is made per RCPT, and a frozen dataclass costs ~3x the instructions to make)."""

    code: int
    enh: str
    text: str
    kind: str = ""  # "local" | "group" | "outside"
    resolution: Resolution | None = None


@dataclass
class LocalOutcome:
    delivered: int = 0  # accounts that got a durable copy
    retry: list[str] = field(default_factory=list)  # addresses to retry later (tempfail, over quota)
    outside: list[str] = field(default_factory=list)  # outside members of expanded groups
    #: (archive address, folder) of each archive copy that failed (docs/archive.md)
    archive_retry: list[tuple[str, str]] = field(default_factory=list)
    #: the archive copies' own file (envelope block first) when one of them failed: the retry queues
    #: it, then the caller removes it (None: the copies were links of the message's spool)
    archive_spool: Path | None = None
    #: a copy of the message's own spool file is durable (its file exists: the queue may link it)
    spool_linked: bool = False
    #: ``deliver(consume=True)``: the store's job ran and left no file at the spool's path (the caller
    #: has nothing to remove)
    spool_consumed: bool = False
    #: docs/sieve.md: redirects (mailsrv.delivery.sieve.RedirectOrder) and vacation replies (ReplyOrder)
    #: of the recipients' scripts, for the caller to queue before it acknowledges the message
    redirects: list[Any] = field(default_factory=list)
    replies: list[Any] = field(default_factory=list)
    #: (recipient, reason) of each recipient whose script refused the message (RFC 5429 reject)
    rejects: list[tuple[str, str]] = field(default_factory=list)
    #: (recipient, account, folder) of each durable copy (archive copies aside), and the message's Sieve
    #: pass: mailsrv.delivery.sieve.remember records them when the caller answers 451 after all
    made: list[tuple[str, Account, str]] = field(default_factory=list)
    filtering: Any = None


#: An archive copy of a message up to this size is made in memory (block + bytes, one store job);
#: a larger one is streamed from the spool into its file (no second full copy in memory).
ARCHIVE_IN_MEMORY = 1 << 20
ARCHIVE_SUFFIX = ".archive"


def with_envelope(data: bytes, block: bytes) -> bytes:
    """``data`` with the archive envelope ``block`` after its Return-Path line (the first line, which
    the queue strips before relaying a retried copy), or first when it has none."""
    n = _trace_end(data)
    return data[:n] + block + data[n:]


def _trace_end(head: bytes) -> int:
    if head[:12].lower() == b"return-path:":
        nl = head.find(b"\n")
        return nl + 1 if nl >= 0 else 0
    return 0


def _write_archive(path: Path, spool: Path, data: bytes | None, block: bytes) -> None:
    """Write and fsync the archive file of a large message: streamed from ``data`` (memoryview slices,
    no copy) or from the ``spool`` file in 1 MiB pieces."""
    with open(path, "wb") as f:
        if data is not None:
            n = _trace_end(data[:4096])
            mv = memoryview(data)
            f.write(mv[:n])
            f.write(block)
            f.write(mv[n:])
        else:
            with open(spool, "rb") as src:
                first = src.readline(4096)
                n = _trace_end(first)
                f.write(first[:n])
                f.write(block)
                f.write(first[n:])
                shutil.copyfileobj(src, f, 1 << 20)
        f.flush()
        os.fsync(f.fileno())


def _keep_archive(path: Path, spool: Path, data: bytes | None, block: bytes) -> None:
    """The archive file for its retry, when the failed delivery left none (an error is the retry's to log)."""
    if not path.exists():
        with contextlib.suppress(OSError):
            _write_archive(path, spool, data, block)


def unlink_quiet(path: Path) -> None:
    with contextlib.suppress(OSError):  # a leftover is removed by the spool's clean at the next start
        path.unlink()


def limits_of(acct: Account) -> QuotaLimits:
    return QuotaLimits(storage=acct.quota_bytes, messages=acct.quota_messages)


class ResolveCache:
    """``directory.resolve`` answers reused for RESOLVE_TTL seconds while the directory's
    ``change_stamp()`` stays the same (looked at every STAMP_INTERVAL seconds at most): one
    RCPT costs no directory query when the same recipients come again (a burst of mail to
    one organisation). A directory without ``change_stamp`` is asked every time."""

    def __init__(self, directory: Any, ttl: float = RESOLVE_TTL, size: int = RESOLVE_CACHE,
                 stamp_interval: float = STAMP_INTERVAL) -> None:
        self.directory = directory
        self.ttl = ttl
        self.size = size
        self.stamp_interval = stamp_interval
        self._stamp_of: Callable[[], object] | None = getattr(directory, "change_stamp", None)
        self._stamp: object = None
        self._stamp_at = float("-inf")
        self._gen = 0  # bumped whenever the entries are dropped
        self._entries: dict[str, tuple[float, Resolution]] = {}
        #: answers served from the cache, and queries made (for tests and the bench)
        self.hits = 0
        self.misses = 0

    async def resolve(self, address: str) -> Resolution:
        if self._stamp_of is None:
            return await self.directory.resolve(address)
        now = time.monotonic()  # not the loop's time: get_running_loop costs a getpid(2) on Python 3.11
        if now - self._stamp_at >= self.stamp_interval:
            self._stamp_at = now
            stamp = self._stamp_of()
            if stamp != self._stamp:
                self._drop()
                self._stamp = stamp
        hit = self._entries.get(address)
        if hit is not None and now - hit[0] < self.ttl:
            self.hits += 1
            return hit[1]
        self.misses += 1
        gen = self._gen
        res: Resolution = await self.directory.resolve(address)
        if len(self._entries) >= self.size:
            self._drop()
        if self._gen == gen:  # no change seen while we asked
            self._entries[address] = (now, res)
        return res

    def _drop(self) -> None:
        self._entries.clear()
        self._gen += 1


class LocalDelivery:
    """Per-worker; ``directory`` is a mailsrv.directory.Directory, ``store`` a mailsrv.store.Store."""

    def __init__(self, directory: Any, store: Any, data_dir: Path) -> None:
        self.directory = directory
        self.store = store
        self.data_dir = data_dir
        self.resolver = ResolveCache(directory)
        self._folders: set[tuple[int, str]] = set()  # (account id, folder) known to exist: ensure_folder
        #: mailsrv.delivery.sieve.SieveFilter: the recipients' Sieve scripts (set by a caller that
        #: queues LocalOutcome.redirects and .replies; None: no filtering)
        self.sieve: Any = None

    async def ensure_folder(self, acct: Account, folder: str, event: str) -> None:
        """Create ``acct``'s ``folder`` unless it exists (archive rules, Sieve fileinto), logged as
        ``event``; looked at once per worker (a bounded set of folders known to exist: one deleted
        later gets its copies in INBOX, the store's fallback). A folder made here starts with its
        parent's ACL entries, as after IMAP CREATE (docs/shared-mailboxes.md)."""
        if folder == "INBOX" or (acct.id, folder) in self._folders:
            return
        sacct = await self.store_account(acct)
        if folder not in {m.name for m in await sacct.list_mailboxes()}:
            with contextlib.suppress(MailboxExists):  # another worker made it meanwhile
                await sacct.create_mailbox(folder)
                logger.info(event, account=acct.address, folder=folder)
                await self._acl_follows(acct, folder)
        if len(self._folders) >= FOLDERS_KNOWN:
            self._folders.clear()
        self._folders.add((acct.id, folder))

    async def _acl_follows(self, acct: Account, folder: str) -> None:
        """The new ``folder`` gets a copy of its parent's ACL entries (the directory's
        ``folder_changed``, which IMAP and JMAP call too). A failure is logged: the folder is made."""
        try:
            await self.directory.run(lambda d: d.folder_changed(acct.id, "create", folder, folder.rpartition("/")[0]))
        except Exception as exc:
            logger.warning("delivery.acl_follow_failed", account=acct.address, folder=folder,
                           error=type(exc).__name__)

    async def store_account(self, acct: Account) -> Any:
        """The store's account of ``acct`` (opened if needed, in its current domain's quota root). A caller on a
        message's path tries ``self.store.account_now(str(acct.id), acct.domain)`` first (no coroutine)."""
        aid = str(acct.id)
        # an open account ignores the path: derive it only to open one
        root = None if self.store.cached_account(aid) is not None else account_root(self.data_dir, acct.id, acct.store)
        return await self.store.account(aid, root, domain=acct.domain)

    async def check(self, address: str, *, sender: str, size: int, authenticated: Account | None,
                    may_relay: bool, own_quota: bool = True) -> RcptCheck:
        """RCPT-time checks (issue 5): unknown 550 5.1.1, relay 554 5.7.1, outside policy 550 5.7.1,
        group posting 550 5.7.1, quota 452 4.2.2 / 552 5.2.2. ``own_quota=False``: the account's own
        quota is not checked, its domain's is (a retried archive copy: docs/archive.md)."""
        res = await self.resolver.resolve(address)
        if res.kind == Kind.OUTSIDE:
            if authenticated is None and not may_relay:
                # RFC 5321 §3.6.2 / RFC 2505: no open relay
                return RcptCheck(554, "5.7.1", f"<{address}>: Relay access denied")
            if authenticated is not None and not authenticated.may_send_outside:
                return RcptCheck(550, "5.7.1", f"<{address}>: You may not send mail outside the organisation")
            return RcptCheck(250, "2.1.5", "Recipient OK", "outside", res)
        if res.kind == Kind.UNKNOWN:
            return RcptCheck(550, "5.1.1", f"<{address}>: Recipient address rejected: User unknown")
        if res.kind == Kind.DISABLED:
            return RcptCheck(550, "5.2.1", f"<{address}>: Mailbox disabled")
        if res.kind == Kind.GROUP:
            assert res.group is not None
            poster = authenticated.address if authenticated is not None and sender else sender
            if not await self.directory.may_post(res.group, poster):
                return RcptCheck(550, "5.7.1", f"<{address}>: You may not post to this group")
            return RcptCheck(250, "2.1.5", "Recipient OK", "group", res)
        acct = res.account
        assert acct is not None
        if not own_quota:
            acct = replace(acct, quota_bytes=None, quota_messages=None)
        # RFC 9208: the domain's quota root (no coroutine while the store holds its limits)
        dlimits = self.store.domain_limits_now(acct.domain) or await self.store.domain_limits(acct.domain)
        if (acct.quota_bytes is not None or acct.quota_messages is not None
                or dlimits.storage is not None or dlimits.messages is not None):
            limits = limits_of(acct)
            if any(lim.storage is not None and size > lim.storage for lim in (limits, dlimits)):
                return RcptCheck(552, "5.2.2", f"<{address}>: Message exceeds the mailbox quota")
            sacct = self.store.account_now(str(acct.id), acct.domain) or await self.store_account(acct)
            if await sacct.quota_check(size, limits, dlimits) == "over_quota":
                # RFC 5321 §4.5.3.1.10 / RFC 3463 4.2.2: mailbox full, may clear later
                return RcptCheck(452, "4.2.2", f"<{address}>: Mailbox full")
        return RcptCheck(250, "2.1.5", "Recipient OK", "local", res)

    @staticmethod
    async def _filtered(sieve: Any, batch: list[tuple[str, Account, str]], sflags: dict[tuple[str, str], frozenset[str]],
                        address: str, acct: Account, mailbox: str, out: LocalOutcome) -> None:
        """docs/sieve.md: the account's copies as its script decides (none: discarded)."""
        copies = await sieve.apply(address, acct, mailbox, out)
        for box, fl in copies:
            if fl:
                sflags[(address, box)] = fl
            # an edited header (editheader): the copy goes into its own file's batch, delivered later
            sieve.own_batch(address, batch, box).append((address, acct, box))

    async def deliver(self, spool: Path, recipients: Sequence[tuple[str, Resolution]], *,
                      mailbox: str = "INBOX", data: bytes | None = None,
                      archive: ArchivePlan | None = None, consume: bool = False,
                      sender: str | None = None,
                      durable: Callable[[Sequence[DeliveryResult], OSError | None], object] | None = None
                      ) -> LocalOutcome:
        """Deliver the durable ``spool`` to every local recipient; returns when every copy is durable.

        ``recipients`` are (address, resolution) of kind local or group. Groups
        are expanded now, to their current members. ``data``: the spool's bytes when the
        caller holds them (the store then does not read the file back; see Store.deliver).
        ``archive``: the message's archive copies join the last store call (counted in ``delivered``;
        a failed one is in ``archive_retry``, not ``retry``).
        ``consume``: the caller has no further use for the file at ``spool`` (a sealed spool: ``data``
        is the message): the last store call moves it into a mailbox instead of linking it, or removes
        it (``Store.deliver(consume=True)``); ``spool_consumed`` says when no file is left.
        ``sender``: the envelope sender, given by a caller that queues ``redirects`` and ``replies``:
        then each account's active Sieve script (``self.sieve``) decides its copies (docs/sieve.md); the
        caller then calls mailsrv.delivery.sieve.commit when its reply is final, or remember before a 451.
        ``durable``: handed to the store call (``Store.deliver(durable=)``) only when it is the message's
        one store call with one target and nothing of its outcome can come from a script (one local
        recipient, no archive copy, its Sieve the plain keep): a caller's reply that depends only on
        that call's results (mailsrv.smtp.early); else dropped (never called).
        """
        sieve = self.sieve.begin(self, spool, data, sender) if self.sieve is not None and sender is not None else None
        out = LocalOutcome(filtering=sieve)
        if archive is not None or len(recipients) != 1:
            durable = None
        sflags: dict[tuple[str, str], frozenset[str]] = {}  # (address, folder) -> flags the script set
        seen: set[int] = set()
        seen_outside: set[str] = set()
        batch: list[tuple[str, Account, str]] = []

        async def flush(batch: list[tuple[str, Account, str]], spool_path: Path, data: bytes | None,
                        flags: dict[str, frozenset[str]], consume: bool = False,
                        durable: Callable[[Sequence[DeliveryResult], OSError | None], object] | None = None
                        ) -> None:
            if not batch:
                return
            if len(batch) == 1:  # most mail: no task, no comprehension's coroutine, no coroutine for an open
                _, a, box = batch[0]  # account or its domain's held limits
                sacct = self.store.account_now(str(a.id), a.domain) or await self.store_account(a)
                dlimits1 = self.store.domain_limits_now(a.domain) or await self.store.domain_limits(a.domain)
                targets = [DeliveryTarget(sacct, mailbox=box, limits=limits_of(a), domain_limits=dlimits1)]
            else:
                # Opening an account may create its maildir: open the batch concurrently (store I/O pool)
                saccts = await asyncio.gather(*(self.store_account(a) for _, a, _ in batch))
                dlimits = {d: await self.store.domain_limits(d) for d in {a.domain for _, a, _ in batch}}
                targets = [DeliveryTarget(sa, mailbox=box, limits=limits_of(a), domain_limits=dlimits[a.domain])
                           for (_, a, box), sa in zip(batch, saccts, strict=True)]
            if flags:
                targets = [replace(t, flags=flags[addr]) if addr in flags else t
                           for (addr, _, _), t in zip(batch, targets, strict=True)]
            if sflags:
                targets = [replace(t, flags=sflags.get((addr, box), t.flags))
                           for (addr, _, box), t in zip(batch, targets, strict=True)]
            # durable in new/ is enough to acknowledge; the UIDs come from the store's indexer
            results = await self.store.deliver(spool_path, targets, uids=False, data=data, consume=consume,
                                               durable=durable)
            if consume:  # the job ran unless the store was closing
                out.spool_consumed = not any(r.error == CLOSING for r in results)
            for (addr, acct, box), res in zip(batch, results, strict=True):
                if res.status == "ok":
                    out.delivered += 1
                    if addr not in flags:
                        out.made.append((addr, acct, box))
                    out.spool_linked |= spool_path is spool and not consume  # is: Path == costs ~3 us
                    continue
                logger.warning("delivery.failed", rcpt=addr, status=res.status, error=res.error or "")
                if addr in flags:
                    out.archive_retry.append((addr, box))
                elif addr not in out.retry:  # one retry per address (a script's copies may be several)
                    out.retry.append(addr)
            if sieve is not None and sieve.ledgers:  # docs/sieve.md "Retries": a retried recipient's copies
                await sieve.settle([(addr, box, res.status == "ok") for (addr, _, box), res
                                    in zip(batch, results, strict=True) if addr not in flags])
            batch.clear()

        for address, res in recipients:
            if res.kind == Kind.GROUP:
                assert res.group is not None
                durable = None  # its members: many copies, outside ones queued
                async for member in self.directory.expand(res.group):
                    if member.account is None:
                        if member.address not in seen_outside:
                            seen_outside.add(member.address)
                            out.outside.append(member.address)
                        continue
                    if member.account.id in seen:
                        continue
                    seen.add(member.account.id)
                    if archive is not None:
                        archive.saw(member.account)
                    if sieve is None:
                        batch.append((member.account.address, member.account, mailbox))
                    elif sieve.kept(member.account):  # the keep, without apply's coroutines
                        sieve.own_batch(member.account.address, batch, mailbox).append(
                            (member.account.address, member.account, mailbox))
                    else:
                        await self._filtered(sieve, batch, sflags, member.account.address, member.account,
                                             mailbox, out)
                    if len(batch) >= DELIVERY_BATCH:
                        await flush(batch, spool, data, {})
                continue
            acct = res.account
            if acct is None or acct.id in seen:
                continue
            seen.add(acct.id)
            if archive is not None:
                archive.saw(acct)
            if sieve is None:
                batch.append((address, acct, mailbox))
            elif sieve.kept(acct):  # the keep, without apply's coroutines
                sieve.own_batch(address, batch, mailbox).append((address, acct, mailbox))
            else:
                durable = None  # the script's copies, redirects, reject: the caller's reply depends on them
                await self._filtered(sieve, batch, sflags, address, acct, mailbox, out)
            if len(batch) >= DELIVERY_BATCH:
                await flush(batch, spool, data, {})
        if sieve is not None and sieve.own:  # docs/sieve.md editheader: each edited copy from its own file
            await sieve.flush_own(flush, out)
        if archive is None:
            await flush(batch, spool, data, {}, consume,
                        durable if len(batch) == 1 and (sieve is None or not sieve.own) else None)
            return out
        archived: dict[str, frozenset[str]] = {}  # archive copies' addresses -> their flags
        copies: list[tuple[str, Account, str]] = []
        for addr, acct, folder, flags in await archive.targets(self):
            archived[addr] = flags
            copies.append((addr, acct, folder))
        if not archive.envelope or not copies:  # the message's own file (a retried copy has its block)
            await flush(batch + copies, spool, data, archived)
            return out
        # docs/archive.md: the archive copies are a second file that starts with the envelope block,
        # delivered concurrently with the last recipients' copies (one group-commit round)
        apath = spool.with_name(spool.name + ARCHIVE_SUFFIX)
        adata = None
        if data is not None and len(data) <= ARCHIVE_IN_MEMORY:
            adata = with_envelope(data, archive.envelope)
        else:  # a large message: streamed into the file, no second copy in memory
            await asyncio.get_running_loop().run_in_executor(None, _write_archive, apath, spool, data,
                                                             archive.envelope)
        try:
            await asyncio.gather(flush(batch, spool, data, {}), flush(copies, apath, adata, archived))
        finally:
            if out.archive_retry:
                out.archive_spool = apath  # the retry queues this file (its block included); caller unlinks
            else:  # its copies are links of it now: removed off the reply's path
                asyncio.get_running_loop().run_in_executor(None, unlink_quiet, apath)
        if out.archive_spool is not None:  # a copy that failed before its file was written (closing store,
            # failed write): the retry needs the file, written here (fsync'd) before the caller queues it
            await asyncio.get_running_loop().run_in_executor(None, _keep_archive, apath, spool, data,
                                                             archive.envelope)
        return out
