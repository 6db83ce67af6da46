"""What a POP3 session sees of the store and the directory: small interfaces, and their store-backed form.

The session drives only the protocols below (:class:`Maildrops`,
:class:`Maildrop`, :class:`Authenticator`), so tests can run it against an
in-memory fake. :class:`StoreMaildrops` is the real thing: it takes the
cross-process lock (:mod:`mailsrv.pop3.lock`), opens the account's INBOX in
the store (docs/store-api.md) and snapshots it — the maildrop is INBOX at the
time of login (RFC 1939 §4).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mailsrv import log
from mailsrv.pop3.grammar import SizeCounter
from mailsrv.pop3.lock import InUse, MaildropLock

__all__ = [
    "Authenticator", "DropMessage", "InUse", "Maildrop", "MaildropUnavailable", "Maildrops",
    "MessageGone", "StoreMaildrop", "StoreMaildrops", "dovecot_uidl",
]

logger = log.get("pop3")

#: bytes read from the store per call while a message is streamed
READ_CHUNK = 256 * 1024


class MaildropUnavailable(Exception):
    """The store cannot open the maildrop now (``-ERR [SYS/TEMP]``)."""


class MessageGone(Exception):
    """The message was expunged by another session (IMAP, JMAP) after login."""


@dataclass(frozen=True, slots=True)
class DropMessage:
    uid: int
    size: int  #: octets RETR sends, CRLF line ends, before byte-stuffing
    uidl: str  #: RFC 1939 §7 unique-id: 1..70 characters 0x21..0x7E, stable across sessions
    #: the file is CRLF throughout and ends in one (its counted wire size equals its length): RETR need not
    #: look for bare LF (grammar.BodyEncoder's ``crlf``)
    crlf: bool = False
    #: flagged \Seen at login: RETR need not mark it (Dovecot checks the flag the same way)
    seen: bool = False


class Maildrop(Protocol):
    """One logged-in session's maildrop; the session holds the in-use lock until :meth:`close`."""

    messages: Sequence[DropMessage]
    #: when the previous successful login to this maildrop happened (LOGIN-DELAY), None if unknown
    last_login: float | None

    async def record_login(self) -> None:
        """Remember now as the time of the last successful login."""

    async def read(self, uid: int, offset: int, length: int) -> bytes:
        """Up to ``length`` raw octets of the message from ``offset`` (b"" at its end).

        Raises :class:`MessageGone`, :class:`MaildropUnavailable`."""

    async def read_first(self, uids: Sequence[int], length: int) -> dict[int, bytes]:
        """The first ``length`` octets of each of ``uids`` at once (read-ahead: one store round trip).

        Messages gone or unreadable are left out (a later :meth:`read` says why); raises nothing
        but :class:`MaildropUnavailable`."""

    async def expunge(self, uids: Sequence[int]) -> None:
        """Remove the messages for good (UPDATE state); others see them expunged. MaildropUnavailable."""

    async def note_retrieved(self, uids: Sequence[int]) -> None:
        """EXPIRE with days (RFC 2449 §6.7): remember the first retrieval of ``uids`` (at QUIT)."""

    async def mark_seen(self, uids: Sequence[int]) -> None:
        """Add \\Seen to ``uids`` (those sent by RETR); others (IMAP IDLE, JMAP push) see the change.
        Messages expunged meanwhile are skipped. MaildropUnavailable."""

    async def close(self) -> None:
        """Release the lock; deletes nothing. Idempotent."""


class Maildrops(Protocol):
    async def open(self, account: Any) -> Maildrop:
        """Lock and snapshot ``account``'s INBOX. Raises :class:`InUse`, :class:`MaildropUnavailable`."""


class Authenticator(Protocol):
    """The part of ``mailsrv.auth.Authenticator`` (docs/directory-api.md) that POP3 uses."""

    def plaintext_allowed(self, *, tls: bool, client_ip: str) -> bool: ...

    def mechanisms(self, *, tls: bool, client_ip: str, channel_binding: bool) -> list[str]: ...

    async def login(self, username: str, password: str, *, protocol: str, client_ip: str,
                    tls: bool) -> Any: ...

    def sasl(self, mechanism: str, *, protocol: str, client_ip: str, tls: bool,
             channel_binding: Any) -> Any: ...


def dovecot_uidl(uid: int, uidvalidity: int) -> str:
    """Dovecot's default ``pop3_uidl_format = %08Xu%08Xv``: a mailbox adopted from Dovecot
    keeps its UIDs and UIDVALIDITY, so clients see the same UIDLs after the migration.

    Dovecot's ``%X`` prints lower-case hex (checked against dovecot-pop3d in
    tests/pop3/test_dovecot_uidl.py); a client compares UIDLs as strings.
    """
    return f"{uid:08x}{uidvalidity:08x}"


#: Dovecot maildir names carry the CRLF size of the file as ",W=<vsize>".
_VSIZE = re.compile(r",W=(\d+)")


class SizeCache:
    """CRLF sizes of message files by (account, file key), bounded; one per worker.

    The store keeps messages as they arrived (bare LF from some programs) and
    reports the file size; POP3 must announce the size RETR sends (CRLF), so a
    file without a Dovecot ``W=`` size is read once and counted. Maildir file
    keys are unique and their content never changes, so entries never go stale.
    """

    def __init__(self, limit: int = 200_000) -> None:
        self.limit = limit
        self._sizes: dict[tuple[str, str], int] = {}

    def get(self, account_id: str, key: str) -> int | None:
        return self._sizes.get((account_id, key))

    def put(self, account_id: str, key: str, size: int) -> None:
        if len(self._sizes) >= self.limit:
            for old in list(self._sizes)[: self.limit // 10]:  # oldest tenth
                del self._sizes[old]
        self._sizes[(account_id, key)] = size


class StoreMaildrop:
    """INBOX of one account, as a snapshot taken at login, with the lock held."""

    def __init__(self, account: Any, uidvalidity: int, messages: list[DropMessage], lock: MaildropLock,
                 last_login: float | None, retrieved: dict[tuple[int, int], float] | None = None,
                 clock: Callable[[], float] = time.time, mailbox_id: str = "") -> None:
        self._account = account
        self._mailbox_id = mailbox_id  # INBOX's id, for read_first (store read_messages)
        self._lock = lock
        self.uidvalidity = uidvalidity
        self.messages = messages
        self.last_login = last_login
        self._retrieved = retrieved  # None: EXPIRE days not configured
        self._clock = clock

    async def note_retrieved(self, uids: Sequence[int]) -> None:
        if self._retrieved is None:
            return
        now = self._clock()
        live = {m.uid for m in self.messages}
        entries = {k: v for k, v in self._retrieved.items() if k[0] == self.uidvalidity and k[1] in live}
        for uid in uids:
            entries.setdefault((self.uidvalidity, uid), now)
        if entries != self._retrieved:
            self._retrieved = entries
            await asyncio.get_running_loop().run_in_executor(None, self._lock.save_retrieved, entries)

    async def record_login(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._lock.record_login)

    async def read(self, uid: int, offset: int, length: int) -> bytes:
        from mailsrv.store import MessageGone as StoreGone
        from mailsrv.store import StoreError

        try:
            data: bytes = await self._account.read_message("INBOX", uid, offset, length)
        except StoreGone:
            raise MessageGone(uid) from None
        except StoreError as exc:  # TemporaryFailure: EIO, EACCES
            raise MaildropUnavailable(str(exc)) from exc
        return data

    async def read_first(self, uids: Sequence[int], length: int) -> dict[int, bytes]:
        from mailsrv.store import StoreError

        if not self._mailbox_id:
            return {}
        try:
            whole = await self._account.read_messages(self._mailbox_id, uids)
        except StoreError as exc:
            raise MaildropUnavailable(str(exc)) from exc
        return {uid: data[:length] for uid, data in whole.items()}

    async def expunge(self, uids: Sequence[int]) -> None:
        from mailsrv.store import StoreError

        if not uids:
            return
        try:
            # docs/store-api.md: only_deleted=False removes the uids whatever their flags (POP3 DELE).
            await self._account.expunge("INBOX", list(uids), only_deleted=False)
        except StoreError as exc:
            raise MaildropUnavailable(str(exc)) from exc

    async def mark_seen(self, uids: Sequence[int]) -> None:
        from mailsrv.store import StoreError

        if not uids:
            return
        try:
            await self._account.store_flags("INBOX", list(uids), frozenset({"\\Seen"}), "add")
        except StoreError as exc:
            raise MaildropUnavailable(str(exc)) from exc

    async def close(self) -> None:
        self._lock.release()


#: concurrent message reads while sizes are counted at login
SIZE_SCAN_CONCURRENCY = 8
#: messages whose size is counted at login are read this many per store round trip, and at most
#: SIZE_BATCH_BYTES of them (SIZE_SCAN_CONCURRENCY batches at a time); larger ones piecewise. A batch
#: holds no more than one piecewise read (READ_CHUNK): a login holds at most
#: SIZE_SCAN_CONCURRENCY * READ_CHUNK bytes of messages (2 MiB), however they are read
SIZE_BATCH = 64
SIZE_BATCH_BYTES = READ_CHUNK


class StoreMaildrops:
    """Opens maildrops in the worker's store; one per worker (``resources["pop3.maildrops"]``)."""

    def __init__(self, store: Any, data_dir: Path, lock_dir: Path | None = None, *,
                 expire_days: int | None = None, clock: Callable[[], float] = time.time,
                 drop_recent: bool = False) -> None:
        self.store = store
        self.data_dir = data_dir
        self.lock_dir = lock_dir if lock_dir is not None else data_dir / "locks" / "pop3"
        self.sizes = SizeCache()
        #: RFC 2449 §6.7 EXPIRE n > 0: messages are removed n days after their first retrieval
        self.expire_days = expire_days if expire_days else None
        self.clock = clock
        #: Dovecot's POP3 without pop3_no_flag_updates opens INBOX with MAILBOX_FLAG_DROP_RECENT: the
        #: snapshot's messages are \Recent to no IMAP session after the login
        self.drop_recent = drop_recent

    async def open(self, account: Any) -> StoreMaildrop:
        """Raises :class:`InUse` (another session holds it) or :class:`MaildropUnavailable`."""
        from mailsrv.store import StoreError, account_root

        loop = asyncio.get_running_loop()
        lock = await loop.run_in_executor(None, MaildropLock.acquire, self.lock_dir, str(account.id))
        try:
            last_login = await loop.run_in_executor(None, lock.last_login)
            maildir = account_root(self.data_dir, account.id, getattr(account, "store", None))
            acct = await self.store.account(str(account.id), maildir)
            view = await acct.open_mailbox("INBOX")
            retrieved = None
            if self.expire_days is not None:
                retrieved = await loop.run_in_executor(None, lock.retrieved)
                if await self._expire(acct, view, retrieved):
                    view = await acct.open_mailbox("INBOX")
            messages = await self._messages(acct, str(account.id), view)
            if self.drop_recent and messages:
                await acct.claim_recent("INBOX", max(m.uid for m in messages) + 1)
            return StoreMaildrop(acct, view.uidvalidity, messages, lock, last_login, retrieved, self.clock,
                                 mailbox_id=view.id)
        except StoreError as exc:
            lock.release()
            raise MaildropUnavailable(str(exc)) from exc
        except BaseException:
            lock.release()
            raise

    async def _expire(self, acct: Any, view: Any, retrieved: dict[tuple[int, int], float]) -> list[int]:
        """Remove messages first retrieved more than ``expire_days`` ago (before the snapshot)."""
        assert self.expire_days is not None
        limit = self.clock() - self.expire_days * 86400
        old = [m.uid for m in view.messages
               if retrieved.get((view.uidvalidity, m.uid), limit + 1) <= limit]
        if old:
            # docs/store-api.md: only_deleted=False, the POP3 way (IMAP sees expunges)
            await acct.expunge("INBOX", old, only_deleted=False)
            logger.info("expire", messages=len(old), days=self.expire_days)
        return old

    async def _messages(self, acct: Any, account_id: str, view: Any) -> list[DropMessage]:
        from mailsrv.store import MessageGone as StoreGone

        sizes: dict[int, int] = {}
        #: uids whose size another program wrote into the file name (Dovecot's W=): not counted by us
        named: set[int] = set()
        todo = []
        for m in view.messages:
            known = self.sizes.get(account_id, m.key)
            if known is None:
                vsize = _VSIZE.search(m.key)
                known = int(vsize.group(1)) if vsize else None
                if known is not None:
                    named.add(m.uid)
            if known is None:
                todo.append(m)
            else:
                sizes[m.uid] = known
        sem = asyncio.Semaphore(SIZE_SCAN_CONCURRENCY)

        async def count(m: Any) -> None:
            counter = SizeCounter()
            offset = 0
            async with sem:
                try:
                    while True:
                        chunk = await acct.read_message("INBOX", m.uid, offset, READ_CHUNK)
                        counter.feed(chunk)
                        offset += len(chunk)
                        if len(chunk) < READ_CHUNK:
                            break
                except StoreGone:
                    return  # expunged meanwhile: not part of this maildrop
            sizes[m.uid] = counter.total()
            self.sizes.put(account_id, m.key, sizes[m.uid])

        async def count_batch(batch: list[Any]) -> None:
            async with sem:
                whole = await acct.read_messages(view.id, [m.uid for m in batch])
            missed = []
            for m in batch:
                data = whole.get(m.uid)
                if data is None:  # gone or unreadable: the piecewise read says which
                    missed.append(m)
                    continue
                counter = SizeCounter()
                counter.feed(data)
                sizes[m.uid] = counter.total()
                self.sizes.put(account_id, m.key, sizes[m.uid])
            await asyncio.gather(*(count(m) for m in missed))

        batches: list[list[Any]] = []
        big = []
        room = 0
        for m in todo:
            if m.size > SIZE_BATCH_BYTES:
                big.append(m)
                continue
            if not batches or len(batches[-1]) >= SIZE_BATCH or m.size > room:
                batches.append([])
                room = SIZE_BATCH_BYTES
            batches[-1].append(m)
            room -= m.size
        await asyncio.gather(*(count_batch(b) for b in batches), *(count(m) for m in big))
        # a size we counted that equals the file's length: no bare LF and a final CRLF (wire_size adds one
        # octet per bare LF and 1-2 for a missing end of line); a W= size is another program's word only
        return [DropMessage(m.uid, sizes[m.uid], dovecot_uidl(m.uid, view.uidvalidity),
                            sizes[m.uid] == m.size and m.uid not in named, "\\Seen" in m.flags)
                for m in view.messages if m.uid in sizes]
