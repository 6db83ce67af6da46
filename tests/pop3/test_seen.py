"""POP3 marks what RETR sent \\Seen, as Dovecot with pop3_no_flag_updates = no (in-memory fakes)."""

from __future__ import annotations

from typing import Any

import pytest
from pop3fakes import MSG1, MSG2, MemoryBox, MemoryDrops, fill, login, run

from mailsrv.config import Pop3Config
from mailsrv.pop3.grammar import Pop3Error
from mailsrv.pop3.session import Session

MSG3 = b"Subject: 3\r\n\r\nthree\r\n"


async def after(make_session: Any, drops: MemoryDrops, *commands: bytes, seen: tuple[int, ...] = (),
                config: Pop3Config | None = None) -> tuple[MemoryBox, Session]:
    """A maildrop of three messages (``seen`` flagged \\Seen at login), a logged-in session, ``commands`` run."""
    box = fill(drops, MSG1, MSG2, MSG3)
    box.seen.update(seen)
    s, ch = make_session(config=config)
    await login(s, ch)
    for c in commands:
        assert (await run(s, ch, c + b"\r\n")).startswith(b"+OK"), c
    return box, s


async def test_retr_marks_seen_at_quit_top_does_not(make_session: Any, drops: MemoryDrops) -> None:
    box, s = await after(make_session, drops, b"RETR 1", b"TOP 2 0")
    assert box.seen == set()  # nothing written before the session ends
    await s.handle(b"QUIT\r\n")
    assert box.seen == {1} and drops.marked == [[1]]


async def test_already_seen_and_deleted_messages_are_not_marked(make_session: Any, drops: MemoryDrops) -> None:
    box, _ = await after(make_session, drops, b"RETR 1", b"RETR 2", b"RETR 3", b"DELE 3", b"QUIT", seen=(2,))
    assert drops.marked == [[1]] and set(box.messages) == {1, 2} and box.seen == {1, 2}


async def test_session_lost_without_quit_still_marks_seen(make_session: Any, drops: MemoryDrops) -> None:
    box, s = await after(make_session, drops, b"RETR 2", b"DELE 1")
    await s.end()  # the connection loop's finally: no QUIT
    assert box.seen == {2} and set(box.messages) == {1, 2, 3} and drops.locked == set()


async def test_rset_forgets_the_marks(make_session: Any, drops: MemoryDrops) -> None:
    box, _ = await after(make_session, drops, b"RETR 1", b"RSET", b"RETR 2", b"QUIT")
    assert box.seen == {2}


async def test_no_flag_updates_leaves_flags_alone(make_session: Any, drops: MemoryDrops) -> None:
    box, _ = await after(make_session, drops, b"RETR 1", b"QUIT", config=Pop3Config(no_flag_updates=True))
    assert box.seen == set() and drops.marked == []


async def test_mark_failure_at_quit_is_sys_temp_and_unlocks(make_session: Any, drops: MemoryDrops) -> None:
    box, s = await after(make_session, drops, b"RETR 1", b"DELE 2")
    drops.fail_mark_seen = True
    with pytest.raises(Pop3Error) as info:
        await s.handle(b"QUIT\r\n")
    assert info.value.fatal and info.value.code == "SYS/TEMP"
    assert set(box.messages) == {1, 3} and box.seen == set() and drops.locked == set()


async def test_mark_failure_on_lost_session_is_logged_and_unlocks(make_session: Any, drops: MemoryDrops) -> None:
    box, s = await after(make_session, drops, b"RETR 1")
    drops.fail_mark_seen = True
    await s.end()
    assert box.seen == set() and drops.locked == set()
