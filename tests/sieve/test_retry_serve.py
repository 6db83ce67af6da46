"""A retried delivery makes only the copies and redirects a partly failed one did not (docs/sieve.md
"Retries"), under a real ``mailsrv serve``: the fault is real (the INBOX's ``new/`` made immutable with
chattr, which stops root too), the retries are real (our queue through our MTA, the sender through
smtplib), copies are counted over IMAP and redirects at the aiosmtpd sink."""

from __future__ import annotations

import re
import smtplib
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sievesink import Sink
from support.admin import cli
from support.server import init_setup, serve_users, wait_until
from test_delivery_serve import activate, add_users, folder, imap, send, sunk, sunk_to

from mailsrv.config import load
from mailsrv.delivery.sieve_ledger import LEDGER_DB
from mailsrv.directory import open_sync
from mailsrv.store import account_root

D = "example.test"
PW = "sieve retry test password"
SCRIPT = 'require ["fileinto", "copy"];\nfileinto "Archive";\nredirect :copy "lena-ext@remote.test";\nkeep;\n'
DUP_SCRIPT = ('require ["duplicate", "fileinto"];\n'
              'if duplicate { fileinto "Dups"; } else { fileinto "Kept"; keep; }\n')
#: olga discards what is new to her: her run completes without a copy
DISCARD_SCRIPT = 'require ["duplicate", "fileinto"];\nif duplicate { fileinto "Dups"; } else { discard; }\n'
#: pia is notified of each message (RFC 5435), and files it
NOTIFY_SCRIPT = 'require ["enotify", "fileinto"];\nnotify "mailto:pia-pager@remote.test";\nfileinto "Filed";\n'
#: quin is notified, files and keeps: a failed keep is retried by our queue
QUIN_SCRIPT = ('require ["enotify", "fileinto"];\nnotify "mailto:quin-pager@remote.test";\n'
               'fileinto "Filed";\nkeep;\n')


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, sink: Sink) -> Iterator[Any]:
    base = tmp_path_factory.mktemp("sieveretry")
    cfg = init_setup(base / "s", "--demo", workers=1)
    users = dict(re.findall(r"demo user (\S+) password (\S+)", (base / "s" / "demo-users.txt").read_text()))
    add_users(cfg, users, ("lena", "mira", "nell", "olga", "pia", "quin"), PW)  # mira: no script
    with open(cfg, "a") as fh:
        fh.write(f'\n[queue.route."remote.test"]\nsmarthost = "127.0.0.1:{sink.port}"\ntls = "none"\n')
    cli(cfg, "group", "add", f"pianotes@{D}")
    for member in (f"pia@{D}", "far@remote.test"):
        cli(cfg, "group", "member", "add", f"pianotes@{D}", member)
    activate(cfg, {"lena": SCRIPT, "nell": DUP_SCRIPT, "olga": DISCARD_SCRIPT, "pia": NOTIFY_SCRIPT,
                   "quin": QUIN_SCRIPT})
    srv = serve_users(cfg, users)
    yield srv
    assert srv.stop() == 0


def lena_root(srv: Any, user: str = "lena") -> Path:
    conf = load(srv.cfg)
    info = open_sync(conf.directory, conf.server.data_dir).user_info(f"{user}@{D}")
    return account_root(conf.server.data_dir, info["id"], info["store"])


def count(srv: Any, box: str, subject: str, user: str = "lena") -> int:
    m = imap(srv, f"{user}@{D}")
    try:
        if m.select(f'"{box}"', readonly=True)[0] != "OK":
            return 0
        typ, data = m.search(None, "SUBJECT", f'"{subject}"')
        assert typ == "OK"
        return len(data[0].split())
    finally:
        m.logout()


def immutable(path: Path, on: bool) -> None:
    subprocess.run(["chattr", "+i" if on else "-i", str(path)], check=True)


def test_queue_retry_makes_only_the_failed_copy(server: Any, sink: Sink) -> None:
    send(server, "warm up", [f"lena@{D}"])  # the maildir and its Archive folder exist
    root = lena_root(server)
    assert count(server, "Archive", "warm up") == 1
    immutable(root / "new", True)
    try:
        send(server, "retry one", [f"lena@{D}"])  # Archive made, INBOX failed: 250, the queue retries lena
        assert count(server, "Archive", "retry one") == 1
        assert count(server, "INBOX", "retry one") == 0
        assert (root / LEDGER_DB).exists()
        mark = server.mark()  # before the fault goes: the queue's own retry may come at once after
    finally:
        immutable(root / "new", False)
    cli(server.cfg, "queue", "flush")
    wait_until(lambda: count(server, "INBOX", "retry one") == 1, timeout=60)
    server.wait_for(r"sieve\.retried .*user=lena@example\.test", start=mark)
    assert count(server, "Archive", "retry one") == 1  # not a second copy
    wait_until(lambda: len(sunk_to(sink, "retry one")) >= 1, timeout=30)
    assert len(sunk_to(sink, "retry one")) == 1  # the redirect of the first attempt only
    # the record has served: the same message sent again later is new mail
    send(server, "retry one", [f"lena@{D}"])
    assert count(server, "Archive", "retry one") == 2
    wait_until(lambda: len(sunk_to(sink, "retry one")) == 2, timeout=30)


def test_sender_retry_after_451_makes_only_what_is_missing(server: Any, sink: Sink) -> None:
    send(server, "warm up two", [f"lena@{D}"])
    root = lena_root(server)
    qmsg = Path(load(server.cfg).server.data_dir) / "queue" / "msg"
    immutable(root / "new", True)
    immutable(qmsg, True)  # and the queue cannot take the retry: the client is told 451
    try:
        with pytest.raises(smtplib.SMTPDataError) as e:
            send(server, "retry two", [f"lena@{D}"])
        assert e.value.smtp_code == 451
        assert count(server, "Archive", "retry two") == 1  # durable before the failure
        assert count(server, "INBOX", "retry two") == 0
    finally:
        immutable(qmsg, False)
        immutable(root / "new", False)
    mark = server.mark()
    send(server, "retry two", [f"lena@{D}"])  # the sender's retry, the same message
    server.wait_for(r"sieve\.retried .*user=lena@example\.test", start=mark)
    assert count(server, "INBOX", "retry two") == 1
    assert count(server, "Archive", "retry two") == 1
    # the first attempt queued nothing (451): the redirect is made once, by the retry
    wait_until(lambda: len(sunk_to(sink, "retry two")) == 1, timeout=30)
    assert folder(server, f"lena@{D}", "INBOX")["retry two"] == ""


def test_sender_retry_after_a_queue_failure_makes_no_copy_twice(server: Any, sink: Sink) -> None:
    """Every copy made, then the queue fails (lena's redirect): 451. The copies of both recipients,
    lena's with a script and mira's without, are recorded before the 451; the sender's retry makes
    none of them again and queues the redirect once (docs/sieve.md "Retries")."""
    mark = server.mark()
    send(server, "warm up three", [f"lena@{D}", f"mira@{D}"])
    server.wait_for(r"queue\.done ", start=mark)  # its redirect sent and its entry gone
    qmsg = Path(load(server.cfg).server.data_dir) / "queue" / "msg"
    mark = server.mark()
    immutable(qmsg, True)
    try:
        with pytest.raises(smtplib.SMTPDataError) as e:
            send(server, "retry three", [f"lena@{D}", f"mira@{D}"])
        assert e.value.smtp_code == 451
    finally:
        immutable(qmsg, False)
    server.wait_for(r"sieve\.remembered .*accounts=2", start=mark)
    assert count(server, "Archive", "retry three") == 1
    assert count(server, "INBOX", "retry three") == 1
    assert mira_count(server, "retry three") == 1
    mark = server.mark()
    send(server, "retry three", [f"lena@{D}", f"mira@{D}"])  # the sender's retry, the same message
    server.wait_for(r"sieve\.retried .*user=mira@example\.test", start=mark)
    wait_until(lambda: len(sunk_to(sink, "retry three")) == 1, timeout=30)
    assert count(server, "Archive", "retry three") == 1
    assert count(server, "INBOX", "retry three") == 1
    assert mira_count(server, "retry three") == 1
    # the rows have served: the same message sent once more is new mail for both
    send(server, "retry three", [f"lena@{D}", f"mira@{D}"])
    assert mira_count(server, "retry three") == 2
    assert count(server, "Archive", "retry three") == 2
    wait_until(lambda: len(sunk_to(sink, "retry three")) == 2, timeout=30)


def mira_count(srv: Any, subject: str) -> int:
    m = imap(srv, f"mira@{D}")
    try:
        assert m.select("INBOX", readonly=True)[0] == "OK"
        typ, data = m.search(None, "SUBJECT", f'"{subject}"')
        assert typ == "OK"
        return len(data[0].split())
    finally:
        m.logout()


def test_a_retried_recipient_finds_its_message_new_for_duplicate(server: Any) -> None:
    """RFC 7352 as Pigeonhole: a message's id is recorded once the recipient's copies are made, so the
    queue's retry after a failed copy runs the same branch (the ledger skips its made copy) and does
    not file it as a duplicate; the id is recorded after that retry."""
    send(server, "dup warm", [f"nell@{D}"])
    root = lena_root(server, "nell")
    assert count(server, "Kept", "dup warm", "nell") == 1
    immutable(root / "new", True)
    try:
        send(server, "dup one", [f"nell@{D}"])  # Kept made, INBOX failed: 250, the queue retries nell
        assert count(server, "Kept", "dup one", "nell") == 1
        assert count(server, "INBOX", "dup one", "nell") == 0
        mark = server.mark()
    finally:
        immutable(root / "new", False)
    cli(server.cfg, "queue", "flush")
    wait_until(lambda: count(server, "INBOX", "dup one", "nell") == 1, timeout=60)
    server.wait_for(r"sieve\.retried .*user=nell@example\.test", start=mark)
    assert count(server, "Dups", "dup one", "nell") == 0  # not a duplicate of its own failed attempt
    assert count(server, "Kept", "dup one", "nell") == 1
    send(server, "dup one", [f"nell@{D}"])  # the same message again: now a duplicate
    assert count(server, "Dups", "dup one", "nell") == 1
    assert count(server, "INBOX", "dup one", "nell") == 1


def test_a_message_answered_451_is_new_for_duplicate_at_the_sender_retry(server: Any, sink: Sink) -> None:
    """nell's copies made, then the queue fails (lena's redirect): 451. The duplicate id recorded
    with her copies is taken back with the 451, so the sender's retry runs the same branch (its copies
    skipped by the ledger), files nothing as a duplicate; the id is recorded after that retry."""
    qmsg = Path(load(server.cfg).server.data_dir) / "queue" / "msg"
    rcpts = [f"nell@{D}", f"lena@{D}"]
    mark = server.mark()
    immutable(qmsg, True)
    try:
        with pytest.raises(smtplib.SMTPDataError) as e:
            send(server, "dup two", rcpts)
        assert e.value.smtp_code == 451
    finally:
        immutable(qmsg, False)
    server.wait_for(r"sieve\.remembered ", start=mark)
    assert count(server, "Kept", "dup two", "nell") == 1
    assert count(server, "INBOX", "dup two", "nell") == 1
    mark = server.mark()
    send(server, "dup two", rcpts)  # the sender's retry, the same message
    server.wait_for(r"sieve\.retried .*user=nell@example\.test", start=mark)
    assert count(server, "Dups", "dup two", "nell") == 0
    assert count(server, "Kept", "dup two", "nell") == 1
    assert count(server, "INBOX", "dup two", "nell") == 1
    wait_until(lambda: len(sunk_to(sink, "dup two")) == 1, timeout=30)
    send(server, "dup two", [f"nell@{D}"])  # once more, acknowledged before: a duplicate now
    assert count(server, "Dups", "dup two", "nell") == 1


def test_a_451_with_nothing_delivered_leaves_no_duplicate_id(server: Any) -> None:
    """RFC 7352 as Pigeonhole: the ids commit with the transaction. olga's script discards the message
    (new to her), mira's copy fails (her new/ immutable): nothing delivered, 451. olga's id is not
    recorded, so the sender's retry finds the message new for her again (discarded, not filed into
    Dups); once that retry is answered 250 the id is recorded."""
    send(server, "warm up five", [f"mira@{D}"])  # mira's maildir exists
    root = lena_root(server, "mira")
    rcpts = [f"olga@{D}", f"mira@{D}"]
    immutable(root / "new", True)
    try:
        with pytest.raises(smtplib.SMTPDataError) as e:
            send(server, "dup five", rcpts)
        assert e.value.smtp_code == 451
    finally:
        immutable(root / "new", False)
    mark = server.mark()
    send(server, "dup five", rcpts)  # the sender's retry, the same message
    server.wait_for(r"sieve\.discarded .*user=olga@example\.test", start=mark)
    assert count(server, "Dups", "dup five", "olga") == 0  # not a duplicate of the unanswered attempt
    assert mira_count(server, "dup five") == 1
    send(server, "dup five", [f"olga@{D}"])  # acknowledged before: a duplicate now
    assert count(server, "Dups", "dup five", "olga") == 1


@contextmanager
def small_queue_disk(srv: Any) -> Iterator[Path]:
    """The queue's message directory on a 64 KB tmpfs: a short notification fits, a large message
    (another file system: copied, not linked) does not (ENOSPC), as on a full queue disk."""
    qmsg = Path(load(srv.cfg).server.data_dir) / "queue" / "msg"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(qmsg)], check=True)
    try:
        yield qmsg
    finally:
        subprocess.run(["umount", "-l", str(qmsg)], check=True)


def notifications(sink: Sink, subject: str) -> list[Any]:
    return [m for m in sunk(sink) if m["X-Env-To"] == "pia-pager@remote.test" and subject in str(m["Subject"])]


def test_a_notification_is_not_sent_again_at_the_sender_retry(server: Any, sink: Sink) -> None:
    """RFC 5435 notify, docs/sieve.md "Retries": pia's copy is made and her notification queued, then
    the remote recipient's entry does not fit the queue's disk: 451. The notification is recorded in
    her ledger with her copy, so the sender's retry files no second copy and sends no second
    notification (the remote recipient gets the message once)."""
    subject = "notify six"
    rcpts = [f"pianotes@{D}"]  # a group: pia and far@remote.test (a remote recipient, not relayed)
    body = "a line of a long report\n" * 12_000  # ~280 KB: more than the queue's disk holds
    with small_queue_disk(server):
        mark = server.mark()
        with pytest.raises(smtplib.SMTPDataError) as e:
            send(server, subject, rcpts, body=body)
        assert e.value.smtp_code == 451
        server.wait_for(r"sieve\.remembered ", start=mark)
        wait_until(lambda: len(notifications(sink, subject)) == 1, timeout=60)  # sent from the small disk
        server.wait_for(r"queue\.done ", start=mark)
    assert count(server, "Filed", subject, "pia") == 1
    mark = server.mark()
    send(server, subject, rcpts, body=body)  # the sender's retry, the same message
    server.wait_for(r"sieve\.retried .*user=pia@example\.test", start=mark)
    wait_until(lambda: len([m for m in sunk_to(sink, subject) if m["X-Env-To"] == "far@remote.test"]) == 1,
               timeout=60)
    server.wait_for(r"queue\.done ", start=mark)
    assert len(notifications(sink, subject)) == 1
    assert count(server, "Filed", subject, "pia") == 1


def test_a_notification_is_not_sent_again_at_the_queue_retry(server: Any, sink: Sink) -> None:
    """quin's Filed copy is made, her INBOX copy fails (new/ immutable): 250, our queue retries her (its
    retries answered 451 while the fault lasts). Her notification, queued with the first attempt, is
    recorded with her copy, so no retry sends it again."""
    send(server, "quin warm", [f"quin@{D}"])  # her maildir and Filed exist
    root = lena_root(server, "quin")
    subject = "quin seven"

    def pager() -> int:
        return len([m for m in sunk(sink) if m["X-Env-To"] == "quin-pager@remote.test" and subject in str(m["Subject"])])

    mark = server.mark()
    immutable(root / "new", True)
    try:
        send(server, subject, [f"quin@{D}"])  # Filed made, INBOX failed: 250, the queue retries quin
        wait_until(lambda: pager() == 1, timeout=60)
        server.wait_for(r"queue\.deferred .*diag=\"?451 ", start=mark)  # its retry, refused while new/ is immutable
    finally:
        immutable(root / "new", False)
    mark = server.mark()
    cli(server.cfg, "queue", "flush")
    wait_until(lambda: count(server, "INBOX", subject, "quin") == 1, timeout=60)
    server.wait_for(r"sieve\.retried .*user=quin@example\.test", start=mark)
    assert count(server, "Filed", subject, "quin") == 1
    server.wait_for(r"queue\.done ", start=mark)
    assert pager() == 1
