"""``mailsrv policy learn`` over a 2 000-message directory, as a real process: a bounded number of write
transactions, exact counts, and consistent counts after a kill -9 in the middle (then the rest learned)."""

from __future__ import annotations

import os
import random
import re
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from support.server import mailsrv_cmd

from mailsrv import config as config_mod
from mailsrv.policy.bayes import message_digest, token_id, tokens
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


SPAM_WORDS = ("viagra pills pharmacy discount casino jackpot bonus lottery winner claim prize crypto profit "
              "guaranteed exclusive offer replica watches loan approval unsubscribe").split()


def _spam_dir(root: Path, n: int) -> Path:
    """``n`` distinct spam messages of random spam words (one body each)."""
    rnd = random.Random(12)
    cur = root / "spam" / "cur"
    cur.mkdir(parents=True)
    for i in range(n):
        body = " ".join(rnd.choice(SPAM_WORDS) for _ in range(80))
        (cur / f"{i:04d}.eml").write_bytes(
            f"From: Deals <promo{i}@deals.test>\r\nTo: you@example.test\r\nSubject: {body[:40]}\r\n"
            f"Message-ID: <{i}@deals.test>\r\n\r\n{body}\r\nref {i}\r\n".encode())
    return root / "spam"


def _learn(config: Path, *args: str) -> str:
    out = subprocess.run(mailsrv_cmd("policy", "learn", *args, "-c", str(config)), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _learned_ham(db: Path, messages: list[bytes]) -> list[bytes]:
    """The messages the server scope has learned as ham (by digest)."""
    with sqlite3.connect(db) as c:
        seen = {d for (d,) in c.execute("SELECT digest FROM bayes_seen WHERE scope = '' AND label = 'ham'")}
    return [m for m in messages if message_digest(m) in seen]


def test_until_correct_learns_mistakes_and_unsures_in_bounded_passes_counting_each_once(
        setup: tuple[Path, Path, list[bytes]], tmp_path: Path) -> None:
    config, maildir, messages = setup
    db = _db(config)
    spam = _spam_dir(tmp_path, 150)
    # the learner is not ready (no ham): every spam is learned, in one pass of 3 transactions
    out = _learn(config, "--spam", str(spam), "--until-correct", "3", "--batch", "50")
    assert "spam: 150 learned, 0 already known, 0 too big (scope *, 3 transactions, 1 pass, " \
           "0 judged right and not learned)" in out

    # one pass: the first 100 ham are learned (not ready before), then only the misjudged and unsure
    out = _learn(config, "--ham", str(maildir), "--until-correct", "1")
    found = re.search(r"ham: (\d+) learned, 0 already known, 0 too big \(scope \*, 4 transactions, 1 pass, "
                      r"(\d+) judged right and not learned\)", out)
    assert found, out
    learned, right = int(found[1]), int(found[2])
    assert 100 <= learned < MESSAGES and learned + right == MESSAGES and right > 0
    totals, seen, rows, _ = _state(db)
    assert totals == (150, learned) and seen == learned
    assert rows == _expected(_learned_ham(db, messages))  # exact counts: each learned message once

    # more passes: the ones judged right are judged again; bounded, and what was learned is known, not recounted
    out = _learn(config, "--ham", str(maildir), "--until-correct", "3")
    found = re.search(r"ham: (\d+) learned, (\d+) already known, 0 too big \(scope \*, (\d+) transactions?, "
                      r"(\d) pass(?:es)?, (\d+) judged right", out)
    assert found, out
    more, known, tx, passes, right2 = map(int, found.groups())
    assert known == learned and more + right2 == right and 1 <= passes <= 3
    assert 4 <= tx <= 4 + (passes - 1) * -(-right // 500)  # pass 1 over every file, later passes over the rest
    totals, seen, rows, _ = _state(db)
    assert totals == (150, learned + more) and seen == learned + more
    assert rows == _expected(_learned_ham(db, messages))

    # the same run again learns nothing new: nothing changed, so one pass
    out = _learn(config, "--ham", str(maildir), "--until-correct")
    assert f"ham: 0 learned, {learned + more} already known" in out and ", 1 pass, " in out
    assert _state(db)[0] == (150, learned + more)


def test_until_correct_wants_a_positive_number_of_passes(setup: tuple[Path, Path, list[bytes]]) -> None:
    config, maildir, _ = setup
    out = subprocess.run(mailsrv_cmd("policy", "learn", "--ham", str(maildir), "--until-correct", "0",
                                     "-c", str(config)), capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "--until-correct" in out.stderr
    assert not _db(config).exists() or _state(_db(config))[0] is None
