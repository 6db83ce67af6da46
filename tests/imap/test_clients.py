"""End to end with real client libraries (imaplib, imapclient) over loopback sockets."""

from __future__ import annotations

import imaplib
import re
import threading
from pathlib import Path

import imapclient
import pytest
from imaptest import Raw, ServerHandle

MSG = (
    b"From: Alice Example <alice@example.test>\r\n"
    b"To: bob@example.test, \"Carol, C.\" <carol@example.test>\r\n"
    b"Subject: Hello there\r\n"
    b"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\n"
    b"Message-ID: <m1@example.test>\r\n"
    b"\r\n"
    b"Body line one\r\nBody line two\r\n"
)


def login(server: ServerHandle, user: str = "alice") -> imaplib.IMAP4:
    c = imaplib.IMAP4(server.host, server.port, timeout=10)
    c.login(user, {"alice": "wonderland", "bob": "builder"}[user])
    return c


def normalise(raw: bytes) -> bytes:
    """Line endings as a server would store them (CRLF)."""
    return re.sub(rb"\r?\n", b"\r\n", raw)


def test_append_fetch_store_expunge_imaplib(server: ServerHandle) -> None:
    c = login(server)
    typ, data = c.append("INBOX", "(\\Flagged)", imaplib.Time2Internaldate(1_700_000_000), MSG)
    assert typ == "OK" and b"[APPENDUID " in data[0]
    c.append("INBOX", None, None, MSG.replace(b"Hello there", b"Second"))
    typ, data = c.select("INBOX")
    assert data == [b"2"]
    typ, data = c.fetch("1", "(FLAGS RFC822.SIZE INTERNALDATE UID)")
    assert typ == "OK"
    line = data[0]
    # RFC 3501 §2.3.2: this first SELECT since the APPENDs holds them as \Recent
    assert b"FLAGS (\\Flagged \\Recent)" in line and b"RFC822.SIZE %d" % len(MSG) in line and b"UID 1" in line
    assert b'INTERNALDATE "14-Nov-2023 22:13:20 +0000"' in line
    typ, data = c.fetch("1", "(BODY.PEEK[HEADER.FIELDS (Subject)])")
    assert data[0][1] == b"Subject: Hello there\r\n\r\n"
    typ, data = c.fetch("1", "(BODY[]<0.4>)")
    assert data[0][0].endswith(b"BODY[]<0> {4}") and data[0][1] == b"From"
    # BODY[] (not PEEK) set \Seen, and FLAGS came back with it
    assert b"\\Seen" in data[0][0] + (data[1] if isinstance(data[1], bytes) else b"")
    typ, data = c.uid("FETCH", "2", "(RFC822)")
    assert data[0][1] == MSG.replace(b"Hello there", b"Second")
    typ, data = c.store("1", "+FLAGS", "(\\Deleted)")
    assert b"\\Deleted" in data[0]
    typ, data = c.expunge()
    assert data == [b"1"]
    typ, data = c.search(None, "ALL")
    assert data == [b"1"]
    typ, data = c.uid("SEARCH", None, "ALL")
    assert data == [b"2"]
    c.logout()


def test_envelope_and_bodystructure(server: ServerHandle, corpus: Path) -> None:
    c = imapclient.IMAPClient(server.host, server.port, ssl=False, timeout=10)
    c.login("alice", "wonderland")
    c.append("INBOX", MSG)
    multipart = normalise((corpus / "cpython-test_email" / "msg_02.txt").read_bytes())
    c.append("INBOX", multipart)
    c.select_folder("INBOX")
    resp = c.fetch([1, 2], ["ENVELOPE", "BODYSTRUCTURE", "BODY"])
    env = resp[1][b"ENVELOPE"]
    assert env.subject == b"Hello there"
    assert env.from_[0].mailbox == b"alice" and env.from_[0].host == b"example.test"
    assert env.from_[0].name == b"Alice Example"
    assert [a.mailbox for a in env.to] == [b"bob", b"carol"]
    assert env.to[1].name == b"Carol, C."
    assert env.message_id == b"<m1@example.test>"
    bs = resp[1][b"BODYSTRUCTURE"]
    assert bs[0].upper() == b"TEXT" and bs[1].upper() == b"PLAIN"
    assert bs[6] == len(b"Body line one\r\nBody line two\r\n") and bs[7] == 2
    bs2 = resp[2][b"BODYSTRUCTURE"]
    assert bs2.is_multipart
    c.logout()


def test_copy_move_uidplus_and_folders(server: ServerHandle) -> None:
    c = imapclient.IMAPClient(server.host, server.port, ssl=False, timeout=10)
    c.login("alice", "wonderland")
    c.create_folder("Work/2026")
    folders = {f[2]: f[0] for f in c.list_folders()}
    assert "Work/2026" in folders and "INBOX" in folders
    assert folders["Work/2026"] == (b"\\HasNoChildren",)
    assert b"\\Sent" in folders["Sent"]
    for i in range(3):
        c.append("INBOX", MSG.replace(b"Hello there", b"Msg %d" % i))
    c.select_folder("INBOX")
    typ, data = c._imap.copy("1:2", "Work/2026")
    assert typ == "OK" and re.match(rb"\[COPYUID \d+ 1:2 1:2\] COPY completed", data[0])
    c.move([3], "Work/2026")
    assert re.match(rb"\[COPYUID \d+ 3 3\] Moved", c._imap.untagged_responses["OK"][-1])
    assert c.search() == [1, 2]
    st = c.folder_status("Work/2026", ["MESSAGES", "UIDNEXT", "UNSEEN"])
    assert st[b"MESSAGES"] == 3 and st[b"UIDNEXT"] == 4 and st[b"UNSEEN"] == 3
    c.rename_folder("Work/2026", "Work/Done")
    assert c.folder_exists("Work/Done") and not c.folder_exists("Work/2026")
    c.delete_folder("Work/Done")
    assert not c.folder_exists("Work/Done")
    c.create_folder("日本語")
    assert c.folder_exists("日本語")
    c.logout()


def test_flags_from_two_sessions(server: ServerHandle, raw: Raw) -> None:
    a = login(server)
    a.append("INBOX", None, None, MSG)
    a.select("INBOX")
    raw.cmd(b"b0 LOGIN alice wonderland")
    raw.cmd(b"b1 SELECT INBOX")
    a.store("1", "+FLAGS", "(\\Answered)")
    a.append("INBOX", None, None, MSG)
    out = raw.cmd(b"b2 NOOP")
    assert b"* 2 EXISTS\r\n" in out
    assert b"* 1 FETCH (FLAGS (\\Answered))\r\n" in out
    a.store("1", "+FLAGS", "(\\Deleted)")
    a.expunge()
    # not during FETCH (sequence numbers would shift) ...
    out = raw.cmd(b"b3 FETCH 1:2 (UID)")
    assert not any(b"EXPUNGE" in ln for ln in out)
    assert b"* 1 FETCH (UID 1)\r\n" in out
    # ... but at the next NOOP
    out = raw.cmd(b"b4 NOOP")
    assert out[0] == b"* 1 EXPUNGE\r\n"
    assert raw.cmd(b"b5 FETCH 1 (UID)")[0] == b"* 1 FETCH (UID 2)\r\n"
    a.logout()


def test_idle_sees_new_mail(server: ServerHandle) -> None:
    c = imapclient.IMAPClient(server.host, server.port, ssl=False, timeout=10)
    c.login("alice", "wonderland")
    c.select_folder("INBOX")
    c.idle()
    delivered = threading.Event()

    async def deliver() -> None:
        acct = await server.store.account("1")
        await acct.append("INBOX", MSG)
        delivered.set()

    server.call(deliver())
    responses = c.idle_check(timeout=10)
    assert (1, b"EXISTS") in responses
    c.idle_done()
    c.logout()


def test_condstore_and_qresync(server: ServerHandle, raw: Raw) -> None:
    a = imapclient.IMAPClient(server.host, server.port, ssl=False, timeout=10)
    a.login("alice", "wonderland")
    for _ in range(3):
        a.append("INBOX", MSG)
    raw.cmd(b"q0 LOGIN alice wonderland")
    assert raw.cmd(b"q1 ENABLE QRESYNC")[0] == b"* ENABLED QRESYNC\r\n"
    out = raw.cmd(b"q2 SELECT INBOX")
    hms = int(re.search(rb"HIGHESTMODSEQ (\d+)", b"".join(out)).group(1))
    uidvalidity = int(re.search(rb"UIDVALIDITY (\d+)", b"".join(out)).group(1))
    raw.cmd(b"q3 UNSELECT")
    a.select_folder("INBOX")
    a.add_flags([2], [b"$Important"])
    a.delete_messages([3])
    a.expunge()
    out = raw.cmd(b"q4 SELECT INBOX (QRESYNC (%d %d))" % (uidvalidity, hms))
    text = b"".join(out)
    assert b"* VANISHED (EARLIER) 3\r\n" in out
    assert re.search(rb"\* 2 FETCH \(UID 2 FLAGS \(\$Important\) MODSEQ \(\d+\)\)", text)
    assert out[-1] == b"q4 OK [READ-WRITE] SELECT completed\r\n"
    out = raw.cmd(b"q5 UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % hms)
    assert len(out) == 2 and out[0].startswith(b"* 2 FETCH (UID 2 FLAGS ($Important) MODSEQ (")
    # conditional STORE that loses the race
    out = raw.cmd(b"q6 STORE 2 (UNCHANGEDSINCE 1) +FLAGS (\\Seen)")
    assert out[-1] == b"q6 OK [MODIFIED 2] Conditional STORE failed\r\n"
    a.logout()


@pytest.mark.parametrize("returns", [b"RETURN (MIN MAX COUNT ALL)", b"RETURN ()"])
def test_esearch(server: ServerHandle, raw: Raw, returns: bytes) -> None:
    async def fill() -> None:
        acct = await server.store.account("1")
        for i in range(5):
            await acct.append("INBOX", MSG.replace(b"Hello there", b"n%d" % i),
                              frozenset({"\\Seen"}) if i % 2 else frozenset())

    server.call(fill())
    raw.cmd(b"s0 LOGIN alice wonderland")
    raw.cmd(b"s1 SELECT INBOX")
    out = raw.cmd(b"s2 SEARCH " + returns + b" UNSEEN")
    if returns == b"RETURN ()":
        assert out[0] == b'* ESEARCH (TAG "s2") ALL 1,3,5\r\n'
    else:
        assert out[0] == b'* ESEARCH (TAG "s2") MIN 1 MAX 5 ALL 1,3,5 COUNT 3\r\n'
    assert raw.cmd(b"s3 SEARCH OR SUBJECT n1 SUBJECT n4")[0] == b"* SEARCH 2 5\r\n"
    assert raw.cmd(b"s4 UID SEARCH NOT SEEN HEADER Message-ID m1")[0] == b"* SEARCH 1 3 5\r\n"
    assert raw.cmd(b"s5 SEARCH BODY \"line two\" 2:3")[0] == b"* SEARCH 2 3\r\n"
    assert raw.cmd(b"s6 SEARCH RETURN (SAVE) SEEN")[-1] == b"s6 OK SEARCH completed\r\n"
    assert raw.cmd(b"s7 FETCH $ (UID)")[:2] == [b"* 2 FETCH (UID 2)\r\n", b"* 4 FETCH (UID 4)\r\n"]
    assert raw.cmd(b"s8 SEARCH CHARSET KOI8-R ALL") == [
        b"s8 NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset\r\n"
    ]
