"""HTTP listeners (JMAP, admin API) adopt a stuck worker's SO_REUSEPORT member as the stream listeners do
(mailsrv/net/listener.py, ADOPT_INTERVAL): under a real ``mailsrv serve`` with two workers, worker 0 and the
master SIGSTOPped, every request of a burst is answered (about half of them hashed to the stuck member)."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from foundation.test_reuseport import BURST, adopted_by, open_burst, start, stuck
from support.server import ServerProcess, unverified_tls


def answer_all(conns: list[socket.socket], path: str, timeout: float = 10.0,
               tls: ssl.SSLContext | None = None) -> list[bytes]:
    """One GET of ``path`` on each connection (opened before: queued on both members); the status lines."""
    out = []
    for raw in conns:
        raw.settimeout(timeout)
        s = tls.wrap_socket(raw, server_hostname="localhost") if tls is not None else raw
        with s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
            out.append(s.makefile("rb").readline())
    return out


def test_a_stuck_worker_s_http_connections_are_served_by_the_other(tmp_path: Path) -> None:
    srv: ServerProcess = start(tmp_path, 2)
    client = unverified_tls()
    try:
        mark = srv.mark()
        with stuck(srv):
            # JMAP: the session resource without credentials is 401 Unauthorized, from the live worker
            assert answer_all(open_burst(srv.ports["jmap"]), "/jmap/session") == [b"HTTP/1.1 401 Unauthorized\r\n"] * BURST
            # implicit TLS: the handshake of a connection queued on the stuck member waits for the adoption
            conns = open_burst(srv.ports["jmaps"], 20)
            assert answer_all(conns, "/jmap/session", tls=client) == [b"HTTP/1.1 401 Unauthorized\r\n"] * 20
            statuses = answer_all(open_burst(srv.ports["admin"]), "/api/v1/domains")
            assert statuses == [b"HTTP/1.1 401 Unauthorized\r\n"] * BURST, statuses
            assert adopted_by(srv, mark, "jmap") == {1}
            assert adopted_by(srv, mark, "jmaps") == {1}
            assert adopted_by(srv, mark, "admin") == {1}
    finally:
        assert srv.stop() == 0
