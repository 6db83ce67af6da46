"""Bad state on disk (issue 3): a truncated index, a message file removed behind our back, a file
the server may not read. Each is detected, logged, repaired or answered as a temporary failure."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from mailsrv.config import StoreConfig
from mailsrv.store import DeliveryTarget, MessageGone, QuotaUsage, Store, TemporaryFailure
from mailsrv.store.engine import INDEX_NAME

from .conftest import msg, spool

Run = Callable[[Awaitable[Any]], Any]
NOBODY = 65534


def test_truncated_index_is_rebuilt_with_uids_and_ids(make_store: Callable[..., Store], run: Run,
                                                      tmp_path: Path) -> None:
    store = make_store()
    a = run(store.account("alice"))
    for i in range(150):
        run(a.append("INBOX", msg(i, f"subject {i}", "X-Pad: " + "p" * 900 + "\r\n")))
    run(a.store_flags("INBOX", [7], frozenset({"\\Flagged"}), "add"))
    before = run(a.open_mailbox("INBOX")).messages
    run(store.close())
    root = tmp_path / "mail" / "alice"
    db = sqlite3.connect(root / INDEX_NAME)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    path = root / INDEX_NAME
    size = path.stat().st_size
    assert size > 64 * 1024
    with open(path, "r+b") as fh:  # a torn copy, a crashed file system: the second half is gone
        fh.truncate(size // 2)
    a2 = run(make_store().account("alice"))
    after = run(a2.open_mailbox("INBOX")).messages
    key = [(m.uid, m.email_id, m.thread_id, m.saved_date, m.flags) for m in before]
    assert [(m.uid, m.email_id, m.thread_id, m.saved_date, m.flags) for m in after] == key
    assert any(p.name.startswith(INDEX_NAME + ".corrupt.") for p in root.iterdir())
    assert run(a2.append("INBOX", msg(999))) == 151
    assert run(a2.quota_usage()).messages == 151


def test_message_file_removed_behind_our_back(make_store: Callable[..., Store], run: Run, tmp_path: Path) -> None:
    store = make_store()
    a = run(store.account("alice", domain="example.test"))
    for i in range(3):
        run(store.deliver(spool(tmp_path, msg(i), f"s{i}"), [DeliveryTarget(a)]))
    view = run(a.open_mailbox("INBOX"))
    mark = view.highestmodseq
    cur = tmp_path / "mail" / "alice" / "cur"
    [victim] = [p for p in cur.iterdir() if p.name.startswith(view.by_uid(2).key)]  # type: ignore[union-attr]
    victim.unlink()  # an operator's rm, a restore that missed it
    try:
        run(a.read_message("INBOX", 2))
        raise AssertionError("read a file that is gone")
    except MessageGone:
        pass
    assert [m.uid for m in run(a.open_mailbox("INBOX")).messages] == [1, 3]  # the index let it go
    since = run(a.changes_since("INBOX", mark))
    assert since.expunged == [2] and 2 in since.expunged_ids
    assert run(a.quota_usage()) == QuotaUsage(len(msg(0)) + len(msg(2)), 2)
    assert store.usage.domain_usage("example.test").messages == 2
    assert run(a.read_message("INBOX", 3)) == msg(2)


def _as_nobody(fn: Callable[[Path], int], root: Path) -> int:
    """Run ``fn(root)`` in a child process that the file permissions apply to (root bypasses them)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            if os.geteuid() == 0:
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            code = fn(root)
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _unreadable_scenario(root: Path) -> int:
    async def main() -> int:
        store = Store(StoreConfig(io_threads=2), root, hostname="perm.test")
        acct = await store.account("alice")
        for i in range(2):
            await acct.append("INBOX", msg(i))
        view = await acct.open_mailbox("INBOX")
        folder = root / "mail" / "alice"
        [first] = [p for p in (folder / "cur").iterdir() if p.name.startswith(view.messages[0].key)]
        first.chmod(0)  # e.g. restored by another user's tool
        (folder / "new" / "1700000000.M1P1.other").write_bytes(msg(7))
        (folder / "new" / "1700000000.M1P1.other").chmod(0)  # dropped by another MDA, unreadable
        (folder / "new" / "1700000001.M2P1.other").write_bytes(msg(8))
        try:
            await acct.read_message("INBOX", view.messages[0].uid)
            return 10
        except TemporaryFailure:
            pass
        if await acct.read_message("INBOX", view.messages[1].uid) != msg(1):
            return 11
        uids = [m.uid for m in (await acct.open_mailbox("INBOX")).messages]
        if len(uids) != 3:  # the readable newcomer is indexed, the unreadable one waits
            return 12
        if await acct.append("INBOX", msg(9)) != uids[-1] + 1:
            return 13
        (folder / "new" / "1700000000.M1P1.other").chmod(0o600)  # fixed: picked up next time
        if len((await acct.open_mailbox("INBOX")).messages) != 5:
            return 14
        await store.close()
        return 0

    return asyncio.run(main())


def test_file_without_read_permission() -> None:
    root = Path(tempfile.mkdtemp(prefix="mailsrv-perm-"))
    try:
        root.chmod(0o755)
        if os.geteuid() == 0:
            os.chown(root, NOBODY, NOBODY)
        assert _as_nobody(_unreadable_scenario, root) == 0
    finally:
        shutil.rmtree(root, ignore_errors=True)
