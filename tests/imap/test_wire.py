"""Wire-exact behaviour over a real socket: greeting, states, errors, limits."""

from __future__ import annotations

from imaptest import Raw, ServerHandle, start_server

from mailsrv.config import LimitsConfig


def test_greeting_and_capability(raw: Raw) -> None:
    assert raw.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 IMAP4rev2 ")
    lines = raw.cmd(b"a1 CAPABILITY")
    assert lines[0].startswith(b"* CAPABILITY IMAP4rev1 IMAP4rev2")
    assert b"AUTH=PLAIN" in lines[0]
    assert b"UIDPLUS" not in lines[0]  # only after login
    assert lines[-1] == b"a1 OK CAPABILITY completed\r\n"


def test_state_checks_and_bad_commands(raw: Raw) -> None:
    assert raw.cmd(b"a1 SELECT INBOX") == [b"a1 BAD Log in first\r\n"]
    assert raw.cmd(b"a2 FROB") == [b"a2 BAD unknown command FROB\r\n"]
    assert raw.cmd(b"a3  NOOP")[-1].startswith(b"a3 BAD")
    out = raw.cmd(b"a4 LOGIN alice wonderland")
    assert out[-1].startswith(b"a4 OK [CAPABILITY ") and b"UIDPLUS" in out[-1]
    assert raw.cmd(b"a5 LOGIN alice wonderland") == [b"a5 BAD Already logged in\r\n"]
    assert raw.cmd(b"a6 FETCH 1 FLAGS") == [b"a6 BAD No mailbox selected\r\n"]
    assert raw.cmd(b"a7 LOGOUT") == [b"* BYE Logging out\r\n", b"a7 OK LOGOUT completed\r\n"]
    assert raw.line() == b""


def test_failed_logins_end_with_bye(raw: Raw) -> None:
    assert raw.cmd(b"a1 LOGIN alice nope") == [b"a1 NO [AUTHENTICATIONFAILED] Authentication failed\r\n"]
    assert raw.cmd(b"a2 LOGIN alice nope")[-1].startswith(b"a2 NO [AUTHENTICATIONFAILED]")
    raw.send(b"a3 LOGIN alice nope\r\n")
    assert raw.line() == b"* BYE [UNAVAILABLE] Too many failed logins\r\n"
    assert raw.line() == b""


def test_literal_login_and_continuation(raw: Raw) -> None:
    raw.send(b"a1 LOGIN {5}\r\n")
    assert raw.line() == b"+ Ready for literal data\r\n"
    raw.send(b"alice {10+}\r\nwonderland\r\n")
    assert raw.until(b"a1")[-1].startswith(b"a1 OK")


def test_line_too_long_is_untagged_bad_and_session_goes_on() -> None:
    handle, stop = start_server(max_line_length=200)
    try:
        c = Raw(handle.host, handle.port)
        c.send(b"a1 NOOP " + b"x" * 500 + b"\r\n")
        assert c.line() == b"* BAD [TOOBIG] Line too long\r\n"
        assert c.cmd(b"a2 NOOP") == [b"a2 OK NOOP completed\r\n"]
        c.close()
    finally:
        stop()


def test_too_big_literals(server: ServerHandle, raw: Raw) -> None:
    raw.cmd(b"a0 LOGIN alice wonderland")
    # synchronising: refused before the data is sent
    assert raw.cmd(b"a1 APPEND INBOX {999999999}") == [b"a1 NO [TOOBIG] Literal too large\r\n"]
    # non-synchronising over the non-APPEND cap: consumed, then BAD
    raw.send(b"a2 SEARCH SUBJECT {70000+}\r\n" + b"x" * 70000 + b"\r\n")
    assert raw.line() == b"a2 BAD [TOOBIG] Literal too large\r\n"
    assert raw.cmd(b"a3 NOOP") == [b"a3 OK NOOP completed\r\n"]


def test_error_budget_disconnects() -> None:
    handle, stop = start_server(limits=LimitsConfig(max_errors=3))
    try:
        c = Raw(handle.host, handle.port)
        assert c.cmd(b"x0 FROB")[-1].startswith(b"x0 BAD")
        assert c.cmd(b"x1 SELECT INBOX") == [b"x1 BAD Log in first\r\n"]  # a state error counts too
        c.send(b"x9 FROB\r\n")
        assert c.line().startswith(b"x9 BAD")
        assert c.line() == b"* BYE [LIMIT] Too many errors\r\n"
        assert c.line() == b""
        c.close()
    finally:
        stop()


def test_unauthenticated_command_limit(raw: Raw) -> None:
    for i in range(30):
        assert raw.cmd(b"n%d NOOP" % i) == [b"n%d OK NOOP completed\r\n" % i]
    raw.send(b"n99 NOOP\r\n")
    assert raw.line() == b"* BYE [LIMIT] Too many commands before authentication\r\n"


def test_select_responses_in_order(raw: Raw) -> None:
    raw.cmd(b"a0 LOGIN alice wonderland")
    out = raw.cmd(b"a1 SELECT INBOX")
    assert out[0] == b"* 0 EXISTS\r\n"
    assert out[1] == b"* 0 RECENT\r\n"
    assert out[2] == b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
    assert out[3].startswith(b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)]")
    assert out[4].startswith(b"* OK [UIDVALIDITY ")
    assert out[5] == b"* OK [UIDNEXT 1] Predicted next UID\r\n"
    assert out[-1] == b"a1 OK [READ-WRITE] SELECT completed\r\n"
    out = raw.cmd(b"a2 EXAMINE INBOX")
    assert out[0] == b"* OK [CLOSED] Previous mailbox closed\r\n"
    assert out[-1] == b"a2 OK [READ-ONLY] EXAMINE completed\r\n"
    # RFC 9051 §6.3.2: a failed SELECT still closes the selected mailbox
    assert raw.cmd(b"a3 SELECT nosuch") == [
        b"* OK [CLOSED] Previous mailbox closed\r\n",
        b"a3 NO [NONEXISTENT] No such mailbox\r\n",
    ]
    assert raw.cmd(b"a4 FETCH 1 FLAGS") == [b"a4 BAD No mailbox selected\r\n"]


def test_compress_deflate_with_a_zlib_peer(server: ServerHandle, raw: Raw) -> None:
    import zlib

    raw.cmd(b"a0 LOGIN alice wonderland")
    assert raw.cmd(b"a1 COMPRESS DEFLATE") == [b"a1 OK DEFLATE active\r\n"]
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    decomp = zlib.decompressobj(-15)
    pending = bytearray()

    def send(data: bytes) -> None:
        raw.send(comp.compress(data) + comp.flush(zlib.Z_SYNC_FLUSH))

    def until(tag: bytes) -> list[bytes]:
        while True:
            lines = bytes(pending).split(b"\r\n")
            for i, ln in enumerate(lines[:-1]):
                if ln.startswith(tag + b" "):
                    return [x + b"\r\n" for x in lines[: i + 1]]
            chunk = raw.sock.recv(65536)
            assert chunk, "connection closed"
            pending.extend(decomp.decompress(chunk))

    body = b"Subject: squeezed\r\n\r\n" + b"z" * 50_000 + b"\r\n"
    send(b"a2 APPEND INBOX {%d+}\r\n" % len(body) + body + b"\r\n")
    assert until(b"a2")[-1].startswith(b"a2 OK [APPENDUID ")
    pending.clear()
    send(b"a3 SELECT INBOX\r\na4 FETCH 1 (BODY.PEEK[HEADER])\r\n")
    out = until(b"a4")
    assert b"* 1 EXISTS\r\n" in out and out[-1] == b"a4 OK FETCH completed\r\n"
    pending.clear()
    send(b"a5 COMPRESS DEFLATE\r\n")
    assert until(b"a5") == [b"a5 NO [COMPRESSIONACTIVE] Compression is already active\r\n"]


def test_idle_ends_with_bye_on_drain_and_on_timeout() -> None:
    from mailsrv.imap.session import SessionConfig

    handle, stop = start_server(session_config=SessionConfig(idle_limit=0.5))
    try:
        c = Raw(handle.host, handle.port)
        c.cmd(b"a LOGIN alice wonderland")
        c.cmd(b"b SELECT INBOX")
        c.send(b"c IDLE\r\n")
        assert c.line() == b"+ idling\r\n"
        # no DONE within idle_limit: the server says goodbye
        assert c.line() == b"* BYE Autologout; idle for too long\r\n"
        assert c.line() == b""
        c.close()
    finally:
        stop()
    handle, stop = start_server()
    try:
        d = Raw(handle.host, handle.port)
        d.cmd(b"a LOGIN alice wonderland")
        d.send(b"c IDLE\r\n")
        assert d.line() == b"+ idling\r\n"
    finally:
        stop()
    # the drain interrupted the IDLE with a BYE instead of cutting the connection
    assert d.line() == b"* BYE [UNAVAILABLE] Server shutting down\r\n"
    d.close()


def test_many_small_literals_are_bounded_per_command(raw: Raw) -> None:
    raw.cmd(b"a0 LOGIN alice wonderland")
    # 40 literals of 60 KiB each in one SEARCH: over the per-command cap, consumed and refused
    chunk = b"x" * 60_000
    body = b"".join(b" OR SUBJECT {60000+}\r\n" + chunk for _ in range(40))
    raw.send(b"a1 SEARCH ALL" + body + b" ALL\r\n")
    assert raw.line() == b"a1 BAD [TOOBIG] Literal too large\r\n"
    assert raw.cmd(b"a2 NOOP") == [b"a2 OK NOOP completed\r\n"]


def test_connection_over_the_limit_gets_bye_unavailable() -> None:
    handle, stop = start_server(limits=LimitsConfig(max_connections_per_ip=1))
    try:
        first = Raw(handle.host, handle.port)
        assert first.greeting.startswith(b"* OK ")
        second = Raw(handle.host, handle.port)
        assert second.greeting == b"* BYE [UNAVAILABLE] too many connections from your address\r\n"
        second.close()
        first.close()
    finally:
        stop()
