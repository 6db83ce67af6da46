"""``mailsrv policy learn`` over a 2 000-message directory, as a real process: a bounded number of write
transactions, exact counts, and consistent counts after a kill -9 in the middle (then the rest learned)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from support.server import mailsrv_cmd

from mailsrv import config as config_mod
from mailsrv.policy.bayes import token_id, tokens
from mailsrv.policy.headers import header_end

MESSAGES = 2000


def _corpus_messages(corpus: Path) -> list[bytes]:
    out = []
    for p in sorted(corpus.rglob("*")):
        if p.is_file() and p.suffix in (".txt", ".msg", ".eml") and "LICENSE" not in p.name.upper():
            data = p.read_bytes()
            # a body of its own (a message's identity for learning is its body)
            if b":" in data[:200] and not data.startswith(b"From ") and header_end(data) < len(data):
                out.append(data)
    return out


@pytest.fixture
def setup(tmp_path: Path, corpus: Path) -> tuple[Path, Path, list[bytes]]:
    """A fresh server directory (its config), and a maildir of MESSAGES distinct real-world messages."""
    d = tmp_path / "s"
    subprocess.run(mailsrv_cmd("init", "--dir", str(d), "--any-port", "--workers", "1"), check=True,
                   capture_output=True)
    base = _corpus_messages(corpus)
    assert len(base) > 100
    cur = tmp_path / "maildir" / "cur"
    cur.mkdir(parents=True)
    messages = []
    for i in range(MESSAGES):  # a corpus message plus a line of its own: another body, another message
        msg = base[i % len(base)] + f"\r\nreference {i:05d}\r\n".encode()
        (cur / f"{i:05d}.eml").write_bytes(msg)
        messages.append(msg)
    return d / "mailsrv.toml", tmp_path / "maildir", messages


def _db(config: Path) -> Path:
    return Path(config_mod.load(str(config)).server.data_dir) / "policy" / "policy.db"


def _expected(messages: list[bytes]) -> dict[int, int]:
    """token id -> ham messages that hold it, as the learner must count them."""
    counts: Counter[int] = Counter()
    for m in messages:
        counts.update({token_id(t) for t in tokens(m)})
    return dict(counts)


def _state(db: Path) -> tuple[tuple[int, int], int, dict[int, int], int]:
    """(totals), bayes_seen rows, {token: ham} of the server scope, and tokens with a spam count."""
    with sqlite3.connect(db) as c:
        totals = c.execute("SELECT spam, ham FROM bayes_totals WHERE scope = ''").fetchone()
        seen = c.execute("SELECT COUNT(*) FROM bayes_seen WHERE scope = '' AND label = 'ham'").fetchone()[0]
        rows = dict(c.execute("SELECT token, ham FROM bayes_tokens WHERE scope = '' AND ham > 0").fetchall())
        spam = c.execute("SELECT COUNT(*) FROM bayes_tokens WHERE spam != 0").fetchone()[0]
    return tuple(totals), seen, rows, spam


def test_a_2000_message_directory_learns_in_4_transactions_with_exact_counts(
        setup: tuple[Path, Path, list[bytes]]) -> None:
    config, maildir, messages = setup
    out = subprocess.run(mailsrv_cmd("policy", "learn", "--ham", str(maildir), "-c", str(config)),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"ham: {MESSAGES} learned, 0 already known, 0 too big (scope *, 4 transactions)" in out.stdout
    totals, seen, rows, spam = _state(_db(config))
    assert totals == (0, MESSAGES) and seen == MESSAGES and spam == 0
    assert rows == _expected(messages)


def test_an_interrupted_learn_leaves_whole_batches_and_the_rerun_learns_the_rest(
        setup: tuple[Path, Path, list[bytes]]) -> None:
    config, maildir, messages = setup
    db = _db(config)
    batch = 50
    proc = subprocess.Popen(mailsrv_cmd("policy", "learn", "--ham", str(maildir), "--batch", str(batch),
                                        "-c", str(config)), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lock = None
    try:
        deadline = time.monotonic() + 120
        learned = 0
        while learned < batch:  # poll (with a deadline) until the first batch is committed
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no batch committed in time"
            if db.exists():
                try:
                    with sqlite3.connect(db) as c:
                        row = c.execute("SELECT ham FROM bayes_totals WHERE scope = ''").fetchone()
                    learned = row[0] if row else 0
                except sqlite3.OperationalError:  # the schema is not created yet
                    pass
            time.sleep(0.005)
        # hold the write lock: the learner cannot commit another batch, then kill it mid-run
        lock = sqlite3.connect(db, timeout=60, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        assert proc.poll() is None  # it had more to learn: the kill interrupts it
    finally:
        proc.kill()
        proc.communicate()
        if lock is not None:
            lock.execute("ROLLBACK")
            lock.close()
    totals, seen, rows, spam = _state(db)
    done = totals[1]
    assert totals[0] == 0 and 0 < done < MESSAGES and done % batch == 0 and seen == done and spam == 0
    assert rows == _expected(messages[:done])  # the files are learned in name order, whole batches only

    out = subprocess.run(mailsrv_cmd("policy", "learn", "--ham", str(maildir), "-c", str(config)),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"ham: {MESSAGES - done} learned, {done} already known" in out.stdout
    totals, seen, rows, _ = _state(db)
    assert totals == (0, MESSAGES) and seen == MESSAGES
    assert rows == _expected(messages)


def test_only_regular_files_are_learned(setup: tuple[Path, Path, list[bytes]], tmp_path: Path) -> None:
    """A FIFO or socket in a maildir is not a message (reading a FIFO would block the learner forever)."""
    config, maildir, messages = setup
    small = tmp_path / "small" / "cur"
    small.mkdir(parents=True)
    (small / "1.eml").write_bytes(messages[0])
    os.mkfifo(small / "2.fifo")
    out = subprocess.run(mailsrv_cmd("policy", "learn", "--spam", str(small.parent), "-c", str(config)),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "spam: 1 learned, 0 already known, 0 too big (scope *, 1 transaction)" in out.stdout
