"""The background training queue (mailsrv.policy.training): journaled, bounded, coalesced, taken over after a crash."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mailsrv.config import PolicyConfig
from mailsrv.net.dns import Resolver
from mailsrv.policy.pipeline import Policy
from mailsrv.policy.state import PolicyState
from mailsrv.policy.training import Learned, Trainer


def note(i: int, word: str = "prize") -> bytes:
    return f"From: s@spam.test\r\nTo: alice@example.test\r\nSubject: {word}\r\n\r\nyou won {word} {i}\r\n".encode()


def policy_at(path: Path, **cfg: Any) -> Policy:
    return Policy(PolicyConfig(**cfg), hostname="mx.example.test", resolver=Resolver(["127.0.0.1:1"]),
                  state=PolicyState(path))


def journal(state: PolicyState) -> Any:
    return state.run(lambda db: db.execute("SELECT COUNT(*) FROM training_queue").fetchone()[0], write=False)


async def test_moves_are_learned_in_batches_of_one_transaction(tmp_path: Path) -> None:
    policy = policy_at(tmp_path / "p.db", bayes_train_batch=40)
    trainer, bayes = policy.trainer, policy.bayes
    assert trainer is not None and bayes is not None
    batches: list[int] = []
    learn = trainer.learn

    async def counted(items: list[Learned], also: Any) -> None:
        batches.append(len(items))
        await learn(items, also)

    trainer.learn = counted
    try:
        msgs = {("Junk", i): note(i) for i in range(100)}

        async def read(mailbox: str, uid: int) -> bytes:
            return msgs[(mailbox, uid)]

        assert await policy.train_later("alice@example.test", "INBOX", "Junk", list(msgs), read=read) == "spam"
        assert await policy.train_later("alice@example.test", "INBOX", "Archive", list(msgs), read=read) is None
        await trainer.drain()
        assert batches == [40, 40, 20]
        assert await policy.state.training_counts("alice@example.test") == {"spam": 100}  # type: ignore[union-attr]
        assert await bayes.totals(["example.test"]) == (100, 0)
        assert await journal(policy.state) == 0  # type: ignore[arg-type]
        # out of Junk again: ham, with the messages handed over (JMAP read them before the move)
        assert await policy.train_later("alice@example.test", "Junk", "INBOX", [("INBOX", 0), ("INBOX", 0)],
                                        messages=[note(1), note(2)]) == "ham"
        await trainer.drain()
        assert await bayes.totals(["example.test"]) == (98, 2)
    finally:
        policy.close()


async def test_a_full_queue_makes_the_next_move_wait(tmp_path: Path) -> None:
    policy = policy_at(tmp_path / "p.db", bayes_train_batch=5, bayes_train_queue=10)
    trainer = policy.trainer
    assert trainer is not None
    gate = asyncio.Event()
    learn = trainer.learn
    most = [0]

    async def held(items: list[Learned], also: Any) -> None:
        most[0] = max(most[0], trainer.pending)
        await gate.wait()
        await learn(items, also)

    trainer.learn = held
    try:
        refs = [("Junk", i) for i in range(8)]
        await policy.train_later("a@example.test", "INBOX", "Junk", refs, messages=[note(i) for i in range(8)])
        second = asyncio.ensure_future(policy.train_later(
            "a@example.test", "INBOX", "Junk", refs, messages=[note(i, "other") for i in range(8)]))
        done, _ = await asyncio.wait([second], timeout=0.2)
        assert not done and trainer.pending == 8  # 8 + 8 > 10: it waits, memory stays bounded
        gate.set()
        assert await asyncio.wait_for(second, 30) == "spam"
        await trainer.drain()
        assert most[0] <= 10
        assert await policy.state.training_counts("a@example.test") == {"spam": 16}  # type: ignore[union-attr]
    finally:
        policy.close()


async def test_an_unreadable_message_is_skipped(tmp_path: Path) -> None:
    policy = policy_at(tmp_path / "p.db")
    trainer = policy.trainer
    assert trainer is not None

    async def read(mailbox: str, uid: int) -> bytes:
        if uid == 2:
            raise FileNotFoundError("expunged meanwhile")
        return note(uid)

    try:
        await policy.train_later("a@example.test", "INBOX", "Junk", [("Junk", 1), ("Junk", 2), ("Junk", 3)],
                                 read=read)
        await trainer.drain()
        assert await policy.state.training_counts("a@example.test") == {"spam": 2}  # type: ignore[union-attr]
        assert await journal(policy.state) == 0  # type: ignore[arg-type]
    finally:
        policy.close()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


async def test_a_dead_workers_journal_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    first = PolicyState(path)
    dead = _dead_pid()
    await first.run(lambda db: db.executemany(  # what a worker killed with -9 left behind
        "INSERT INTO training_queue (owner, account, label, mailbox, uid, message) VALUES (?, ?, ?, ?, ?, ?)",
        [(dead, "a@example.test", "spam", "Junk", 7, None), (dead, "a@example.test", "spam", "Junk", 0, note(8)),
         (dead, "a@example.test", "ham", "INBOX", 9, None)]))
    first.close()
    policy = policy_at(path)
    trainer = policy.trainer
    assert trainer is not None
    read: list[tuple[str, str, int]] = []

    async def reader(account: str, mailbox: str, uid: int) -> bytes:
        read.append((account, mailbox, uid))
        return note(uid, "again")

    trainer.reader = reader
    try:
        assert await trainer.adopt() == 3
        await asyncio.wait_for(trainer.drain(), 30)
        assert trainer.learned == 3
        assert sorted(read) == [("a@example.test", "INBOX", 9), ("a@example.test", "Junk", 7)]
        assert await policy.state.training_counts("a@example.test") == {"spam": 2, "ham": 1}  # type: ignore[union-attr]
        assert await journal(policy.state) == 0  # type: ignore[arg-type]
    finally:
        policy.close()


async def test_a_live_workers_journal_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "import sys; sys.stdin.read()",
                                                stdin=asyncio.subprocess.PIPE)
    try:
        schema = PolicyState(path)
        schema._conn()
        schema.close()
        db = sqlite3.connect(path)
        db.execute("INSERT INTO training_queue (owner, account, label, mailbox, uid, message) "
                   "VALUES (?, 'a@example.test', 'spam', 'Junk', 0, ?)", (proc.pid, note(1)))
        db.commit()
        db.close()
        policy = policy_at(path)
        trainer = policy.trainer
        assert trainer is not None
        try:
            await policy.train_later("b@example.test", "INBOX", "Junk", [("Junk", 0)], messages=[note(2)])
            await trainer.drain()
            assert await journal(policy.state) == 1  # the other worker's row: it is alive and will learn it
            assert await policy.state.training_counts() == {"spam": 1}  # type: ignore[union-attr]
        finally:
            policy.close()
    finally:
        await proc.communicate(b"")


async def test_trainer_refuses_mismatched_messages(tmp_path: Path) -> None:
    state = PolicyState(tmp_path / "p.db")

    async def learn(items: list[Learned], also: Any) -> None:
        raise AssertionError("not reached")

    trainer = Trainer(state, learn, batch=10, limit=10)
    try:
        with pytest.raises(ValueError):
            await trainer.submit("a@example.test", "spam", [("Junk", 1)], messages=[])
        assert trainer.pending == 0
    finally:
        trainer.stop()
        state.close()


async def test_without_a_reader_only_journaled_messages_are_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    first = PolicyState(path)
    dead = _dead_pid()
    await first.run(lambda db: db.executemany(
        "INSERT INTO training_queue (owner, account, label, mailbox, uid, message) VALUES (?, ?, ?, ?, ?, ?)",
        [(dead, "a@example.test", "spam", "Junk", 7, None), (dead, "a@example.test", "spam", "Junk", 0, note(8))]))
    first.close()
    policy = policy_at(path)
    trainer = policy.trainer
    assert trainer is not None
    try:
        assert await trainer.adopt() == 1  # the message itself; the reference waits for a worker with a reader
        await asyncio.wait_for(trainer.drain(), 30)
        assert await policy.state.training_counts("a@example.test") == {"spam": 1}  # type: ignore[union-attr]
        left = await policy.state.run(  # type: ignore[union-attr]
            lambda db: db.execute("SELECT owner, uid FROM training_queue").fetchall(), write=False)
        assert left == [(dead, 7)]
    finally:
        policy.close()
