"""The PROXY protocol (HAProxy; v1 text, v2 binary): the header a load balancer sends before its client's bytes.

:func:`parse` is pure (bytes in, header or "need more" out); :func:`read_header` takes exactly the header
off an accepted socket and leaves every byte after it (an SMTP EHLO, a TLS ClientHello) in the kernel for
the session. Reference: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt (cited as "spec §").

Invariant: whenever :func:`parse` answers "need more" (None), every byte it was given belongs to the header,
so a reader may consume them all without taking the session's first bytes.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass

#: spec §2.1: "PROXY" and a space start a v1 header.
V1_PREFIX = b"PROXY "
#: spec §2.1: the longest v1 line, CRLF included ("PROXY TCP6 " + two full IPv6 addresses and ports).
V1_MAX = 107
#: spec §2.2: the 12 bytes that start a v2 header (they cannot start an HTTP, SMTP or TLS stream).
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: spec §2.2: signature, version/command, family/transport, 2-byte length.
V2_FIXED = 16
#: Longest v2 address block plus TLVs we accept. The spec allows 65535; the addresses take at most 216 (UNIX)
#: and HAProxy's TLVs (ALPN, authority, unique id, SSL details) a few hundred.
V2_MAX_PAYLOAD = 4096
#: The most a reader needs to look at to decide.
MAX_HEADER = V2_FIXED + V2_MAX_PAYLOAD

# spec §2.2: the address block's length per address family (INET, INET6, UNIX) of a STREAM connection.
_AF_INET, _AF_INET6, _AF_UNIX = 0x1, 0x2, 0x3
_ADDR_LEN = {_AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}
_DIGITS = frozenset(b"0123456789")

Address = tuple[str, int]


class ProxyError(Exception):
    """The bytes are not a valid PROXY header (or end too early); the connection must be closed unanswered."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A parsed header. ``source``/``destination`` are None when the connection's own addresses stand (v2 LOCAL,
    a proxy's health check; v1 UNKNOWN; v2 UNSPEC or UNIX families)."""

    length: int  # bytes the header took; the session's bytes start there
    version: int  # 1 or 2
    source: Address | None
    destination: Address | None


def parse(data: bytes) -> ProxyHeader | None:
    """The header at the start of ``data``; None when every byte so far is a proper prefix of a header.

    Raises :class:`ProxyError` as soon as the bytes cannot start a header, or one is malformed or too long.
    Never looks past the header's end.
    """
    if data[:1] == V1_PREFIX[:1]:
        return _parse_v1(data)
    if data[:1] == V2_SIGNATURE[:1]:
        return _parse_v2(data)
    if not data:
        return None
    raise ProxyError("not a PROXY protocol header")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    head = data[:V1_MAX]
    if not head.startswith(V1_PREFIX[: len(head)]):
        raise ProxyError("not a PROXY protocol header")
    end = head.find(b"\n")
    line = head if end < 0 else head[:end]
    # spec §2.1: US-ASCII; the only control characters are the final CR LF
    if (line[:-1] if line.endswith(b"\r") else line).translate(None, _V1_ALLOWED):
        raise ProxyError("v1 line holds a byte that is not printable ASCII")
    if end < 0:
        if len(head) >= V1_MAX:
            raise ProxyError(f"v1 line longer than {V1_MAX} bytes")
        return None
    if not line.endswith(b"\r"):
        raise ProxyError("v1 line not ended by CRLF")
    fields = line[len(V1_PREFIX) : -1].split(b" ")
    if fields[0] == b"UNKNOWN":
        # spec §2.1: with UNKNOWN, the receiver must ignore the rest of the line and use the real addresses
        return ProxyHeader(end + 1, 1, None, None)
    if len(fields) != 5 or fields[0] not in (b"TCP4", b"TCP6"):
        raise ProxyError("v1 line is not TCP4/TCP6 src dst sport dport, nor UNKNOWN")
    v6 = fields[0] == b"TCP6"
    src = _v1_address(fields[1], v6)
    dst = _v1_address(fields[2], v6)
    return ProxyHeader(end + 1, 1, (src, _v1_port(fields[3])), (dst, _v1_port(fields[4])))


_V1_ALLOWED = bytes(range(0x20, 0x7F))


def _v1_address(raw: bytes, v6: bool) -> str:
    try:  # inet_pton: strict (no leading zeros, no zone), and ~10x cheaper than ipaddress
        packed = socket.inet_pton(socket.AF_INET6 if v6 else socket.AF_INET, raw.decode("ascii"))
    except (OSError, ValueError, UnicodeDecodeError):
        raise ProxyError(f"v1 address {raw!r} is not an IPv{6 if v6 else 4} address") from None
    return _host(packed)


def _v1_port(raw: bytes) -> int:
    # spec §2.1: a decimal number 0..65535; no leading zero (HAProxy never sends one)
    if not raw or len(raw) > 5 or not _DIGITS.issuperset(raw) or (raw[0] == 0x30 and len(raw) > 1):
        raise ProxyError(f"v1 port {raw!r} is not a number from 0 to 65535")
    port = int(raw)
    if port > 65535:
        raise ProxyError(f"v1 port {port} is out of range")
    return port


def _parse_v2(data: bytes) -> ProxyHeader | None:
    n = min(len(data), len(V2_SIGNATURE))
    if data[:n] != V2_SIGNATURE[:n]:
        raise ProxyError("not a PROXY protocol header")
    if len(data) <= n:
        return None
    ver_cmd = data[n]
    if ver_cmd >> 4 != 2:
        raise ProxyError(f"v2 header of version {ver_cmd >> 4}")
    command = ver_cmd & 0x0F
    if command not in (0, 1):  # spec §2.2: 0 LOCAL, 1 PROXY; others must be refused
        raise ProxyError(f"v2 command {command} is neither LOCAL nor PROXY")
    if len(data) < V2_FIXED:
        return None
    fam = data[13]
    size = int.from_bytes(data[14:16], "big")
    if size > V2_MAX_PAYLOAD:
        raise ProxyError(f"v2 header of {size} bytes is longer than {V2_MAX_PAYLOAD}")
    end = V2_FIXED + size
    if len(data) < end:
        return None
    if command == 0:
        # spec §2.2: LOCAL is the proxy's own connection (a health check): the receiver uses the real addresses
        return ProxyHeader(end, 2, None, None)
    family, transport = fam >> 4, fam & 0x0F
    if family == 0:
        return ProxyHeader(end, 2, None, None)  # spec §2.2: UNSPEC: "free to accept it and use the real endpoints"
    if family not in _ADDR_LEN:
        raise ProxyError(f"v2 address family {family} is unknown")
    if transport != 1:  # a stream listener takes only STREAM (TCP) connections
        raise ProxyError(f"v2 transport {transport} is not STREAM")
    need = _ADDR_LEN[family]
    if size < need:
        raise ProxyError(f"v2 address block of {size} bytes is shorter than {need}")
    block = data[V2_FIXED : V2_FIXED + need]
    if family == _AF_UNIX:
        return ProxyHeader(end, 2, None, None)  # a UNIX socket has no IP address: keep the socket's own
    # the TLVs after the addresses (spec §2.2.1 onwards) carry nothing a mail session uses: skipped
    width = 4 if family == _AF_INET else 16
    sport, dport = _PORTS.unpack_from(block, 2 * width)
    return ProxyHeader(end, 2, (_host(block[:width]), sport), (_host(block[width : 2 * width]), dport))


_PORTS = struct.Struct("!HH")
_MAPPED = bytes(10) + b"\xff\xff"  # ::ffff:0:0/96


def _host(packed: bytes) -> str:
    """The address as the session's peer_host spells it (inet_ntop, as getpeername); an IPv4-mapped IPv6
    address as the IPv4 one."""
    if len(packed) == 16 and packed[:12] == _MAPPED:
        packed = packed[12:]
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


async def read_header(sock: socket.socket) -> ProxyHeader:
    """Take the PROXY header off the non-blocking, connected ``sock``: exactly its bytes and no more.

    Peeks at what has arrived, parses, and consumes only header bytes (all of them while the parser needs
    more, by the module's invariant); waits for readability in between. The caller bounds the wait.
    Raises :class:`ProxyError` (malformed, or EOF before the end) and :class:`OSError`.
    """
    loop = asyncio.get_running_loop()
    got = b""
    while True:
        try:
            peek = sock.recv(MAX_HEADER - len(got), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            await _readable(loop, sock)
            continue
        if not peek:
            raise ProxyError("connection closed inside the PROXY header")
        header = parse(got + peek)
        take = len(peek) if header is None else header.length - len(got)
        got += sock.recv(take)  # at most what was peeked: there, so no wait and no short read to fear
        if header is not None and len(got) == header.length:
            return header


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())
