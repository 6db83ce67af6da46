"""A grantee's private ``\\Seen`` on an owner's shared mailboxes (``[imap] shared_private_seen``).

Dovecot's INDEXPVT, for ``\\Seen`` only: in a folder another user shares with them, a grantee sees
and sets their own ``\\Seen``; the owner's ``\\Seen`` (and every other grantee's) stays as it was.
The other flags and keywords stay the owner's, shared by everyone. Only where the grantee holds the
``s`` right (RFC 4314 §4): in a folder where they lack it (an ``lr`` auditor) they see the owner's
``\\Seen``, read-only for them, as without this feature (:attr:`PrivateSeenAccount.share`).

Storage: ``private-seen.db`` (SQLite, ``synchronous=FULL``: durable before the command's OK) in the
*grantee's* maildir root, one row per message the grantee ever marked (or seeded), keyed by (owner account id,
owner mailbox id, UIDVALIDITY, UID), so a renamed folder keeps it and a recreated one (new id or
UIDVALIDITY) starts afresh. The first time a grantee's view of a folder is opened (per UIDVALIDITY: a
marker row), their \\Seen there is seeded from the owner's \\Seen of then, in one transaction: an
upgrade or a new grant starts from what the owner has read, not from everything unread; later owner
reads do not reach it. The seeded rows have modseq 0 and counter 0 (no step): the view does not change
(what the grantee saw before, the owner's \\Seen) and the wrapped messages are the owner's objects; only
where the grantee has private rows already (written before seeding existed) are they one private write.
Every write touches the grantee's notify file: the grantee's other sessions (IDLE, a refresh) hear of it. While a grantee's view of an owner watches (IDLE, push) in a
process, that file is watched for the owner's account there, so the owner's sessions in that process
wake too and find nothing (one refresh each).

Modseqs (RFC 7162): a grantee's view of a mailbox counts the owner's changes and their own private
ones in one sequence. Each private write (one per STORE or FETCH) raises the mailbox's private
counter ``c`` by one and records the step ``(h, c)``, ``h`` being the owner's HIGHESTMODSEQ then.
The view's HIGHESTMODSEQ is ``owner's + c``; an owner's change of modseq ``M`` has the view modseq
``M + c(M)`` where ``c(M)`` is the counter of the last private write before it (the largest ``c`` of
a step with ``h < M``), and a private change has ``h + c``. Both are ``owner's + private``
HIGHESTMODSEQ at the moment of the change, so the combined sequence only grows and a modseq once
reported never moves (the owner's write between reading ``h`` and the private commit is the one race:
its view modseq may count this private change too, still unique and increasing).

Every function named ``_db_*`` blocks (SQLite): they run in the store's I/O pool.
"""

from __future__ import annotations

import bisect
import dataclasses
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mailsrv import log
from mailsrv.store.types import Changes, ChangesSince, MailboxInfo, MessageInfo

logger = log.get("store")

#: the file of a grantee's private \Seen, in the grantee's maildir root
PRIVATE_SEEN_DB = "private-seen.db"
SEEN = "\\Seen"
#: mailboxes whose private state one grantee's view of one owner keeps loaded
STATES = 64

_Key = tuple[str, str, int]  # owner account id, owner mailbox id, UIDVALIDITY


def _open(root: Path) -> sqlite3.Connection:
    db = sqlite3.connect(root / PRIVATE_SEEN_DB, timeout=10, isolation_level=None)
    db.execute("PRAGMA synchronous=FULL")  # a private \Seen is durable before the STORE's OK
    db.execute("CREATE TABLE IF NOT EXISTS seen (owner TEXT, mailbox TEXT, uidvalidity INTEGER, uid INTEGER, "
               "seen INTEGER, modseq INTEGER, counter INTEGER, PRIMARY KEY (owner, mailbox, uidvalidity, uid)) "
               "WITHOUT ROWID")
    db.execute("CREATE TABLE IF NOT EXISTS steps (owner TEXT, mailbox TEXT, uidvalidity INTEGER, h INTEGER, "
               "c INTEGER, PRIMARY KEY (owner, mailbox, uidvalidity, h)) WITHOUT ROWID")
    # the folders whose private \Seen was seeded from the owner's (module docstring)
    db.execute("CREATE TABLE IF NOT EXISTS seeded (owner TEXT, mailbox TEXT, uidvalidity INTEGER, "
               "PRIMARY KEY (owner, mailbox, uidvalidity)) WITHOUT ROWID")
    return db


@dataclasses.dataclass(slots=True)
class Delta:
    """What changed in one mailbox's private state after counter ``since``."""

    counter: int
    #: uid -> (seen, view modseq)
    rows: dict[int, tuple[bool, int]]
    #: (h, c), ascending
    steps: list[tuple[int, int]]
    #: the folder's private \\Seen was seeded from the owner's
    seeded: bool = False


def _db_load(root: Path, key: _Key, since: int) -> Delta:
    """The rows and steps written after private counter ``since`` (-1: all, the seeded rows too), read
    in one transaction. Blocks."""
    if not (root / PRIVATE_SEEN_DB).exists():
        return Delta(0, {}, [])
    db = _open(root)
    try:
        db.execute("BEGIN")
        steps = db.execute("SELECT h, c FROM steps WHERE owner=? AND mailbox=? AND uidvalidity=? AND c>? "
                           "ORDER BY h", (*key, since)).fetchall()
        rows = db.execute("SELECT uid, seen, modseq FROM seen WHERE owner=? AND mailbox=? AND uidvalidity=? "
                          "AND counter>?", (*key, since)).fetchall()
        top = db.execute("SELECT max(c) FROM steps WHERE owner=? AND mailbox=? AND uidvalidity=?", key).fetchone()
        seeded = db.execute("SELECT 1 FROM seeded WHERE owner=? AND mailbox=? AND uidvalidity=?", key).fetchone()
        db.execute("COMMIT")
        return Delta(top[0] or 0, {u: (bool(s), m) for u, s, m in rows}, [(h, c) for h, c in steps],
                     seeded is not None)
    finally:
        db.close()


def _db_write(root: Path, notify_path: Path, key: _Key, uids: Sequence[int], seen: bool, owner_hms: int,
              unchanged: int | None, modseqs: dict[int, int]) -> tuple[list[int], list[int], int, int]:
    """Set the private \\Seen of ``uids`` to ``seen`` in one transaction: (changed uids, failed uids,
    counter, view modseq of the change). ``unchanged`` (RFC 7162 UNCHANGEDSINCE): a uid whose view
    modseq (private, else ``modseqs[uid]``, the owner's as the view has it) is above it fails. Blocks."""
    db = _open(root)
    try:
        db.execute("BEGIN IMMEDIATE")
        cur = {u: (bool(s), m) for u, s, m in db.execute(
            "SELECT uid, seen, modseq FROM seen WHERE owner=? AND mailbox=? AND uidvalidity=?", key)}
        failed: list[int] = []
        todo: list[int] = []
        for uid in uids:
            have = cur.get(uid, (False, 0))
            if unchanged is not None and max(have[1], modseqs.get(uid, 0)) > unchanged:
                failed.append(uid)
            elif have[0] != seen:
                todo.append(uid)
        if not todo:
            counter = _top(db, key)[0]
            db.execute("ROLLBACK")
            return [], failed, counter, 0
        counter, modseq = _step(db, key, owner_hms)
        db.executemany("INSERT OR REPLACE INTO seen VALUES (?, ?, ?, ?, ?, ?, ?)",
                       [(*key, uid, int(seen), modseq, counter) for uid in todo])
        db.execute("COMMIT")
    finally:
        db.close()
    _touch(notify_path)
    return todo, failed, counter, modseq


def _top(db: sqlite3.Connection, key: _Key) -> tuple[int, int]:
    """(private counter, last step's owner HIGHESTMODSEQ) of ``key``'s folder."""
    top = db.execute("SELECT max(c), max(h) FROM steps WHERE owner=? AND mailbox=? AND uidvalidity=?", key).fetchone()
    return top[0] or 0, top[1] or 0


def _step(db: sqlite3.Connection, key: _Key, owner_hms: int) -> tuple[int, int]:
    """Record one private write (within the caller's transaction): its (counter, view modseq)."""
    counter, last_h = _top(db, key)
    counter += 1
    h = max(owner_hms, last_h)
    db.execute("INSERT OR REPLACE INTO steps VALUES (?, ?, ?, ?, ?)", (*key, h, counter))
    return counter, h + counter


def _touch(notify_path: Path) -> None:
    """Wake the grantee's other sessions (their notify file)."""
    try:
        os.utime(notify_path)
    except FileNotFoundError:
        notify_path.touch()


def _db_seed(root: Path, notify_path: Path, key: _Key, seen: Sequence[int], owner_hms: int) -> bool:
    """Seed ``key``'s folder from the owner's \\Seen (``seen``: the owner's seen UIDs) once per
    UIDVALIDITY, in one transaction: a UID the grantee already has a row for keeps it; rows of modseq
    and counter 0, or one private write where the grantee wrote before (module docstring). True when
    rows were added. Blocks."""
    db = _open(root)
    added = False
    try:
        db.execute("BEGIN IMMEDIATE")
        if db.execute("INSERT OR IGNORE INTO seeded VALUES (?, ?, ?)", key).rowcount == 0:
            db.execute("ROLLBACK")  # another process (or session) seeded it first
            return False
        if seen:
            counter, modseq = _step(db, key, owner_hms) if _top(db, key)[0] else (0, 0)
            before = db.total_changes
            db.executemany("INSERT OR IGNORE INTO seen VALUES (?, ?, ?, ?, 1, ?, ?)",
                           [(*key, uid, modseq, counter) for uid in seen])
            added = db.total_changes > before
            if not added and counter:  # the grantee had a row for each: no write, no step
                db.execute("DELETE FROM steps WHERE owner=? AND mailbox=? AND uidvalidity=? AND c=?", (*key, counter))
        db.execute("COMMIT")
    finally:
        db.close()
    if added:
        _touch(notify_path)
    return added


def _db_counters(root: Path, owner: str) -> tuple[dict[tuple[str, int], int], set[tuple[str, int]]]:
    """(owner mailbox id, UIDVALIDITY) -> private counter, for every mailbox of ``owner``, and the
    (mailbox id, UIDVALIDITY) of every seeded one. Blocks."""
    if not (root / PRIVATE_SEEN_DB).exists():
        return {}, set()
    db = _open(root)
    try:
        db.execute("BEGIN")
        counters = {(m, uv): c for m, uv, c in db.execute(
            "SELECT mailbox, uidvalidity, max(c) FROM steps WHERE owner=? GROUP BY mailbox, uidvalidity", (owner,))}
        seeded = {(m, uv) for m, uv in db.execute("SELECT mailbox, uidvalidity FROM seeded WHERE owner=?", (owner,))}
        db.execute("COMMIT")
        return counters, seeded
    finally:
        db.close()


def _db_prune(root: Path, owner: str, engine: Any) -> int:
    """Drop the rows, steps and markers of ``owner``'s folders that are gone (deleted, or recreated with
    another UIDVALIDITY): how many folders. The owner's folders are listed under this file's write lock:
    rows are written only for a folder that exists, so one created meanwhile is listed. Blocks."""
    db = _open(root)
    try:
        db.execute("BEGIN IMMEDIATE")
        keys = set(db.execute("SELECT DISTINCT mailbox, uidvalidity FROM steps WHERE owner=?", (owner,)))
        keys.update(db.execute("SELECT mailbox, uidvalidity FROM seeded WHERE owner=?", (owner,)))
        gone = [(owner, m, uv) for m, uv in keys - {(i.id, i.uidvalidity) for i in engine.list_mailboxes()}]
        for table in ("seen", "steps", "seeded"):
            db.executemany(f"DELETE FROM {table} WHERE owner=? AND mailbox=? AND uidvalidity=?", gone)
        db.execute("COMMIT")
        return len(gone)
    finally:
        db.close()


def _db_forget(root: Path, key: _Key, uids: Sequence[int]) -> None:
    """Drop the rows of expunged messages (their steps stay: later modseqs depend on them). Blocks."""
    db = _open(root)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.executemany("DELETE FROM seen WHERE owner=? AND mailbox=? AND uidvalidity=? AND uid=?",
                       [(*key, u) for u in uids])
        db.execute("COMMIT")
    finally:
        db.close()


class _State:
    """One grantee's private \\Seen of one mailbox, as far as loaded (counter ``counter``)."""

    __slots__ = ("key", "counter", "rows", "hs", "cs", "memo", "seeded", "loaded")

    def __init__(self, key: _Key) -> None:
        self.key = key
        self.counter = 0
        self.rows: dict[int, tuple[bool, int]] = {}
        self.hs: list[int] = []
        self.cs: list[int] = []
        #: uid -> (the owner's object, its wrap): a warm SELECT allocates nothing for unchanged messages
        #: (a step never changes the view modseq of an owner's change already made: module docstring)
        self.memo: dict[int, tuple[MessageInfo, MessageInfo]] = {}
        self.seeded = False
        #: loaded once (the seeded rows, of counter 0, too); later loads read what came after ``counter``
        self.loaded = False

    def apply(self, d: Delta) -> None:
        self.seeded = self.seeded or d.seeded
        self.counter = max(self.counter, d.counter)
        self.rows.update(d.rows)
        for uid in d.rows:
            self.memo.pop(uid, None)
        for h, c in d.steps:
            i = bisect.bisect_left(self.hs, h)
            if i < len(self.hs) and self.hs[i] == h:
                self.cs[i] = max(self.cs[i], c)
            else:
                self.hs.insert(i, h)
                self.cs.insert(i, c)

    def owner_view(self, modseq: int) -> int:
        """The view modseq of an owner's change of modseq ``modseq``: plus the private writes before it."""
        i = bisect.bisect_left(self.hs, modseq)
        return modseq + (self.cs[i - 1] if i else 0)

    def owner_bound(self, view_modseq: int) -> int:
        """The largest owner modseq whose view modseq is at most ``view_modseq`` (UNCHANGEDSINCE)."""
        lo, hi = 0, view_modseq
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.owner_view(mid) <= view_modseq:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def wrap(self, m: MessageInfo) -> MessageInfo:
        """``m`` as the grantee sees it: their own \\Seen, the combined modseq."""
        got = self.memo.get(m.uid)
        if got is not None and got[0] is m:
            return got[1]
        w = self._wrap(m)
        if w is not m:  # only what costs an object
            self.memo[m.uid] = (m, w)
        return w

    def _wrap(self, m: MessageInfo) -> MessageInfo:
        seen, pm = self.rows.get(m.uid, (False, 0))
        flags = m.flags
        if (SEEN in flags) != seen:
            flags = flags | {SEEN} if seen else flags - {SEEN}
        modseq = max(self.owner_view(m.modseq), pm)
        if flags is m.flags and modseq == m.modseq:
            return m
        return MessageInfo(m.uid, m.key, flags, modseq, m.internal_date, m.saved_date, m.size, m.email_id,
                           m.thread_id)


class PrivateSeenAccount:
    """An owner's store account as one grantee sees it: everything is the owner's (attributes and
    methods pass through) but ``\\Seen``, which is the grantee's own (see the module's docstring)."""

    def __init__(self, inner: Any, home: Any) -> None:
        self.inner = inner
        self.home = home
        self._io = home.store.io
        #: per mailbox, what was loaded so far (each use reads only the rows written since: the counter
        #: only grows); the most recently used :data:`STATES` kept
        self._states: dict[_Key, _State] = {}
        #: the grantee's rights on the owner's folders now (``directory.rights.OwnerShare``, set by the
        #: protocol at each lookup of the share); None: \\Seen is private in every folder
        self.share: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def share_key(self) -> str:
        """Whose sessions may share this view's message objects (imap/shared.py): this grantee's only."""
        return f"{self.inner.id}/{self.home.id}"

    def private(self, mailbox: str) -> bool:
        """Is the grantee's \\Seen in ``mailbox`` their own? Only with the ``s`` right (RFC 4314 §4: it
        keeps \\Seen across sessions); without it they see the owner's."""
        return self.share is None or "s" in self.share.rights(mailbox)

    def _key(self, info: Any) -> _Key:
        return (str(self.inner.id), str(info.id), int(info.uidvalidity))

    async def _load(self, state: _State, full: bool = False) -> None:
        since = state.counter if state.loaded and not full else -1
        state.apply(await self._io.run(_db_load, Path(self.home.root), state.key, since))
        state.loaded = True

    async def _state(self, info: Any) -> _State:
        """The folder's private state, loaded up to now; seeded from the owner's \\Seen at the first use
        (``info``: a MailboxInfo, or the owner's snapshot, which the seeding then reads)."""
        key = self._key(info)
        state = self._states.pop(key, None) or _State(key)
        self._states[key] = state
        while len(self._states) > STATES:
            self._states.pop(next(iter(self._states)))
        await self._load(state)
        if not state.seeded:
            await self._seed(state, info)
        return state

    async def _seed(self, state: _State, info: Any) -> None:
        """Seed the folder's private \\Seen from the owner's (see the module docstring)."""
        if getattr(info, "unseen", None) == getattr(info, "messages", None):
            seen: list[int] = []  # the owner has read nothing there: no snapshot to read
            hms = int(info.highestmodseq)
        else:
            snap = info if hasattr(info, "by_uid") else await self.inner.open_mailbox(info.name)
            seen = [m.uid for m in snap.messages if SEEN in m.flags]
            hms = int(snap.highestmodseq)
        await self._io.run(_db_seed, Path(self.home.root), self.home.engine.notify_path, state.key, seen, hms)
        await self._load(state, full=True)  # also what another process seeded after this state's first load
        state.seeded = True

    async def open_mailbox(self, name: str) -> Any:
        inner = await self.inner.open_mailbox(name)
        if not self.private(name):
            return inner
        view = PrivateSeenView(self, inner, await self._state(inner))
        stale = [u for u, (seen, _) in view.state.rows.items() if inner.by_uid(u) is None and u < inner.uidnext]
        if stale:  # expunged since: their rows go (STATUS counts seen rows of existing messages only)
            await self._io.run(_db_forget, Path(self.home.root), view.state.key, stale)
            for u in stale:
                view.state.rows.pop(u, None)
                view.state.memo.pop(u, None)
        return view

    async def list_mailboxes(self) -> list[MailboxInfo]:
        """The owner's folders, HIGHESTMODSEQ in the grantee's sequence (JMAP states count private writes;
        ``unseen`` stays the owner's: :meth:`mailbox_status` has the grantee's). The private state of
        folders no longer there (deleted, recreated) is dropped here (the owner's DELETE cannot reach
        every grantee's file: anyone grants name a whole domain)."""
        infos = await self.inner.list_mailboxes()
        counters, seeded = await self._io.run(_db_counters, Path(self.home.root), str(self.inner.id))
        live = {(i.id, i.uidvalidity) for i in infos}
        if any(k not in live for k in (*counters, *seeded)):
            gone = await self._io.run(_db_prune, Path(self.home.root), str(self.inner.id), self.inner.engine)
            logger.info("private_seen.pruned", owner=self.inner.id, folders=gone)
        if not counters:
            return list(infos)
        return [dataclasses.replace(i, highestmodseq=i.highestmodseq + c)
                if (c := counters.get((i.id, i.uidvalidity), 0)) and self.private(i.name) else i for i in infos]

    async def mailbox_status(self, name: str) -> MailboxInfo:
        info = await self.inner.mailbox_status(name)
        if not self.private(name):
            return info
        state = await self._state(info)
        seen = [u for u, (s, _) in state.rows.items() if s]
        if seen:
            snap = await self.inner.open_mailbox(name)
            seen = [u for u in seen if snap.by_uid(u) is not None]
        return dataclasses.replace(info, unseen=info.messages - len(seen),
                                   highestmodseq=info.highestmodseq + state.counter)

    async def changes_since(self, mailbox: str, modseq: int) -> ChangesSince:
        """RFC 7162 CHANGEDSINCE / QRESYNC in the combined modseq sequence (expunged: a superset)."""
        if not self.private(mailbox):
            # ``modseq`` may be of the grantee's sequence, from before ``s`` was taken (owner's + private
            # writes): lowered by those writes, it names at least every owner's change since then
            counters, _ = await self._io.run(_db_counters, Path(self.home.root), str(self.inner.id))
            if counters:
                info = await self.inner.mailbox_status(mailbox)
                modseq = max(0, modseq - counters.get((info.id, info.uidvalidity), 0))
            return await self.inner.changes_since(mailbox, modseq)
        info = await self.inner.mailbox_status(mailbox)
        state = await self._state(info)
        since = await self.inner.changes_since(mailbox, max(0, modseq - state.counter))
        changed = {m.uid: w for m in since.changed if (w := state.wrap(m)).modseq > modseq}
        private = [u for u, (_, pm) in state.rows.items() if pm > modseq and u not in changed]
        if private:
            snap = await self.inner.open_mailbox(mailbox)
            for u in private:
                m = snap.by_uid(u)
                if m is not None:
                    changed[u] = state.wrap(m)
        return ChangesSince(sorted(changed.values(), key=lambda m: m.uid), since.expunged,
                            since.highestmodseq + state.counter, since.expunged_ids, since.truncated)

    async def store_flags(self, mailbox: str, uids: Sequence[int], flags: frozenset[str], mode: str,
                          unchanged_since: int | None = None) -> tuple[list[MessageInfo], list[int]]:
        """``\\Seen`` to the grantee's private store, the other flags to the owner's (whose own ``\\Seen``
        a replace keeps). Without the ``s`` right, all to the owner's (the protocol refuses a \\Seen change)."""
        if not self.private(mailbox):
            return await self.inner.store_flags(mailbox, uids, flags, mode, unchanged_since)
        snap = await self.inner.open_mailbox(mailbox)
        state = await self._state(snap)
        others = flags - {SEEN}
        failed: set[int] = set()
        owner_new: dict[int, MessageInfo] = {}
        current = {u: m for u in uids if (m := snap.by_uid(u)) is not None}
        if unchanged_since is not None:
            failed.update(u for u in current if state.wrap(current[u]).modseq > unchanged_since)
        todo = [u for u in current if u not in failed]
        if others or mode == "replace":
            bound = state.owner_bound(unchanged_since) if unchanged_since is not None else None
            if mode == "replace":  # the owner's \Seen stays: two groups
                groups = [([u for u in todo if SEEN in current[u].flags], others | {SEEN}),
                          ([u for u in todo if SEEN not in current[u].flags], others)]
            else:
                groups = [(todo, others)]
            for group, fl in groups:
                if not group:
                    continue
                modified, bad = await self.inner.store_flags(mailbox, group, fl, mode, bound)
                failed.update(bad)
                owner_new.update((m.uid, m) for m in modified)
            todo = [u for u in todo if u not in failed]
        changed: list[int] = []
        if SEEN in flags or mode == "replace":
            seen = mode != "remove" if SEEN in flags else False
            hms = (await self.inner.mailbox_status(mailbox)).highestmodseq
            modseqs = {u: state.wrap(owner_new.get(u, current[u])).modseq for u in todo}
            changed, bad, _, _ = await self._io.run(
                _db_write, Path(self.home.root), self.home.engine.notify_path, state.key, todo, seen, hms,
                unchanged_since, modseqs)
            failed.update(bad)
            await self._load(state)
        out = [state.wrap(owner_new.get(u, current[u])) for u in uids
               if u in current and u not in failed and (u in owner_new or u in changed)]
        return out, sorted(failed)

    async def append(self, mailbox: str, data: Any, flags: frozenset[str] = frozenset(), *args: Any,
                     **kw: Any) -> int:
        """APPEND (and COPY from another account) into a shared mailbox: a ``\\Seen`` given is the grantee's."""
        if SEEN not in flags or not self.private(mailbox):
            return await self.inner.append(mailbox, data, flags, *args, **kw)
        uid: int = await self.inner.append(mailbox, data, flags - {SEEN}, *args, **kw)
        await self.store_flags(mailbox, [uid], frozenset({SEEN}), "add")
        return uid

    def watch(self, mailbox: str | None = None) -> Any:
        """The owner's account's watch (Account.watch), also woken by the grantee's private writes."""
        from mailsrv.store import notify

        w = self.inner.watch(mailbox)
        engine = getattr(self.home, "engine", None)
        if engine is not None:
            w.add_path(engine.notify_path, notify.FILE_MASK)
        return w


class PrivateSeenView:
    """A grantee's snapshot of an owner's mailbox with their private \\Seen (see MailboxView)."""

    def __init__(self, account: PrivateSeenAccount, inner: Any, state: _State) -> None:
        self.account = account
        self.inner = inner
        self.state = state
        #: the private counter this view's messages reflect (the state may be ahead: shared with STORE)
        self.applied = state.counter
        self.name, self.id, self.uidvalidity = inner.name, inner.id, inner.uidvalidity
        self.messages = [state.wrap(m) for m in inner.messages]

    @property
    def uidnext(self) -> int:
        return int(self.inner.uidnext)

    @property
    def highestmodseq(self) -> int:
        return int(self.inner.highestmodseq) + self.state.counter

    @property
    def held(self) -> list[int]:
        return list(self.inner.held)

    def by_uid(self, uid: int) -> MessageInfo | None:
        seq = self.inner.seq_of(uid)
        return self.messages[seq - 1] if seq else None

    def seq_of(self, uid: int) -> int | None:
        return self.inner.seq_of(uid)

    async def refresh(self, hold_expunged: bool = False) -> Changes:
        """The owner's changes and the grantee's private ones since the last refresh (``hold_expunged``:
        see MailboxView.refresh)."""
        ch = await self.inner.refresh(hold_expunged)
        await self.account._load(self.state)
        before, self.applied = self.applied, self.state.counter
        if ch.expunged:
            gone = set(ch.expunged)
            self.messages = [m for m in self.messages if m.uid not in gone]
            for uid in gone:
                self.state.memo.pop(uid, None)
        added = [self.state.wrap(m) for m in ch.added]
        self.messages.extend(added)
        touched: dict[int, MessageInfo] = {m.uid: m for m in ch.flags}
        if self.state.counter != before:
            for uid, (_, pm) in self.state.rows.items():
                if pm > 0 and uid not in touched and (m := self.inner.by_uid(uid)) is not None:
                    seq = self.inner.seq_of(uid)
                    if seq and self.messages[seq - 1].modseq < pm:
                        touched[uid] = m
        flags: list[MessageInfo] = []
        for uid, m in sorted(touched.items()):
            seq = self.inner.seq_of(uid)
            if not seq:
                continue
            w = self.state.wrap(m)
            if self.messages[seq - 1] != w:
                self.messages[seq - 1] = w
                flags.append(w)
        return Changes(added, ch.expunged, flags, self.uidnext, self.highestmodseq)


def follow_rights(acct: Any, share: Any) -> None:
    """A grantee's view ``acct`` of an owner's account takes their rights ``share`` (``OwnerShare``,
    read from the directory now) for :meth:`PrivateSeenAccount.private`; nothing for another account
    or without a share."""
    if share is not None and isinstance(acct, PrivateSeenAccount):
        acct.share = share


def wrap(owner_acct: Any, home: Any) -> Any:
    """``owner_acct`` with ``home``'s private \\Seen; unchanged when either is not a maildir store account
    (the memory store of the session tests)."""
    if getattr(home, "engine", None) is None or getattr(owner_acct, "engine", None) is None:
        return owner_acct
    return PrivateSeenAccount(owner_acct, home)
