"""The IMAP server over the real maildir store, directory and authenticator (not the in-memory twins)."""

from __future__ import annotations

import base64
import imaplib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import imapclient
import pytest
import scramp
from imaptest import Raw, ServerHandle, serve_real_store, start_server

from mailsrv.auth import Authenticator
from mailsrv.auth.passwords import Hasher
from mailsrv.config import AuthConfig, DirectoryConfig
from mailsrv.directory import open_directory, open_sync
from mailsrv.search import SearchService
from mailsrv.store import Store

AUTH = AuthConfig(allow_plaintext_loopback=True, argon2_time_cost=1, argon2_memory_kib=256)
MSG = b"From: a@example.test\r\nTo: alice@example.test\r\nSubject: real store\r\n\r\nhello\r\n"


@pytest.fixture
def real(tmp_path: Path) -> Iterator[ServerHandle]:
    dcfg = DirectoryConfig()
    sd = open_sync(dcfg, tmp_path)
    sd.add_domain("example.test")
    pw, scram = Hasher(AUTH).make("wonderland")
    sd.add_user("alice@example.test", password_hash=pw, scram=scram)
    sd.close()
    objects: dict[str, Any] = {}

    async def setup() -> tuple[Any, Any, Any]:
        d = open_directory(dcfg, tmp_path)
        objects["directory"] = d
        store = Store(None, tmp_path)
        search = objects["search"] = SearchService()
        store.add_observer(search)
        return Authenticator(d, AUTH), store, search

    async def teardown(store: Store) -> None:
        await objects["search"].close()
        await store.close()
        await objects["directory"].close()

    handle, stop = start_server(setup=setup, teardown=teardown, data_dir=tmp_path)
    handle.extra["data_dir"] = tmp_path
    try:
        yield handle
    finally:
        stop()


def test_imaplib_on_real_store(real: ServerHandle) -> None:
    c = imaplib.IMAP4(real.host, real.port, timeout=20)
    c.login("alice@example.test", "wonderland")
    typ, data = c.list()
    names = b"\n".join(data)
    for special in (b"\\Sent", b"\\Drafts", b"\\Trash", b"\\Junk"):
        assert special in names
    assert c.append("INBOX", "(\\Seen)", None, MSG)[0] == "OK"
    c.append("INBOX", None, None, MSG)
    typ, data = c.select("INBOX")
    assert data == [b"2"]
    typ, data = c.fetch("1:2", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert data[0][1] == b"Subject: real store\r\n\r\n"
    assert b"FLAGS (\\Seen \\Recent)" in data[0][0]  # the first SELECT since the APPEND
    typ, data = c.search(None, "UNSEEN")
    assert data == [b"2"]
    c.create("Archive/2026")
    typ, data = c.uid("MOVE", "1", "Archive/2026")
    assert typ == "OK"
    typ, data = c.status("Archive/2026", "(MESSAGES UIDNEXT)")
    assert b"MESSAGES 1" in data[0] and b"UIDNEXT 2" in data[0]
    typ, data = c.search(None, "ALL")
    assert data == [b"1"]
    c.store("1", "+FLAGS", "(\\Deleted)")
    c.expunge()
    typ, data = c.select("INBOX")
    assert data == [b"0"]
    c.logout()
    # the maildir on disk has the moved message with its \Seen flag in the file name
    files = list(Path(real.extra["data_dir"]).rglob(".Archive.2026/cur/*"))
    assert len(files) == 1 and files[0].name.endswith(":2,S")


def test_scram_sha_256(real: ServerHandle) -> None:
    raw = Raw(real.host, real.port)
    assert b"AUTH=SCRAM-SHA-256" in raw.greeting
    client = scramp.ScramClient(["SCRAM-SHA-256"], "alice@example.test", "wonderland")
    first = client.get_client_first().encode()
    raw.send(b"a1 AUTHENTICATE SCRAM-SHA-256 " + base64.b64encode(first) + b"\r\n")
    line = raw.line()
    assert line.startswith(b"+ ")
    client.set_server_first(base64.b64decode(line[2:].strip()).decode())
    raw.send(base64.b64encode(client.get_client_final().encode()) + b"\r\n")
    line = raw.line()
    assert line.startswith(b"+ ")
    client.set_server_final(base64.b64decode(line[2:].strip()).decode())
    raw.send(b"\r\n")
    assert raw.line().startswith(b"a1 OK [CAPABILITY ")
    raw.close()


def test_bad_password_and_idle_delivery(real: ServerHandle) -> None:
    c = imapclient.IMAPClient(real.host, real.port, ssl=False, timeout=20)
    with pytest.raises(imapclient.exceptions.LoginError):
        c.login("alice@example.test", "wrong")
    c.login("alice@example.test", "wonderland")
    c.select_folder("INBOX")
    c.idle()

    async def deliver() -> None:
        acct = await real.store.account("1", None)
        await acct.append("INBOX", MSG)

    other = imapclient.IMAPClient(real.host, real.port, ssl=False, timeout=20)
    other.login("alice@example.test", "wonderland")
    other.append("INBOX", MSG)
    responses = c.idle_check(timeout=10)
    assert (1, b"EXISTS") in responses
    c.idle_done()
    other.logout()
    c.logout()


def test_text_search_through_the_index(real: ServerHandle) -> None:
    c = imaplib.IMAP4(real.host, real.port, timeout=20)
    c.login("alice@example.test", "wonderland")
    bodies = [
        b"From: Ann Lee <ann@example.test>\r\nSubject: quarterly numbers\r\n\r\nthe budget is fine\r\n",
        "From: bob@example.test\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n\r\n会议在明天\r\n".encode(),
        b"From: carl@example.test\r\nSubject: lunch\r\nX-Tag: green\r\n\r\nBUDGET meeting\r\n",
    ]
    for b in bodies:
        c.append("INBOX", None, None, b)
    c.select("INBOX")
    assert c.search(None, "BODY", "budget") == ("OK", [b"1 3"])
    assert c.search(None, "FROM", '"ann lee"') == ("OK", [b"1"])
    c.literal = "café".encode()  # 8-bit text goes in a literal
    assert c.search("UTF-8", "SUBJECT") == ("OK", [b"2"])
    c.literal = "明天".encode()
    assert c.search("UTF-8", "TEXT") == ("OK", [b"2"])
    assert c.search(None, "HEADER", "X-Tag", '""') == ("OK", [b"3"])
    assert c.search(None, "OR", "BODY", "budget", "2", "NOT", "3") == ("OK", [b"1 2"])
    c.logout()
    # the answers came from the index, which keeps its files beside the maildir
    assert list(Path(real.extra["data_dir"]).rglob("mailsrv-search/*"))


def test_authenticate_plain_with_and_without_initial_response(real: ServerHandle) -> None:
    raw = Raw(real.host, real.port)
    token = base64.b64encode(b"\x00alice@example.test\x00wonderland")
    assert raw.cmd(b"a1 AUTHENTICATE PLAIN " + token)[-1].startswith(b"a1 OK [CAPABILITY ")
    raw.close()
    raw = Raw(real.host, real.port)
    raw.send(b"a2 AUTHENTICATE PLAIN\r\n")
    assert raw.line() == b"+ \r\n"
    raw.send(base64.b64encode(b"\x00alice@example.test\x00nope") + b"\r\n")
    assert raw.line() == b"a2 NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
    raw.send(b"a3 AUTHENTICATE PLAIN\r\n")
    assert raw.line() == b"+ \r\n"
    raw.send(b"*\r\n")
    assert raw.line() == b"a3 BAD Authentication cancelled\r\n"
    assert raw.cmd(b"a4 AUTHENTICATE CRAM-MD5") == [b"a4 NO [CANNOT] Unsupported authentication mechanism\r\n"]
    raw.close()


def test_sections_by_offset_agree_with_whole_message_reads(real: ServerHandle, corpus: Path) -> None:
    """BODY[section]<partial> read by the cached structure's offsets equals the same section cut
    from the whole message (forced by adding a BINARY item, which reads everything)."""
    raw_msgs = [
        re.sub(rb"\r?\n", b"\r\n", (corpus / "cpython-test_email" / n).read_bytes())
        for n in ("msg_02.txt", "msg_07.txt", "msg_10.txt")
    ]
    c = imaplib.IMAP4(real.host, real.port, timeout=20)
    c.login("alice@example.test", "wonderland")
    for m in raw_msgs:
        assert c.append("INBOX", None, None, m)[0] == "OK"
    c.select("INBOX")
    items = ["BODY.PEEK[]", "BODY.PEEK[TEXT]", "BODY.PEEK[HEADER]", "BODY.PEEK[1]", "BODY.PEEK[1.MIME]",
             "BODY.PEEK[2]<3.40>", "BODY.PEEK[9]"]
    for seq in ("1", "2", "3"):
        ranged = c.fetch(seq, "(" + " ".join(items) + ")")[1]
        whole = c.fetch(seq, "(" + " ".join(items) + " BINARY.PEEK[])")[1]
        def literals(resp: list) -> list[bytes]:  # type: ignore[type-arg]
            return [x[1] for x in resp if isinstance(x, tuple)]
        assert literals(ranged) == literals(whole)[: len(literals(ranged))]
        assert literals(ranged)[0] == raw_msgs[int(seq) - 1]
    c.logout()


def test_big_append_is_streamed_through_a_spool_file(real: ServerHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    from mailsrv.imap.spool import LiteralSpool

    spooled: list[int] = []
    original = LiteralSpool.take

    async def counting_take(self, read, size, directory):  # type: ignore[no-untyped-def]
        spooled.append(size)
        return await original(self, read, size, directory)

    monkeypatch.setattr(LiteralSpool, "take", counting_take)
    big = b"Subject: big\r\n\r\n" + (b"0123456789abcdef" * 63 + b"\r\n") * 1200  # ~1.2 MB
    c = imaplib.IMAP4(real.host, real.port, timeout=30)
    c.login("alice@example.test", "wonderland")
    typ, data = c.append("INBOX", None, None, big)
    assert typ == "OK", data
    assert spooled == [len(big)]  # (later appends are spooled too)
    typ, data = c.append("NoSuchBox", None, None, big)
    assert typ == "NO" and b"[TRYCREATE]" in data[0]
    c.select("INBOX")
    # FETCH of a big whole message is streamed in chunks; the wire form is the same
    typ, data = c.fetch("1", "(RFC822.SIZE BODY.PEEK[])")
    assert data[0][0] == b"1 (RFC822.SIZE %d BODY[] {%d}" % (len(big), len(big))
    assert data[0][1] == big
    typ, data = c.fetch("1", "(BODY.PEEK[]<100.50>)")
    assert data[0][0] == b"1 (BODY[]<100> {50}" and data[0][1] == big[100:150]
    typ, data = c.uid("FETCH", "1", "(RFC822)")
    assert data[0][0].startswith(b"1 (UID 1 FLAGS (\\Seen \\Recent) RFC822 {") and data[0][1] == big
    c.logout()
    # a big literal in a command that turns out malformed: refused, and its spool file removed
    raw = Raw(real.host, real.port)
    raw.cmd(b"a LOGIN alice@example.test wonderland")
    raw.send(b"b APPEND INBOX {%d+}\r\n" % len(big) + big + b" (((\r\n")
    assert raw.line().startswith(b"b BAD")
    assert raw.cmd(b"c NOOP") == [b"c OK NOOP completed\r\n"]
    raw.close()
    # the spool files are gone: nothing is left in any tmp/
    assert [p for p in Path(real.extra["data_dir"]).rglob("tmp/*") if p.name.startswith("imap-append.")] == []


def test_preview_from_the_cached_structure(real: ServerHandle) -> None:
    msg = (b"Subject: p\r\nContent-Type: multipart/alternative; boundary=z\r\n\r\n--z\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\n\r\nHello   there,\r\nsee you\r\n--z--\r\n")
    c = imaplib.IMAP4(real.host, real.port, timeout=20)
    c.login("alice@example.test", "wonderland")
    assert b" PREVIEW" in c.capability()[1][0]
    c.append("INBOX", None, None, msg)
    c.select("INBOX")
    typ, data = c.fetch("1", "(PREVIEW)")
    assert data == [b'1 (PREVIEW "Hello there, see you")']
    c.logout()


def test_qresync_after_changes_in_another_session(real: ServerHandle) -> None:
    a = imapclient.IMAPClient(real.host, real.port, ssl=False, timeout=20)
    a.login("alice@example.test", "wonderland")
    for _ in range(3):
        a.append("INBOX", MSG)
    raw = Raw(real.host, real.port)
    raw.cmd(b"q0 LOGIN alice@example.test wonderland")
    assert raw.cmd(b"q1 ENABLE QRESYNC")[0] == b"* ENABLED QRESYNC\r\n"
    out = b"".join(raw.cmd(b"q2 SELECT INBOX"))
    hms = int(re.search(rb"HIGHESTMODSEQ (\d+)", out).group(1))  # type: ignore[union-attr]
    uidvalidity = int(re.search(rb"UIDVALIDITY (\d+)", out).group(1))  # type: ignore[union-attr]
    raw.cmd(b"q3 UNSELECT")
    a.select_folder("INBOX")
    a.add_flags([2], [b"$Important"])
    a.delete_messages([3])
    a.expunge()
    out_lines = raw.cmd(b"q4 SELECT INBOX (QRESYNC (%d %d))" % (uidvalidity, hms))
    assert b"* VANISHED (EARLIER) 3\r\n" in out_lines
    assert any(re.match(rb"\* 2 FETCH \(UID 2 FLAGS \(\$Important\) MODSEQ \(\d+\)\)", ln) for ln in out_lines)
    # and live: a flag change by the other session arrives with UID and MODSEQ at NOOP
    a.add_flags([1], [b"\\Flagged"])
    out_lines = raw.cmd(b"q5 NOOP")
    assert any(re.match(rb"\* 1 FETCH \(UID 1 FLAGS \(\\Flagged\) MODSEQ \(\d+\)\)", ln) for ln in out_lines)
    raw.close()
    a.logout()


def test_sort_and_thread_over_the_real_store(real: ServerHandle) -> None:
    msgs = [
        b"Subject: b\r\nFrom: Zed <z@x>\r\nMessage-ID: <1@x>\r\nDate: Sun, 1 Jan 2023 10:00:00 +0000\r\n\r\n.\r\n",
        b"Subject: Re: b\r\nFrom: amy@x\r\nMessage-ID: <2@x>\r\nReferences: <1@x>\r\n"
        b"Date: Sun, 1 Jan 2023 11:00:00 +0000\r\n\r\n.\r\n",
        b"Subject: =?utf-8?q?a?=\r\nFrom: bob@x\r\nMessage-ID: <3@x>\r\nDate: Sun, 1 Jan 2023 09:00:00 +0000\r\n\r\n.\r\n",
    ]
    c = imaplib.IMAP4(real.host, real.port, timeout=20)
    c.login("alice@example.test", "wonderland")
    for m in msgs:
        c.append("INBOX", None, None, m)
    c.select("INBOX")
    assert c.sort("(SUBJECT)", "UTF-8", "ALL") == ("OK", [b"3 1 2"])
    assert c.sort("(FROM)", "UTF-8", "ALL") == ("OK", [b"2 3 1"])
    assert c.sort("(REVERSE DATE)", "UTF-8", "ALL") == ("OK", [b"2 1 3"])
    assert c.thread("REFERENCES", "UTF-8", "ALL") == ("OK", [b"(3)(1 2)"])
    c.logout()


def test_scram_sha_256_plus_with_channel_binding(tmp_path: Path) -> None:
    import socket
    import ssl

    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(cert), str(key))
    with serve_real_store(tmp_path, tls="implicit", ssl_context=server_ctx, tls_files=(cert, key)) as handle:
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        with socket.create_connection((handle.host, handle.port), timeout=20) as plain, \
                client_ctx.wrap_socket(plain, server_hostname="127.0.0.1") as s:
            f = s.makefile("rb")
            assert b"AUTH=SCRAM-SHA-256-PLUS" in f.readline()
            # scramp computes the binding from the certificate it received
            client = scramp.ScramClient(["SCRAM-SHA-256-PLUS"], "alice@example.test", "wonderland",
                                        channel_binding=("tls-server-end-point", s))
            s.sendall(b"a1 AUTHENTICATE SCRAM-SHA-256-PLUS "
                      + base64.b64encode(client.get_client_first().encode()) + b"\r\n")
            line = f.readline()
            assert line.startswith(b"+ "), line
            client.set_server_first(base64.b64decode(line[2:].strip()).decode())
            s.sendall(base64.b64encode(client.get_client_final().encode()) + b"\r\n")
            line = f.readline()
            client.set_server_final(base64.b64decode(line[2:].strip()).decode())
            s.sendall(b"\r\n")
            assert f.readline().startswith(b"a1 OK [CAPABILITY ")
            f.close()


def test_bad_mailbox_names_are_refused(real: ServerHandle) -> None:
    raw = Raw(real.host, real.port)
    raw.cmd(b"a LOGIN alice@example.test wonderland")
    for bad in (b'"a/../b"', b'"x//y"', b'"/lead"'):
        out = raw.cmd(b"c CREATE " + bad)
        assert out[-1].startswith(b"c NO ["), out
    assert raw.cmd(b"n NOOP") == [b"n OK NOOP completed\r\n"]
    raw.close()
