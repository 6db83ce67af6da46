"""A session's own non-UID STORE (and FETCH that sets \\Seen) is what its next FETCH FLAGS and SEARCH
read, although no EXPUNGE may be sent after FETCH, STORE or SEARCH (RFC 9051 §7.5.1): after such a
command that wrote, the view takes flags and new messages and keeps the expunged ones, with their
sequence numbers, until a command after which EXPUNGE may go out (one that wrote nothing leaves the
view as it was). Real store, real sockets; both the memory model and the store views."""

from __future__ import annotations

from typing import Any

import pytest
from imaptest import Raw, ServerHandle

MSG = b"From: a@example.test\r\nTo: alice@example.test\r\nSubject: own\r\n\r\nhello\r\n"


def _login(h: ServerHandle) -> Raw:
    c = Raw(h.host, h.port)
    user = b"alice@example.test" if h.extra.get("real") else b"alice"
    assert c.cmd(b"l LOGIN " + user + b" wonderland")[-1].startswith(b"l OK")
    assert c.cmd(b"e ENABLE IMAP4rev2")[-1].startswith(b"e OK")  # no \\Recent: one reply shape
    return c


def _ok(c: Raw, line: bytes) -> list[bytes]:
    out = c.cmd(line)
    assert out[-1].startswith(line.split(b" ", 1)[0] + b" OK"), out
    return out[:-1]


def _fill(c: Raw, n: int) -> None:
    for _ in range(n):
        c.send(b"a APPEND INBOX {%d+}\r\n" % len(MSG) + MSG + b"\r\n")
        assert c.until(b"a")[-1].startswith(b"a OK")


@pytest.fixture(params=["store", "memory"])
def handle(request: pytest.FixtureRequest) -> Any:
    h = request.getfixturevalue("real_store" if request.param == "store" else "server")
    h.extra["real"] = request.param == "store"
    return h


def test_own_silent_store_is_read_by_the_next_fetch_and_search(handle: ServerHandle) -> None:
    c = _login(handle)
    _fill(c, 3)
    _ok(c, b"s SELECT INBOX")
    assert _ok(c, b"t1 STORE 1 +FLAGS.SILENT (\\Flagged)") == []
    assert _ok(c, b"f1 FETCH 1:2 (FLAGS)") == [b"* 1 FETCH (FLAGS (\\Flagged))\r\n", b"* 2 FETCH (FLAGS ())\r\n"]
    assert _ok(c, b"q1 SEARCH FLAGGED") == [b"* ESEARCH (TAG \"q1\") ALL 1\r\n"]
    assert _ok(c, b"t2 STORE 2 +FLAGS.SILENT (\\Seen)") == []
    assert _ok(c, b"q2 SEARCH UNSEEN") == [b"* ESEARCH (TAG \"q2\") ALL 1,3\r\n"]
    # a non-silent STORE's own FETCH reply, then no second report of it
    assert _ok(c, b"t3 STORE 3 +FLAGS (\\Answered)") == [b"* 3 FETCH (FLAGS (\\Answered))\r\n"]
    assert _ok(c, b"f2 FETCH 3 (FLAGS)") == [b"* 3 FETCH (FLAGS (\\Answered))\r\n"]
    # FETCH of a body sets \\Seen (RFC 9051 §6.4.5): the next SEARCH knows
    out = _ok(c, b"f3 FETCH 3 (BODY[TEXT])")
    assert out[0].startswith(b"* 3 FETCH (") and b"\\Seen" in b"".join(out), out
    assert _ok(c, b"q3 SEARCH UNSEEN") == [b"* ESEARCH (TAG \"q3\") ALL 1\r\n"]
    assert _ok(c, b"n NOOP") == []
    c.close()


def test_expunges_wait_for_a_command_that_may_report_them(handle: ServerHandle) -> None:
    other, c = _login(handle), _login(handle)
    _fill(other, 4)
    _ok(other, b"s SELECT INBOX")
    _ok(c, b"s SELECT INBOX")
    _ok(other, b"d STORE 2 +FLAGS.SILENT (\\Deleted)")
    _ok(other, b"x EXPUNGE")
    _ok(other, b"g UID STORE 4 +FLAGS.SILENT (\\Flagged)")
    _fill(other, 1)
    # a FETCH that writes nothing leaves others' changes for the next command that may report them all
    assert _ok(c, b"f0 FETCH 1 (FLAGS)") == [b"* 1 FETCH (FLAGS ())\r\n"]
    # message 2 is gone, but this STORE may not say so: sequence numbers stay as the client knows them;
    # the other session's flag change and the new message may be told
    out = _ok(c, b"t STORE 3 +FLAGS.SILENT (\\Seen)")
    assert not any(b"EXPUNGE" in ln for ln in out), out
    assert b"* 4 FETCH (FLAGS (\\Flagged))\r\n" in out and b"* 5 EXISTS\r\n" in out, out
    out = _ok(c, b"f FETCH 1:5 (UID FLAGS)")
    assert not any(b"EXPUNGE" in ln for ln in out), out
    assert b"* 3 FETCH (UID 3 FLAGS (\\Seen))\r\n" in out and b"* 5 FETCH (UID 5 FLAGS ())\r\n" in out, out
    assert _ok(c, b"q SEARCH SEEN") == [b"* ESEARCH (TAG \"q\") ALL 3\r\n"]
    # now it may: the held expunge goes out once, then sequence numbers move up
    assert _ok(c, b"n1 NOOP") == [b"* 2 EXPUNGE\r\n", b"* 4 EXISTS\r\n"]
    assert _ok(c, b"n2 NOOP") == []
    assert _ok(c, b"f2 FETCH 2 (UID FLAGS)") == [b"* 2 FETCH (UID 3 FLAGS (\\Seen))\r\n"]
    other.close()
    c.close()
