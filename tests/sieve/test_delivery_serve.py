"""Sieve at delivery under a real ``mailsrv serve`` (2 workers, the queue runner): mail in over SMTP
(smtplib), folders and flags read over IMAP, redirects and vacation replies received by an aiosmtpd
sink on 127.0.0.1 routed as "remote.test"."""

from __future__ import annotations

import email
import imaplib
import re
import smtplib
import socket
import subprocess
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sievesink import Sink
from support.admin import cli
from support.server import init_setup, mailsrv_cmd, serve_users, wait_until

from mailsrv.config import load
from mailsrv.directory import open_sync
from mailsrv.sieve.scripts import put_script, set_active
from mailsrv.store import account_root

D = "example.test"
PW = "sieve test password"

SCRIPTS = {
    "bob": r'''require ["fileinto", "imap4flags"];
# invoices into their folder, flagged; offers dropped; the rest seen-flagged in INBOX
if header :contains "subject" "invoice" {
    fileinto :flags ["\\Flagged"] "Invoices";
} elsif header :contains "subject" "offer" {
    discard;
} elsif address :is "from" "boss@remote.test" {
    addflag "\\Answered";
}
''',
    "carol": 'redirect "ext@remote.test";\n',
    "dave": 'redirect "ext2@remote.test";\n',  # dave may not send outside
    "erin": 'require "vacation";\nvacation :days 1 :subject "Away" "I am away until Monday.";\n',
    "frank": "".join(f'redirect "f{i}@remote.test";\n' for i in range(5)),  # one too many: runtime error
    "gina": 'require "copy";\nredirect :copy "bob@example.test";\n',
    "hank": 'redirect "held@hold.test";\n',  # a route nobody answers: the entry stays in the queue
    "ivan": 'require ["body", "fileinto", "mailbox", "imap4flags"];\nif body :contains "unsubscribe" { fileinto :create "News"; }\n'
            'if mailboxexists "News" { addflag "\\\\Seen"; }\n',
    "kate": 'require ["fileinto", "imap4flags"];\nif header :contains "subject" "project" {\n'
            '  fileinto :flags ["$Work", "Project", "\\\\Flagged"] "Projects";\n} else { addflag "$Later \\\\Seen"; }\n',
    "nora": 'require ["enotify", "variables"];\nif header :matches "subject" "*" { set :encodeurl "s" "${1}"; }\n'
            'notify :importance "1" :message "mail for nora" "mailto:pager@remote.test?subject=New%3A%20${s}";\n',
    "olga": 'require ["editheader", "fileinto", "copy"];\ndeleteheader "x-spam-flag";\ndeleteheader "received";\n'
            'addheader "X-Filed-By" "olga\'s rules";\nif header :contains "subject" "report" { fileinto "Reports"; }\n'
            'redirect :copy "olga-ext@remote.test";\n',
    # RFC 5293: each copy and redirect gets the header as it was when its action ran
    "rita": 'require ["editheader", "fileinto", "copy"];\nfileinto :copy "Before";\naddheader "X-Step" "one";\n'
            'fileinto :copy "After";\nredirect :copy "rita-ext@remote.test";\naddheader "X-Step" "two";\n',
    "jack": 'require "reject";\nif header :contains "subject" "lottery" { reject "No lotteries, thank you."; }\n',
}



def add_users(cfg: Any, users: dict[str, str], names: tuple[str, ...], pw: str, *extra: str) -> None:
    """``mailsrv user add`` each of ``names`` (users of D) with password ``pw``, noted in ``users``."""
    for name in names:
        p = subprocess.run(mailsrv_cmd("user", "add", f"{name}@{D}", "--password-stdin", *extra, "-c", str(cfg)),
                           input=pw + "\n", capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        users[f"{name}@{D}"] = pw


def activate(cfg: Any, scripts: dict[str, str]) -> None:
    """Store each ``user -> script`` of ``scripts`` as the user's active script "main" (users of D)."""
    conf = load(cfg)
    sd = open_sync(conf.directory, conf.server.data_dir)
    for name, text in scripts.items():
        info = sd.user_info(f"{name}@{D}")
        root = account_root(conf.server.data_dir, info["id"], info["store"])
        put_script(root, "main", text)
        set_active(root, "main")

@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, sink: Sink) -> Iterator[Any]:
    base = tmp_path_factory.mktemp("sieve")
    cfg = init_setup(base / "s", "--demo", workers=2)
    users = dict(re.findall(r"demo user (\S+) password (\S+)", (base / "s" / "demo-users.txt").read_text()))
    add_users(cfg, users, ("carol", "erin", "frank", "gina", "hank", "ivan", "jack", "kate", "nora", "olga", "rita"), PW)
    add_users(cfg, users, ("dave",), PW, "--send-outside", "no")
    with socket.socket() as closed:  # a port with no listener: connections to it are refused
        closed.bind(("127.0.0.1", 0))
        dead = closed.getsockname()[1]
    with open(cfg, "a") as fh:
        fh.write(f'\n[queue.route."remote.test"]\nsmarthost = "127.0.0.1:{sink.port}"\ntls = "none"\n'
                 f'\n[queue.route."hold.test"]\nsmarthost = "127.0.0.1:{dead}"\ntls = "none"\n')
    cli(cfg, "group", "add", f"team@{D}")
    cli(cfg, "group", "member", "add", f"team@{D}", f"bob@{D}")
    activate(cfg, SCRIPTS)
    srv = serve_users(cfg, users)
    yield srv
    assert srv.stop() == 0


def send(srv: Any, subject: str, rcpts: list[str], *, sender: str = "x@remote.test", to: str | None = None,
         headers: dict[str, str] | None = None, body: str = "") -> None:
    msg = EmailMessage()
    msg["From"] = sender or "mailer-daemon@remote.test"
    msg["To"] = to if to is not None else ", ".join(rcpts)
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{abs(hash(subject))}@remote.test>"
    for k, v in (headers or {}).items():
        msg[k] = v
    msg.set_content(body or f"body of {subject}\n")
    with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=30) as s:
        s.send_message(msg, from_addr=sender, to_addrs=rcpts)


def imap(srv: Any, user: str) -> imaplib.IMAP4_SSL:
    m = imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=srv.ctx, timeout=30)
    m.login(user, srv.users[user])
    return m


def folder(srv: Any, user: str, box: str) -> dict[str, str]:
    """subject -> FLAGS (without \\Recent) of each message in ``box`` ({} when the folder does not exist)."""
    m = imap(srv, user)
    try:
        if m.select(f'"{box}"', readonly=True)[0] != "OK":
            return {}
        typ, data = m.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        if typ != "OK" or data == [None]:
            return {}
        out = {}
        for part in data:
            if isinstance(part, tuple):
                flags = re.search(rb"FLAGS \(([^)]*)\)", part[0])
                subject = part[1].decode().split(":", 1)[1].strip()
                got = flags.group(1).decode().split() if flags else []
                out[subject] = " ".join(f for f in got if f != "\\Recent")
        return out
    finally:
        m.logout()


def sunk(sink: Sink) -> list[email.message.Message]:
    """What the sink got, each with its envelope as X-Env-From / X-Env-To."""
    out = []
    for frm, tos, raw in sink.messages():
        m = email.message_from_bytes(raw)
        m["X-Env-From"] = frm
        m["X-Env-To"] = ",".join(tos)
        out.append(m)
    return out


def sunk_to(sink: Sink, subject: str) -> list[email.message.Message]:
    return [m for m in sunk(sink) if subject in str(m["Subject"])]


def test_fileinto_with_flags_creates_the_folder(server: Any) -> None:
    send(server, "invoice 17", [f"bob@{D}"])
    assert folder(server, f"bob@{D}", "Invoices") == {"invoice 17": "\\Flagged"}
    assert "invoice 17" not in folder(server, f"bob@{D}", "INBOX")


def test_keywords_are_stored_with_the_delivered_copy(server: Any) -> None:
    # RFC 5232: keywords a script sets are stored (dovecot-keywords letters), as system flags are
    send(server, "project kickoff", [f"kate@{D}"])
    send(server, "lunch?", [f"kate@{D}"])
    got = folder(server, f"kate@{D}", "Projects")
    assert set(got["project kickoff"].split()) == {"$Work", "Project", "\\Flagged"}, got
    inbox = folder(server, f"kate@{D}", "INBOX")
    assert set(inbox["lunch?"].split()) == {"$Later", "\\Seen"}, inbox
    assert "project kickoff" not in inbox
    # a keyword set at delivery is an ordinary keyword: STORE takes it off
    m = imap(server, f"kate@{D}")
    try:
        m.select('"Projects"')
        typ, data = m.store("1", "-FLAGS", "(Project)")
        assert typ == "OK", data
    finally:
        m.logout()
    assert set(folder(server, f"kate@{D}", "Projects")["project kickoff"].split()) == {"$Work", "\\Flagged"}


def test_discard_and_implicit_keep_with_flags(server: Any) -> None:
    send(server, "special offer", [f"bob@{D}"])
    send(server, "from the boss", [f"bob@{D}"], sender="boss@remote.test")
    send(server, "plain hello", [f"bob@{D}"])
    inbox = folder(server, f"bob@{D}", "INBOX")
    assert inbox["from the boss"] == "\\Answered"  # RFC 5232 §5: the implicit keep takes the variable's flags
    assert inbox["plain hello"] == ""
    assert "special offer" not in inbox
    server.wait_for(r"sieve\.discarded .*user=bob@example\.test")


def test_redirect_to_outside_is_queued_with_the_loop_marker(server: Any, sink: Sink) -> None:
    send(server, "for carol", [f"carol@{D}"])
    wait_until(lambda: bool(sunk_to(sink, "for carol")), timeout=30)
    (got,) = sunk_to(sink, "for carol")
    assert got["X-Sieve-Redirected-From"] == f"carol@{D}"
    assert got["X-Env-From"] == "x@remote.test" and got["X-Env-To"] == "ext@remote.test"  # the original sender
    assert "for carol" not in folder(server, f"carol@{D}", "INBOX")  # redirect cancels the implicit keep


def test_redirect_loop_is_kept(server: Any) -> None:
    mark = server.mark()
    send(server, "looping", [f"carol@{D}"], headers={"X-Sieve-Redirected-From": f"carol@{D}"})
    assert "looping" in folder(server, f"carol@{D}", "INBOX")
    server.wait_for(r"sieve\.redirect_loop .*user=carol@example\.test", start=mark)


def test_redirect_outside_refused_by_policy_keeps(server: Any) -> None:
    mark = server.mark()
    send(server, "for dave", [f"dave@{D}"])
    assert "for dave" in folder(server, f"dave@{D}", "INBOX")
    server.wait_for(r"sieve\.redirect_refused .*rcpt=ext2@remote\.test", start=mark)


def test_runtime_error_keeps(server: Any) -> None:
    mark = server.mark()
    send(server, "for frank", [f"frank@{D}"])
    assert "for frank" in folder(server, f"frank@{D}", "INBOX")
    server.wait_for(r"sieve\.failed .*user=frank@example\.test", start=mark)


def test_redirect_copy_to_a_local_user(server: Any) -> None:
    send(server, "for gina", [f"gina@{D}"])
    assert "for gina" in folder(server, f"gina@{D}", "INBOX")
    wait_until(lambda: "for gina" in folder(server, f"bob@{D}", "INBOX"), timeout=30)


def test_vacation_once_per_sender_and_not_to_lists_or_robots(server: Any, sink: Sink) -> None:
    send(server, "hello erin", [f"erin@{D}"], sender="y@remote.test")
    wait_until(lambda: bool([m for m in sunk(sink) if m["To"] == "y@remote.test"]), timeout=30)
    (reply,) = [m for m in sunk(sink) if m["To"] == "y@remote.test"]
    assert reply["Subject"] == "Away" and reply["Auto-Submitted"] == "auto-replied"
    assert reply["X-Env-From"] == "<>"  # RFC 3834 §3.3: the null reverse path
    assert reply["From"] == f"erin@{D}" and reply["In-Reply-To"] == f"<{abs(hash('hello erin'))}@remote.test>"
    assert "I am away until Monday." in reply.get_payload()
    assert "hello erin" in folder(server, f"erin@{D}", "INBOX")  # vacation keeps the message
    mark = server.mark()
    send(server, "hello again", [f"erin@{D}"], sender="y@remote.test")
    server.wait_for(r"sieve\.vacation_skipped .*reason=period", start=mark)
    send(server, "list mail", [f"erin@{D}"], sender="z@remote.test", headers={"List-Id": "<l.remote.test>"})
    server.wait_for(r"sieve\.vacation_skipped .*reason=list", start=mark)
    send(server, "bulk mail", [f"erin@{D}"], sender="z@remote.test", headers={"Precedence": "bulk"})
    server.wait_for(r"sieve\.vacation_skipped .*reason=precedence", start=mark)
    send(server, "robot", [f"erin@{D}"], sender="z@remote.test", headers={"Auto-Submitted": "auto-generated"})
    server.wait_for(r"sieve\.vacation_skipped .*reason=auto-submitted", start=mark)
    send(server, "bcc only", [f"erin@{D}"], sender="z@remote.test", to="someone@remote.test")
    server.wait_for(r"sieve\.vacation_skipped .*reason=not-addressed", start=mark)
    send(server, "a bounce", [f"erin@{D}"], sender="")
    assert "a bounce" in folder(server, f"erin@{D}", "INBOX")
    # one more reply-worthy message from another sender: its reply is the only new one
    send(server, "hello from w", [f"erin@{D}"], sender="w@remote.test")
    wait_until(lambda: bool([m for m in sunk(sink) if m["To"] == "w@remote.test"]), timeout=30)
    replies = [m for m in sunk(sink) if m["Auto-Submitted"] == "auto-replied"]
    assert sorted(m["To"] for m in replies) == ["w@remote.test", "y@remote.test"]


def test_group_member_filtered(server: Any) -> None:
    send(server, "invoice for the team", [f"team@{D}"])
    assert "invoice for the team" in folder(server, f"bob@{D}", "Invoices")


def test_large_message_redirect_streamed_from_the_spool(server: Any, sink: Sink) -> None:
    body = "".join(f"line {i:06d} of a long message\n" for i in range(12000))  # ~360 KB: not held in memory
    send(server, "big for carol", [f"carol@{D}"], body=body)
    wait_until(lambda: bool(sunk_to(sink, "big for carol")), timeout=30)
    (got,) = sunk_to(sink, "big for carol")
    assert got["X-Sieve-Redirected-From"] == f"carol@{D}"
    assert got.get_payload(decode=True).decode().replace("\r\n", "\n") == body


def test_redirect_is_queued_before_the_reply(server: Any) -> None:
    send(server, "for hank", [f"hank@{D}"])
    # the 250 came: the redirect's entry is in the queue (its route refuses connections, so it stays)
    out = cli(server.cfg, "queue", "list")
    assert "held@hold.test" in out, out
    assert "for hank" not in folder(server, f"hank@{D}", "INBOX")


def test_body_test_at_delivery(server: Any) -> None:
    send(server, "weekly news", [f"ivan@{D}"], body="Hello!\nTo unsubscribe, click below.\n")
    send(server, "a friend", [f"ivan@{D}"], body="Hello, how are you?\n")
    big = "filler line of a big newsletter\n" * 12000 + "unsubscribe here\n"  # past the spool's memory
    send(server, "big news", [f"ivan@{D}"], body=big)
    assert set(folder(server, f"ivan@{D}", "News")) == {"weekly news", "big news"}
    assert folder(server, f"ivan@{D}", "INBOX")["a friend"] == "\\Seen"  # News existed by then


def test_reject_alone_is_refused_in_smtp(server: Any) -> None:
    with pytest.raises(smtplib.SMTPDataError) as e:
        send(server, "lottery win", [f"jack@{D}"])
    assert e.value.smtp_code == 550 and b"No lotteries, thank you." in e.value.smtp_error
    send(server, "hello jack", [f"jack@{D}"])
    assert set(folder(server, f"jack@{D}", "INBOX")) == {"hello jack"}


def test_reject_among_others_bounces_to_the_sender(server: Any, sink: Sink) -> None:
    send(server, "lottery for two", [f"jack@{D}", f"bob@{D}"], sender="lotto@remote.test")
    assert "lottery for two" in folder(server, f"bob@{D}", "INBOX")
    assert "lottery for two" not in folder(server, f"jack@{D}", "INBOX")
    wait_until(lambda: any(m["X-Env-To"] == "lotto@remote.test" for m in sunk(sink)), timeout=30)
    (dsn,) = [m for m in sunk(sink) if m["X-Env-To"] == "lotto@remote.test"]
    assert dsn["X-Env-From"] == "<>" and dsn.get_content_type() == "multipart/report"
    human = dsn.get_payload()[0].get_payload()  # RFC 3464: the human-readable part first
    assert f"<jack@{D}>: 550 5.7.1 No lotteries, thank you." in human and f"bob@{D}" not in human


def test_notify_by_mail_and_not_about_auto_submitted_mail(server: Any, sink: Sink) -> None:
    send(server, "lunch & more", [f"nora@{D}"], sender="friend@remote.test")
    wait_until(lambda: any(m["X-Env-To"] == "pager@remote.test" for m in sunk(sink)), timeout=30)
    (note,) = [m for m in sunk(sink) if m["X-Env-To"] == "pager@remote.test"]
    assert note["X-Env-From"] == "<>" and note["Auto-Submitted"] == "auto-notified"  # RFC 5436 §2.7
    assert note["Subject"] == "New: lunch & more" and note["Importance"] == "high"
    assert note["From"] == f"nora@{D}" and "mail for nora" in note.get_payload()
    assert "lunch & more" in folder(server, f"nora@{D}", "INBOX")  # notify keeps the implicit keep
    mark = server.mark()
    send(server, "robot news", [f"nora@{D}"], headers={"Auto-Submitted": "auto-generated"})
    server.wait_for(r"sieve\.notify_skipped .*user=nora@example\.test.*reason=auto-submitted", start=mark)
    assert "robot news" in folder(server, f"nora@{D}", "INBOX")
    assert len([m for m in sunk(sink) if m["X-Env-To"] == "pager@remote.test"]) == 1


def raw_message(srv: Any, user: str, box: str, subject: str) -> bytes:
    m = imap(srv, user)
    try:
        assert m.select(f'"{box}"', readonly=True)[0] == "OK"
        typ, data = m.search(None, "SUBJECT", f'"{subject}"')
        (num,) = data[0].split()
        typ, data = m.fetch(num, "(BODY.PEEK[])")
        return bytes(data[0][1])
    finally:
        m.logout()


def test_editheader_edits_this_recipients_copies_only(server: Any, sink: Sink) -> None:
    send(server, "weekly report", [f"olga@{D}", f"bob@{D}"], headers={"X-Spam-Flag": "YES"})
    mine = email.message_from_bytes(raw_message(server, f"olga@{D}", "Reports", "weekly report"))
    assert mine["X-Filed-By"] == "olga's rules" and mine["X-Spam-Flag"] is None
    assert mine["Received"] is not None  # RFC 5293 §7: protected, kept
    assert mine.get_payload().strip() == "body of weekly report"
    theirs = email.message_from_bytes(raw_message(server, f"bob@{D}", "INBOX", "weekly report"))
    assert theirs["X-Spam-Flag"] == "YES" and theirs["X-Filed-By"] is None  # bob's copy as it came
    wait_until(lambda: bool([m for m in sunk_to(sink, "weekly report") if m["X-Env-To"] == "olga-ext@remote.test"]),
               timeout=30)
    (fwd,) = [m for m in sunk_to(sink, "weekly report") if m["X-Env-To"] == "olga-ext@remote.test"]
    assert fwd["X-Filed-By"] == "olga's rules" and fwd["X-Spam-Flag"] is None  # the redirect is the edited one
    spool = Path(load(server.cfg).server.data_dir) / "spool"
    wait_until(lambda: not [p for p in spool.iterdir() if ".edit" in p.name], timeout=30)  # removed


def test_editheader_copies_get_the_header_as_at_their_action(server: Any, sink: Sink) -> None:
    send(server, "step report", [f"rita@{D}"])
    steps = {box: email.message_from_bytes(raw_message(server, f"rita@{D}", box, "step report")).get_all("X-Step")
             for box in ("Before", "After", "INBOX")}
    assert steps == {"Before": None, "After": ["one"], "INBOX": ["two", "one"]}  # the implicit keep: at the end
    wait_until(lambda: bool(sunk_to(sink, "step report")), timeout=30)
    (fwd,) = sunk_to(sink, "step report")
    assert fwd.get_all("X-Step") == ["one"]
    spool = Path(load(server.cfg).server.data_dir) / "spool"
    wait_until(lambda: not [p for p in spool.iterdir() if ".edit" in p.name], timeout=30)  # removed


def test_editheader_on_a_message_streamed_from_the_spool(server: Any) -> None:
    body = "".join(f"line {i:06d} of a long report\n" for i in range(12000))  # ~300 KB: not held in memory
    send(server, "big report", [f"olga@{D}"], body=body, headers={"X-Spam-Flag": "NO"})
    mine = email.message_from_bytes(raw_message(server, f"olga@{D}", "Reports", "big report"))
    assert mine["X-Filed-By"] == "olga's rules" and mine["X-Spam-Flag"] is None
    assert mine.get_payload(decode=True).decode().replace("\r\n", "\n") == body
