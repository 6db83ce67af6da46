"""Training from Junk moves in the background, so that an IMAP or JMAP reply never waits for the learner.

A move into or out of Junk is journaled (one write transaction per command, the
``training_queue`` table of policy.db: account, label, and the message's
(mailbox, uid) or the message itself when the front end already held it) and
queued in memory; one task per worker learns the queue in batches: one
executor job tokenizes a batch, one write transaction learns it, records the
users' verdicts and deletes the batch's journal rows (so a batch counts
exactly once).

Invariants:
- bounded: at most ``bayes_train_queue`` jobs wait per worker; a command that
  would pass that waits for room (back-pressure; one command alone is taken
  whole); a job in memory is a reference, messages handed over stay in the
  journal until their batch reads them back;
- a crash (kill -9) loses nothing journaled: a trainer that starts takes over
  the rows of dead workers (by pid) and learns them; rows that hold only a
  (mailbox, uid) reference wait for a trainer with :attr:`Trainer.reader`;
  the batch in flight is either learned and deleted in one transaction, or
  still journaled;
- a message that cannot be read any more (expunged meanwhile) is skipped; a
  learner failure is logged and never reaches the user.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

from mailsrv import log
from mailsrv.policy.bayes import Bayes, Lesson, message_digest, tokens
from mailsrv.policy.score import RspamdLearner
from mailsrv.policy.state import PolicyState

logger = log.get("policy.training")

#: (mailbox, uid) -> message bytes: a front end's reader for its own account.
SessionReader = Callable[[str, int], Awaitable[bytes]]
#: (account, mailbox, uid) -> message bytes: the worker's reader for any account (replays a dead worker's rows).
Reader = Callable[[str, str, int], Awaitable[bytes]]


@dataclass
class Job:
    id: int
    account: str
    label: str
    mailbox: str
    uid: int
    journaled: bool  # the message itself is in the journal row (read back per batch: memory stays bounded)
    read: SessionReader | None = None


@dataclass(frozen=True)
class Learned:
    """A job's message, read: what the learner callback receives."""

    account: str
    label: str
    message: bytes


#: The learner: learns the messages in one transaction, running ``also(db)`` inside it.
LearnBatch = Callable[[list[Learned], Callable[[sqlite3.Connection], None]], Awaitable[None]]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Trainer:
    """The per-worker training queue. Use from the event loop thread only."""

    def __init__(self, state: PolicyState, learn: LearnBatch, *, batch: int, limit: int,
                 reader: Reader | None = None) -> None:
        self.state = state
        self.learn = learn
        self.batch = batch
        self.limit = limit
        self.reader = reader
        self.pid = os.getpid()
        self.learned = 0  # messages through the learner (tests, logs)
        self._q: deque[Job] = deque()
        self._busy = 0  # jobs taken from the queue and not finished
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        return len(self._q) + self._busy

    def start(self) -> None:
        """Start the background task (it first takes over dead workers' journal rows). Idempotent."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="policy-training")

    async def submit(self, account: str, label: str, refs: Sequence[tuple[str, int]], *,
                     read: SessionReader | None = None, messages: Sequence[bytes] | None = None) -> None:
        """Queue ``refs`` ((mailbox, uid) of each message, read later with ``read``), or ``messages`` (then
        ``refs`` name them for the logs) to learn as ``label``. Returns once journaled; waits while the queue
        is full. Raises what SQLite raises (the caller logs it: training never fails a command)."""
        if messages is not None and len(messages) != len(refs):
            raise ValueError("one reference per message")
        self.start()
        n = len(refs)
        while self.pending and self.pending + n > self.limit:
            self._room.clear()
            await self._room.wait()
        rows = [(self.pid, account, label, mb, uid, messages[i] if messages is not None else None)
                for i, (mb, uid) in enumerate(refs)]

        def op(db: sqlite3.Connection) -> list[int]:
            ids = []
            for row in rows:
                cur = db.execute("INSERT INTO training_queue (owner, account, label, mailbox, uid, message) "
                                 "VALUES (?, ?, ?, ?, ?, ?)", row)
                ids.append(int(cur.lastrowid or 0))
            return ids

        ids = await self.state.run(op)
        for job_id, row in zip(ids, rows, strict=True):
            self._q.append(Job(job_id, account, label, row[3], row[4], row[5] is not None, read))
        self._idle.clear()
        self._wake.set()

    async def drain(self) -> None:
        """Wait until every queued job is learned (tests, a worker stopping gracefully)."""
        if self.pending:
            self.start()
            await self._idle.wait()

    def stop(self) -> None:
        """Cancel the task (at worker exit; from any thread); what is still queued stays journaled."""
        task, self._task = self._task, None
        if task is not None and not task.get_loop().is_closed():
            task.get_loop().call_soon_threadsafe(task.cancel)

    async def adopt(self) -> int:
        """Queue the journal rows of workers that died (pid no longer alive) as this worker's; returns how
        many. The background task does it when it starts."""

        readable = "" if self.reader is not None else " AND message IS NOT NULL"  # the rest waits for a reader

        def op(db: sqlite3.Connection) -> list[tuple[int, str, str, str, int, bool]]:
            owners = [o for (o,) in db.execute("SELECT DISTINCT owner FROM training_queue WHERE owner != ?",
                                               (self.pid,)).fetchall() if not _alive(o)]
            rows = []
            for owner in owners:
                rows += db.execute("SELECT id, account, label, mailbox, uid, message IS NOT NULL FROM training_queue "
                                   f"WHERE owner = ?{readable} ORDER BY id", (owner,)).fetchall()
            db.executemany("UPDATE training_queue SET owner = ? WHERE id = ?", [(self.pid, r[0]) for r in rows])
            return rows

        rows = await self.state.run(op)
        known = {j.id for j in self._q}
        for job_id, account, label, mailbox, uid, journaled in rows:
            if job_id not in known:
                self._q.append(Job(job_id, account, label, mailbox, uid, bool(journaled)))
        if rows:
            self._idle.clear()
            self._wake.set()
            logger.info("policy.training_adopted", jobs=len(rows))
        return len(rows)

    async def _run(self) -> None:
        try:
            await self.adopt()
        except Exception as exc:  # the journal unreadable: new moves still train
            logger.warning("policy.training_adopt_failed", error=str(exc))
        while True:
            if not self._q:
                self._idle.set()  # invariant: set exactly when nothing is queued or in flight
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._q.popleft() for _ in range(min(self.batch, len(self._q)))]
            self._busy = len(batch)
            try:
                await self._learn(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # rows stay journaled: the next trainer of this database retries them
                logger.warning("policy.training_failed", jobs=len(batch), error=f"{type(exc).__name__}: {exc}"[:200])
            finally:
                self._busy = 0
                self._room.set()

    async def _learn(self, batch: list[Job]) -> None:
        items: list[Learned] = []
        wanted = [job.id for job in batch if job.journaled]
        stored: dict[int, bytes] = {}
        if wanted:
            marks = ",".join("?" * len(wanted))
            stored = dict(await self.state.run(lambda db: db.execute(
                f"SELECT id, message FROM training_queue WHERE id IN ({marks})", wanted).fetchall(), write=False))
        for job in batch:
            message = stored.get(job.id)
            if message is None and not job.journaled:
                try:
                    if job.read is not None:
                        message = await job.read(job.mailbox, job.uid)
                    elif self.reader is not None:
                        message = await self.reader(job.account, job.mailbox, job.uid)
                    else:
                        logger.warning("policy.training_unreadable", account=job.account, mailbox=job.mailbox,
                                       uid=job.uid, error="no reader")
                except Exception as exc:  # expunged meanwhile, account gone: nothing to learn
                    logger.info("policy.training_skipped", account=job.account, mailbox=job.mailbox, uid=job.uid,
                                error=f"{type(exc).__name__}: {exc}"[:200])
            if message is not None:
                items.append(Learned(job.account, job.label, message))
        ids = [(job.id,) for job in batch]

        def forget(db: sqlite3.Connection) -> None:
            db.executemany("DELETE FROM training_queue WHERE id = ?", ids)

        await self.learn(items, forget)
        self.learned += len(items)


def learner(state: PolicyState, *, bayes: Bayes | None, rspamd: RspamdLearner | None,
            scopes_of: Callable[[str], list[str]], executor: Executor | None = None) -> LearnBatch:
    """The :data:`LearnBatch` of a worker's Policy: rspamd's controller when rspamd scores (one request per
    message, failures logged), else our learner (tokens of the whole batch in one executor job, one write
    transaction for the batch); the users' verdicts (the ``training`` table) in that same transaction."""

    def prepare(items: list[Learned]) -> list[tuple[str, set[str]]]:
        return [(message_digest(i.message), tokens(i.message) if bayes is not None else set()) for i in items]

    async def learn(items: list[Learned], also: Callable[[sqlite3.Connection], None]) -> None:
        prepared = await asyncio.get_running_loop().run_in_executor(executor, prepare, items)
        if rspamd is not None:
            for item in items:
                try:
                    await rspamd.learn(item.label, item.message)
                except Exception as exc:  # rspamd down: the verdict is still recorded below
                    logger.warning("policy.learn_failed", account=item.account, label=item.label, error=str(exc))
        now = state.clock()
        signals = [(i.account.lower(), i.label, digest, now) for i, (digest, _) in zip(items, prepared, strict=True)]

        def record(db: sqlite3.Connection) -> None:
            db.executemany("INSERT OR REPLACE INTO training (account, label, digest, at) VALUES (?, ?, ?, ?)",
                           signals)
            also(db)

        if bayes is not None:
            lessons = [Lesson(tuple(scopes_of(i.account)), i.label, digest, toks)
                       for i, (digest, toks) in zip(items, prepared, strict=True)]
            changed = await bayes.learn_many(lessons, also=record)
        else:
            await state.run(record)
            changed = []
        logger.info("policy.trained", messages=len(items), spam=sum(i.label == "spam" for i in items),
                    learned=sum(changed))

    return learn
