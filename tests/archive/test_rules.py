"""Archiving rules in process: real directory, store and SMTP session (tests/archive/conftest.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.spool import spool_files

from mailsrv.config import ArchiveConfig
from mailsrv.delivery import archive as archive_mod
from mailsrv.delivery.archive import ArchiveRules
from mailsrv.queue.store import Envelope, QRcpt, new_id, queue_dir

from .conftest import BIG, D, rule

pytestmark = pytest.mark.filterwarnings("error")


def subjects(msgs: list[bytes]) -> list[str]:
    return [m.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode() for m in msgs]


def body(subject: str) -> bytes:
    return f"Subject: {subject}\r\n\r\nbody of {subject}\r\n".encode()


def test_no_rules_no_copy_and_no_plan(site: Any) -> None:
    for rules in (None, {}):
        be = site.backend(rules)
        assert site.send(be, "x@remote.test", [f"bob@{D}"], body=body("plain")).startswith(b"250 ")
    assert subjects(site.messages(f"bob@{D}")) == ["plain", "plain"]
    assert site.messages(f"archive@{D}") == [] and site.messages(f"archive@{D}", "Audit") == []
    empty = ArchiveRules(ArchiveConfig(), site.directory)
    assert not empty.enabled
    assert site.loop.run(empty.plan(f"bob@{D}", None, local=True)) is None


def test_inbound_to_a_member_a_group_and_an_alias(site: Any) -> None:
    be = site.backend({"in": rule((f"bob@{D}", f"boss@{D}"), "in")})
    site.send(be, "x@remote.test", [f"bob@{D}"], body=body("to bob"))
    site.send(be, "x@remote.test", [f"team@{D}"], body=body("to team"))  # bob is a member
    site.send(be, "x@remote.test", [f"alice@{D}"], body=body("to alice"))  # boss@ is her alias
    site.send(be, "x@remote.test", [f"dave@{D}"], body=body("to dave"))  # no rule
    assert subjects(site.messages(f"archive@{D}", "Audit")) == ["to bob", "to team", "to alice"]
    assert site.messages(f"archive@{D}") == []  # the folder, not INBOX
    assert subjects(site.messages(f"bob@{D}")) == ["to bob", "to team"]  # the recipients' copies are there


def test_one_copy_per_message_however_many_recipients_and_rules(site: Any) -> None:
    be = site.backend({"dom": rule((f"@{D}",)), "grp": rule((f"all@{D}",), "in"),
                       "other": rule((f"m7@{D}",), "in", to=f"archive2@{D}", folder="INBOX")})
    reply = site.send(be, f"alice@{D}", [f"all@{D}", f"bob@{D}", f"team@{D}"], auth=f"alice@{D}",
                      body=body("to everyone"))
    assert reply.startswith(b"250 ")
    assert subjects(site.messages(f"archive@{D}", "Audit")) == ["to everyone"]  # 3 rules, 303 accounts
    assert subjects(site.messages(f"archive2@{D}")) == ["to everyone"]  # another archive: its own copy
    assert len(site.messages(f"m{BIG - 1}@{D}")) == 1


def envelope_of(msg: bytes) -> list[bytes]:
    return [line for line in msg.split(b"\r\n\r\n", 1)[0].split(b"\r\n") if line.startswith(b"X-Mailsrv-Envelope-")]


def test_archive_copy_starts_with_the_envelope_and_only_it(site: Any) -> None:
    be = site.backend({"out": rule((f"alice@{D}",), "out")})
    # bob is in To:, dave and the remote address are Bcc: only the envelope names them
    msg = f"To: bob@{D}\r\nSubject: bcc\r\n\r\nhello\r\n".encode()
    rcpts = [f"bob@{D}", f"Dave@{D}", "far@remote.test"]
    assert site.send(be, f"alice@{D}", rcpts, auth=f"alice@{D}", body=msg).startswith(b"250 ")
    [copy] = site.messages(f"archive@{D}", "Audit")
    block = [f"X-Mailsrv-Envelope-From: <alice@{D}>".encode()] + [
        f"X-Mailsrv-Envelope-To: <{r}>".encode() for r in rcpts]  # every recipient, as received
    assert envelope_of(copy) == block
    assert copy.startswith(b"Return-Path: <alice@example.test>\r\n" + b"\r\n".join(block) + b"\r\n")
    for who in (f"bob@{D}", f"dave@{D}"):
        [theirs] = site.messages(who)
        assert b"X-Mailsrv-Envelope" not in theirs
        assert theirs == copy.replace(b"\r\n".join(block) + b"\r\n", b"", 1)  # otherwise the same bytes
    # its file is the archive's own (no link of the recipients' copy), removed after the reply
    deadline = time.monotonic() + 30
    while spool_files(site.data_dir / "spool"):
        assert time.monotonic() < deadline, "the archive file was left in the spool"


def test_archive_copy_joins_the_recipients_group_commit_round(site: Any) -> None:
    be = site.backend({"in": rule((f"bob@{D}",), "in")})
    site.send(be, "x@remote.test", [f"bob@{D}"], body=body("warm up"))  # the folder and accounts opened
    fssync = site.store.fssync
    assert fssync is not None
    before = (fssync.rounds, fssync.callers)
    site.send(be, "x@remote.test", [f"bob@{D}"], body=body("one round"))
    assert (fssync.rounds - before[0], fssync.callers - before[1]) == (1, 2)
    assert [envelope_of(m) for m in site.messages(f"archive@{D}", "Audit")][1] == [
        b"X-Mailsrv-Envelope-From: <x@remote.test>", f"X-Mailsrv-Envelope-To: <bob@{D}>".encode()]


def test_a_large_archive_copy_is_streamed(site: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from mailsrv.delivery import local as local_mod

    monkeypatch.setattr(local_mod, "ARCHIVE_IN_MEMORY", 10)
    be = site.backend({"in": rule((f"bob@{D}",), "in")})
    msg = body("big") + b"y" * 300_000 + b"\r\n"
    assert site.send(be, "x@remote.test", [f"bob@{D}"], body=msg).startswith(b"250 ")
    [copy], [theirs] = site.messages(f"archive@{D}", "Audit"), site.messages(f"bob@{D}")
    assert envelope_of(copy) == [b"X-Mailsrv-Envelope-From: <x@remote.test>", f"X-Mailsrv-Envelope-To: <bob@{D}>".encode()]
    assert copy.endswith(msg) and theirs.endswith(msg) and len(copy) == len(theirs) + len(b"".join(
        line + b"\r\n" for line in envelope_of(copy)))


@given(st.text(max_size=40), st.lists(st.text(max_size=40), max_size=5))
def test_envelope_block_is_one_line_per_address(sender: str, rcpts: list[str]) -> None:
    block = archive_mod.envelope_block(sender, rcpts)
    lines = block.split(b"\r\n")
    assert lines[-1] == b"" and len(lines) == len(rcpts) + 2
    assert all(b"\r" not in x and b"\n" not in x and b"\0" not in x for x in lines)
    assert lines[0].startswith(b"X-Mailsrv-Envelope-From: <")
    assert all(x.startswith(b"X-Mailsrv-Envelope-To: <") and x.endswith(b">") for x in lines[1:-1])


def test_directions(site: Any) -> None:
    be = site.backend({"in": rule((f"bob@{D}",), "in"), "out": rule((f"carol@{D}",), "out")})
    site.send(be, f"bob@{D}", [f"dave@{D}"], auth=f"bob@{D}", body=body("bob sends"))  # in-only: no copy
    site.send(be, "x@remote.test", [f"carol@{D}"], body=body("carol receives"))  # out-only: no copy
    site.send(be, f"carol@{D}", [f"dave@{D}"], auth=f"carol@{D}", body=body("carol sends"))
    site.send(be, "x@remote.test", [f"bob@{D}"], body=body("bob receives"))
    site.send(be, f"carol@{D}", [f"bob@{D}"], auth=f"carol@{D}", body=body("both rules"))
    assert subjects(site.messages(f"archive@{D}", "Audit")) == ["carol sends", "bob receives", "both rules"]


def test_outbound_only_mail_gets_an_archive_copy_and_is_queued(site: Any) -> None:
    be = site.backend({"out": rule((f"carol@{D}",), "out", folder="INBOX")})
    reply = site.send(be, f"carol@{D}", ["far@remote.test"], auth=f"carol@{D}", body=body("going out"))
    assert reply.startswith(b"250 ") and b"queued as" in reply
    assert subjects(site.messages(f"archive@{D}")) == ["going out"]
    assert site.queued() == [(f"carol@{D}", [("far@remote.test", [])])]
    site.send(be, f"alice@{D}", ["far@remote.test"], auth=f"alice@{D}", body=body("not archived"))
    assert subjects(site.messages(f"archive@{D}")) == ["going out"]


def test_bounces_and_mail_to_the_archive_account_are_not_archived(site: Any) -> None:
    be = site.backend({"dom": rule((f"@{D}",))})
    site.send(be, "", [f"bob@{D}"], body=body("a bounce"))  # null reverse-path
    site.send(be, f"carol@{D}", [f"archive@{D}"], auth=f"carol@{D}", body=body("to the archive"))
    assert subjects(site.messages(f"bob@{D}")) == ["a bounce"]
    assert site.messages(f"archive@{D}", "Audit") == []
    assert subjects(site.messages(f"archive@{D}")) == ["to the archive"]  # its own delivery only


def test_an_archive_copy_is_written_regardless_of_the_archive_accounts_quota(site: Any) -> None:
    be = site.backend({"full": rule((f"bob@{D}",), "in", to=f"fullarchive@{D}", folder="INBOX")})
    reply = site.send(be, "x@remote.test", [f"bob@{D}"], body=body("bigger than the archive " + "x" * 100))
    assert reply.startswith(b"250 ")
    assert subjects(site.messages(f"bob@{D}")) == ["bigger than the archive " + "x" * 100]
    # 10 bytes of quota: the copy is written all the same (an archive must not lose mail), nothing queued
    assert subjects(site.messages(f"fullarchive@{D}")) == ["bigger than the archive " + "x" * 100]
    assert site.queued() == []


def fail_folders(site: Any, monkeypatch: pytest.MonkeyPatch, folders: set[str]) -> set[str]:
    """The store tempfails every delivery into one of ``folders`` (a full disk, a failed write) while the
    set holds them; the caller empties it to make room."""
    from mailsrv.store import DeliveryResult

    deliver = site.store.deliver

    async def failing(spool_path: Any, targets: Any, **kw: Any) -> Any:
        bad = [t.mailbox in folders for t in targets]
        good = [t for t, b in zip(targets, bad, strict=True) if not b]
        done = iter(await deliver(spool_path, good, **kw) if good else [])
        return [DeliveryResult(t, "tempfail", None, "disk on fire") if b else next(done)
                for t, b in zip(targets, bad, strict=True)]

    monkeypatch.setattr(site.store, "deliver", failing)
    return folders


def test_failed_archive_copy_keeps_the_mail_and_is_queued_for_retry(site: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fail_folders(site, monkeypatch, {"Audit"})
    be = site.backend({"in": rule((f"bob@{D}",), "in")})
    reply = site.send(be, "x@remote.test", [f"bob@{D}"], body=body("archive is failing"))
    assert reply.startswith(b"250 ")  # the recipient's copy is durable: accepted
    assert subjects(site.messages(f"bob@{D}")) == ["archive is failing"]
    assert site.messages(f"archive@{D}", "Audit") == []
    # retried through our own MTA like a failed local copy; the sender is never told about the archive
    assert site.queued() == [("x@remote.test", [(f"archive@{D}", ["NEVER"])])]


def test_an_archive_copy_failed_before_its_file_was_written_is_still_queued(site: Any,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The store may tempfail a delivery without writing its file (closing, a failed write): the archive
    file is then written for the retry, or the retry would find nothing to queue."""
    from mailsrv.store import DeliveryResult

    deliver = site.store.deliver

    async def failing(spool_path: Any, targets: Any, **kw: Any) -> Any:
        if str(spool_path).endswith(".archive"):
            return [DeliveryResult(t, "tempfail", None, "store closing") for t in targets]
        return await deliver(spool_path, targets, **kw)

    monkeypatch.setattr(site.store, "deliver", failing)
    be = site.backend({"in": rule((f"bob@{D}",), "in")})
    assert site.send(be, "x@remote.test", [f"bob@{D}"], body=body("never written")).startswith(b"250 ")
    assert subjects(site.messages(f"bob@{D}")) == ["never written"]
    assert site.queued() == [("x@remote.test", [(f"archive@{D}", ["NEVER"])])]


def test_a_retried_archive_copy_lands_in_its_rules_folder_and_is_swept(site: Any,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    failing = fail_folders(site, monkeypatch, {"Held"})
    rules = {"held": rule((f"bob@{D}",), "in", to=f"archive@{D}", folder="Held", retention_days=1)}
    be = site.backend(rules)
    assert site.send(be, "x@remote.test", [f"bob@{D}"], body=body("retry me " + "x" * 100)).startswith(b"250 ")
    assert site.messages(f"archive@{D}", "Held") == []
    # still failing: the queue is told to try again later (its entry keeps its schedule), nothing lands
    assert [r[:4] for r in site.replay(be)] == [b"451 "]
    assert len(site.queued()) == 1 and site.messages(f"archive@{D}", "Held") == []
    failing.clear()
    assert [r[:4] for r in site.replay(be)] == [b"250 "]
    assert site.queued() == []
    assert subjects(site.messages(f"archive@{D}", "Held")) == ["retry me " + "x" * 100]
    # the queued copy is the archive file itself: its envelope block, once
    assert envelope_of(site.messages(f"archive@{D}", "Held")[0]) == [
        b"X-Mailsrv-Envelope-From: <x@remote.test>", f"X-Mailsrv-Envelope-To: <bob@{D}>".encode()]
    assert site.messages(f"archive@{D}") == []  # not in INBOX
    # the same marker from a non-loopback client is ordinary mail to the account (its INBOX)
    assert be.archive is not None
    marker = be.archive.retry_orcpt("x@remote.test", f"archive@{D}", "Held")
    forged = Envelope(new_id(), "x@remote.test", [QRcpt(f"archive@{D}", orcpt=marker)])
    queue_dir(site.data_dir).add(forged, body("forged"))
    assert [r[:4] for r in site.replay(be, peer_ip="192.0.2.7")] == [b"250 "]
    assert subjects(site.messages(f"archive@{D}")) == ["forged"]
    # and so is a marker from loopback without the MAC of our key (a local program's): its INBOX too
    other = site.rules(rules)
    other._key = b"k" * 32  # another installation's key
    for i, orcpt in enumerate(["x-mailsrv-archive;Held", other.retry_orcpt("x@remote.test", f"archive@{D}", "Held"),
                               be.archive.retry_orcpt("y@remote.test", f"archive@{D}", "Held")]):  # another sender
        queue_dir(site.data_dir).add(Envelope(new_id(), "x@remote.test", [QRcpt(f"archive@{D}", orcpt=orcpt)]),
                                     body(f"forged {i}"))
        assert [r[:4] for r in site.replay(be)] == [b"250 "]
    assert subjects(site.messages(f"archive@{D}")) == ["forged", "forged 0", "forged 1", "forged 2"]
    assert len(site.messages(f"archive@{D}", "Held")) == 1

    async def flags() -> list[frozenset[str]]:
        acct = await site.directory.account_by_address(f"archive@{D}")
        return [m.flags for m in (await (await be.local.store_account(acct)).open_mailbox("Held")).messages]

    assert site.loop.run(flags()) == [frozenset({"\\Seen"})]
    # the retention sweep (which sweeps the rule's folder) removes it like the other copies
    assert site.loop.run(archive_mod.sweep(ArchiveConfig(rule=rules), be.local, now=time.time() + 2 * 86400)) == 1
    assert site.messages(f"archive@{D}", "Held") == []


def test_a_retried_archive_copy_makes_no_copy_in_another_archive(site: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    failing = fail_folders(site, monkeypatch, {"Held"})
    be = site.backend({"a": rule((f"alice@{D}",), "out"),
                       "b": rule((f"alice@{D}",), "out", to=f"fullarchive@{D}", folder="Held")})
    msg = body("two archives " + "x" * 100)
    assert site.send(be, f"alice@{D}", [f"bob@{D}"], auth=f"alice@{D}", body=msg).startswith(b"250 ")
    assert len(site.messages(f"archive@{D}", "Audit")) == 1 and site.queued() != []
    failing.clear()
    assert [r[:4] for r in site.replay(be)] == [b"250 "]
    assert subjects(site.messages(f"fullarchive@{D}", "Held")) == ["two archives " + "x" * 100]
    assert len(site.messages(f"archive@{D}", "Audit")) == 1  # the out-rule did not match the retry again
    assert len(site.messages(f"bob@{D}")) == 1 and site.queued() == []


def test_a_retried_archive_copy_ignores_the_archive_accounts_quota_at_rcpt(site: Any,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from mailsrv.smtp.backend import Recipient, SessionInfo, Transaction

    rules = {"full": rule((f"bob@{D}",), "in", to=f"fullarchive@{D}", folder="Held")}
    be = site.backend(rules)
    assert site.send(be, "x@remote.test", [f"bob@{D}"], body=body("first " + "x" * 100)).startswith(b"250 ")
    assert len(site.messages(f"fullarchive@{D}", "Held")) == 1  # over its 10 bytes of quota now
    failing = fail_folders(site, monkeypatch, {"Held"})
    assert site.send(be, "x@remote.test", [f"bob@{D}"], body=body("second " + "x" * 100)).startswith(b"250 ")
    failing.clear()
    # the retry's RCPT (our queue's MAC'd marker, from loopback) passes as the first delivery did: 250
    assert [r[:4] for r in site.replay(be)] == [b"250 "]
    assert subjects(site.messages(f"fullarchive@{D}", "Held")) == ["first " + "x" * 100, "second " + "x" * 100]
    assert site.queued() == []
    assert be.archive is not None
    marker = be.archive.retry_orcpt("x@remote.test", f"fullarchive@{D}", "Held")

    async def rcpt(orcpt: str | None, peer_ip: str = "127.0.0.1") -> int:
        info = SessionInfo(sid="q1", hostname="mx.example.test", listener="smtp", peer_ip=peer_ip)
        tx = Transaction("x@remote.test")
        tx.checking = Recipient(f"fullarchive@{D}", orcpt=orcpt)
        return (await be.check_recipient(info, tx, f"fullarchive@{D}")).code

    # the full account answers anyone else 452: no marker, one without our MAC, ours from elsewhere
    assert site.loop.run(rcpt(marker)) == 250
    assert site.loop.run(rcpt(None)) == 452
    assert site.loop.run(rcpt("x-mailsrv-archive;Held")) == 452
    assert site.loop.run(rcpt("x-mailsrv-archive;" + "0" * 32 + ";Held")) == 452
    assert site.loop.run(rcpt("x-mailsrv-archive;" + "é" * 32 + ";Held")) == 452
    assert site.loop.run(rcpt(marker, peer_ip="192.0.2.7")) == 452


def test_a_recipient_copy_retried_by_the_queue_is_not_archived_again(site: Any,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    failing = fail_folders(site, monkeypatch, {"INBOX"})
    be = site.backend({"in": rule((f"bob@{D}",), "in"), "out": rule((f"alice@{D}",), "out")})
    reply = site.send(be, f"alice@{D}", [f"bob@{D}"], auth=f"alice@{D}", body=body("bob's disk is full"))
    assert reply.startswith(b"250 ")  # the archive copy is durable: accepted, bob's copy queued
    assert subjects(site.messages(f"archive@{D}", "Audit")) == ["bob's disk is full"]
    (env,) = queue_dir(site.data_dir).all()
    assert [r.addr for r in env.rcpts] == [f"bob@{D}"]
    assert be.archive is not None
    marker = be.archive.archived_orcpt(f"alice@{D}", f"bob@{D}", None)
    assert env.rcpts[0].orcpt == marker and marker.startswith("x-mailsrv-archived;")
    failing.clear()
    assert [r[:4] for r in site.replay(be)] == [b"250 "]
    assert subjects(site.messages(f"bob@{D}")) == ["bob's disk is full"]
    assert subjects(site.messages(f"archive@{D}", "Audit")) == ["bob's disk is full"]  # once
    # the marker counts only from our queue (loopback): from elsewhere the message is archived as usual
    queue_dir(site.data_dir).add(Envelope(new_id(), f"alice@{D}", [QRcpt(f"bob@{D}", orcpt=marker)]),
                                 body("forged marker"))
    assert [r[:4] for r in site.replay(be, peer_ip="192.0.2.7")] == [b"250 "]
    assert subjects(site.messages(f"archive@{D}", "Audit")) == ["bob's disk is full", "forged marker"]
    # from loopback (any local program) a marker counts only with our key's MAC over its sender and
    # recipient: none, another key's, or one made for another recipient or sender is archived as usual
    other = site.rules({"in": rule((f"bob@{D}",), "in")})
    other._key = b"k" * 32
    forged = ["x-mailsrv-archived;-", "x-mailsrv-archived;" + "0" * 32 + ";-",
              "x-mailsrv-archived;" + "é" * 32 + ";-",  # non-ASCII: no crash (compare_digest on str refuses it)
              other.archived_orcpt(f"alice@{D}", f"bob@{D}", None),
              be.archive.archived_orcpt(f"alice@{D}", f"dave@{D}", None),
              be.archive.archived_orcpt(f"carol@{D}", f"bob@{D}", None)]
    for i, orcpt in enumerate(forged):
        queue_dir(site.data_dir).add(Envelope(new_id(), f"alice@{D}", [QRcpt(f"bob@{D}", orcpt=orcpt)]),
                                     body(f"forged {i}"))
        assert [r[:4] for r in site.replay(be)] == [b"250 "]
    assert subjects(site.messages(f"archive@{D}", "Audit"))[2:] == [f"forged {i}" for i in range(len(forged))]
    # the real marker from loopback still skips it; its sender and recipient compare without case
    queue_dir(site.data_dir).add(Envelope(new_id(), f"Alice@{D}", [QRcpt(f"BOB@{D}", orcpt=marker)]),
                                 body("real marker"))
    assert [r[:4] for r in site.replay(be)] == [b"250 "]
    assert subjects(site.messages(f"bob@{D}"))[-1] == "real marker"
    assert len(site.messages(f"archive@{D}", "Audit")) == 2 + len(forged)


def test_the_markers_key_is_made_once_private_and_shared(tmp_path: Any) -> None:
    import os
    import threading

    keys: list[bytes] = []
    threads = [threading.Thread(target=lambda: keys.append(archive_mod.marker_key(tmp_path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1 and len(keys[0]) == archive_mod.KEY_BYTES  # racing first uses agree
    path = tmp_path / archive_mod.KEY_FILE
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [archive_mod.KEY_FILE]  # no temporary file left
    assert archive_mod.marker_key(tmp_path) == keys[0]  # read again, not made again
    path.write_bytes(b"short")
    with pytest.raises(OSError, match="shorter"):
        archive_mod.marker_key(tmp_path)


def test_a_dsn_shows_the_original_orcpt_of_a_marked_recipient() -> None:
    from mailsrv.queue.dsn import shown_orcpt

    marks = ArchiveRules(ArchiveConfig(), None)
    assert shown_orcpt(marks.archived_orcpt("a@x.test", "b@y.test", "rfc822;Bob@example.test")) == \
        "rfc822;Bob@example.test"
    assert shown_orcpt(marks.archived_orcpt("a@x.test", "b@y.test", None)) is None
    assert shown_orcpt(marks.retry_orcpt("a@x.test", "b@y.test", "Held")) is None
    assert shown_orcpt("rfc822;x@y.test") == "rfc822;x@y.test" and shown_orcpt(None) is None


def test_rules_follow_group_membership_changes(site: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive_mod, "REFRESH_INTERVAL", 0.0)
    be = site.backend({"grp": rule((f"team@{D}",), "in")})
    site.send(be, "x@remote.test", [f"dave@{D}"], body=body("before"))
    site.sync.add_member(f"team@{D}", f"dave@{D}")
    assert be.archive is not None

    async def dave_matches() -> bool:  # the rules are resolved again beside the deliveries
        dave = await site.directory.account_by_address(f"dave@{D}")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            plan = await be.archive.plan("x@remote.test", None, local=True)
            assert plan is not None
            plan.saw(dave)
            if await plan.targets(be.local):
                return True
            await asyncio.sleep(0.01)  # a poll with a deadline
        return False

    assert site.loop.run(dave_matches())
    site.send(be, "x@remote.test", [f"dave@{D}"], body=body("after"))
    assert subjects(site.messages(f"archive@{D}", "Audit")) == ["after"]


def test_retention_sweep_expunges_old_copies_only(site: Any) -> None:
    cfg = ArchiveConfig(rule={"in": rule((f"bob@{D}",), "in", retention_days=10),
                              "keep": rule((f"dave@{D}",), "in", folder="Forever")}, sweep_batch=2)
    be = site.backend(dict(cfg.rule))
    for i in range(5):
        site.send(be, "x@remote.test", [f"bob@{D}", f"dave@{D}"], body=body(f"m{i}"))
    local = be.local

    async def internal_dates() -> list[float]:
        acct = await site.directory.account_by_address(f"archive@{D}")
        view = await (await local.store_account(acct)).open_mailbox("Audit")
        return [m.internal_date for m in view.messages]

    dates = site.loop.run(internal_dates())
    assert len(dates) == 5
    # a clock 10 days after the third copy: the first three are older than the retention, the others not
    now = sorted(dates)[2] + 10 * 86400 + 1e-3
    if sorted(dates)[3] <= sorted(dates)[2]:  # same timestamp: move the clock so that all go
        now = max(dates) + 10 * 86400 + 1
    removed = site.loop.run(archive_mod.sweep(cfg, local, now=now))
    left = [d for d in dates if d >= now - 10 * 86400]
    assert removed == 5 - len(left)
    assert len(site.messages(f"archive@{D}", "Audit")) == len(left)
    assert len(site.messages(f"archive@{D}", "Forever")) == 5  # retention_days = 0 keeps for ever
    assert len(site.messages(f"bob@{D}")) == 5  # only the archive's copies go
    assert site.loop.run(archive_mod.sweep(cfg, local, now=now + 30 * 86400)) == len(left)
    assert site.messages(f"archive@{D}", "Audit") == []


def test_retention_of_shared_folders_takes_the_longest() -> None:
    cfg = ArchiveConfig(rule={"a": rule(("@x.test",), retention_days=10), "b": rule(("@y.test",), retention_days=30),
                              "c": rule(("@z.test",), folder="F", retention_days=5),
                              "d": rule(("@z.test",), folder="F"),
                              "e": rule(("@z.test",), folder="G", retention_days=7)})
    assert archive_mod.retention(cfg) == {(f"archive@{D}", "Audit"): 30 * 86400.0,
                                          (f"archive@{D}", "G"): 7 * 86400.0}


def test_jmap_submission_archives_local_and_remote_mail(site: Any) -> None:
    from types import SimpleNamespace

    from mailsrv.jmap.submission import DirectorySubmitter

    rules = site.rules({"out": rule((f"carol@{D}",), "out")})

    async def submit(sender: str, rcpts: list[str], subject: str) -> dict[str, tuple[str, str]]:
        acct = await site.directory.account_by_address(sender)
        sub = DirectorySubmitter(site.directory, site.store, site.data_dir, archive=rules)
        _, out = await sub.submit_queued(SimpleNamespace(account=acct, id=str(acct.id)), body(subject), sender, rcpts)
        return out

    out = site.loop.run(submit(f"carol@{D}", [f"dave@{D}", "far@remote.test"], "jmap both"))
    assert out[f"dave@{D}"][0] == "yes" and out["far@remote.test"][0] == "queued"
    site.loop.run(submit(f"carol@{D}", ["far@remote.test"], "jmap remote only"))
    out = site.loop.run(submit(f"alice@{D}", ["far@remote.test"], "jmap not archived"))
    assert f"archive@{D}" not in out  # the archive is never a submission's recipient
    assert subjects(site.messages(f"archive@{D}", "Audit")) == ["jmap both", "jmap remote only"]
    assert envelope_of(site.messages(f"archive@{D}", "Audit")[0]) == [
        f"X-Mailsrv-Envelope-From: <carol@{D}>".encode(), f"X-Mailsrv-Envelope-To: <dave@{D}>".encode(),
        b"X-Mailsrv-Envelope-To: <far@remote.test>"]
    assert sorted(r for _, rs in site.queued() for r, _ in rs) == ["far@remote.test"] * 3


def test_a_submission_held_until_send_at_is_archived_at_acceptance_once(site: Any) -> None:
    from types import SimpleNamespace

    from mailsrv.jmap.submission import DirectorySubmitter

    rules = site.rules({"out": rule((f"carol@{D}",), "out"),
                        "in": rule((f"team@{D}",), "in", to=f"archive2@{D}", folder="INBOX")})

    async def submit_later() -> dict[str, tuple[str, str]]:
        acct = await site.directory.account_by_address(f"carol@{D}")
        sub = DirectorySubmitter(site.directory, site.store, site.data_dir, archive=rules)
        _, out = await sub.submit_later(SimpleNamespace(account=acct, id=str(acct.id)), body("held"), f"carol@{D}",
                                        [f"team@{D}", f"dave@{D}", "far@remote.test"], time.time() + 3600)
        return out

    out = site.loop.run(submit_later())
    assert {r: s for r, (s, _) in out.items()} == {f"team@{D}": "queued", f"dave@{D}": "queued",
                                                   "far@remote.test": "queued"}
    # archived now, for every recipient (the remote one too), by both rules; nobody has the message yet
    assert subjects(site.messages(f"archive@{D}", "Audit")) == ["held"]
    assert subjects(site.messages(f"archive2@{D}")) == ["held"]  # bob, carol: members of team
    assert envelope_of(site.messages(f"archive@{D}", "Audit")[0]) == [
        f"X-Mailsrv-Envelope-From: <carol@{D}>".encode(), f"X-Mailsrv-Envelope-To: <team@{D}>".encode(),
        f"X-Mailsrv-Envelope-To: <dave@{D}>".encode(), b"X-Mailsrv-Envelope-To: <far@remote.test>"]
    assert site.messages(f"dave@{D}") == [] and site.messages(f"bob@{D}") == []
    (env,) = queue_dir(site.data_dir).all()
    assert {r.addr: r.orcpt for r in env.rcpts} == {f"team@{D}": rules.archived_orcpt(f"carol@{D}", f"team@{D}", None),
                                                    f"dave@{D}": rules.archived_orcpt(f"carol@{D}", f"dave@{D}", None),
                                                    "far@remote.test": None}
    # released: the runner hands the local recipients to our MTA; they are not archived again
    be = site.backend({"out": rule((f"carol@{D}",), "out"),
                       "in": rule((f"team@{D}",), "in", to=f"archive2@{D}", folder="INBOX")})
    assert [r[:4] for r in site.replay(be, local_only=True)] == [b"250 "]
    assert subjects(site.messages(f"dave@{D}")) == ["held"] and subjects(site.messages(f"bob@{D}")) == ["held"]
    assert subjects(site.messages(f"archive@{D}", "Audit")) == ["held"]
    assert subjects(site.messages(f"archive2@{D}")) == ["held"]


def test_a_cancelled_held_submission_stays_in_the_archive(site: Any) -> None:
    """docs/archive.md: what was submitted is archived at acceptance and stays, a cancel before the release
    notwithstanding (as Exmail's archive: the auditor sees what a user sent, or tried to send)."""
    from types import SimpleNamespace

    from mailsrv.jmap.submission import DirectorySubmitter

    rules = site.rules({"out": rule((f"carol@{D}",), "out")})

    async def submit_then_cancel() -> tuple[str | None, bool]:
        acct = await site.directory.account_by_address(f"carol@{D}")
        sub = DirectorySubmitter(site.directory, site.store, site.data_dir, archive=rules)
        qid, _ = await sub.submit_later(SimpleNamespace(account=acct, id=str(acct.id)), body("taken back"),
                                        f"carol@{D}", [f"dave@{D}", "far@remote.test"], time.time() + 3600)
        assert qid is not None
        return qid, await sub.cancel(qid)

    qid, cancelled = site.loop.run(submit_then_cancel())
    assert cancelled and queue_dir(site.data_dir).all() == []  # nobody will get it
    assert subjects(site.messages(f"archive@{D}", "Audit")) == ["taken back"]
    assert envelope_of(site.messages(f"archive@{D}", "Audit")[0]) == [
        f"X-Mailsrv-Envelope-From: <carol@{D}>".encode(), f"X-Mailsrv-Envelope-To: <dave@{D}>".encode(),
        b"X-Mailsrv-Envelope-To: <far@remote.test>"]
    assert site.messages(f"dave@{D}") == []


def test_a_department_matches_its_members_and_sub_departments(site: Any) -> None:
    site.sync.add_group(f"sales@{D}", kind="dept")
    site.sync.add_group(f"sales-east@{D}", kind="dept", parent=f"sales@{D}")
    site.sync.set_user(f"carol@{D}", dept=f"sales-east@{D}")
    be = site.backend({"dept": rule((f"sales@{D}",), "out")})
    site.send(be, f"carol@{D}", [f"dave@{D}"], auth=f"carol@{D}", body=body("from sales east"))
    site.send(be, f"alice@{D}", [f"dave@{D}"], auth=f"alice@{D}", body=body("from alice"))
    assert subjects(site.messages(f"archive@{D}", "Audit")) == ["from sales east"]


def test_archive_copies_are_read_so_a_recall_leaves_them(site: Any) -> None:
    from mailsrv.config import RecallConfig
    from mailsrv.recall import Recaller

    be = site.backend({"in": rule((f"bob@{D}",), "in")})
    msg = b"From: alice@example.test\r\nMessage-ID: <recall-me@example.test>\r\nSubject: oops\r\n\r\nsorry\r\n"
    assert site.send(be, f"alice@{D}", [f"bob@{D}"], auth=f"alice@{D}", body=msg).startswith(b"250 ")

    async def flags_and_recall() -> tuple[list[frozenset[str]], list[Any], list[Any]]:
        acct = await site.directory.account_by_address(f"archive@{D}")
        view = await (await be.local.store_account(acct)).open_mailbox("Audit")
        rec = Recaller(RecallConfig(notice=False), site.store, site.directory, site.data_dir)
        seen = [m.flags for m in view.messages]
        listed = await rec.recall(f"alice@{D}", "<recall-me@example.test>")
        # a Recaller built as the services build it leaves the archive out of the sender's results too
        hidden = Recaller(RecallConfig(notice=False), site.store, site.directory, site.data_dir,
                          archives=[f"archive@{D}"])
        return seen, listed, await hidden.recall(f"alice@{D}", "<recall-me@example.test>")

    flags, results, again = site.loop.run(flags_and_recall())
    assert flags == [frozenset({"\\Seen"})]
    assert {r.recipient: r.status for r in results} == {f"bob@{D}": "recalled", f"archive@{D}": "read"}
    assert again == []  # bob's copy is gone; the archive's is not reported
    assert site.messages(f"bob@{D}") == []
    assert subjects(site.messages(f"archive@{D}", "Audit")) == ["oops"]
