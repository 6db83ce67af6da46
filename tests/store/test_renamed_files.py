"""Files renamed by another process between reading the index and using the file name.

A worker's flag change (or mutt, or a refresh finishing a move out of new/) renames a
message file while this process is about to link, rename or unlink it. The key (base
name) never changes, so the store must follow the file, never skip or resurrect it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from mailsrv.store import DeliveryTarget

from .conftest import msg, spool

ROOT = ("mail", "alice")


def _external_rename_all(folder: Path, info: str) -> None:
    """Another program (in another process) renames every file in cur/ to new flags."""
    script = textwrap.dedent("""
        import os, sys
        cur = os.path.join(sys.argv[1], "cur")
        for n in os.listdir(cur):
            os.rename(os.path.join(cur, n), os.path.join(cur, n.split(":")[0] + ":2," + sys.argv[2]))
    """)
    subprocess.run([sys.executable, "-c", script, str(folder), info], check=True, timeout=60)


def _fill(store, run, tmp_path: Path, n: int):  # type: ignore[no-untyped-def]
    acct = run(store.account("alice"))
    uids = [run(acct.append("INBOX", msg(i, f"m{i}"))) for i in range(n)]
    return acct, uids


def test_copy_move_expunge_store_follow_external_renames(make_store, run, tmp_path: Path) -> None:
    store = make_store()
    acct, uids = _fill(store, run, tmp_path, 4)
    inbox = tmp_path.joinpath(*ROOT)
    _external_rename_all(inbox, "F")  # the index still has the old names
    mapping = run(acct.copy("INBOX", uids[:2], "Archive"))
    assert [m[0] for m in mapping] == uids[:2]
    _external_rename_all(inbox, "S")
    moved = run(acct.move("INBOX", [uids[2]], "Trash"))
    assert [m[0] for m in moved] == [uids[2]]
    _external_rename_all(inbox, "T")
    modified, _ = run(acct.store_flags("INBOX", [uids[0]], frozenset({"\\Answered"}), "add"))
    assert [m.uid for m in modified] == [uids[0]]
    _external_rename_all(inbox, "R")
    assert run(acct.expunge("INBOX", [uids[1]], only_deleted=False)) == [uids[1]]
    # the files on disk match: one per remaining message, nothing left for a reconcile to adopt
    names = sorted(p.name for p in (inbox / "cur").iterdir())
    assert len(names) == 2
    assert all(n.endswith(":2,R") for n in names)  # the last outside rename stands (STORE came before it)
    assert len(list((inbox / ".Archive" / "cur").iterdir())) == 2
    assert len(list((inbox / ".Trash" / "cur").iterdir())) == 1
    # a fresh store (another process after a restart) sees exactly the same messages
    store2 = make_store()
    acct2 = run(store2.account("alice"))
    run(acct2.sync("INBOX"))
    msgs = run(acct2.open_mailbox("INBOX")).messages
    assert [m.uid for m in msgs] == [uids[0], uids[3]]
    arch = run(acct2.open_mailbox("Archive")).messages
    assert len(arch) == 2
    for m in arch:
        assert run(acct2.read_message("Archive", m.uid)).startswith(b"From: a@example.test")


FLAGGER = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from mailsrv.config import StoreConfig
    from mailsrv.store import Store

    async def main():
        store = Store(StoreConfig(), Path(sys.argv[1]), hostname="other.example")
        acct = await store.account("alice")
        uids = [m.uid for m in (await acct.open_mailbox("INBOX")).messages]
        print("ready", flush=True)
        for i in range(int(sys.argv[2])):
            await acct.store_flags("INBOX", uids, frozenset({"\\\\Flagged"}), "add" if i % 2 == 0 else "remove")
        await store.close()

    asyncio.run(main())
""")


def test_copy_while_another_process_changes_flags(make_store, run, tmp_path: Path) -> None:
    """Real processes: copies in this one, flag renames of the same files in another."""
    store = make_store()
    acct, uids = _fill(store, run, tmp_path, 6)
    with subprocess.Popen([sys.executable, "-c", FLAGGER, str(tmp_path), "300"],
                          stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        copies = 0
        while proc.poll() is None or copies < 3:
            mapping = run(acct.copy("INBOX", uids, "Archive"))
            assert [m[0] for m in mapping] == uids  # none skipped because its file was renamed
            copies += 1
        assert proc.wait(timeout=60) == 0
    arch = run(acct.open_mailbox("Archive")).messages
    assert len(arch) == copies * len(uids)


def test_deliver_while_another_process_refreshes(make_store, run, tmp_path: Path) -> None:
    """A delivery links into new/ while another process's refresh moves new/ files into cur/."""
    store = make_store()
    acct = run(store.account("alice"))
    refresher = textwrap.dedent("""
        import asyncio, sys
        from pathlib import Path
        from mailsrv.config import StoreConfig
        from mailsrv.store import Store

        async def main():
            store = Store(StoreConfig(), Path(sys.argv[1]), hostname="other.example")
            acct = await store.account("alice")
            print("ready", flush=True)
            while sys.stdin.readline() == "go\\n":
                await acct.sync("INBOX")
                print("done", flush=True)
            await store.close()

        asyncio.run(main())
    """)
    with subprocess.Popen([sys.executable, "-c", refresher, str(tmp_path)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        seen = set()
        for i in range(20):
            proc.stdin.write("go\n")
            proc.stdin.flush()
            [r] = run(store.deliver(spool(tmp_path, msg(i), f"s{i}"), [DeliveryTarget(acct, "INBOX")]))
            assert r.status == "ok" and r.uid is not None and r.uid not in seen
            seen.add(r.uid)
            assert proc.stdout.readline() == "done\n"
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    run(acct.sync("INBOX"))
    msgs = run(acct.open_mailbox("INBOX")).messages
    assert sorted(m.uid for m in msgs) == sorted(seen)
