"""Local delivery end to end: smtplib -> SMTP listener -> directory -> store (maildir), queue for the rest."""

from __future__ import annotations

import smtplib
import time

import pytest
from support.server import wait_until
from support.spool import spool_files

from mailsrv.queue.store import queue_dir

MSG = b"From: someone@remote.test\r\nTo: team@example.test\r\nSubject: hello team\r\n\r\nHi all\r\n"


def test_deliver_alias_group_dedup(site) -> None:
    with smtplib.SMTP("127.0.0.1", site.ports["mta"]) as c:
        c.ehlo("client.test")
        # alice is reached three ways (direct, alias, group): one copy
        c.sendmail("someone@remote.test", ["alice@example.test", "sales@example.test", "team@example.test"], MSG)
    alice = site.inbox("alice@example.test")
    bob = site.inbox("bob@example.test")
    assert len(alice) == 1 and len(bob) == 1
    assert alice[0].startswith(b"Return-Path: <someone@remote.test>\r\nReceived: from client.test")
    assert alice[0].endswith(MSG)
    # the outside member of the group went to the queue
    qd = queue_dir(site.data_dir)
    [env] = qd.all()
    assert [r.addr for r in env.rcpts] == ["partner@remote.test"] and env.sender == "someone@remote.test"


def test_rcpt_codes_with_directory(site) -> None:
    with smtplib.SMTP("127.0.0.1", site.ports["mta"]) as c:
        c.ehlo("client.test")
        c.mail("someone@remote.test", ["SIZE=500"])
        code, text = c.rcpt("nobody@example.test")
        assert (code, text[:5]) == (550, b"5.1.1")
        code, text = c.rcpt("x@remote.test")
        assert (code, text[:5]) == (554, b"5.7.1")  # no open relay
        code, text = c.rcpt("full@example.test")
        assert (code, text[:5]) == (552, b"5.2.2")  # message larger than the whole quota
        assert c.rcpt("alice+tag@example.test")[0] == 250
        c.rset()


def test_submission_relay_and_sender_policy(site) -> None:
    with smtplib.SMTP("127.0.0.1", site.ports["sub"]) as c:
        c.starttls(context=site.client_ctx)
        c.ehlo("client.test")
        c.login("alice@example.test", "secret")
        c.sendmail("sales@example.test", ["x@remote.test", "bob@example.test"], MSG)
        code, text = c.mail("bob@example.test")
        assert (code, text[:5]) == (553, b"5.7.1")
    with smtplib.SMTP("127.0.0.1", site.ports["sub"]) as c:
        c.starttls(context=site.client_ctx)
        c.ehlo("client.test")
        c.login("bob@example.test", "secret")
        c.mail("bob@example.test")
        code, text = c.rcpt("x@remote.test")
        assert (code, text[:5]) == (550, b"5.7.1")  # policy forbids sending outside
        c.rset()
    assert len(site.inbox("bob@example.test")) == 1
    [env] = queue_dir(site.data_dir).all()
    assert env.sender == "sales@example.test" and [r.addr for r in env.rcpts] == ["x@remote.test"]


def test_quota_full_at_rcpt(site) -> None:
    # a small message fits once; then the mailbox is full -> 452 4.2.2 at RCPT time
    small = b"Subject: s\r\n\r\nx\r\n"
    site.directory_sync.set_user("full@example.test", quota_bytes=300)
    with smtplib.SMTP("127.0.0.1", site.ports["mta"]) as c:
        c.ehlo("c.test")
        c.sendmail("a@remote.test", ["full@example.test"], small)
        c.mail("a@remote.test", ["SIZE=100"])
        code, text = c.rcpt("full@example.test")
        assert (code, text[:5]) == (452, b"4.2.2")


@pytest.mark.slow
def test_group_expansion_large(site) -> None:
    """A large group: one hard link per member, one inode, delivered by streaming expansion."""
    members = 1000
    sd = site.directory_sync
    sd.add_group("all@example.test")
    ids = []
    for i in range(members):
        ids.append(sd.add_user(f"u{i}@example.test").id)
    sd.add_members_bulk("all@example.test", ids)
    t0 = time.monotonic()
    with smtplib.SMTP("127.0.0.1", site.ports["mta"], timeout=600) as c:
        c.ehlo("c.test")
        c.sendmail("a@remote.test", ["all@example.test"], MSG)
    elapsed = time.monotonic() - t0
    # acknowledged = durable in new/; the background indexer then moves the files into cur/
    site.loop.run(site.store.indexer.flush())
    assert not list((site.data_dir).glob("**/new/*"))  # every copy indexed
    files = list((site.data_dir).glob("**/new/*")) + list((site.data_dir).glob("**/cur/*"))
    # one hard link per member: 5000 directory entries, one inode
    inodes = {f.stat().st_ino for f in files}
    assert len(files) == members and len(inodes) == 1, (len(files), len(inodes))
    print(f"group of {members} delivered in {elapsed:.1f}s")


def test_bounce_lands_in_sender_inbox(site) -> None:
    """5xx from a remote sink -> RFC 3464 bounce -> our own MTA listener -> alice's INBOX."""
    import asyncio
    from dataclasses import replace

    from aiosmtpd.smtp import SMTP

    from mailsrv.config import QueueConfig, RouteConfig
    from mailsrv.queue.runner import QueueRunner

    class Reject:
        async def handle_RCPT(self, server, session, envelope, address, options):  # type: ignore[no-untyped-def]
            return f"550 5.1.1 <{address}>: no such user"

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        sink = await loop.create_server(lambda: SMTP(Reject(), hostname="sink.test"), "127.0.0.1", 0)
        sink_port = sink.sockets[0].getsockname()[1]
        cfg = replace(site.cfg, queue=QueueConfig(
            retry_schedule=(0.05,), local_relay=f"127.0.0.1:{site.ports['mta']}", dkim_sign=False,
            route={"remote.test": RouteConfig(smarthost=f"127.0.0.1:{sink_port}", tls="none")}))
        runner = QueueRunner(cfg, is_local=site.directory.is_local_domain)
        stop = asyncio.Event()
        task = asyncio.ensure_future(runner.run(stop))
        try:
            deadline = loop.time() + 30
            while not queue_dir(site.data_dir).ids() == [] or runner.delivered < 1:
                assert loop.time() < deadline, "bounce not delivered"
                await asyncio.sleep(0.02)
        finally:
            stop.set()
            await task
            sink.close()

    with smtplib.SMTP("127.0.0.1", site.ports["sub"]) as c:
        c.starttls(context=site.client_ctx)
        c.ehlo("client.test")
        c.login("alice@example.test", "secret")
        c.sendmail("alice@example.test", ["ghost@remote.test"], MSG)
    site.loop.run(scenario())
    [bounce] = site.inbox("alice@example.test")
    assert bounce.startswith(b"Return-Path: <>\r\n")
    assert b"multipart/report; report-type=delivery-status" in bounce
    assert b"Final-Recipient: rfc822; ghost@remote.test" in bounce and b"Status: 5.1.1" in bounce


def test_notify_success_for_local_delivery(site) -> None:
    with smtplib.SMTP("127.0.0.1", site.ports["mta"]) as c:
        c.ehlo("client.test")
        c.sendmail("someone@remote.test", ["bob@example.test", "alice@example.test"], MSG,
                   mail_options=["ENVID=e42"], rcpt_options=["NOTIFY=SUCCESS"])
    [env] = queue_dir(site.data_dir).all()
    assert env.sender == "" and env.is_bounce and [r.addr for r in env.rcpts] == ["someone@remote.test"]
    raw = queue_dir(site.data_dir).message_path(env.id).read_bytes().decode()
    assert "Action: delivered" in raw and "Original-Envelope-Id: e42" in raw
    assert "Final-Recipient: rfc822; bob@example.test" in raw and "Final-Recipient: rfc822; alice@example.test" in raw


def test_auth_scram_sha_256(site) -> None:
    """SCRAM-SHA-256 through the shared SASL code, driven by scramp as the client (RFC 7677, RFC 4954)."""
    import base64

    from scramp import ScramClient

    with smtplib.SMTP("127.0.0.1", site.ports["sub"]) as c:
        c.starttls(context=site.client_ctx)
        code, ehlo = c.ehlo("client.test")
        assert b"SCRAM-SHA-256" in ehlo
        client = ScramClient(["SCRAM-SHA-256"], "alice@example.test", "secret")
        code, text = c.docmd("AUTH", "SCRAM-SHA-256 " + base64.b64encode(client.get_client_first().encode()).decode())
        assert code == 334
        client.set_server_first(base64.b64decode(text).decode())
        code, text = c.docmd(base64.b64encode(client.get_client_final().encode()).decode())
        assert code == 334  # server-final as the last challenge
        client.set_server_final(base64.b64decode(text).decode())  # verifies the server signature
        code, text = c.docmd("")
        assert (code, text[:5]) == (235, b"2.7.0")
        c.sendmail("alice@example.test", ["bob@example.test"], MSG)
    assert len(site.inbox("bob@example.test")) == 1


def test_catch_all_and_disabled(site) -> None:
    site.directory_sync.set_domain("example.test", catchall="bob@example.test")
    site.directory_sync.add_user("gone@example.test", state="suspended")
    with smtplib.SMTP("127.0.0.1", site.ports["mta"]) as c:
        c.ehlo("client.test")
        c.mail("someone@remote.test")
        code, text = c.rcpt("gone@example.test")
        assert (code, text[:5]) == (550, b"5.2.1")
        c.rset()
        c.sendmail("someone@remote.test", ["whoever@example.test"], MSG)
    [m] = site.inbox("bob@example.test")
    assert b"for <whoever@example.test>" in m


def test_group_posting_policy(site) -> None:
    site.directory_sync.add_group("staff@example.test", post_policy="members")
    site.directory_sync.add_member("staff@example.test", "alice@example.test")
    with smtplib.SMTP("127.0.0.1", site.ports["mta"]) as c:
        c.ehlo("client.test")
        c.mail("stranger@remote.test")
        code, text = c.rcpt("staff@example.test")
        assert (code, text[:5]) == (550, b"5.7.1")
        c.rset()
        c.sendmail("alice@example.test", ["staff@example.test"], MSG)  # a member may post
    assert len(site.inbox("alice@example.test")) == 1


def test_one_log_line_per_accepted_message(site, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The session's message.accepted carries the delivery's counts (one line, not two per message)."""
    import io

    from mailsrv import log

    buf = io.StringIO()
    monkeypatch.setattr(log, "_stream", buf)
    with smtplib.SMTP("127.0.0.1", site.ports["mta"]) as c:
        c.ehlo("client.test")
        c.sendmail("someone@remote.test", ["alice@example.test", "team@example.test"], MSG)
    lines = [ln for ln in buf.getvalue().splitlines() if " smtp message." in ln]
    assert len(lines) == 1, lines
    assert " message.accepted " in lines[0] and " rcpts=2 " in lines[0]
    assert " local=2 " in lines[0] and " queued=1" in lines[0] and " qid=" in lines[0]


def test_inbound_mail_is_parsed_from_the_spools_memory(site, monkeypatch: pytest.MonkeyPatch) -> None:
    """A message that never left memory during DATA reaches the store with its bytes (``data=``), so the store
    parses it without reading the spool file back; what lands in the INBOX is those bytes."""
    from mailsrv.delivery.local import LocalDelivery

    seen: list[bytes | None] = []
    real = LocalDelivery.deliver

    async def deliver(self, spool, recipients, **kw):  # type: ignore[no-untyped-def]
        seen.append(kw.get("data"))
        return await real(self, spool, recipients, **kw)

    monkeypatch.setattr(LocalDelivery, "deliver", deliver)
    with smtplib.SMTP("127.0.0.1", site.ports["mta"]) as c:
        c.ehlo("client.test")
        c.sendmail("someone@remote.test", ["bob@example.test"], MSG)
    assert len(seen) == 1 and seen[0] is not None
    [stored] = [m for m in site.inbox("bob@example.test") if m.endswith(MSG)]
    assert stored == seen[0]


def test_a_local_only_message_is_moved_into_the_mailbox_not_removed(site, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nobody needs the spool after the local copies: the store's job renames it into the (last) mailbox, so
    no removal is queued for it and the spool directory is empty when the 250 comes."""
    from mailsrv.delivery import spool as spool_mod

    queued: list[object] = []
    real = spool_mod._Remover.add
    monkeypatch.setattr(spool_mod._Remover, "add", lambda self, loop, sp: (queued.append(sp), real(self, loop, sp)))
    with smtplib.SMTP("127.0.0.1", site.ports["mta"]) as c:
        c.ehlo("client.test")
        c.sendmail("someone@remote.test", ["alice@example.test", "sales@example.test", "bob@example.test"], MSG)
        assert spool_files(site.data_dir / "spool") == []
    assert queued == []
    [a], [b] = site.inbox("alice@example.test"), site.inbox("bob@example.test")
    assert a == b and a.endswith(MSG)


def test_an_outside_group_member_still_gets_the_message_queued(site) -> None:
    """The spool is moved into a mailbox when no remote recipient was known at DATA; a group's outside
    member found at delivery has it written again from memory for the queue (the same bytes)."""
    with smtplib.SMTP("127.0.0.1", site.ports["mta"]) as c:
        c.ehlo("client.test")
        c.sendmail("someone@remote.test", ["team@example.test"], MSG)
    [env] = queue_dir(site.data_dir).all()
    assert [r.addr for r in env.rcpts] == ["partner@remote.test"]
    [alice] = site.inbox("alice@example.test")
    assert queue_dir(site.data_dir).message_path(env.id).read_bytes() == alice
    # the spool file the queue linked, removed after
    wait_until(lambda: not spool_files(site.data_dir / "spool"))


def test_a_queue_failure_after_local_copies_is_not_acknowledged(site, monkeypatch: pytest.MonkeyPatch) -> None:
    """The queue cannot take the group's outside member (ENOSPC injected): the message is refused with
    451 although the local copies are durable; the client's retry then delivers to everyone (the
    local members get it twice: a duplicate, not a lost recipient)."""
    import errno

    from mailsrv.queue.enqueue import Enqueuer

    real = Enqueuer.enqueue

    async def full(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Enqueuer, "enqueue", full)
    with smtplib.SMTP("127.0.0.1", site.ports["mta"]) as c:
        c.ehlo("client.test")
        with pytest.raises(smtplib.SMTPDataError) as refused:
            c.sendmail("someone@remote.test", ["team@example.test"], MSG)
        assert refused.value.smtp_code == 451
    assert queue_dir(site.data_dir).all() == []
    assert len(site.inbox("alice@example.test")) == 1  # durable before the queue failed
    monkeypatch.setattr(Enqueuer, "enqueue", real)
    with smtplib.SMTP("127.0.0.1", site.ports["mta"]) as c:
        c.ehlo("client.test")
        assert c.sendmail("someone@remote.test", ["team@example.test"], MSG) == {}
    [env] = queue_dir(site.data_dir).all()
    assert [r.addr for r in env.rcpts] == ["partner@remote.test"]
    assert len(site.inbox("alice@example.test")) == 2
