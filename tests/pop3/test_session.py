"""The POP3 session state machine against in-memory fakes (no sockets)."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pop3fakes import (
    ALICE,
    BOB,
    MSG1,
    MSG2,
    FakeAuth,
    FakeChannel,
    MemoryDrops,
    fill,
    login,
    run,
)

from mailsrv.config import Pop3Config
from mailsrv.pop3.grammar import Pop3Error, unstuff, wire_size
from mailsrv.pop3.session import (
    COMMANDS,
    MAX_COMMANDS_BEFORE_AUTH,
    READ_AHEAD,
    READ_CHUNK,
    Session,
    State,
)


async def test_greeting_has_no_apop_timestamp(make_session: Any) -> None:
    s, _ = make_session()
    g = s.greeting()
    assert g.startswith(b"+OK ") and b"<" not in g and g.endswith(b"\r\n")


async def test_capa_before_and_after_login(make_session: Any, drops: MemoryDrops) -> None:
    s, ch = make_session(tls=False)
    caps = (await run(s, ch, b"CAPA\r\n")).split(b"\r\n")
    assert caps[0].startswith(b"+OK") and caps[-2:] == [b".", b""]
    assert {b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING", b"STLS",
            b"SASL SCRAM-SHA-256", b"IMPLEMENTATION mailsrv"} <= set(caps)
    assert b"USER" not in caps  # no plain-text passwords before TLS
    await run(s, ch, b"STLS\r\n")
    caps = (await run(s, ch, b"CAPA\r\n")).split(b"\r\n")
    assert b"USER" in caps and b"STLS" not in caps and b"SASL SCRAM-SHA-256 PLAIN" in caps
    assert (await login(s, ch)).startswith(b"+OK")
    caps = (await run(s, ch, b"CAPA\r\n")).split(b"\r\n")
    assert b"USER" not in caps and not any(c.startswith(b"SASL") for c in caps) and b"TOP" in caps


async def test_capa_announces_expire_and_login_delay(make_session: Any) -> None:
    s, ch = make_session(config=Pop3Config(expire="NEVER", login_delay=900))
    caps = (await run(s, ch, b"CAPA\r\n")).split(b"\r\n")
    assert b"EXPIRE NEVER" in caps and b"LOGIN-DELAY 900" in caps
    s, ch = make_session()
    caps = (await run(s, ch, b"CAPA\r\n")).split(b"\r\n")
    assert not any(c.startswith((b"EXPIRE", b"LOGIN-DELAY")) for c in caps)


async def test_stls_forgets_user_and_refuses_twice(make_session: Any) -> None:
    s, ch = make_session(tls=False)
    assert (await run(s, ch, b"USER alice@example.test\r\n")).startswith(b"-ERR [AUTH]")
    assert await run(s, ch, b"STLS\r\n") == b"+OK Begin TLS negotiation\r\n"
    assert ch.upgrades == 1
    assert (await run(s, ch, b"STLS\r\n")).startswith(b"-ERR")
    assert ch.upgrades == 1
    s2, ch2 = make_session(tls=False, starttls=False)
    assert (await run(s2, ch2, b"STLS\r\n")).startswith(b"-ERR")


async def test_plaintext_refused_without_tls(make_session: Any, fake_auth: FakeAuth) -> None:
    s, ch = make_session(tls=False)
    assert (await run(s, ch, b"USER alice@example.test\r\n")).startswith(b"-ERR [AUTH] Plaintext")
    assert (await run(s, ch, b"PASS secret\r\n")).startswith(b"-ERR")
    assert fake_auth.logins == []
    assert s.state is State.AUTHORIZATION


async def test_login_stat_list_uidl(make_session: Any, drops: MemoryDrops) -> None:
    box = fill(drops, MSG1, MSG2)
    s, ch = make_session()
    size1, size2 = wire_size(MSG1), wire_size(MSG2)
    assert await login(s, ch) == f"+OK Logged in, 2 messages ({size1 + size2} octets)\r\n".encode()
    assert s.state is State.TRANSACTION
    assert await run(s, ch, b"STAT\r\n") == f"+OK 2 {size1 + size2}\r\n".encode()
    assert await run(s, ch, b"LIST\r\n") == f"+OK Scan list follows\r\n1 {size1}\r\n2 {size2}\r\n.\r\n".encode()
    assert await run(s, ch, b"LIST 2\r\n") == f"+OK 2 {size2}\r\n".encode()
    uidl = await run(s, ch, b"UIDL\r\n")
    assert uidl == f"+OK Unique-ID list follows\r\n1 00000001{box.uidvalidity:08x}\r\n2 00000002{box.uidvalidity:08x}\r\n.\r\n".encode()
    assert await run(s, ch, b"UIDL 1\r\n") == f"+OK 1 00000001{box.uidvalidity:08x}\r\n".encode()
    assert await run(s, ch, b"LIST 3\r\n") == b"-ERR No such message\r\n"
    assert await run(s, ch, b"LIST 0\r\n") == b"-ERR Invalid message number\r\n"
    assert await run(s, ch, b"STAT 1\r\n") == b"-ERR STAT takes no argument\r\n"


async def test_retr_octets_match_and_stuffing(make_session: Any, drops: MemoryDrops) -> None:
    fill(drops, MSG1, MSG2)
    s, ch = make_session()
    await login(s, ch)
    for n, msg in ((1, MSG1), (2, MSG2)):
        out = await run(s, ch, f"RETR {n}\r\n".encode())
        head, _, body = out.partition(b"\r\n")
        assert head == f"+OK {wire_size(msg)} octets".encode()
        assert len(unstuff(body)) == wire_size(msg)
    out = await run(s, ch, b"RETR 1\r\n")
    assert b"\r\n..dot line\r\n.\r\n" in out


async def test_retr_streams_large_message_in_chunks(make_session: Any, drops: MemoryDrops) -> None:
    big = b"Subject: big\r\n\r\n" + b"".join(b".%07d line of text\r\n" % i for i in range(40000))
    fill(drops, big)
    s, ch = make_session()
    await login(s, ch)
    drops.reads = 0
    ch.drains = 0
    out = await run(s, ch, b"RETR 1\r\n")
    assert drops.reads >= 3 and ch.drains >= 3  # chunked, with back-pressure between chunks
    assert unstuff(out.partition(b"\r\n")[2]) == big


async def test_top(make_session: Any, drops: MemoryDrops) -> None:
    fill(drops, MSG2)
    s, ch = make_session()
    await login(s, ch)
    assert await run(s, ch, b"TOP 1 0\r\n") == (
        b"+OK Top of message follows\r\nFrom: b@example.test\r\nSubject: two\r\n\r\n.\r\n")
    assert await run(s, ch, b"TOP 1 2\r\n") == (
        b"+OK Top of message follows\r\nFrom: b@example.test\r\nSubject: two\r\n\r\nline 1\r\nline 2\r\n.\r\n")
    full = await run(s, ch, b"TOP 1 99\r\n")
    assert full.partition(b"\r\n")[2] == (await run(s, ch, b"RETR 1\r\n")).partition(b"\r\n")[2]
    assert (await run(s, ch, b"TOP 1\r\n")).startswith(b"-ERR")
    assert (await run(s, ch, b"TOP 1 -1\r\n")).startswith(b"-ERR")


async def test_dele_rset_and_quit_expunges_only_marked(make_session: Any, drops: MemoryDrops) -> None:
    box = fill(drops, MSG1, MSG2, b"Subject: 3\r\n\r\nthree\r\n")
    s, ch = make_session()
    await login(s, ch)
    assert await run(s, ch, b"DELE 1\r\n") == b"+OK Message 1 deleted\r\n"
    assert await run(s, ch, b"DELE 1\r\n") == b"-ERR Message already deleted\r\n"
    assert await run(s, ch, b"RETR 1\r\n") == b"-ERR Message already deleted\r\n"
    assert (await run(s, ch, b"STAT\r\n")).startswith(b"+OK 2 ")
    assert b"\r\n1 " not in await run(s, ch, b"LIST\r\n")
    assert (await run(s, ch, b"RSET\r\n")).startswith(b"+OK Maildrop has 3 messages")
    await run(s, ch, b"DELE 2\r\n")
    await run(s, ch, b"DELE 3\r\n")
    assert set(box.messages) == {1, 2, 3}  # nothing removed before UPDATE
    out = await run(s, ch, b"QUIT\r\n")
    assert out.startswith(b"+OK") and b"2 messages deleted" in out
    assert s.closing and set(box.messages) == {1}
    assert drops.locked == set()


async def test_drop_without_quit_deletes_nothing(make_session: Any, drops: MemoryDrops) -> None:
    box = fill(drops, MSG1, MSG2)
    s, ch = make_session()
    await login(s, ch)
    await run(s, ch, b"DELE 1\r\n")
    await s.end()
    assert set(box.messages) == {1, 2} and drops.locked == set()


async def test_in_use(make_session: Any, drops: MemoryDrops) -> None:
    fill(drops, MSG1)
    s1, ch1 = make_session()
    assert (await login(s1, ch1)).startswith(b"+OK")
    s2, ch2 = make_session()
    assert await login(s2, ch2) == b"-ERR [IN-USE] Maildrop is in use by another session\r\n"
    assert s2.state is State.AUTHORIZATION
    await s1.end()
    assert (await login(s2, ch2)).startswith(b"+OK")


async def test_unavailable_store_is_sys_temp(make_session: Any, drops: MemoryDrops) -> None:
    drops.unavailable = True
    s, ch = make_session()
    assert (await login(s, ch)).startswith(b"-ERR [SYS/TEMP]")


async def test_expunge_failure_at_quit(make_session: Any, drops: MemoryDrops) -> None:
    fill(drops, MSG1)
    s, ch = make_session()
    await login(s, ch)
    await run(s, ch, b"DELE 1\r\n")
    drops.fail_expunge = True
    with pytest.raises(Pop3Error) as info:
        await s.handle(b"QUIT\r\n")
    assert info.value.fatal and info.value.code == "SYS/TEMP"
    assert drops.locked == set()


async def test_message_expunged_by_imap_meanwhile(make_session: Any, drops: MemoryDrops) -> None:
    box = fill(drops, MSG1, MSG2)
    s, ch = make_session()
    await login(s, ch)
    del box.messages[1]
    assert (await run(s, ch, b"RETR 1\r\n")).startswith(b"-ERR [SYS/TEMP]")
    assert (await run(s, ch, b"RETR 2\r\n")).startswith(b"+OK")


async def test_pass_without_user_and_bad_password(make_session: Any) -> None:
    s, ch = make_session()
    assert await run(s, ch, b"PASS secret\r\n") == b"-ERR No user name given (USER first)\r\n"
    assert (await login(s, ch, pw=b"wrong")) == b"-ERR [AUTH] Authentication failed\r\n"
    # USER must be given again after a failed PASS
    assert await run(s, ch, b"PASS secret\r\n") == b"-ERR No user name given (USER first)\r\n"


async def test_too_many_auth_failures_is_fatal(make_session: Any) -> None:
    s, ch = make_session(config=Pop3Config(max_auth_failures=2))
    await login(s, ch, pw=b"x")
    await s.handle(b"USER alice@example.test\r\n")
    with pytest.raises(Pop3Error) as info:
        await s.handle(b"PASS y\r\n")
    assert info.value.fatal and info.value.code == "AUTH"


async def test_same_user_twice_unknown_user_neutral(make_session: Any) -> None:
    s, ch = make_session()
    assert (await login(s, ch, user=b"nobody@example.test")) == b"-ERR [AUTH] Authentication failed\r\n"


@pytest.mark.parametrize("verb", sorted(v for v, st in COMMANDS.items() if State.AUTHORIZATION not in st))
async def test_transaction_commands_before_login(make_session: Any, verb: str) -> None:
    s, ch = make_session()
    assert await run(s, ch, verb.encode() + b" 1\r\n") == b"-ERR Not logged in\r\n"


@pytest.mark.parametrize("verb", ["USER", "PASS", "APOP", "AUTH", "STLS"])
async def test_authorization_commands_after_login(make_session: Any, verb: str) -> None:
    s, ch = make_session()
    await login(s, ch)
    assert await run(s, ch, verb.encode() + b" x\r\n") == b"-ERR Command not valid in this state\r\n"


async def test_unknown_and_malformed(make_session: Any) -> None:
    s, ch = make_session()
    assert await run(s, ch, b"XYZZY\r\n") == b"-ERR Unknown command\r\n"
    assert await run(s, ch, b"FOO\r\n") == b"-ERR Unknown command\r\n"
    assert await run(s, ch, b"\r\n") == b"-ERR Unknown command\r\n"
    assert (await run(s, ch, b"USER " + b"x" * 300 + b"\r\n")).startswith(b"-ERR")
    assert await run(s, ch, b"APOP alice 0123\r\n") == b"-ERR [AUTH] APOP not available\r\n"


async def test_command_budget_before_login(make_session: Any) -> None:
    s, ch = make_session()
    for _ in range(MAX_COMMANDS_BEFORE_AUTH):
        assert (await run(s, ch, b"CAPA\r\n")).startswith(b"+OK")
    with pytest.raises(Pop3Error) as info:
        await s.handle(b"CAPA\r\n")
    assert info.value.fatal and info.value.text == "Too many commands before login"


async def test_quit_in_authorization(make_session: Any) -> None:
    s, ch = make_session()
    assert (await run(s, ch, b"QUIT\r\n")).startswith(b"+OK")
    assert s.closing


async def test_auth_plain_with_initial_response(make_session: Any) -> None:
    s, ch = make_session()
    ir = base64.b64encode(b"\0alice@example.test\0secret")
    assert (await run(s, ch, b"AUTH PLAIN " + ir + b"\r\n")).startswith(b"+OK Logged in")


async def test_auth_plain_with_challenge_and_cancel(make_session: Any, fake_auth: FakeAuth) -> None:
    s, ch = make_session()
    ch.continuations.append(base64.b64encode(b"\0alice@example.test\0secret") + b"\r\n")
    assert (await run(s, ch, b"AUTH PLAIN\r\n")) == b"+ \r\n+OK Logged in, 0 messages (0 octets)\r\n"
    s, ch = make_session()
    ch.continuations.append(b"*\r\n")
    assert (await run(s, ch, b"AUTH PLAIN\r\n")) == b"+ \r\n-ERR [AUTH] Authentication cancelled\r\n"
    assert fake_auth.sessions[-1].aborted


async def test_auth_bad_base64_and_unknown_mechanism(make_session: Any) -> None:
    s, ch = make_session()
    assert await run(s, ch, b"AUTH PLAIN !!!\r\n") == b"-ERR [AUTH] Invalid base64 data\r\n"
    assert await run(s, ch, b"AUTH CRAM-MD5\r\n") == b"-ERR Unsupported authentication mechanism\r\n"
    listing = await run(s, ch, b"AUTH\r\n")
    assert listing == b"+OK Methods follow\r\nSCRAM-SHA-256\r\nPLAIN\r\n.\r\n"
    ir = base64.b64encode(b"\0alice@example.test\0nope")
    assert await run(s, ch, b"AUTH PLAIN " + ir + b"\r\n") == b"-ERR [AUTH] Authentication failed\r\n"


async def test_expire_zero_deletes_retrieved(make_session: Any, drops: MemoryDrops) -> None:
    box = fill(drops, MSG1, MSG2)
    s, ch = make_session(config=Pop3Config(expire="0"))
    await login(s, ch)
    await run(s, ch, b"RETR 2\r\n")
    await run(s, ch, b"TOP 1 0\r\n")
    await run(s, ch, b"QUIT\r\n")
    assert set(box.messages) == {1}


async def test_expire_days_notes_retrievals_at_quit_only(make_session: Any, drops: MemoryDrops) -> None:
    fill(drops, MSG1, MSG2, b"Subject: 3\r\n\r\n3\r\n")
    cfg = Pop3Config(expire="30")
    s, ch = make_session(config=cfg)
    caps = (await run(s, ch, b"CAPA\r\n")).split(b"\r\n")
    assert b"EXPIRE 30" in caps
    await login(s, ch)
    for line in (b"RETR 1\r\n", b"TOP 2 0\r\n", b"RETR 3\r\n", b"DELE 3\r\n"):
        assert (await run(s, ch, line)).startswith(b"+OK")
    await s.end()  # dropped: nothing noted, nothing deleted
    assert drops.noted == []
    s, ch = make_session(config=cfg)
    await login(s, ch)
    for line in (b"RETR 1\r\n", b"TOP 2 0\r\n", b"RETR 3\r\n", b"DELE 3\r\n", b"QUIT\r\n"):
        assert (await run(s, ch, line)).startswith(b"+OK")
    assert drops.noted == [1]  # TOP is not a retrieval, a deleted message needs no clock
    assert set(drops.boxes[ALICE.id].messages) == {1, 2}


async def test_login_delay(make_session: Any, drops: MemoryDrops) -> None:
    fill(drops, MSG1)
    cfg = Pop3Config(login_delay=600)
    s, ch = make_session(config=cfg)
    assert (await login(s, ch)).startswith(b"+OK")
    await run(s, ch, b"QUIT\r\n")
    s, ch = make_session(config=cfg)
    assert (await login(s, ch)).startswith(b"-ERR [LOGIN-DELAY]")
    assert drops.locked == set()
    # another user is not delayed
    s, ch = make_session(config=cfg)
    assert (await login(s, ch, b"bob@example.test", b"hunter2")).startswith(b"+OK")
    assert BOB.id in drops.locked


async def test_maildrop_is_inbox_at_login(make_session: Any, drops: MemoryDrops) -> None:
    box = fill(drops, MSG1)
    s, ch = make_session()
    await login(s, ch)
    box.add(MSG2)  # new mail arrives during the session
    assert (await run(s, ch, b"STAT\r\n")).startswith(b"+OK 1 ")
    assert await run(s, ch, b"RETR 2\r\n") == b"-ERR No such message\r\n"


async def test_read_ahead_in_order_looks_at_its_window_only_when_a_batch_is_due(
        make_session: Any, drops: MemoryDrops, monkeypatch: pytest.MonkeyPatch) -> None:
    msgs = [b"Subject: %d\r\n\r\nbody %d\r\n" % (i, i) for i in range(1, 5 * READ_AHEAD // 2 + 1)]
    fill(drops, *msgs)
    s, ch = make_session()
    await login(s, ch)
    passes = []
    full = s._drop_prefetch
    monkeypatch.setattr(s, "_drop_prefetch", lambda keep=frozenset(): passes.append(keep) or full(keep))
    for n, msg in enumerate(msgs, 1):
        assert unstuff((await run(s, ch, f"RETR {n}\r\n".encode())).partition(b"\r\n")[2]) == msg
    # a full pass over the window (its drop of what fell out, its batch) only where a batch may be due: 10 of
    # 80 RETRs here (4 batches; more passes near the end, where the window shrinks), not one per RETR
    assert len(drops.batches) == 4 and len(passes) <= 10, (len(passes), drops.batches)
    await s.end()


async def test_read_ahead_follows_dele_and_expunges(make_session: Any, drops: MemoryDrops) -> None:
    msgs = [b"Subject: %d\r\n\r\nbody %d\r\n" % (i, i) for i in range(1, 6)]
    box = fill(drops, *msgs)
    s, ch = make_session()
    await login(s, ch)
    assert unstuff((await run(s, ch, b"RETR 1\r\n")).partition(b"\r\n")[2]) == msgs[0]
    await run(s, ch, b"DELE 2\r\n")
    del box.messages[4]  # IMAP expunged message 4 meanwhile
    assert unstuff((await run(s, ch, b"RETR 3\r\n")).partition(b"\r\n")[2]) == msgs[2]
    assert (await run(s, ch, b"RETR 4\r\n")).startswith(b"-ERR [SYS/TEMP]")
    assert unstuff((await run(s, ch, b"RETR 5\r\n")).partition(b"\r\n")[2]) == msgs[4]
    assert unstuff((await run(s, ch, b"RETR 1\r\n")).partition(b"\r\n")[2]) == msgs[0]
    await s.end()
    assert s._ahead == {}


async def test_unreadable_message_is_sys_temp_and_mid_stream_failure_is_fatal(
        make_session: Any, drops: MemoryDrops) -> None:
    big = b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 20000
    fill(drops, MSG1, big)
    s, ch = make_session()
    await login(s, ch)
    drops.fail_reads.add((1, 0))
    assert (await run(s, ch, b"RETR 1\r\n")).startswith(b"-ERR [SYS/TEMP]")
    drops.fail_reads.add((2, READ_CHUNK))
    with pytest.raises(Pop3Error) as info:
        await s.handle(b"RETR 2\r\n")
    assert info.value.fatal and info.value.code == "SYS/TEMP"


VERBS = [b"USER", b"PASS", b"APOP", b"AUTH", b"STLS", b"CAPA", b"QUIT", b"STAT", b"LIST", b"RETR",
         b"DELE", b"NOOP", b"RSET", b"TOP", b"UIDL", b"XTND", b"LAST"]
ARGS = st.one_of(st.sampled_from([b"", b"1", b"2", b"0", b"99", b"-1", b"alice@example.test", b"secret",
                                  b"PLAIN", b"=", b"AGFsaWNlQGV4YW1wbGUudGVzdABzZWNyZXQ=", b"1 0", b"1 5"]),
                 st.binary(max_size=20))
LINES = st.tuples(st.sampled_from(VERBS), st.lists(ARGS, max_size=3)).map(
    lambda t: b" ".join([t[0], *t[1]]) + b"\r\n")


LOGIN = st.sampled_from([b"USER alice@example.test\r\n", b"PASS secret\r\n",
                         b"AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABzZWNyZXQ=\r\n"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example([b"USER alice@example.test\r\n", b"PASS secret\r\n", b"TOP 2 1\r\n", b"RETR 1\r\n",
          b"DELE 1\r\n", b"LIST 1\r\n", b"RSET\r\n", b"DELE 2\r\n", b"QUIT\r\n"])
@given(st.lists(st.one_of(LOGIN, LINES, st.binary(max_size=40)), max_size=25))
def test_any_command_sequence_is_answered_never_crashes(lines: list[bytes]) -> None:
    async def go() -> None:
        drops = MemoryDrops()
        fill(drops, MSG1, MSG2)
        auth = FakeAuth({"alice@example.test": ("secret", ALICE)})
        ch = FakeChannel(tls=True)
        s = Session(ch, auth=auth, maildrops=drops, config=Pop3Config(), hostname="h")
        for line in lines:
            ch.continuations.extend([b"*\r\n"])
            try:
                await s.handle(line)
            except Pop3Error as exc:
                ch.write(exc.reply())
                if exc.fatal:
                    break
            out = ch.take()
            assert out.startswith((b"+OK", b"-ERR", b"+ ")), (line, out)
            assert out.endswith(b"\r\n")
            if s.closing:
                break
        await s.end()
        assert drops.locked == set()
        assert set(drops.boxes[ALICE.id].messages) <= {1, 2}

    asyncio.run(go())



async def test_read_ahead_reads_in_batches(make_session: Any, drops: MemoryDrops) -> None:
    msgs = [b"Subject: %d\r\n\r\n.body %d\r\n" % (i, i) for i in range(1, 41)]
    fill(drops, *msgs)
    s, ch = make_session()
    await login(s, ch)
    drops.reads = 0
    for n, msg in enumerate(msgs, 1):
        out = await run(s, ch, f"RETR {n}\r\n".encode())
        assert unstuff(out.partition(b"\r\n")[2]) == msg
    # one store round trip per half window, not one per message
    assert drops.reads <= 2, drops.reads
    assert len(drops.batches) <= len(msgs) // (READ_AHEAD // 2) + 1, drops.batches
    assert sorted(u for b in drops.batches for u in b) == list(range(2, 41))
    await s.end()
    assert s._ahead == {}
