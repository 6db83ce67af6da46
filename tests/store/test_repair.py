"""Bad state on disk: deleted or corrupt index, Dovecot adoption, unreadable files, a full disk."""

from __future__ import annotations

import os
import resource
import signal
from pathlib import Path

import pytest
from support.forked import spawn

from mailsrv.config import StoreConfig
from mailsrv.store import Store, TemporaryFailure
from mailsrv.store.engine import INDEX_NAME, UIDLIST_NAME

from .conftest import msg


def _drop_index(root: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        p = root / (INDEX_NAME + suffix)
        if p.exists():
            p.unlink()


def test_deleted_index_is_rebuilt_with_same_uids(make_store, run, tmp_path: Path) -> None:
    store = make_store()
    a = run(store.account("alice"))
    for i in range(6):
        run(a.append("INBOX", msg(i), frozenset({"\\Seen"}) if i == 2 else frozenset()))
    run(a.append("Sent", msg("s")))
    run(a.store_flags("INBOX", [4], frozenset({"$Forwarded", "Work"}), "add"))
    run(a.expunge("INBOX", [6], only_deleted=False))  # the highest uid is gone
    before = run(a.open_mailbox("INBOX"))
    hms = before.highestmodseq
    run(store.close())

    _drop_index(tmp_path / "mail" / "alice")
    store2 = make_store()
    a2 = run(store2.account("alice"))
    after = run(a2.open_mailbox("INBOX"))
    assert after.uidvalidity == before.uidvalidity
    assert [m.uid for m in after.messages] == [1, 2, 3, 4, 5]
    assert after.by_uid(3).flags == frozenset({"\\Seen"})
    assert after.by_uid(4).flags == frozenset({"$Forwarded", "Work"})  # keywords live in the file name too
    for m in after.messages:
        assert run(a2.read_message("INBOX", m.uid)) == msg(m.uid - 1)
    assert after.highestmodseq > hms  # modseqs never go back
    # uid 6 was used and expunged: it must not come back
    assert run(a2.append("INBOX", msg(7))) == 7
    assert [m.uid for m in run(a2.open_mailbox("Sent")).messages] == [1]
    assert run(a2.quota_usage()).messages == 7


def test_lost_uid_map_gets_new_uidvalidity(make_store, run, tmp_path: Path) -> None:
    store = make_store()
    a = run(store.account("alice"))
    run(a.append("INBOX", msg(1)))
    uv = run(a.open_mailbox("INBOX")).uidvalidity
    run(store.close())
    root = tmp_path / "mail" / "alice"
    _drop_index(root)
    (root / UIDLIST_NAME).unlink()
    os.utime(root / "cur", ns=(5, 5))
    store2 = make_store()
    a2 = run(store2.account("alice"))
    v = run(a2.open_mailbox("INBOX"))
    assert len(v.messages) == 1
    assert v.uidvalidity >= uv and v.messages[0].uid == 1  # a fresh map, numbered anew
    assert (root / UIDLIST_NAME).exists()


def test_corrupt_index_is_moved_aside_and_rebuilt(make_store, run, tmp_path: Path) -> None:
    store = make_store()
    a = run(store.account("alice"))
    for i in range(3):
        run(a.append("INBOX", msg(i)))
    run(store.close())
    root = tmp_path / "mail" / "alice"
    db = root / INDEX_NAME
    # checkpointed content, then truncated to garbage
    db.write_bytes(b"SQLite format 3\x00" + b"\xff" * 100)
    for suffix in ("-wal", "-shm"):
        if (root / (INDEX_NAME + suffix)).exists():
            (root / (INDEX_NAME + suffix)).unlink()
    store2 = make_store()
    a2 = run(store2.account("alice"))
    v = run(a2.open_mailbox("INBOX"))
    assert [m.uid for m in v.messages] == [1, 2, 3]
    assert any(p.name.startswith(INDEX_NAME + ".corrupt.") for p in root.iterdir())


def test_dovecot_maildir_is_adopted(make_store, run, tmp_path: Path) -> None:
    root = tmp_path / "dovecot" / "bob"
    for d in ("cur", "new", "tmp", ".Sent/cur", ".Sent/new", ".Sent/tmp"):
        (root / d).mkdir(parents=True)
    m1, m2, m3 = msg(1), msg(2), msg(3)
    (root / "cur" / f"1700000000.M1P1.mx,S={len(m1)},W={len(m1) + 4}:2,S").write_bytes(m1)
    (root / "cur" / "1700000001.M2P1.mx:2,FR").write_bytes(m2)
    (root / "new" / "1700000002.M3P1.mx").write_bytes(m3)  # not yet in the uidlist
    (root / "cur" / "1700000000.M0P1.mx:2,").write_bytes(msg(0))  # uid 10, expunged by hand
    # Dovecot's documented format: version 3 header, then "<uid> [ext] :<base>"
    (root / "dovecot-uidlist").write_bytes(
        b"3 V1234567890 N45 G0123456789abcdef0123456789abcdef\n"
        b"10 :1700000000.M0P1.mx\n"
        b"12 :1700000000.M1P1.mx,S=" + str(len(m1)).encode() + b",W=" + str(len(m1) + 4).encode() + b"\n"
        b"40 W130 S" + str(len(m2)).encode() + b" :1700000001.M2P1.mx\n"
    )
    (root / ".Sent" / "cur" / "1700000005.M9P1.mx:2,Sab").write_bytes(msg(9))
    (root / ".Sent" / "dovecot-keywords").write_bytes(b"0 $Forwarded\n1 Project\n")
    (root / ".Sent" / "dovecot-uidlist").write_bytes(b"3 V77 N8 G00112233445566778899aabbccddeeff\n7 :1700000005.M9P1.mx\n")
    os.unlink(root / "cur" / "1700000000.M0P1.mx:2,")

    store = make_store()
    b = run(store.account("bob", root))
    v = run(b.open_mailbox("INBOX"))
    assert v.uidvalidity == 1234567890
    assert [m.uid for m in v.messages] == [12, 40, 45]
    assert v.by_uid(12).flags == frozenset({"\\Seen"})
    assert v.by_uid(40).flags == frozenset({"\\Flagged", "\\Answered"})
    assert run(b.read_message("INBOX", 45)) == m3
    assert v.uidnext == 46
    s = run(b.open_mailbox("Sent"))
    assert s.uidvalidity == 77 and [m.uid for m in s.messages] == [7]
    assert s.by_uid(7).flags == frozenset({"\\Seen", "$Forwarded", "Project"})
    assert run(b.append("Sent", msg(10))) == 8
    # Dovecot's own file is left alone
    assert (root / "dovecot-uidlist").read_bytes().startswith(b"3 V1234567890 N45")


def test_unreadable_file_does_not_block_the_others(make_store, run, tmp_path: Path) -> None:
    store = make_store()
    a = run(store.account("alice"))
    root = tmp_path / "mail" / "alice"
    (root / "new" / "broken").mkdir()  # reading it fails (EISDIR), like a file we may not read
    (root / "new" / "good").write_bytes(msg(1))
    v = run(a.open_mailbox("INBOX"))
    assert [m.uid for m in v.messages] == [1]
    assert run(a.append("INBOX", msg(2))) == 2


def test_full_disk_is_a_temporary_failure(tmp_path: Path) -> None:
    """A child with RLIMIT_FSIZE (writes fail like ENOSPC) gets TemporaryFailure, keeps serving."""

    async def main(_w: int) -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        store = Store(StoreConfig(), tmp_path, hostname="full.test")
        acct = await store.account("u")
        await acct.append("INBOX", msg(1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))
        with pytest.raises(TemporaryFailure):
            await acct.append("INBOX", msg(2) + b"x" * (5 << 20))
        assert await acct.read_message("INBOX", 1) == msg(1)
        assert await acct.append("INBOX", msg(3)) == 2  # small enough: still works
        await store.close()

    err = tmp_path / "child.err"
    pid, r = spawn(main, err)
    _, status = os.waitpid(pid, 0)
    os.close(r)
    assert os.waitstatus_to_exitcode(status) == 0, err.read_text() if err.exists() else ""


@pytest.mark.parametrize("garbage", [b"", b"3 V1 N\n", b"not a uidlist at all\n"])
def test_broken_uidlist_header_keeps_working(make_store, run, tmp_path: Path, garbage: bytes) -> None:
    store = make_store()
    a = run(store.account("alice"))
    run(a.append("INBOX", msg(1)))
    run(store.close())
    root = tmp_path / "mail" / "alice"
    (root / UIDLIST_NAME).write_bytes(garbage)
    _drop_index(root)
    store2 = make_store()
    a2 = run(store2.account("alice"))
    v = run(a2.open_mailbox("INBOX"))
    assert len(v.messages) == 1
    assert run(a2.append("INBOX", msg(2))) > v.messages[0].uid


def test_uid_map_is_compacted_and_keeps_uids(make_store, run, tmp_path: Path) -> None:
    store = make_store()
    a = run(store.account("alice"))
    root = tmp_path / "mail" / "alice"
    for i in range(1200):  # about 90 KB of UID map; dropped into new/ like another MDA would
        (root / "new" / f"1700000000.M{i:06d}P12345Q{i}.mda.example.test.a-long-host-name").write_bytes(msg(i))
    assert len(run(a.open_mailbox("INBOX")).messages) == 1200
    before = (root / UIDLIST_NAME).stat().st_size
    keep = [7, 600, 1200]
    run(a.expunge("INBOX", [u for u in range(1, 1201) if u not in keep], only_deleted=False))
    after = (root / UIDLIST_NAME).stat().st_size
    assert after < before / 10
    assert (root / UIDLIST_NAME).read_bytes().startswith(b"3 V")
    run(store.close())
    _drop_index(root)
    a2 = run(make_store().account("alice"))
    assert [m.uid for m in run(a2.open_mailbox("INBOX")).messages] == keep
    assert run(a2.append("INBOX", msg(1))) == 1201  # N in the header: no reuse of 1201 and below
