"""A really full disk (ENOSPC on a 4 MiB tmpfs in a private user and mount namespace).

Every write path meets the full file system: append (tmp/ file), delivery (link, index),
flag changes and expunge (index commit), the quota book. Each answers TemporaryFailure or
"tempfail", nothing acknowledged is lost, and once space is freed the same store goes on.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

CHILD = r'''
import asyncio, errno, json, os, sys
from pathlib import Path
from mailsrv.config import StoreConfig
from mailsrv.store import DeliveryTarget, Store, TemporaryFailure

root = Path(sys.argv[1])
MSG = b"From: a@example.test\r\nSubject: s\r\n\r\n" + b"x" * 2000 + b"\r\n"
out = {}


def fill(path):
    """Write until ENOSPC; returns the filler files' paths."""
    made = []
    for i in range(100000):
        p = path / f"filler{i}"
        made.append(p)
        try:
            with open(p, "wb") as fh:
                fh.write(b"\0" * (64 << 10))
                os.fsync(fh.fileno())
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
            break
    # the last bytes too: small files until even those fail
    for j in range(4096):
        p = path / f"small{j}"
        made.append(p)
        try:
            with open(p, "wb") as fh:
                fh.write(b"\0" * 512)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
            break
    return made


async def attempt(name, coro):
    try:
        r = await coro
    except TemporaryFailure as exc:
        out[name] = "TemporaryFailure"
        return None
    out[name] = "ok"
    return r


async def main():
    store = Store(StoreConfig(io_threads=2), root / "data", hostname="full.test")
    acct = await store.account("alice", domain="example.test")
    for i in range(3):
        await acct.append("INBOX", MSG.replace(b"Subject: s", b"Subject: %d" % i))
    spool = root / "data" / "spool"
    spool.write_bytes(MSG)
    fillers = fill(root / "data")
    await attempt("append", acct.append("INBOX", MSG))
    res = await store.deliver(spool, [DeliveryTarget(acct)])
    out["deliver"] = res[0].status
    await attempt("flags", acct.store_flags("INBOX", [1], frozenset({"\\Seen"}), "add"))
    await attempt("expunge", acct.expunge("INBOX", [2], only_deleted=False))
    await attempt("create", acct.create_mailbox("Projects"))
    view = await attempt("open", acct.open_mailbox("INBOX"))
    out["readable"] = [len(await acct.read_message("INBOX", u)) for u in (1, 3)]
    for p in fillers:
        p.unlink(missing_ok=True)
    out["after_append"] = await acct.append("INBOX", MSG)
    view = await acct.open_mailbox("INBOX")
    out["uids"] = [m.uid for m in view.messages]
    out["contents"] = [len(await acct.read_message("INBOX", m.uid)) for m in view.messages]
    out["usage"] = (await acct.quota_usage()).messages
    out["domain_usage"] = store.usage.domain_usage("example.test").messages
    await store.close()
    print(json.dumps(out))


asyncio.run(main())
'''


def test_enospc_on_a_real_full_file_system(tmp_path: Path) -> None:
    unshare = shutil.which("unshare")
    assert unshare, "util-linux unshare is needed for the tmpfs test"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    cmd = [unshare, "--user", "--map-root-user", "--mount", "sh", "-c",
           f'mount -t tmpfs -o size=4m tmpfs "{mnt}" && mkdir "{mnt}/data" && exec "{sys.executable}" "{script}" "{mnt}"']
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=str(Path(__file__).parents[2]))
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    # every write met ENOSPC and said "try later"; reads kept working
    assert out["append"] == "TemporaryFailure"
    # a delivery is a hard link of the spool: a directory entry may still fit; then it is mail in
    # new/ (acknowledged), indexed once there is room again
    assert out["deliver"] in ("ok", "tempfail")
    assert out["readable"][0] > 2000 and out["readable"][1] > 2000
    # then, with space again: nothing acknowledged was lost, no UID reused
    uids = out["uids"]
    assert out["open"] == "ok"  # a reader is served the state last committed
    # an expunge unlinks before its commit: one answered NO may still have happened (as after a
    # crash at that point; a client retries it anyway)
    assert uids[:3] == [1, 2, 3] or uids[:2] == [1, 3]
    assert uids == sorted(set(uids)) and out["after_append"] == uids[-1] and out["after_append"] >= 4
    assert all(n > 2000 for n in out["contents"])
    assert out["usage"] == out["domain_usage"] == len(uids)
    expected = 3 - (2 not in uids) + (out["deliver"] == "ok") + 1
    assert len(uids) == expected, out
    assert "Traceback" not in p.stderr
