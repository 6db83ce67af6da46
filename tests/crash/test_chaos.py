"""kill -9 under mixed load: the real ``mailsrv serve`` (master, 2 workers, queue owner) while every protocol
writes at once, and after each restart what the server acknowledged is checked against what it holds.

Writers (tests/crash/crash_support.py), one thread each, recording every acknowledgement:
a raw pipelined SMTP client to bob and one to a group (carol, dave) on the MTA listener (250 after DATA);
alice's smtplib on submissions relaying to far@remote.test, routed to a local aiosmtpd sink; alice over
IMAPS (APPEND with APPENDUID, UID STORE \\Flagged, UID MOVE with COPYUID, UID EXPUNGE); bob over POP3S
(DELE, then +OK after QUIT); erin over JMAP (Email/import's created id, Email/set destroy).

Each round SIGKILLs, at a seeded random count of acknowledgements, one of: a worker (the master restarts
it), the queue owner (restarted), or the master with its whole process group (the test restarts it). With
the writers stopped, after the restart:

* every acknowledged message is there exactly once (Message-ID, body hash), in a folder it may be in
  (either end of a MOVE whose answer was lost), with the UID it was given and its acknowledged \\Flagged;
  an unacknowledged one (its answer lost with the process) at most once; nothing never sent appears;
* nothing whose delete was acknowledged comes back (POP3 DELE + QUIT +OK, UID EXPUNGE OK, JMAP destroyed);
* per folder: UIDVALIDITY kept, UIDNEXT and HIGHESTMODSEQ never go back, a UID seen before names the
  same message or nothing, a UID not seen before is at or above the last verification's UIDNEXT;
* SEARCH BODY finds every message of ours (the index caught up) and a few by their own word;
* each account's quota (GETQUOTAROOT STORAGE in KiB, rounded up, and MESSAGE) and the domain's usage
  (``mailsrv quota show``) equal the sum of the messages' RFC822.SIZE and their count;
* every message 250'd to the remote recipient reaches the sink (at least once: a duplicate after a
  crash between the remote 250 and the queue's record is SMTP's at-least-once, RFC 5321 §6.1), and at
  the end the queue is empty (no entry lost or stuck).

``MAILSRV_CRASH_ROUNDS`` (default 3: each victim once) sets the rounds; ``MAILSRV_CRASH_SEED`` replays a
seed (printed on failure and at the end); ``MAILSRV_CRASH_VICTIMS`` (e.g. ``queue`` or ``worker,master``)
limits the victims. Eventual steps (the background indexer, the queue's retry,
the domain usage book's catch-up) are waited for with a deadline, never a sleep.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from crash_support import (
    ACCOUNTS,
    GROUP,
    MEMBERS,
    MSGID,
    D,
    Ledger,
    Seen,
    check_messages,
    check_uids,
    domain_usage,
    imap_login,
    quota_of,
    read_account,
    search_gaps,
    settle,
    start_writers,
)
from support.admin import cli
from support.server import ServerProcess, init_setup, mailsrv_cmd, wait_until

PW = "chaos test password"
SINK = Path(__file__).parent.parent / "queue" / "sink_process.py"
#: how long an eventual step may take on two loaded cores before it counts as lost
PATIENCE = 60.0


class Cluster:
    """The server under test (replaced after a master kill), its clients' credentials, the sink's folder."""

    def __init__(self, cfg: Path, users: dict[str, str], token: str, sink: Path) -> None:
        import ssl

        self.cfg, self.users, self.token, self.sink = cfg, users, token, sink
        self.ctx = ssl.create_default_context(cafile=str(cfg.parent / "tls" / "cert.pem"))
        self.srv = ServerProcess(cfg, session=True).wait_ready()
        self.problems: list[str] = []
        self.uidvalidity: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def note_uidvalidity(self, account: str, folder: str, value: int) -> None:
        """A UIDVALIDITY a writer was given (APPENDUID, COPYUID): one value per folder, ever."""
        with self._lock:
            if self.uidvalidity.setdefault((account, folder), value) != value:
                self.problems.append(f"{account}/{folder}: UIDVALIDITY {self.uidvalidity[(account, folder)]} "
                                     f"then {value}")

    def pid_of(self, pattern: str) -> int:
        """The pid in the last log line matching ``pattern`` (its group 1)."""
        return int([m.group(1) for line in self.srv.lines if (m := re.search(pattern, line))][-1])

    def kill(self, victim: str, rng: random.Random) -> None:
        """SIGKILL ``victim`` and wait until the server serves again (a restarted worker or owner, or a new
        master)."""
        mark = self.srv.mark()
        if victim == "worker":
            pid = rng.choice(sorted(self.pid_of(rf"worker\.started pid=(\d+) slot={slot} ") for slot in (0, 1)))
            self.victim = pid
            os.kill(pid, signal.SIGKILL)
            self.srv.wait_for(r"master worker\.started ", start=mark, timeout=PATIENCE)
        elif victim == "queue":
            self.victim = pid = self.pid_of(r"singleton\.started name=queue pid=(\d+)")
            os.kill(pid, signal.SIGKILL)
            self.srv.wait_for(r"singleton\.started name=queue ", start=mark, timeout=PATIENCE)
        else:
            os.killpg(self.srv.proc.pid, signal.SIGKILL)  # the master, its workers and the queue owner
            self.srv.proc.wait(30)
            self.srv.stop()

    def restart(self) -> None:
        self.srv = ServerProcess(self.cfg, session=True).wait_ready()


def _user(cfg: Path, name: str) -> None:
    p = subprocess.run(mailsrv_cmd("user", "add", f"{name}@{D}", "--password-stdin", "--quota", "1G",
                                   "--quota-messages", "1000000", "-c", str(cfg)),
                       input=PW + "\n", capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    sink_dir = tmp_path / "sink"
    sink_dir.mkdir()
    sink = subprocess.Popen([sys.executable, str(SINK), str(sink_dir)], stdout=subprocess.PIPE, text=True)
    assert sink.stdout is not None
    port = int(sink.stdout.readline())
    cfg = init_setup(tmp_path / "s", "--demo", workers=2)
    users = dict(re.findall(r"demo user (\S+) password (\S+)", (tmp_path / "s" / "demo-users.txt").read_text()))
    for name in ("alice", "bob"):
        cli(cfg, "user", "set", f"{name}@{D}", "--quota", "1G", "--quota-messages", "1000000")
    for name in ("carol", "dave", "erin"):
        _user(cfg, name)
        users[f"{name}@{D}"] = PW
    cli(cfg, "group", "add", GROUP)
    for name in MEMBERS:
        cli(cfg, "group", "member", "add", GROUP, f"{name}@{D}")
    token = re.search(r'"token": "([^"]+)"', cli(cfg, "token", "issue", f"erin@{D}", "--scope", "mail", "--json"))
    assert token is not None
    with open(cfg, "a") as fh:
        fh.write(f'\n[policy]\nenabled = false\n\n[queue]\nretry_schedule = [1]\n\n'
                 f'[queue.route."remote.test"]\nsmarthost = "127.0.0.1:{port}"\ntls = "none"\n')
    c = Cluster(cfg, users, token.group(1), sink_dir)
    try:
        m = imap_login(c, "alice")
        assert m.create("Archive")[0] in ("OK", "NO")  # NO: a special-use folder made at the account's first use
        m.logout()
        yield c
    finally:
        c.srv.stop()
        sink.terminate()
        sink.wait(10)
        sink.stdout.close()


def _verify(c: Cluster, ledger: Ledger, rng: random.Random) -> tuple[list[str], dict[str, Seen]]:
    """Every invariant but the sink's; waits (deadline PATIENCE) for the eventual ones to settle."""
    deadline = time.monotonic() + PATIENCE
    while True:
        seen = {a: read_account(c, a) for a in ACCOUNTS}
        problems = list(c.problems)
        check_messages(ledger, seen, problems)
        for a, s in seen.items():
            check_uids(ledger, a, s, problems)
            problems += search_gaps(c, a, s, rng)
            size, count = sum(r[3] for r in s.rows), len(s.rows)
            quota = quota_of(c, a)
            if quota != (-(-size // 1024), count):
                problems.append(f"{a}: GETQUOTAROOT says {quota}, its messages {(-(-size // 1024), count)}")
        total = (sum(r[3] for s in seen.values() for r in s.rows), sum(len(s.rows) for s in seen.values()))
        if (usage := domain_usage(c.cfg)) != total:
            problems.append(f"{D}: quota show says {usage}, the messages {total}")
        if not problems or time.monotonic() > deadline:
            return problems, seen


def _sunk(c: Cluster) -> set[str]:
    out = set()
    for p in c.sink.glob("*.eml"):
        if found := MSGID.search(p.read_bytes()):
            out.add(found.group(1).decode())
    return out


def _acks(ledger: Ledger, more: int) -> None:
    """Wait until the writers got ``more`` acknowledgements (the kill's seeded moment)."""
    target = ledger.acks + more
    wait_until(lambda: ledger.acks >= target, timeout=PATIENCE)


def _sink_has_all(c: Cluster, ledger: Ledger, where: str) -> None:
    """Every message 250'd to far@remote.test reaches the sink (the queue retries after a crash)."""
    remote = {m.mid for m in ledger.msgs.values() if m.remote and m.present == "yes"}
    try:
        wait_until(lambda: remote <= _sunk(c), timeout=PATIENCE)
    except AssertionError:
        raise AssertionError(f"{where}: 250'd but not at the sink: {sorted(remote - _sunk(c))}") from None


def test_kill_9_under_mixed_load(cluster: Cluster) -> None:
    rounds = int(os.environ.get("MAILSRV_CRASH_ROUNDS", "3"))
    seed = int(os.environ.get("MAILSRV_CRASH_SEED", str(random.randrange(2**32))))
    rng = random.Random(seed)
    ledger = Ledger(random.Random(seed + 1))
    c = cluster
    t0 = time.monotonic()
    victims: list[str] = []
    try:
        _rounds(c, ledger, rng, rounds, seed, victims)
    except BaseException as exc:
        exc.add_note(f"seed={seed} (MAILSRV_CRASH_SEED replays it); victim pid {getattr(c, 'victim', None)}")
        tree = subprocess.run(["ps", "-o", "pid,stat,wchan:20,cmd", "-s", str(c.srv.proc.pid)],
                              capture_output=True, text=True).stdout
        exc.add_note(tree + "\n".join(c.srv.lines[-15:]))
        raise
    wait_until(lambda: not cli(c.cfg, "queue", "list", "--json").strip(), timeout=PATIENCE, interval=0.5)
    # the delivery journal ([store] journal, on by default) was in use, and every journal a killed process
    # left was replayed and removed (by its replacement, or the restarted master): two per live worker
    journals = c.cfg.parent / tomllib.loads(c.cfg.read_text())["server"].get("data_dir", "data") / "journal"
    wait_until(lambda: len(list(journals.glob("*.mj"))) == 2 * 2, timeout=PATIENCE)  # (workers=2: cluster())
    states: dict[str, int] = {}
    for m in ledger.msgs.values():
        states[m.present] = states.get(m.present, 0) + 1
    print(f"\nseed={seed}: {rounds} rounds in {time.monotonic() - t0:.1f}s, {ledger.acks} acknowledgements, "
          f"messages {states}, {ledger.batches} IMAP commands on several, sink {len(list(c.sink.glob('*.eml')))} files")


def _rounds(c: Cluster, ledger: Ledger, rng: random.Random, rounds: int, seed: int, victims: list[str]) -> None:
    for r in range(rounds):
        if not victims:
            victims = os.environ.get("MAILSRV_CRASH_VICTIMS", "worker,queue,master").split(",")
            rng.shuffle(victims)
        victim = victims.pop()
        where = f"seed={seed} round={r} victim={victim}"
        stop = threading.Event()
        writers = start_writers(c, ledger, stop, seed + r)
        try:
            _acks(ledger, rng.randint(10, 60))
            c.kill(victim, rng)
            if victim != "master":  # the survivors and the restarted process take writes again
                _acks(ledger, 10)
        finally:
            stop.set()
            for w in writers:
                w.join(PATIENCE)
        assert not [w.name for w in writers if w.is_alive()], where
        if victim == "master":
            c.restart()
        problems, seen = _verify(c, ledger, rng)
        assert not problems, f"{where}:\n" + "\n".join(problems[:40])
        _sink_has_all(c, ledger, where)
        settle(ledger, seen)
