"""Fuzzing the server over a real socket: nothing a client sends crashes its session."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from imaptest import Raw, start_server

from mailsrv.config import LimitsConfig

TOKENS = [b"a", b"UID", b"FETCH", b"STORE", b"SEARCH", b"LOGIN", b"SELECT", b"INBOX", b"1:*", b"*", b"$", b"(", b")",
          b"[", b"]", b"<0.1>", b"BODY[]", b"BODY.PEEK[1.2.HEADER.FIELDS (X)]", b"FLAGS", b"+FLAGS", b"\\Seen",
          b'"q"', b'"\\', b"{1}", b"{2+}\r\nxx", b"{0}\r\n", b"~{1+}\r\n\x00", b"NOT", b"OR", b"alice",
          b"wonderland", b"APPEND", b"IDLE", b"DONE", b"LIST", b'""', b"%", b"ENABLE", b"QRESYNC", b"\xff", b"\x00",
          b"COMPRESS", b"AUTHENTICATE", b"PLAIN", b"=", b"CHANGEDSINCE", b"MODSEQ", b"RETURN", b"SAVE", b"1"]

line = st.lists(st.sampled_from(TOKENS), min_size=0, max_size=8).map(lambda ts: b" ".join(ts) + b"\r\n")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(line, min_size=1, max_size=10))
def test_garbage_never_breaks_a_session(lines: list[bytes]) -> None:
    handle, stop = SERVER
    c = Raw(handle.host, handle.port)
    try:
        c.send(b"t0 LOGIN alice wonderland\r\nt1 SELECT INBOX\r\n")
        c.until(b"t1")
        for ln in lines:
            c.send(ln)
        # Whatever state the garbage left (an IDLE, a literal being read, a pending AUTHENTICATE),
        # end it and check the session still answers, or said goodbye properly.
        c.send(b"\r\nDONE\r\n*\r\nzz NOOP\r\n")
        seen = []
        while True:
            got = c.line()
            if not got:
                assert any(x.startswith(b"* BYE") for x in seen), seen[-5:]
                break
            seen.append(got)
            if got.startswith(b"zz "):
                break
    finally:
        c.close()


SERVER = start_server(limits=LimitsConfig(max_errors=10**6))


def teardown_module() -> None:
    SERVER[1]()
