"""POP3 RETR marks \\Seen under a real ``mailsrv serve``: an IMAP IDLE in the same INBOX is told
(FETCH FLAGS), and recall counts the copy read over POP3 as read."""

from __future__ import annotations

import asyncio
import imaplib
import socket
import subprocess
from collections.abc import Iterator

import pytest
from pop3e2e import Setup, start
from support.server import mailsrv_cmd, wait_until

MSG = b"From: a@example.test\r\nSubject: %s\r\n\r\nbody\r\n"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    s = start(tmp_path_factory.mktemp("pop3seen"))
    try:
        yield s
    finally:
        assert s.server.stop() == 0


def imap_login(setup: Setup, addr: str) -> imaplib.IMAP4:
    imap = imaplib.IMAP4("127.0.0.1", setup.port("imap"), timeout=20)
    imap.starttls(setup.tls_context())
    imap.login(addr, setup.passwords[addr])
    return imap


def seen_flags(setup: Setup, addr: str) -> list[bool]:
    imap = imap_login(setup, addr)
    try:
        imap.select("INBOX", readonly=True)
        typ, data = imap.fetch("1:*", "(FLAGS)")
        assert typ == "OK"
        return [b"\\Seen" in d for d in data if isinstance(d, bytes)]
    finally:
        imap.logout()


def test_retr_marks_seen_and_idle_is_told(setup: Setup) -> None:
    addr = setup.add_user("idler", [MSG % b"one", MSG % b"two", MSG % b"three"])
    imap = imap_login(setup, addr)
    assert imap.select("INBOX")[1] == [b"3"]
    imap.send(b"I1 IDLE\r\n")
    assert imap.readline().startswith(b"+ ")
    c = setup.pop3(addr)
    c.retr(2)
    c.top(3, 0)  # TOP reads without marking
    assert c.quit().startswith(b"+OK")
    line = imap.readline()
    while b"FETCH" not in line:  # the IDLE is told of the flag change (no timeout: the socket's 20 s)
        line = imap.readline()
    assert line.startswith(b"* 2 FETCH") and b"\\Seen" in line
    imap.send(b"DONE\r\n")
    while not (line := imap.readline()).startswith(b"I1 "):
        assert b"FETCH (FLAGS" not in line or line.startswith(b"* 2 ")
    assert line.startswith(b"I1 OK")
    imap.logout()
    assert seen_flags(setup, addr) == [False, True, False]


def test_a_pop3_login_takes_the_recent_flag(setup: Setup) -> None:
    addr = setup.add_user("recent", [MSG % b"one", MSG % b"two"])
    setup.pop3(addr).quit()
    imap = imap_login(setup, addr)
    try:
        assert imap.select("INBOX")[1] == [b"2"]
        assert imap.response("RECENT")[1] == [b"0"]  # as Dovecot: the POP3 session saw them first
    finally:
        imap.logout()


def test_dropped_session_marks_seen_without_deleting(setup: Setup) -> None:
    addr = setup.add_user("dropper", [MSG % b"one", MSG % b"two"])
    c = setup.pop3(addr)
    c.retr(1)
    c.dele(2)
    c.sock.shutdown(socket.SHUT_RDWR)
    c.sock.close()
    wait_until(lambda: seen_flags(setup, addr) == [True, False], timeout=10)
    assert len(asyncio.run(setup.inbox_uids(addr))) == 2


def test_recall_keeps_the_copy_read_over_pop3(setup: Setup) -> None:
    sender = setup.add_user("boss")
    msg = (b"Return-Path: <" + sender.encode() + b">\r\nFrom: " + sender.encode()
           + b"\r\nMessage-ID: <recall-pop3@example.test>\r\nSubject: oops\r\n\r\nsent too early\r\n")
    reader, other = setup.add_user("reader", [msg]), setup.add_user("other", [msg])
    c = setup.pop3(reader)
    assert c.retr(1)[1][-1] == b"sent too early"
    c.quit()
    p = subprocess.run(mailsrv_cmd("recall", sender, "<recall-pop3@example.test>", "-c",
                                   str(setup.directory / "mailsrv.toml")),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    # read over POP3, so not recalled; the unread copy was
    assert f"{reader}: read" in p.stdout and f"{other}: recalled" in p.stdout, p.stdout
    assert subjects(setup, reader) == ["oops"] and "oops" not in subjects(setup, other)


def subjects(setup: Setup, addr: str) -> list[str]:
    imap = imap_login(setup, addr)
    try:
        imap.select("INBOX", readonly=True)
        typ, data = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        return [d[1].decode().split(":", 1)[1].strip() for d in data if isinstance(d, tuple)]
    finally:
        imap.logout()
