"""Session tests without a network: the state machine over the in-memory store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailsrv.imap.commands import parse_command
from mailsrv.imap.grammar import ParseError
from mailsrv.imap.memory import MemoryAuth, MemoryStore
from mailsrv.imap.session import Session, SessionConfig
from mailsrv.imap.structure import parse as parse_structure

MSG = b"From: a@example.test\r\nSubject: s\r\n\r\nbody\r\n"


class FakeChannel:
    def __init__(self) -> None:
        self.out = bytearray()
        self.peer_host = "127.0.0.1"
        self.lines: asyncio.Queue[bytes] = asyncio.Queue()

    @property
    def tls_active(self) -> bool:
        return False

    @property
    def channel_binding(self) -> None:
        return None

    def write(self, data: bytes) -> None:
        self.out += data

    async def flush(self) -> None:
        return None

    async def read_continuation(self) -> bytes:
        return await self.lines.get()

    async def read_idle(self, limit: float) -> bytes:
        return await self.lines.get()

    async def starttls(self) -> None:
        raise AssertionError("not used")


class Driver:
    def __init__(self, store: MemoryStore) -> None:
        self.ch = FakeChannel()
        self.s = Session(self.ch, MemoryAuth({"u": "p"}), store, SessionConfig())

    async def __call__(self, line: bytes) -> list[bytes]:
        try:
            cmd = parse_command(line + b"\r\n")
        except ParseError as exc:
            return [(exc.tag or b"*") + b" BAD " + exc.message.encode()]
        await self.s.execute(cmd)
        await self.s.flush()
        out = bytes(self.ch.out).split(b"\r\n")[:-1]
        self.ch.out.clear()
        return out


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def _logged_in(n: int = 0, store: MemoryStore | None = None) -> tuple[Driver, MemoryStore]:
    store = store or MemoryStore()
    d = Driver(store)
    await d(b"a LOGIN u p")
    acct = await store.account("1")
    for i in range(n):
        await acct.append("INBOX", MSG.replace(b"body", b"body %d" % i))
    return d, store


def test_expunge_sequence_numbers_shift() -> None:
    async def go() -> None:
        d, store = await _logged_in(5)
        await d(b"s SELECT INBOX")
        other = Driver(store)
        await other(b"a LOGIN u p")
        await other(b"b SELECT INBOX")
        await other(b"c STORE 2,3,5 +FLAGS.SILENT (\\Deleted)")
        assert await other(b"d EXPUNGE") == [b"* 2 EXPUNGE", b"* 2 EXPUNGE", b"* 3 EXPUNGE", b"* 2 EXISTS",
                                              b"d OK EXPUNGE completed"]
        out = await d(b"n NOOP")
        # the flag changes of messages that are gone are not reported
        assert out == [b"* 2 EXPUNGE", b"* 2 EXPUNGE", b"* 3 EXPUNGE", b"* 2 EXISTS", b"n OK NOOP completed"]
        assert await d(b"f FETCH 1:* (UID)") == [b"* 1 FETCH (UID 1)", b"* 2 FETCH (UID 4)", b"f OK FETCH completed"]

    run(go())


def test_store_silent_and_echo_once() -> None:
    async def go() -> None:
        d, _ = await _logged_in(2)
        await d(b"s SELECT INBOX")
        # the first SELECT holds both messages as \Recent (RFC 3501 §2.3.2)
        assert await d(b"a STORE 1 +FLAGS (\\Seen)") == [b"* 1 FETCH (FLAGS (\\Seen \\Recent))", b"a OK STORE completed"]
        assert await d(b"b STORE 2 +FLAGS.SILENT (\\Seen)") == [b"b OK STORE completed"]
        # our own change is not reported a second time at the next NOOP
        assert await d(b"c NOOP") == [b"c OK NOOP completed"]
        assert await d(b"d UID STORE 2 FLAGS (foo \\flagged)") == [
            b"* 2 FETCH (UID 2 FLAGS (\\Flagged foo \\Recent))", b"d OK UID STORE completed"]
        assert await d(b"e STORE 3 FLAGS (x)") == [b"e BAD [CLIENTBUG] Invalid message sequence number"]
        await d(b"f EXAMINE INBOX")
        assert await d(b"g STORE 1 FLAGS (x)") == [b"g NO [READ-ONLY] Mailbox is read-only"]
        # EXAMINE: BODY[] does not set \Seen
        out = await d(b"h FETCH 2 BODY[TEXT]")
        assert out[0] == b"* 2 FETCH (BODY[TEXT] {8}" and out[1] == b"body 1"

    run(go())


def test_list_patterns_and_names() -> None:
    async def go() -> None:
        d, _ = await _logged_in()
        assert await d(b'l LIST "" ""') == [b'* LIST (\\Noselect) "/" ""', b"l OK LIST completed"]
        await d(b"c1 CREATE a/b")
        await d(b"c2 CREATE a")
        assert (await d("c3 CREATE 台北".encode()))[0].startswith(b"c3 BAD")  # an atom is 7-bit
        await d('c3 CREATE "台北"'.encode())  # 8-bit in a quoted string is taken as UTF-8
        out = await d(b'l LIST "" %')
        assert b'* LIST (\\HasChildren) "/" a' in out
        assert b'* LIST (\\HasNoChildren) "/" INBOX' in out
        assert b'* LIST (\\HasNoChildren \\Sent) "/" Sent' in out
        assert b'* LIST (\\HasNoChildren) "/" &U,BTFw-' in out
        assert not any(b"a/b" in ln for ln in out)
        assert await d(b'l LIST a/ %') == [b'* LIST (\\HasNoChildren) "/" a/b', b"l OK LIST completed"]
        assert await d(b"e ENABLE IMAP4rev2") == [b"* ENABLED IMAP4rev2", b"e OK ENABLE completed"]
        out = await d(b'l LIST "" *')
        assert '* LIST (\\HasNoChildren) "/" "台北"'.encode() in out
        out = await d(b'l LIST (SUBSCRIBED) "" "*" RETURN (STATUS (MESSAGES))')
        assert b'* LIST (\\HasNoChildren \\Subscribed) "/" INBOX' in out
        assert b"* STATUS INBOX (MESSAGES 0)" in out
        assert await d(b"x CREATE inbox") == [b"x NO [ALREADYEXISTS] Mailbox already exists"]
        assert await d(b"x DELETE INBOX") == [b"x NO [CANNOT] INBOX cannot be deleted"]

    run(go())


def test_append_trycreate_multiappend_and_limits() -> None:
    async def go() -> None:
        d, store = await _logged_in()
        assert await d(b"a APPEND nope {1+}\r\nx") == [b"a NO [TRYCREATE] No such mailbox"]
        out = await d(b"b APPEND INBOX {1+}\r\nx (\\Seen) {1+}\r\ny")
        assert out[0].startswith(b"b OK [APPENDUID ") and out[0].endswith(b" 1:2] APPEND completed")
        d.s = Session(d.ch, d.s.auth, store, SessionConfig(append_limit=3))
        await d(b"l LOGIN u p")
        assert await d(b"c APPEND INBOX {1+}\r\nx {4+}\r\nyyyy") == [b"c NO [TOOBIG] Message too large"]
        acct = await store.account("1")
        assert (await acct.mailbox_status("INBOX")).messages == 2  # all or nothing

    run(go())


def test_binary_and_sections(corpus: Path) -> None:
    raw = (corpus / "cpython-test_email" / "msg_02.txt").read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")

    async def go() -> None:
        d, store = await _logged_in()
        acct = await store.account("1")
        await acct.append("INBOX", raw)
        await d(b"s SELECT INBOX")
        out = await d(b"f FETCH 1 (BODY.PEEK[1.MIME] BODY.PEEK[2]<0.10> BINARY.SIZE[1])")
        joined = b"\r\n".join(out)
        assert b"BODY[1.MIME] {" in joined and b"BODY[2]<0> {10}" in joined and b"BINARY.SIZE[1] " in joined
        out = await d(b"f FETCH 1 (BODY.PEEK[9.TEXT])")
        assert out[0] == b"* 1 FETCH (BODY[9.TEXT] {0}"

    run(go())


def test_idle_done_and_bad_continuation() -> None:
    async def go() -> None:
        d, store = await _logged_in()
        await d(b"s SELECT INBOX")
        task = asyncio.create_task(d(b"i IDLE"))
        await asyncio.sleep(0)
        acct = await store.account("1")
        await acct.append("INBOX", MSG)
        await d.ch.lines.put(b"DONE\r\n")
        out = await task
        assert out == [b"+ idling", b"* 1 EXISTS", b"* 1 RECENT", b"i OK IDLE completed"]
        # RFC 3501 \Recent for this (IMAP4rev1) session
        assert await d(b"f FETCH 1 FLAGS") == [b"* 1 FETCH (FLAGS (\\Recent))", b"f OK FETCH completed"]
        assert await d(b"n SEARCH NEW") == [b"* SEARCH 1", b"n OK SEARCH completed"]
        task = asyncio.create_task(d(b"j IDLE"))
        await d.ch.lines.put(b"NOPE\r\n")
        assert (await task)[-1] == b"j BAD [CLIENTBUG] Expected DONE"

    run(go())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_structure_parser_never_crashes(data: bytes) -> None:
    from mailsrv.imap.structure import bodystructure, envelope

    part = parse_structure(data)
    bodystructure(data, part)
    envelope(part)


@pytest.mark.parametrize("name", ["msg_02.txt", "msg_07.txt", "msg_10.txt", "msg_22.txt"])
def test_corpus_structures(corpus: Path, name: str) -> None:
    from mailsrv.imap.grammar import Section
    from mailsrv.imap.structure import bodystructure, section_bytes

    raw = (corpus / "cpython-test_email" / name).read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    part = parse_structure(raw)
    bs = bodystructure(raw, part)
    assert bs.startswith(b"(") and bs.endswith(b")") and bs.count(b"(") == bs.count(b")")
    assert section_bytes(raw, part, Section()) == raw
    header = section_bytes(raw, part, Section((), "HEADER"))
    assert raw.startswith(header) and header.endswith(b"\r\n\r\n")


def test_fetch_uses_the_cached_structure() -> None:
    """ENVELOPE/BODYSTRUCTURE come from the store's structure; header fetches read only the header."""
    from mailsrv.imap.memory import MemoryAccount

    class Struct:
        def __init__(self, header_end: int) -> None:
            self.header_end = header_end

        def imap_envelope(self) -> bytes:
            return b"(CACHED-ENVELOPE)"

        def imap_bodystructure(self, extended: bool = True) -> bytes:
            return b"(CACHED-BS)" if extended else b"(CACHED-BODY)"

    reads: list[tuple[int, int | None]] = []

    class Account(MemoryAccount):
        async def structures(self, mailbox, uids):  # type: ignore[no-untyped-def]
            return {u: Struct(MSG.index(b"\r\n\r\n") + 4) for u in uids}

        async def read_message(self, mailbox, uid, offset=0, length=None):  # type: ignore[no-untyped-def]
            reads.append((offset, length))
            return await super().read_message(mailbox, uid, offset, length)

    async def go() -> None:
        store = MemoryStore()
        store._accounts["1"] = Account("1")
        d, _ = await _logged_in(1, store)
        await d(b"s SELECT INBOX")
        out = await d(b"f FETCH 1 (ENVELOPE BODYSTRUCTURE BODY)")
        assert out[0] == b"* 1 FETCH (ENVELOPE (CACHED-ENVELOPE) BODYSTRUCTURE (CACHED-BS) BODY (CACHED-BODY))"
        assert reads == []
        out = await d(b"g FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert out[1] == b"Subject: s"
        assert reads == [(0, MSG.index(b"\r\n\r\n") + 4)]

    run(go())


def test_list_returns_missing_parents_for_percent() -> None:
    async def go() -> None:
        d, _ = await _logged_in()
        await d(b"c CREATE p/q/r")
        assert await d(b'l LIST "" p%') == [b'* LIST (\\Noselect \\HasChildren) "/" p', b"l OK LIST completed"]
        assert await d(b'l LIST "" p/%') == [b'* LIST (\\Noselect \\HasChildren) "/" p/q', b"l OK LIST completed"]
        assert await d(b'l LIST "" p*') == [b'* LIST (\\HasNoChildren) "/" p/q/r', b"l OK LIST completed"]
        await d(b"e ENABLE IMAP4rev2")
        assert await d(b'l LIST "" p%') == [b'* LIST (\\NonExistent \\HasChildren) "/" p', b"l OK LIST completed"]

    run(go())


def test_unexpected_failure_is_a_no_and_the_session_goes_on() -> None:
    from mailsrv.imap.memory import MemoryAccount

    class Broken(MemoryAccount):
        async def list_mailboxes(self):  # type: ignore[no-untyped-def]
            raise KeyError("bug")

    async def go() -> None:
        store = MemoryStore()
        store._accounts["1"] = Broken("1")
        d, _ = await _logged_in(0, store)
        assert await d(b'l LIST "" *') == [b"l NO [SERVERBUG] Internal error, the command was not completed"]
        assert await d(b"n NOOP") == [b"n OK NOOP completed"]

    run(go())


def test_quota_and_overquota() -> None:
    from mailsrv.imap.memory import MemoryAuth, MemoryUser

    class QuotaAuth(MemoryAuth):
        async def login(self, username, password, *, protocol, client_ip, tls):  # type: ignore[no-untyped-def]
            r = await super().login(username, password, protocol=protocol, client_ip=client_ip, tls=tls)
            if r.ok:
                r.account = MemoryUser(1, "u", "mail/u", quota_bytes=10 * 1024, quota_messages=1)
            return r

    async def go() -> None:
        d, store = await _logged_in()
        d.s.auth = QuotaAuth({"u": "p"})
        d.s.state = d.s.state.__class__.NOT_AUTHENTICATED
        await d(b"l LOGIN u p")
        out = await d(b"a APPEND INBOX {1+}\r\nx")
        assert out[0].startswith(b"a OK [APPENDUID")
        assert await d(b"b APPEND INBOX {1+}\r\ny") == [b"b NO [OVERQUOTA] Quota exceeded"]
        assert await d(b"q GETQUOTAROOT INBOX") == [
            b'* QUOTAROOT INBOX ""', b'* QUOTA "" (STORAGE 1 10 MESSAGE 1 1)', b"q OK GETQUOTAROOT completed"]
        assert await d(b'r GETQUOTA "x"') == [b"r NO [NONEXISTENT] No such quota root"]
        assert await d(b'r SETQUOTA "" (STORAGE 1)') == [b"r NO [NOPERM] Quota is set by the administrator"]

    run(go())


def test_binary_and_utf8_append() -> None:
    async def go() -> None:
        d, store = await _logged_in()
        await d(b"e ENABLE UTF8=ACCEPT")
        data = b"Subject: bin\r\n\r\n\x00\x01\xff"
        out = await d(b"a APPEND INBOX ~{%d+}\r\n" % len(data) + data)
        assert out[0].startswith(b"a OK [APPENDUID")
        out = await d(b"b APPEND INBOX UTF8 (~{5+}\r\nx: y\n)")
        assert out[0].startswith(b"b OK [APPENDUID")
        await d(b"s SELECT INBOX")
        out = await d(b"f FETCH 1 (BINARY.PEEK[1] BINARY.SIZE[1])")
        assert out[0] == b"* 1 FETCH (BINARY[1] ~{3}" and out[1] == b"\x00\x01\xff BINARY.SIZE[1] 3)"
        # a NUL in a plain literal is refused (RFC 9051 §4.3)
        out = await d(b"c APPEND INBOX {3+}\r\na\x00b")
        assert out[0].startswith(b"c BAD")

    run(go())


def test_preview() -> None:
    async def go() -> None:
        d, store = await _logged_in(1)
        acct = await store.account("1")
        await acct.append("INBOX", b"Subject: q\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9\r\n  and   more\r\n")
        await d(b"s SELECT INBOX")
        assert (await d(b"f FETCH 1 (PREVIEW)"))[0] == b'* 1 FETCH (PREVIEW "body 0")'
        out = await d(b"g FETCH 2 (PREVIEW (LAZY))")
        assert out[0] == b"* 2 FETCH (PREVIEW {14}" and out[1] == "café and more)".encode()
        await d(b"e ENABLE UTF8=ACCEPT")
        assert (await d(b"h FETCH 2 (PREVIEW)"))[0] == '* 2 FETCH (PREVIEW "café and more")'.encode()

    run(go())


def test_within() -> None:
    async def go() -> None:
        d, store = await _logged_in()
        acct = await store.account("1")
        import time as _time

        await acct.append("INBOX", MSG, internal_date=_time.time() - 7200)
        await acct.append("INBOX", MSG)
        await d(b"s SELECT INBOX")
        assert await d(b"a SEARCH YOUNGER 3600") == [b"* SEARCH 2", b"a OK SEARCH completed"]
        assert await d(b"b SEARCH OLDER 3600") == [b"* SEARCH 1", b"b OK SEARCH completed"]

    run(go())


def test_list_recursivematch_childinfo() -> None:
    # RFC 5258 §5 example 7 (adapted): Foo is not subscribed, Foo/Baz is
    async def go() -> None:
        d, _ = await _logged_in()
        await d(b"c1 CREATE Foo")
        await d(b"c2 CREATE Foo/Baz")
        await d(b"s SUBSCRIBE Foo/Baz")
        out = await d(b'l LIST (SUBSCRIBED RECURSIVEMATCH) "" %')
        assert b'* LIST (\\HasChildren) "/" Foo ("CHILDINFO" ("SUBSCRIBED"))' in out
        assert not any(b"Foo/Baz" in ln for ln in out)
        out = await d(b'l LIST (SUBSCRIBED) "" *')
        assert b'* LIST (\\HasNoChildren \\Subscribed) "/" Foo/Baz' in out
        assert (await d(b'l LIST (RECURSIVEMATCH) "" *'))[0].startswith(b"l BAD")

    run(go())
