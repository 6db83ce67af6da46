"""mailsrv.recall over a real store (maildir, fsync) and a real directory (SQLite), in process."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.spool import spool_files

from mailsrv.config import DirectoryConfig, RecallConfig, StoreConfig
from mailsrv.delivery.local import LocalDelivery
from mailsrv.directory import open_directory, open_sync
from mailsrv.recall import RECALLS_AT_ONCE, Recaller, RecallError, _Copy, normalise_message_id
from mailsrv.store import Store, TemporaryFailure, account_root
from mailsrv.store.engine import INDEX_NAME, may_hold_msgid

D = "example.test"


@dataclass
class Site:
    data_dir: Path
    store: Store
    directory: Any
    recaller: Recaller

    async def send(self, sender: str, rcpts: list[str], msgid: str, *, return_path: str | None = None,
                   subject: str = "Plans", extra: str = "") -> None:
        rp = sender if return_path is None else return_path
        head = (f"Return-Path: <{rp}>\r\n" if rp != "-" else "") + extra
        raw = (f"{head}From: {sender}\r\nTo: {', '.join(rcpts)}\r\nSubject: {subject}\r\n"
               f"Message-ID: <{msgid}>\r\n\r\n" + "body line\r\n" * 200).encode()
        local = LocalDelivery(self.directory, self.store, self.data_dir)
        res = [(r, await self.directory.resolve(r)) for r in rcpts]
        spool = self.data_dir / f"spool-{msgid}"
        out = await local.deliver(spool, res, data=raw)
        os.unlink(spool)
        assert out.delivered == len(rcpts) and not out.retry

    async def acct(self, address: str) -> Any:
        a = await self.directory.account_by_address(address)
        return await self.store.account(str(a.id), account_root(self.data_dir, a.id, a.store), domain=a.domain)

    async def inbox(self, address: str) -> list[tuple[int, str]]:
        sa = await self.acct(address)
        view = await sa.open_mailbox("INBOX")
        out = []
        for m in view.messages:
            st = (await sa.structures("INBOX", [m.uid]))[m.uid]
            out.append((m.uid, st.subject or ""))
        return out


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    sd = open_sync(DirectoryConfig(), data_dir)
    sd.add_domain(D)
    for name in ("alice", "bob", "carol", "idle"):
        sd.add_user(f"{name}@{D}", display_name=name.title())
    sd.add_alias(f"al@{D}", f"alice@{D}")
    sd.close()
    directory = open_directory(DirectoryConfig(), data_dir)
    store = Store(StoreConfig(), data_dir, hostname="test")
    s = Site(data_dir, store, directory, Recaller(RecallConfig(notice=False), store, directory, data_dir))
    yield s
    await store.close()
    await directory.close()


async def test_unread_copy_leaves_and_its_quota_with_it(site: Site) -> None:
    await site.send(f"alice@{D}", [f"bob@{D}", f"carol@{D}"], "m1@x")
    bob = await site.acct(f"bob@{D}")
    await bob.mailbox_status("INBOX")
    before = await bob.quota_usage()
    assert before.messages == 1
    # sent from her alias: still hers
    res = await site.recaller.recall(f"al@{D}", "<m1@x>")
    assert [(r.recipient, r.status) for r in res] == [(f"bob@{D}", "recalled"), (f"carol@{D}", "recalled")]
    after = await bob.quota_usage()
    assert (after.messages, after.storage) == (0, 0) and before.storage > 2000
    assert await site.inbox(f"bob@{D}") == []  # notice = false: nothing delivered
    # an account that never had mail got no maildir from the scan
    idle = await site.directory.account_by_address(f"idle@{D}")
    assert not account_root(site.data_dir, idle.id, idle.store).exists()


async def test_a_scan_cut_short_by_max_accounts_says_so(site: Site) -> None:
    await site.send(f"alice@{D}", [f"bob@{D}", f"carol@{D}"], "cut@x")
    # accounts in id order: alice, bob, carol, idle; two are looked at, carol's copy is not reached
    short = Recaller(RecallConfig(notice=False, max_accounts=2), site.store, site.directory, site.data_dir)
    res = await short.recall(f"alice@{D}", "cut@x")
    assert res.truncated and [(r.recipient, r.status) for r in res] == [(f"bob@{D}", "recalled")]
    # all four looked at (none beyond): complete
    whole = Recaller(RecallConfig(notice=False, max_accounts=4), site.store, site.directory, site.data_dir)
    res = await whole.recall(f"alice@{D}", "cut@x")
    assert not res.truncated and [(r.recipient, r.status) for r in res] == [(f"carol@{D}", "recalled")]


async def test_window_and_switch(site: Site) -> None:
    await site.send(f"alice@{D}", [f"bob@{D}"], "m2@x")
    later = time.time() + RecallConfig().window + 60
    res = await site.recaller.recall(f"alice@{D}", "m2@x", now=later)
    assert [(r.recipient, r.status) for r in res] == [(f"bob@{D}", "expired")]
    assert [s for _, s in await site.inbox(f"bob@{D}")] == ["Plans"]
    # beyond LOOKBACK_WINDOWS windows the copy is not looked at any more
    far = time.time() + 3 * RecallConfig().window
    assert await site.recaller.recall(f"alice@{D}", "m2@x", now=far) == []
    off = Recaller(RecallConfig(enabled=False), site.store, site.directory, site.data_dir)
    with pytest.raises(RecallError, match="disabled"):
        await off.recall(f"alice@{D}", "m2@x")
    with pytest.raises(RecallError, match="no local user"):
        await site.recaller.recall(f"zed@{D}", "m2@x")
    assert [s for _, s in await site.inbox(f"bob@{D}")] == ["Plans"]


async def test_only_the_senders_own_mail(site: Site) -> None:
    # From says alice, but the envelope sender (Return-Path) was carol: not alice's to recall
    await site.send(f"alice@{D}", [f"bob@{D}"], "m3@x", return_path=f"carol@{D}")
    assert await site.recaller.recall(f"alice@{D}", "m3@x") == []
    # bob's own message with the same Message-ID is not alice's either
    await site.send(f"bob@{D}", [f"carol@{D}"], "m3@x")
    assert await site.recaller.recall(f"alice@{D}", "m3@x") == []
    assert len(await site.inbox(f"carol@{D}")) == 1 and len(await site.inbox(f"bob@{D}")) == 1
    # no Return-Path (a copy put there by a client): From decides
    await site.send(f"alice@{D}", [f"carol@{D}"], "m4@x", return_path="-")
    res = await site.recaller.recall(f"alice@{D}", "m4@x")
    assert [(r.recipient, r.status) for r in res] == [(f"carol@{D}", "recalled")]
    # a null Return-Path (a bounce) is nobody's
    await site.send(f"alice@{D}", [f"carol@{D}"], "m5@x", return_path="")
    assert await site.recaller.recall(f"alice@{D}", "m5@x") == []


async def test_a_return_path_below_the_first_line_is_the_writers_claim(site: Site) -> None:
    # carol's message (no Return-Path of ours on top: a JMAP submission, an APPEND) names alice in a
    # Return-Path field of its own: alice did not send it and may not take it back
    forged = f"X-Note: hello\r\nReturn-Path: <alice@{D}>\r\n"
    await site.send(f"carol@{D}", [f"bob@{D}"], "m6@x", return_path="-", extra=forged)
    assert await site.recaller.recall(f"alice@{D}", "m6@x") == []
    # ours on top is unreadable (a quoted local part holding '>'... or garbage): nobody's, not the next one's
    await site.send(f"carol@{D}", [f"bob@{D}"], "m7@x", return_path="-",
                    extra=f"Return-Path: garbage\r\nReturn-Path: <alice@{D}>\r\n")
    assert await site.recaller.recall(f"alice@{D}", "m7@x") == []
    assert len(await site.inbox(f"bob@{D}")) == 2
    # a quoted local part holding '>' is read whole
    await site.send(f"alice@{D}", [f"bob@{D}"], "m8@x", return_path='"x>y"@elsewhere.test',
                    extra=f"Return-Path: <alice@{D}>\r\n")
    assert await site.recaller.recall(f"alice@{D}", "m8@x") == []


async def test_moved_flagged_copy_is_found_and_a_read_one_stays(site: Site) -> None:
    await site.send(f"alice@{D}", [f"bob@{D}", f"carol@{D}"], "m6@x")
    bob = await site.acct(f"bob@{D}")
    view = await bob.open_mailbox("INBOX")
    await bob.store_flags("INBOX", [view.messages[0].uid], frozenset({"\\Flagged"}), "add")
    await bob.move("INBOX", [view.messages[0].uid], "Archive")
    carol = await site.acct(f"carol@{D}")
    cview = await carol.open_mailbox("INBOX")
    await carol.store_flags("INBOX", [cview.messages[0].uid], frozenset({"\\Seen"}), "add")
    res = await site.recaller.recall(f"alice@{D}", "m6@x")
    assert [(r.recipient, r.status, r.mailbox) for r in res] == [
        (f"bob@{D}", "recalled", "Archive"), (f"carol@{D}", "read", "INBOX")]
    assert (await bob.mailbox_status("Archive")).messages == 0
    assert len(await site.inbox(f"carol@{D}")) == 1


async def test_a_copy_read_after_the_lookup_stays(site: Site) -> None:
    """The copy's flags change between the look and the removal: CONDSTORE's UNCHANGED SINCE keeps it."""
    await site.send(f"alice@{D}", [f"bob@{D}"], "m7@x")
    owner = await site.directory.account_by_address(f"alice@{D}")
    bob_entry = await site.directory.account_by_address(f"bob@{D}")
    bob = await site.acct(f"bob@{D}")
    [copy] = await site.recaller._copies(bob_entry, bob.root, "m7@x", 0.0, owner, {})
    await bob.store_flags("INBOX", [copy.uid], frozenset({"\\Seen"}), "add")  # read meanwhile
    r = await site.recaller._take_back(copy, time.time())
    assert r.status == "read"
    [m] = (await bob.open_mailbox("INBOX")).messages
    assert m.flags == frozenset({"\\Seen"})  # and never marked \Deleted
    # a change that is not a read (a flag) does not save it
    await bob.store_flags("INBOX", [copy.uid], frozenset({"\\Seen"}), "remove")
    [copy] = await site.recaller._copies(bob_entry, bob.root, "m7@x", 0.0, owner, {})
    await bob.store_flags("INBOX", [copy.uid], frozenset({"\\Flagged"}), "add")
    assert (await site.recaller._take_back(copy, time.time())).status == "recalled"
    assert (await bob.open_mailbox("INBOX")).messages == []


async def test_a_copy_read_between_its_mark_and_the_expunge_stays(site: Site,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """\\Deleted is no lock: a client that opens the copy just after the mark sets \\Seen; the expunge leaves it,
    and the \\Deleted the recall gave it is taken back (the owner's next EXPUNGE would remove it)."""
    await site.send(f"alice@{D}", [f"bob@{D}"], "m12@x")
    bob = await site.acct(f"bob@{D}")
    await bob.mailbox_status("INBOX")
    mark = Recaller._mark_deleted

    async def mark_then_read(self: Recaller, c: _Copy) -> Any:
        out = await mark(self, c)
        await bob.store_flags(c.mailbox, [c.uid], frozenset({"\\Seen"}), "add")  # the owner reads it now
        return out

    monkeypatch.setattr(Recaller, "_mark_deleted", mark_then_read)
    res = await site.recaller.recall(f"alice@{D}", "m12@x")
    assert [(r.recipient, r.status) for r in res] == [(f"bob@{D}", "read")]
    [m] = (await bob.open_mailbox("INBOX")).messages
    assert m.flags == frozenset({"\\Seen"})


async def test_notice_through_local_delivery(site: Site) -> None:
    await site.send(f"alice@{D}", [f"bob@{D}"], "m8@x", subject="Salaries 2027 \u2013 draft")
    rec = Recaller(RecallConfig(), site.store, site.directory, site.data_dir)
    res = await rec.recall(f"alice@{D}", "m8@x")
    assert [r.status for r in res] == ["recalled"]
    [(uid, subject)] = await site.inbox(f"bob@{D}")
    assert subject == "Recall: Salaries 2027 \u2013 draft"
    raw = await (await site.acct(f"bob@{D}")).read_message("INBOX", uid)
    assert b"Alice <alice@example.test> recalled the message" in raw
    assert b"Auto-Submitted: auto-generated" in raw and b"To: bob@example.test" in raw
    # several recipients: one notice, linked into each INBOX
    await site.send(f"alice@{D}", [f"bob@{D}", f"carol@{D}"], "m10@x", subject="Offsite")
    assert [r.status for r in await rec.recall(f"alice@{D}", "m10@x")] == ["recalled", "recalled"]
    for who in ("bob", "carol"):
        sa = await site.acct(f"{who}@{D}")
        view = await sa.open_mailbox("INBOX")
        raw = await sa.read_message("INBOX", view.messages[-1].uid)
        assert b"Subject: Recall: Offsite" in raw and b"To: undisclosed-recipients:;" in raw
        assert (await sa.quota_usage()).messages == (2 if who == "bob" else 1)
    assert not spool_files(site.data_dir / "spool")  # its spool file is gone


async def test_notice_of_a_subject_that_decodes_to_line_breaks(site: Site) -> None:
    # an encoded-word may decode to CR LF (or other controls): the notice's Subject is one line all the same,
    # and the recall (copies already removed) does not fail on it
    await site.send(f"alice@{D}", [f"bob@{D}"], "m11@x", subject="=?utf-8?q?Pay=0D=0ABcc=3A_x=40y.test=09end?=")
    rec = Recaller(RecallConfig(), site.store, site.directory, site.data_dir)
    assert [r.status for r in await rec.recall(f"alice@{D}", "m11@x")] == ["recalled"]
    [(uid, subject)] = await site.inbox(f"bob@{D}")
    raw = await (await site.acct(f"bob@{D}")).read_message("INBOX", uid)
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert not any(line.lower().startswith(b"bcc") for line in head.split(b"\r\n"))
    assert subject.startswith("Recall: Pay") and "\r" not in subject and "\n" not in subject


@given(st.from_regex(r"[!-;=?-~]{1,80}", fullmatch=True))
def test_message_id_forms(mid: str) -> None:
    assert normalise_message_id(mid) == mid
    assert normalise_message_id(f"<{mid}>") == mid
    assert normalise_message_id(f"  < {mid} >\n") == mid


@given(st.text(max_size=60))
def test_message_id_garbage_is_a_recall_error(text: str) -> None:
    try:
        out = normalise_message_id(text)
    except RecallError:
        return
    assert out and "<" not in out and ">" not in out and not any(c.isspace() for c in out)


def test_config_defaults() -> None:
    cfg = RecallConfig()
    assert (cfg.enabled, cfg.window, cfg.notice) == (True, 86400.0, True)


async def test_accounts_not_open_here_are_peeked_at(site: Site) -> None:
    """A process that has not opened the accounts (the CLI) finds the copies through may_hold_msgid."""
    await site.send(f"alice@{D}", [f"bob@{D}"], "m9@x")
    bob = await site.acct(f"bob@{D}")
    await bob.mailbox_status("INBOX")  # indexed now (not waiting in new/ for the background indexer)
    assert may_hold_msgid(bob.root, "m9@x") and not may_hold_msgid(bob.root, "never@x")
    assert not may_hold_msgid(site.data_dir / "no-such-account", "m9@x")
    # mail waiting in new/ (not indexed yet) may be anything
    (bob.root / "new" / "1.waiting").write_bytes(b"Subject: x\r\n\r\n")
    assert may_hold_msgid(bob.root, "never@x")
    (bob.root / "new" / "1.waiting").unlink()
    other = Store(StoreConfig(), site.data_dir, hostname="other")
    try:
        assert other.cached_account(bob.id) is None
        res = await Recaller(RecallConfig(notice=False), other, site.directory, site.data_dir).recall(
            f"alice@{D}", "m9@x")
        assert [(r.recipient, r.status) for r in res] == [(f"bob@{D}", "recalled")]
    finally:
        await other.close()
    assert await site.inbox(f"bob@{D}") == []


async def test_a_peek_at_a_closed_index_leaves_no_file(site: Site) -> None:
    """An index nobody has open is read as it is: a read-only WAL connection would leave -wal and -shm files
    behind (owned by whoever ran the scan: root's CLI made them unwritable for the worker)."""
    await site.send(f"alice@{D}", [f"bob@{D}"], "m10@x")
    bob = await site.acct(f"bob@{D}")
    await bob.mailbox_status("INBOX")
    root = bob.root
    await site.store.close()
    index = root / INDEX_NAME
    side = [index.with_name(index.name + s) for s in ("-wal", "-shm", "-journal")]
    assert index.exists() and not any(p.exists() for p in side)
    assert may_hold_msgid(root, "m10@x") and not may_hold_msgid(root, "never@x")
    assert [p.name for p in side if p.exists()] == []
    # while another connection writes (WAL files there), the peek sees its committed rows
    db = sqlite3.connect(index)
    try:
        db.execute("INSERT INTO msgids (msgid, thread_id) VALUES ('late@x', 't')")
        db.commit()
        assert may_hold_msgid(root, "late@x")
    finally:
        db.close()


async def test_recalls_wait_their_turn(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """At most RECALLS_AT_ONCE scans run in one process; the others queue (a user spamming Email/recall)."""
    inside: list[str] = []
    release = asyncio.Event()
    entered = asyncio.Event()

    async def fake(sender: str, message_id: str, now: float | None) -> list[Any]:
        inside.append(message_id)
        if len(inside) == RECALLS_AT_ONCE:
            entered.set()
        await release.wait()
        return []

    monkeypatch.setattr(site.recaller, "_recall", fake)
    tasks = [asyncio.create_task(site.recaller.recall(f"alice@{D}", f"q{i}@x")) for i in range(RECALLS_AT_ONCE + 1)]
    await asyncio.wait_for(entered.wait(), 10)
    # the tasks started in order in one loop turn: the last one is already waiting at the gate
    assert len(inside) == RECALLS_AT_ONCE and site.recaller._gate.locked()
    assert not tasks[-1].done()
    release.set()
    assert await asyncio.gather(*tasks) == [[]] * (RECALLS_AT_ONCE + 1)
    assert len(inside) == RECALLS_AT_ONCE + 1


async def test_a_failing_account_does_not_stop_the_others(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    await site.send(f"alice@{D}", [f"bob@{D}", f"carol@{D}", f"idle@{D}"], "m11@x")
    bob, carol = await site.acct(f"bob@{D}"), await site.acct(f"carol@{D}")

    async def disk_error(*args: Any, **kwargs: Any) -> Any:
        raise TemporaryFailure("EIO")

    monkeypatch.setattr(bob, "expunge", disk_error)  # the removal fails: reported, the copy stays
    monkeypatch.setattr(carol, "recent_with_msgid", disk_error)  # the lookup fails: logged, skipped
    res = await site.recaller.recall(f"alice@{D}", "m11@x")
    assert [(r.recipient, r.status) for r in res] == [(f"bob@{D}", "failed"), (f"idle@{D}", "recalled")]
    monkeypatch.undo()
    assert len(await site.inbox(f"carol@{D}")) == 1
    [m] = (await bob.open_mailbox("INBOX")).messages
    assert m.flags == frozenset()  # not left \Deleted either


async def test_a_jmap_submission_cannot_name_another_sender(site: Site) -> None:
    # carol submits through JMAP a message whose own first line is a Return-Path naming alice: local
    # delivery writes carol's on top (RFC 5321 §4.4), so alice may not take it back, and carol may
    from types import SimpleNamespace

    from mailsrv.jmap.submission import DirectorySubmitter

    carol = await site.directory.account_by_address(f"carol@{D}")
    raw = (f"Return-Path: <alice@{D}>\r\nFrom: carol@{D}\r\nTo: bob@{D}\r\nSubject: Plans\r\n"
           f"Message-ID: <j1@x>\r\n\r\nbody\r\n").encode()
    sub = DirectorySubmitter(site.directory, site.store, site.data_dir)
    out = await sub.submit(SimpleNamespace(account=carol, id=str(carol.id)), raw, f"carol@{D}", [f"bob@{D}"])
    assert out[f"bob@{D}"][0] == "yes"
    assert await site.recaller.recall(f"alice@{D}", "j1@x") == []
    res = await site.recaller.recall(f"carol@{D}", "j1@x")
    assert [(r.recipient, r.status) for r in res] == [(f"bob@{D}", "recalled")]
