"""Real processes: concurrent delivery, and SIGKILL at random points of delivery, append, flags, expunge.

Children are forked (no exec: start-up in milliseconds, so hundreds of trials
fit in seconds); each builds its own event loop and Store after the fork.
A child reports an operation on its pipe only after the store call returned
(= acknowledged); the parent kills it at a random instant and then checks,
with a fresh Store, that nothing acknowledged was lost or duplicated and no
UID was reused.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import select
import signal
import time
from pathlib import Path

from support.forked import read_pipe, spawn

from mailsrv.config import StoreConfig
from mailsrv.store import DeliveryTarget, MessageGone, Store

from .conftest import msg

MSGID = re.compile(rb"Message-ID: <m([^@>]+)@")


async def _child(data_dir: Path, wfd: int, seed: int, ops: int, mode: str) -> None:
    """Runs in the forked child."""
    rng = random.Random(seed)
    store = Store(StoreConfig(), data_dir, hostname="crash.test")
    acct = await store.account("u")
    view = await acct.open_mailbox("INBOX")
    uids = [m.uid for m in view.messages]
    os.write(wfd, b"R\n")
    for n in range(ops):
        mid = f"s{seed}n{n}"
        choice = rng.random() if mode == "mixed" else 0.0
        if choice < 0.4:
            sp = data_dir / "spool" / f"{mid}"
            sp.parent.mkdir(exist_ok=True)
            sp.write_bytes(msg(mid))
            res = await store.deliver(sp, [DeliveryTarget(acct)])
            sp.unlink()
            assert res[0].status == "ok", res
            os.write(wfd, f"D {mid} {res[0].uid}\n".encode())
        elif choice < 0.6:
            uid = await acct.append("INBOX", msg(mid))
            uids.append(uid)
            os.write(wfd, f"A {mid} {uid}\n".encode())
        elif choice < 0.85 and uids:
            uid = rng.choice(uids)
            mode_ = rng.choice(["add", "remove"])
            os.write(wfd, f"f {uid} {mode_}\n".encode())
            mod, _ = await acct.store_flags("INBOX", [uid], frozenset({"\\Flagged"}), mode_)  # type: ignore[arg-type]
            if mod:
                os.write(wfd, f"F {uid} {mode_}\n".encode())
        elif uids:
            uid = uids.pop(rng.randrange(len(uids)))
            try:  # which message it is: another process may have indexed it
                found = MSGID.search(await acct.read_message("INBOX", uid))
            except MessageGone:
                continue
            victim = found.group(1).decode() if found else "?"
            os.write(wfd, f"x {uid} {victim}\n".encode())
            done = await acct.expunge("INBOX", [uid], only_deleted=False)
            if done:
                os.write(wfd, f"X {uid} {victim}\n".encode())


def _spawn(data_dir: Path, seed: int, ops: int, mode: str = "mixed") -> tuple[int, int]:
    return spawn(lambda wfd: _child(data_dir, wfd, seed, ops, mode), data_dir / f"child-{seed}.err")


async def _state(data_dir: Path) -> tuple[int, dict[int, str], dict[int, frozenset[str]], list[str]]:
    store = Store(StoreConfig(), data_dir, hostname="check.test")
    try:
        acct = await store.account("u")
        view = await acct.open_mailbox("INBOX")
        uid_to_mid: dict[int, str] = {}
        flags: dict[int, frozenset[str]] = {}
        for m in view.messages:
            raw = await acct.read_message("INBOX", m.uid)
            found = MSGID.search(raw)
            assert found, raw
            uid_to_mid[m.uid] = found.group(1).decode()
            flags[m.uid] = m.flags
        # every file on disk is one indexed message (no strays, no duplicates)
        root = data_dir / "mail" / "u"
        files = [n for d in ("cur", "new") for n in os.listdir(root / d)]
        assert len(files) == len(view.messages), (files, view.messages)
        return view.uidvalidity, uid_to_mid, flags, files
    finally:
        await store.close()


def test_concurrent_processes_deliver_each_message_once(tmp_path: Path) -> None:
    procs = [_spawn(tmp_path, seed, 25, mode="deliver") for seed in range(4)]
    logs = {}
    for pid, fd in procs:
        logs[pid] = read_pipe(fd, time.monotonic() + 60).decode()
        os.close(fd)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    _, uid_to_mid, _, _ = asyncio.run(_state(tmp_path))
    mids = list(uid_to_mid.values())
    assert len(mids) == 100 and len(set(mids)) == 100
    assert sorted(uid_to_mid) == list(range(1, 101))
    mid_to_uid = {m: u for u, m in uid_to_mid.items()}
    for seed in range(4):
        order = [mid_to_uid[f"s{seed}n{n}"] for n in range(25)]
        assert order == sorted(order)  # one process's deliveries get increasing UIDs


def _where(data_dir: Path, mids: set[str]) -> str:
    """Diagnostics for a failure: where the files and uidlist lines of these messages are."""
    root = data_dir / "mail" / "u"
    out = []
    for sub in ("cur", "new", "tmp"):
        for p in (root / sub).iterdir():
            if p.is_file() and any(f"<m{m}@".encode() in p.read_bytes() for m in mids):
                out.append(f"{sub}/{p.name}")
    return f"files={out} uidlist_tail={(root / 'mailsrv-uidlist').read_bytes()[-600:]!r}"


def _trials(tmp_path: Path, rng: random.Random, dirs: int, trials_per_dir: int, procs: int) -> int:
    """Run kill trials with ``procs`` concurrent children; returns how many children died by SIGKILL."""
    killed = 0
    for d in range(dirs):
        data_dir = tmp_path / f"d{d}"
        data_dir.mkdir()
        uidvalidity = None
        uid_owner: dict[int, str] = {}  # every uid ever seen -> its message (no reuse)
        present: set[str] = set()  # acknowledged and not acknowledged-expunged
        expunged_uids: set[int] = set()
        flagged: dict[int, bool] = {}
        appended: dict[int, str] = {}
        acked_uids: dict[int, str] = {}  # uid -> message, from the acknowledgements themselves
        for t in range(trials_per_dir):
            children = [_spawn(data_dir, (d * 1000 + t) * 10 + c, 40) for c in range(procs)]
            for _pid, fd in children:  # wait for "ready", then kill after a random delay
                assert select.select([fd], [], [], 30)[0], "child did not start"
            outs = [os.read(fd, 2) for _pid, fd in children]
            time.sleep(rng.uniform(0.0, 0.06))  # the random crash point (not synchronisation)
            for pid, _fd in children:
                os.kill(pid, signal.SIGKILL)
            touched: dict[int, int] = {}
            gone_mids: set[str] = set()  # messages whose expunge began
            uncertain: set[int] = set()  # flag change begun but not acknowledged
            maybe_gone: set[int] = set()  # expunge begun but not acknowledged
            for c, (pid, fd) in enumerate(children):
                _, status = os.waitpid(pid, 0)
                out = outs[c] + read_pipe(fd, time.monotonic() + 5)
                os.close(fd)
                if os.WIFEXITED(status):
                    err = data_dir / f"child-{(d * 1000 + t) * 10 + c}.err"
                    assert os.WEXITSTATUS(status) == 0, f"child failed: {err.read_text()}"
                else:
                    killed += 1
                for line in out.decode().splitlines():
                    parts = line.split()
                    if parts[0] in ("D", "A"):
                        present.add(parts[1])
                        if parts[2] != "None":
                            prev = acked_uids.setdefault(int(parts[2]), parts[1])
                            assert prev == parts[1], f"uid {parts[2]} given to {prev} and {parts[1]}"
                        if parts[0] == "A":
                            appended[int(parts[2])] = parts[1]
                    elif parts[0] == "f":
                        uncertain.add(int(parts[1]))
                        touched[int(parts[1])] = touched.get(int(parts[1]), 0) | (1 << c)
                    elif parts[0] == "F":
                        flagged[int(parts[1])] = parts[2] == "add"
                        uncertain.discard(int(parts[1]))
                    elif parts[0] == "x":
                        maybe_gone.add(int(parts[1]))
                        gone_mids.add(parts[2])
                    elif parts[0] == "X":
                        expunged_uids.add(int(parts[1]))
                        maybe_gone.discard(int(parts[1]))
                        gone_mids.add(parts[2])
            # two processes changing one message's flags: their order is unknown here
            uncertain |= {u for u, mask in touched.items() if mask & (mask - 1)}
            uv, uid_to_mid, flags, _ = asyncio.run(_state(data_dir))
            if uidvalidity is None:
                uidvalidity = uv
            assert uv == uidvalidity, "UIDVALIDITY changed"
            for uid, mid in uid_to_mid.items():
                assert uid_owner.setdefault(uid, mid) == mid, f"uid {uid} reused"
                assert uid not in expunged_uids, f"expunged uid {uid} came back"
            mids = list(uid_to_mid.values())
            assert len(mids) == len(set(mids)), "duplicate message"
            owners = {**appended, **uid_owner}
            gone = {owners[u] for u in expunged_uids | maybe_gone if u in owners} | gone_mids
            missing = present - set(mids) - gone
            assert not missing, f"acknowledged messages lost: {missing} {_where(data_dir, missing)}"
            present -= gone
            expunged_uids |= {u for u in maybe_gone if u not in uid_to_mid}
            for uid, on in flagged.items():
                if uid in flags and uid not in uncertain:
                    assert ("\\Flagged" in flags[uid]) == on, f"acknowledged flag change lost on uid {uid}"
            for uid in uncertain:
                if uid in flags:
                    flagged[uid] = "\\Flagged" in flags[uid]
        assert uid_owner and expunged_uids and flagged  # the directory saw real work
    return killed


def test_sigkill_at_random_points(tmp_path: Path) -> None:
    """150 trials: one process killed at a random instant of delivery, append, flags or expunge."""
    killed = _trials(tmp_path, random.Random(20261126), dirs=6, trials_per_dir=25, procs=1)
    assert killed > 110


def test_sigkill_two_concurrent_writers(tmp_path: Path) -> None:
    """100 trials: two processes on one mailbox, both killed at the same random instant."""
    killed = _trials(tmp_path, random.Random(7), dirs=4, trials_per_dir=25, procs=2)
    assert killed > 150
