"""The per-worker store: accounts by id, local delivery to many targets, observers, notification."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path

from mailsrv import log
from mailsrv._speedups import quota as quota_impl
from mailsrv.config import StoreConfig
from mailsrv.store import headers, notify
from mailsrv.store import maildir as md
from mailsrv.store.account import Account
from mailsrv.store.engine import Engine, Pending, new_id, parse_structure
from mailsrv.store.types import (
    DeliveryResult,
    DeliveryTarget,
    MailboxNotFound,
    StoreError,
    StoreObserver,
    TemporaryFailure,
)
from mailsrv.util import fsio

logger = log.get("store")


class Store:
    """One per worker process: ``Store(config.store, config.server.data_dir)``."""

    def __init__(self, config: StoreConfig | None = None, data_dir: Path | str = ".", *,
                 hostname: str = "") -> None:
        self.config = config or StoreConfig()
        self.data_dir = Path(data_dir)
        self.hostname = hostname or os.uname().nodename
        self.io = fsio.FileIO(self.config.io_threads, name="mailsrv-store")
        self.dirsync = fsio.DirSyncer(self.io, self.config.group_commit_delay)
        self._accounts: dict[str, Account] = {}
        self._opening: dict[str, asyncio.Future[Account]] = {}
        self._observers: list[StoreObserver] = []
        self._notifier: notify.Notifier | None = None

    # --- accounts -------------------------------------------------------------

    async def account(self, account_id: str, maildir: Path | None = None) -> Account:
        """The account (opened and created on first use). ``maildir`` comes from the directory."""
        acct = self._accounts.get(account_id)
        if acct is not None:
            return acct
        fut = self._opening.get(account_id)
        if fut is not None:
            return await asyncio.shield(fut)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._opening[account_id] = fut
        try:
            root = Path(maildir) if maildir is not None else self.data_dir / "mail" / account_id
            engine = Engine(account_id, root, max_parse_size=self.config.max_parse_size, hostname=self.hostname)
            acct = Account(self, account_id, root, engine)
            await acct._run(engine.open)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: a later waiter re-raises it
            raise
        finally:
            self._opening.pop(account_id, None)
        self._accounts[account_id] = acct
        fut.set_result(acct)
        return acct

    def add_observer(self, observer: StoreObserver) -> None:
        self._observers.append(observer)

    async def close(self) -> None:
        for acct in self._accounts.values():
            await self.io.run(acct.engine.close)
        self._accounts.clear()
        if self._notifier is not None:
            self._notifier.close()
            self._notifier = None
        await asyncio.get_running_loop().run_in_executor(None, self.io.shutdown)

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
                      internal_date: float | None = None) -> list[DeliveryResult]:
        """Deliver one spooled message to many (account, mailbox) targets; see docs/store-api.md.

        Returns when every ``ok`` copy is hard-linked into its ``new/`` and fsync'd.
        """
        spool_path = Path(spool_path)
        results: list[DeliveryResult | None] = [None] * len(targets)
        try:
            size, pend_proto = await self.io.run(self._prepare, spool_path, internal_date)
        except OSError as exc:
            logger.error("deliver.spool_unreadable", path=str(spool_path), error=str(exc))
            return [DeliveryResult(t, "tempfail", None, f"spool unreadable: {exc.strerror}") for t in targets]
        email_id = new_id("E")
        # 1. quota check and hard link into each target's new/ (one pool job per target)
        jobs = [self._link_one(spool_path, t, size, email_id, pend_proto) for t in targets]
        linked = await asyncio.gather(*jobs, return_exceptions=True)
        dirs: dict[str, list[int]] = {}
        keys: list[tuple[Account, str, str] | None] = [None] * len(targets)
        for i, (t, outcome) in enumerate(zip(targets, linked, strict=True)):
            if isinstance(outcome, BaseException):
                err = str(outcome)
                logger.error("deliver.failed", account=getattr(t.account, "id", "?"), error=err)
                results[i] = DeliveryResult(t, "tempfail", None, err)
            elif outcome[0] == "over_quota":
                results[i] = DeliveryResult(t, "over_quota", None, outcome[1])
            else:
                _, mailbox, key, newdir = outcome
                keys[i] = (t.account, mailbox, key)
                dirs.setdefault(newdir, []).append(i)
        # 2. group commit: fsync every new/ once for all concurrent deliveries
        syncs = await asyncio.gather(*(self.dirsync.sync(d) for d in dirs), return_exceptions=True)
        for d, sync_out in zip(dirs, syncs, strict=True):
            if isinstance(sync_out, BaseException):
                for i in dirs[d]:
                    logger.error("deliver.fsync_failed", dir=d, error=str(sync_out))
                    results[i] = DeliveryResult(targets[i], "tempfail", None, f"fsync: {sync_out}")
                    keys[i] = None
        # 3. index: assign UIDs (the message is already safe; an index problem only delays the UID)
        todo: dict[tuple[int, str], Account] = {}
        for k in keys:
            if k is not None:
                todo[(id(k[0]), k[1])] = k[0]
        for (_, mailbox), acct in todo.items():
            try:
                await acct.sync(mailbox)
            except StoreError as exc:
                logger.warning("deliver.index_deferred", account=acct.id, mailbox=mailbox, error=str(exc))
        for i, k in enumerate(keys):
            if k is None:
                continue
            acct, mailbox, key = k
            acct.engine.pending.pop(key, None)  # another process may have indexed it
            uid = None
            try:
                uid = await acct._run(acct.engine.uid_for_key, mailbox, key)
            except StoreError:
                pass
            results[i] = DeliveryResult(targets[i], "ok", uid, None)
        return [r for r in results if r is not None]

    def _prepare(self, spool: Path, internal_date: float | None) -> tuple[int, Pending]:
        fsio.fsync_file(spool)  # the caller wrote it; make sure the data itself is on disk
        if internal_date is not None:
            os.utime(spool, (internal_date, internal_date))
        size = os.stat(spool).st_size
        with open(spool, "rb") as fh:
            raw = fh.read(self.config.max_parse_size)
        return size, Pending(structure=parse_structure(raw), thread=headers.thread_headers(raw))

    async def _link_one(self, spool: Path, t: DeliveryTarget, size: int, email_id: str,
                        proto: Pending) -> tuple[str, ...]:
        acct: Account = t.account
        code = await acct._run(acct.engine.quota_check, size, 1, t.limits)
        if code != quota_impl.OK:
            return ("over_quota", "storage" if code == quota_impl.OVER_STORAGE else "messages")
        mailbox = t.mailbox
        try:
            folder = await acct._run(acct.engine.folder_path, mailbox)
        except (MailboxNotFound, StoreError):
            mailbox = "INBOX"
            folder = await acct._run(acct.engine.folder_path, mailbox)
        key = f"{fsio.unique_name(self.hostname)},S={size}"
        flags = frozenset(md.canonical_flag(f) for f in t.flags)
        name = md.filename(key, flags) if md.flags_to_info(flags) else key
        acct.engine.pending[key] = Pending(email_id, proto.structure, proto.thread)
        try:
            await acct._run(_link_or_copy, spool, folder / "new" / name)
        except BaseException:
            acct.engine.pending.pop(key, None)
            raise
        return ("ok", mailbox, key, str(folder / "new"))


def _link_or_copy(src: Path, dst: Path) -> None:
    import errno
    import shutil

    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        tmp = dst.parent.parent / "tmp" / dst.name
        shutil.copyfile(src, tmp)
        fsio.fsync_file(tmp)
        st = os.stat(src)
        os.utime(tmp, (st.st_atime, st.st_mtime))
        os.rename(tmp, dst)


__all__ = ["Store", "TemporaryFailure"]
