"""Model-based test: whatever other sessions do, a client that follows EXISTS/EXPUNGE/VANISHED
always agrees with the server on the message count and on each sequence number's UID."""

from __future__ import annotations

import asyncio
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_session import MSG, Driver, _logged_in  # type: ignore[import-not-found]

OTHER = st.sampled_from([
    b"x APPEND INBOX {%d+}\r\n" % len(MSG) + MSG,
    b"x STORE 1 +FLAGS (\\Deleted)",
    b"x STORE 1:* +FLAGS (\\Deleted)",
    b"x STORE 2 +FLAGS (\\Seen)",
    b"x EXPUNGE",
    b"x UID EXPUNGE 1:3",
    b"x MOVE 1 Trash",
    b"x NOOP",
])
MINE = st.sampled_from([
    b"m NOOP", b"m FETCH 1:* (UID)", b"m UID FETCH 1:* (FLAGS)", b"m SEARCH ALL", b"m STORE 1 +FLAGS (\\Flagged)",
    b"m UID STORE 1:* -FLAGS (\\Flagged)", b"m EXPUNGE", b"m UID SEARCH DELETED", b"m COPY 1 Sent", b"m CHECK",
])


class Client:
    """What a client knows: the UIDs by sequence number, learned only from responses."""

    def __init__(self) -> None:
        self.uids: list[int | None] = []

    def feed(self, lines: list[bytes]) -> None:
        for ln in lines:
            if m := re.fullmatch(rb"\* (\d+) EXISTS", ln):
                n = int(m.group(1))
                assert n >= len(self.uids), "EXISTS may not shrink the mailbox"
                self.uids.extend([None] * (n - len(self.uids)))
            elif m := re.fullmatch(rb"\* (\d+) EXPUNGE", ln):
                seq = int(m.group(1))
                assert 1 <= seq <= len(self.uids)
                del self.uids[seq - 1]
            elif m := re.match(rb"\* (\d+) FETCH \(.*UID (\d+)", ln):
                seq, uid = int(m.group(1)), int(m.group(2))
                assert 1 <= seq <= len(self.uids)
                assert self.uids[seq - 1] in (None, uid), "a sequence number changed its UID"
                self.uids[seq - 1] = uid


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.lists(OTHER, max_size=3), MINE), min_size=1, max_size=12), st.integers(0, 4))
def test_sequence_numbers_stay_in_step(steps: list[tuple[list[bytes], bytes]], initial: int) -> None:
    async def go() -> None:
        me, store = await _logged_in(initial)
        other = Driver(store)
        await other(b"a LOGIN u p")
        await other(b"b SELECT INBOX")
        client = Client()
        client.feed(await me(b"s SELECT INBOX"))
        for others, mine in steps:
            for line in others:
                await other(line)
            out = await me(mine)
            empty = not client.uids
            assert out[-1].startswith((b"m OK", b"m NO")) or (empty and b"Invalid message sequence" in out[-1]), out
            client.feed(out)
            server_uids = [m.uid for m in me.s.view.messages]
            assert len(client.uids) == len(server_uids)
            for known, actual in zip(client.uids, server_uids, strict=True):
                assert known in (None, actual)
        client.feed(await me(b"m NOOP"))
        client.feed(await me(b"m UID FETCH 1:* (UID)"))
        assert client.uids == [m.uid for m in me.s.view.messages]

    asyncio.run(go())
