"""A proxy_protocol listener over real loopback sockets, on asyncio's loop and on uvloop (the workers' loop):
crafted v1/v2 headers with spoofed sources, pipelined session bytes and ClientHello, split headers, malformed,
untrusted and slow proxies, per-IP limits by the client's address, and the stop of a pending header read."""

from __future__ import annotations

import asyncio
import io
import ipaddress
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop
from support.server import wait_until_async

from mailsrv import log
from mailsrv.config import LimitsConfig, ListenerConfig, load
from mailsrv.net.connection import Connection, ConnectionClosed
from mailsrv.net.listener import Listener
from mailsrv.net.proxy import V2_SIGNATURE

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Awaitable[Any]], Any]:
    factory = LOOPS[request.param]

    def runner(main: Awaitable[Any]) -> Any:
        async def bounded() -> Any:
            async with asyncio.timeout(30):
                return await main

        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(bounded())

    return runner


def logged(buf: io.StringIO) -> str:
    """What the session and listener logged so far."""
    log.flush()
    return buf.getvalue()


class Hello:
    """Greets with the addresses the session sees, then echoes lines; a refusal says BUSY."""

    async def handle(self, conn: Connection) -> None:
        await conn.send(f"HELLO {conn.peer_host} {conn.peer_port} {conn.local_host} {conn.local_port}"
                        f" tls={int(conn.tls_active)}\r\n".encode())
        try:
            while line := await conn.readline():
                await conn.send(b"ECHO " + line)
        except ConnectionClosed:
            return

    async def refuse(self, conn: Connection, reason: str) -> None:
        await conn.send(f"BUSY {reason}\r\n".encode())


def v1(src: str, dst: str, sport: int, dport: int) -> bytes:
    fam = "TCP6" if ":" in src else "TCP4"
    return f"PROXY {fam} {src} {dst} {sport} {dport}\r\n".encode()


def v2(src: str, dst: str, sport: int, dport: int, *, local: bool = False, tlvs: bytes = b"") -> bytes:
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    block = a.packed + b.packed + struct.pack("!HH", sport, dport) + tlvs
    fam = 0x11 if a.version == 4 else 0x21
    return V2_SIGNATURE + bytes([0x20 if local else 0x21, fam]) + struct.pack("!H", len(block)) + block


async def start(ssl_context: ssl.SSLContext | None = None, host: str = "127.0.0.1", **cfg: Any) -> tuple[Listener, int]:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(64)
    lcfg = ListenerConfig(protocol="smtp", bind=("127.0.0.1:0",), proxy_protocol=True,
                          tls="implicit" if ssl_context else "none", **cfg)
    listener = Listener("t", lcfg, LimitsConfig(), [sock], Hello(), ssl_context)
    await listener.start()
    return listener, sock.getsockname()[1]


async def stop(listener: Listener) -> None:
    await listener.drain(0.5)
    for s in listener.socks:
        s.close()


async def closed_unanswered(r: asyncio.StreamReader) -> None:
    """The server closed without sending a byte (the peer of a PROXY listener is a proxy: nothing to answer)."""
    try:
        assert await r.read() == b""
    except ConnectionResetError:
        pass


def test_v1_header_and_the_session_bytes_behind_it_in_one_segment(run: Any, captured_log: io.StringIO) -> None:
    async def main() -> None:
        listener, port = await start()
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(v1("192.0.2.7", "198.51.100.1", 56324, 25) + b"EHLO client.example\r\n")
            assert await r.readline() == b"HELLO 192.0.2.7 56324 198.51.100.1 25 tls=0\r\n"
            assert await r.readline() == b"ECHO EHLO client.example\r\n"  # not lost, not read as header
            w.close()
        finally:
            await stop(listener)

    run(main())
    assert "peer=192.0.2.7:56324 proxy=127.0.0.1:" in logged(captured_log)


def test_ipv6_listener_and_proxy(run: Any) -> None:
    """A proxy on ::1 (trusted by default) reporting an IPv4 client, and one outside the trusted list refused."""
    async def main() -> None:
        for trusted, greeted in ((("127.0.0.0/8", "::1/128"), True), (("127.0.0.0/8",), False)):
            listener, port = await start(host="::1", proxy_trusted_networks=trusted)
            try:
                r, w = await asyncio.open_connection("::1", port)
                w.write(v1("192.0.2.7", "198.51.100.1", 56324, 25))
                if greeted:
                    assert await r.readline() == b"HELLO 192.0.2.7 56324 198.51.100.1 25 tls=0\r\n"
                else:
                    await closed_unanswered(r)
                w.close()
            finally:
                await stop(listener)

    run(main())


def test_v2_ipv6_header_split_over_many_segments(run: Any) -> None:
    async def main() -> None:
        listener, port = await start()
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            data = v2("2001:db8::7", "2001:db8::1", 40001, 993, tlvs=b"\x01\x00\x02h2") + b"NOOP\r\n"
            for i in range(0, len(data), 5):
                w.write(data[i : i + 5])
                await w.drain()
                await asyncio.sleep(0)  # let the server look at each piece
            assert await r.readline() == b"HELLO 2001:db8::7 40001 2001:db8::1 993 tls=0\r\n"
            assert await r.readline() == b"ECHO NOOP\r\n"
            w.close()
        finally:
            await stop(listener)

    run(main())


def test_v2_local_keeps_the_connections_own_address(run: Any) -> None:
    async def main() -> None:
        listener, port = await start()
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            own = w.get_extra_info("sockname")
            w.write(v2("192.0.2.7", "198.51.100.1", 1, 2, local=True))
            assert await r.readline() == f"HELLO 127.0.0.1 {own[1]} 127.0.0.1 {port} tls=0\r\n".encode()
            w.close()
        finally:
            await stop(listener)

    run(main())


@pytest.mark.parametrize("data", [
    b"EHLO client.example\r\n",  # a client straight to the listener, no proxy
    b"PROXY TCP4 192.0.2.7 198.51.100.1 56324\r\nEHLO x\r\n",
    b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 25" + b" " * 200,
    V2_SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12),
    V2_SIGNATURE + b"\x21\x11\xff\xff",
])
def test_malformed_header_closes_unanswered_and_logs_the_real_peer(run: Any, captured_log: io.StringIO,
                                                                   data: bytes) -> None:
    async def main() -> None:
        listener, port = await start()
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(data)
            await closed_unanswered(r)
            w.close()
        finally:
            await stop(listener)

    run(main())
    line = next(ln for ln in logged(captured_log).splitlines() if "proxy.refused" in ln)
    assert "peer=127.0.0.1:" in line and "reason=" in line


def test_untrusted_source_is_refused_before_reading(run: Any, captured_log: io.StringIO) -> None:
    async def main() -> None:
        listener, port = await start(proxy_trusted_networks=("192.0.2.0/24", "::1/128"))
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(v1("192.0.2.7", "198.51.100.1", 56324, 25) + b"EHLO x\r\n")  # claims anything: not believed
            await closed_unanswered(r)
            w.close()
        finally:
            await stop(listener)

    run(main())
    line = next(ln for ln in logged(captured_log).splitlines() if "proxy.untrusted" in ln)
    assert "peer=127.0.0.1:" in line and "192.0.2.7" not in line


def test_slow_header_times_out(run: Any, captured_log: io.StringIO) -> None:
    async def main() -> float:
        listener, port = await start(proxy_timeout=0.3)
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            t0 = time.monotonic()
            w.write(b"PROXY TCP4 192.0.2.7 ")
            await closed_unanswered(r)
            w.close()
            return time.monotonic() - t0
        finally:
            await stop(listener)

    assert run(main()) >= 0.3
    assert "reason=timeout" in logged(captured_log)


def test_per_ip_limit_counts_the_clients_address_not_the_proxys(run: Any) -> None:
    async def main() -> None:
        listener, port = await start(max_connections_per_ip=1)
        try:
            r1, w1 = await asyncio.open_connection("127.0.0.1", port)
            w1.write(v1("192.0.2.7", "198.51.100.1", 1001, 25))
            assert (await r1.readline()).startswith(b"HELLO 192.0.2.7 1001")
            r2, w2 = await asyncio.open_connection("127.0.0.1", port)
            w2.write(v2("192.0.2.7", "198.51.100.1", 1002, 25))
            assert await r2.readline() == b"BUSY too many connections from your address\r\n"
            r3, w3 = await asyncio.open_connection("127.0.0.1", port)  # same proxy, another client
            w3.write(v1("192.0.2.8", "198.51.100.1", 1003, 25))
            assert (await r3.readline()).startswith(b"HELLO 192.0.2.8 1003")
            assert set(listener.per_ip) == {"192.0.2.7", "192.0.2.8"}
            for w in (w1, w2, w3):
                w.close()
        finally:
            await stop(listener)

    run(main())


async def tls_behind(r: asyncio.StreamReader, w: asyncio.StreamWriter, header: bytes,
                     ctx: ssl.SSLContext) -> Callable[[], Awaitable[bytes]]:
    """Send ``header`` and the ClientHello in ONE write (as a proxy forwards a client's first segment),
    finish the handshake, and return a reader of decrypted lines."""
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="localhost")

    async def pump(step: Callable[[], Any]) -> Any:
        while True:
            try:
                result = step()
            except ssl.SSLWantReadError:
                if out.pending:
                    w.write(out.read())
                data = await r.read(65536)
                if not data:
                    raise ConnectionClosed("EOF in TLS") from None
                inc.write(data)
                continue
            if out.pending:
                w.write(out.read())
            return result

    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = out.read()
    assert hello[:1] == b"\x16"
    w.write(header + hello)
    await pump(obj.do_handshake)
    buf = bytearray()

    async def readline() -> bytes:
        while b"\n" not in buf:
            buf.extend(await pump(lambda: obj.read(65536)))
        i = buf.index(b"\n") + 1
        line = bytes(buf[:i])
        del buf[:i]
        return line

    return readline


def test_implicit_tls_header_then_client_hello_in_one_segment(run: Any,
                                                              contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    async def main() -> None:
        listener, port = await start(contexts[0])
        try:
            for header, want in ((v2("2001:db8::7", "2001:db8::1", 40001, 993), b"2001:db8::7 40001"),
                                 (v1("192.0.2.7", "198.51.100.1", 1234, 993), b"192.0.2.7 1234")):
                r, w = await asyncio.open_connection("127.0.0.1", port)
                readline = await tls_behind(r, w, header, contexts[1])
                line = await readline()
                assert line.startswith(b"HELLO " + want) and line.endswith(b" tls=1\r\n"), line
                w.close()
        finally:
            await stop(listener)

    run(main())


def test_header_reads_in_flight_are_capped_at_max_connections(run: Any, captured_log: io.StringIO) -> None:
    # a trusted proxy's connections that never send their header may not pile up until proxy_timeout
    async def main() -> None:
        listener, port = await start(max_connections=2, proxy_timeout=60.0)
        try:
            silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
            await wait_until_async(lambda: len(listener._reading) == 2)
            r3, w3 = await asyncio.open_connection("127.0.0.1", port)
            await closed_unanswered(r3)  # at once, not after proxy_timeout (the run's bound is 30 s)
            w3.close()
            r1, w1 = silent[0]
            w1.write(v1("192.0.2.7", "198.51.100.1", 1001, 25))  # the awaited ones are still served
            assert (await r1.readline()).startswith(b"HELLO 192.0.2.7 1001")
            for _, w in silent:
                w.close()
        finally:
            await stop(listener)

    run(main())
    assert "too many PROXY headers awaited" in logged(captured_log)


def test_stop_ends_accepting_and_pending_header_reads(run: Any) -> None:
    async def main() -> None:
        listener, port = await start()
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"PROXY TCP4 ")
            # its header read began (two tasks: the accept loop and the read)
            await wait_until_async(lambda: len(listener._accepting) == 2)
            listener.stop_accepting()
            await closed_unanswered(r)
            w.close()
            await wait_until_async(lambda: not listener._accepting)  # the accept loop ended too
        finally:
            await stop(listener)

    run(main())


def test_proxy_protocol_keys_load_on_every_listener(tmp_path: Any) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[listener.j]\nprotocol = "jmap"\nbind = ["127.0.0.1:0"]\nproxy_protocol = true\n')
    assert load(p).listener["j"].proxy_protocol  # HTTP listeners read the header too
    p.write_text('[listener.s]\nprotocol = "smtp"\nbind = ["127.0.0.1:0"]\nproxy_protocol = true\n'
                 'proxy_trusted_networks = ["10.0.0.0/8"]\nproxy_timeout = 2.5\n')
    lcfg = load(p).listener["s"]
    assert (lcfg.proxy_protocol, lcfg.proxy_trusted_networks, lcfg.proxy_timeout) == (True, ("10.0.0.0/8",), 2.5)
