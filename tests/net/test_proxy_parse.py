"""The PROXY protocol parser (mailsrv.net.proxy.parse): spec examples, malformed headers, split input, fuzzing."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailsrv.net.proxy import (
    MAX_HEADER,
    V1_MAX,
    V2_SIGNATURE,
    ProxyError,
    ProxyHeader,
    parse,
    read_header,
)


def v2(command: int, fam: int, payload: bytes, *, version: int = 2, size: int | None = None) -> bytes:
    length = len(payload) if size is None else size
    return V2_SIGNATURE + bytes([version << 4 | command, fam]) + struct.pack("!H", length) + payload


def inet(src: str, dst: str, sport: int, dport: int) -> bytes:
    return ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed + struct.pack("!HH", sport, dport)


V4 = v2(1, 0x11, inet("192.0.2.7", "198.51.100.1", 40000, 25))
V6 = v2(1, 0x21, inet("2001:db8::7", "2001:db8::1", 40001, 993))
GOOD = [
    (b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 25\r\n", ("192.0.2.7", 56324), ("198.51.100.1", 25)),
    (b"PROXY TCP6 2001:db8::7 2001:db8::1 1 65535\r\n", ("2001:db8::7", 1), ("2001:db8::1", 65535)),
    (b"PROXY TCP6 ::ffff:192.0.2.9 ::1 0 110\r\n", ("192.0.2.9", 0), ("::1", 110)),  # IPv4-mapped: as IPv4
    (b"PROXY UNKNOWN\r\n", None, None),
    (b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n", None, None),  # spec: rest ignored
    # the spec's longest line: 107 bytes
    (b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
     ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535), ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535)),
    (V4, ("192.0.2.7", 40000), ("198.51.100.1", 25)),
    (V6, ("2001:db8::7", 40001), ("2001:db8::1", 993)),
    # TLVs after the addresses (ALPN "h2", a unique id) are skipped
    (v2(1, 0x11, inet("192.0.2.7", "198.51.100.1", 1, 2) + b"\x01\x00\x02h2" + b"\x05\x00\x03abc"),
     ("192.0.2.7", 1), ("198.51.100.1", 2)),
    (v2(0, 0x00, b""), None, None),  # LOCAL: the proxy's health check
    (v2(0, 0x11, inet("192.0.2.7", "198.51.100.1", 1, 2)), None, None),  # LOCAL ignores any address
    (v2(1, 0x00, b""), None, None),  # UNSPEC: keep the real endpoints
    (v2(1, 0x31, bytes(216)), None, None),  # UNIX: no IP address to take
]


@pytest.mark.parametrize(("header", "source", "dest"), GOOD)
def test_good_headers_at_every_split_and_with_the_session_behind(
    header: bytes, source: tuple[str, int] | None, dest: tuple[str, int] | None
) -> None:
    assert len(header) <= V1_MAX or header.startswith(V2_SIGNATURE)
    want = ProxyHeader(len(header), 2 if header.startswith(V2_SIGNATURE) else 1, source, dest)
    for behind in (b"", b"EHLO client.example\r\n", b"\x16\x03\x01\x02\x00\x01"):  # an SMTP command, a ClientHello
        assert parse(header + behind) == want
    for cut in range(len(header)):  # any prefix: need more, never a guess
        assert parse(header[:cut]) is None, cut


BAD = [
    b"EHLO client.example\r\n",  # no header at all
    b"\x16\x03\x01\x02\x00",  # TLS straight away
    b"PROXY\r\n",
    b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 25\n",  # LF without CR
    b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 25\rX\r\n",
    b"PROXY TCP4 192.0.2.7 198.51.100.1 56324\r\n",
    b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 25 9\r\n",
    b"PROXY TCP4  192.0.2.7 198.51.100.1 56324 25\r\n",
    b"PROXY TCP5 192.0.2.7 198.51.100.1 56324 25\r\n",
    b"PROXY tcp4 192.0.2.7 198.51.100.1 56324 25\r\n",
    b"PROXY TCP4 2001:db8::7 198.51.100.1 56324 25\r\n",  # family and address disagree
    b"PROXY TCP6 192.0.2.7 2001:db8::1 56324 25\r\n",
    b"PROXY TCP4 192.0.2.07 198.51.100.1 56324 25\r\n",
    b"PROXY TCP4 192.0.2.256 198.51.100.1 56324 25\r\n",
    b"PROXY TCP6 fe80::1%eth0 ::1 56324 25\r\n",
    b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 25\r\n",
    b"PROXY TCP4 192.0.2.7 198.51.100.1 025 25\r\n",
    b"PROXY TCP4 192.0.2.7 198.51.100.1 -1 25\r\n",
    b"PROXY TCP4 192.0.2.7 198.51.100.1 \xd9\xa1 25\r\n",  # not ASCII
    b"PROXY TCP4 192.0.2.7\x00 198.51.100.1 1 25\r\n",
    b"PROXY UNKNOWN" + b" " * 100 + b"\r\n",  # longer than 107 bytes
    b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 25" + b"0" * 80,  # no end within 107 bytes
    v2(1, 0x11, inet("192.0.2.7", "198.51.100.1", 1, 2), version=1),
    v2(2, 0x11, inet("192.0.2.7", "198.51.100.1", 1, 2)),  # command 2
    v2(1, 0x12, inet("192.0.2.7", "198.51.100.1", 1, 2)),  # DGRAM on a stream listener
    v2(1, 0x10, inet("192.0.2.7", "198.51.100.1", 1, 2)),
    v2(1, 0x41, inet("192.0.2.7", "198.51.100.1", 1, 2)),  # family 4
    v2(1, 0x11, bytes(11)),  # address block too short for INET
    v2(1, 0x21, bytes(35)),
    v2(1, 0x31, bytes(215)),
    v2(1, 0x11, b"", size=0xFFFF),  # longer than we take
    V2_SIGNATURE[:11] + b"X" + bytes(4),
]


@pytest.mark.parametrize("data", BAD)
def test_malformed_headers_are_refused(data: bytes) -> None:
    with pytest.raises(ProxyError):
        parse(data + b"\r\n" * 60)


def test_refusal_comes_as_soon_as_the_bytes_cannot_be_a_header() -> None:
    """A client that speaks first (no proxy in front) is refused at its first byte, not after a timeout."""
    for data in (b"E", b"PROXX", b"\r\n\r\n\x00\r\nQUIX", b"\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00"):
        with pytest.raises(ProxyError):
            parse(data)


def test_a_v1_line_that_has_not_ended_within_107_bytes_is_refused_without_more() -> None:
    data = b"PROXY UNKNOWN " + b"x" * (V1_MAX - 14)
    assert len(data) == V1_MAX
    assert parse(data[:-1]) is None
    with pytest.raises(ProxyError):
        parse(data)


@given(st.binary(max_size=300))
@settings(max_examples=2000)
def test_fuzz_only_the_parsers_own_error(data: bytes) -> None:
    try:
        parse(data)
    except ProxyError:
        pass


def _headers() -> st.SearchStrategy[bytes]:
    v4 = st.ip_addresses(v=4).map(str)
    v6 = st.ip_addresses(v=6).map(str)
    port = st.integers(0, 65535)
    v1 = st.one_of(
        st.tuples(v4, v4, port, port).map(lambda t: f"PROXY TCP4 {t[0]} {t[1]} {t[2]} {t[3]}\r\n".encode()),
        st.tuples(v6, v6, port, port).map(lambda t: f"PROXY TCP6 {t[0]} {t[1]} {t[2]} {t[3]}\r\n".encode()),
    )
    tlvs = st.binary(max_size=200)
    v2_4 = st.tuples(v4, v4, port, port, tlvs).map(lambda t: v2(1, 0x11, inet(*t[:4]) + t[4]))
    v2_6 = st.tuples(v6, v6, port, port, tlvs).map(lambda t: v2(1, 0x21, inet(*t[:4]) + t[4]))
    local = tlvs.map(lambda t: v2(0, 0x00, t))
    return st.one_of(v1, v2_4, v2_6, local)


@given(_headers(), st.binary(max_size=200))
@settings(max_examples=500)
def test_fuzz_a_header_ends_where_it_ends_whatever_follows(header: bytes, behind: bytes) -> None:
    """Never reads past the header: its length is the header's whatever the session sends behind it, and
    every proper prefix asks for more (so a reader may consume all of it)."""
    got = parse(header + behind)
    assert got is not None and got.length == len(header) <= MAX_HEADER
    for cut in range(len(header)):
        assert parse(header[:cut]) is None


@given(st.binary(min_size=1, max_size=300))
@settings(max_examples=1000)
def test_fuzz_need_more_means_all_of_it_is_header(data: bytes) -> None:
    """The reader's invariant: when parse asks for more, every byte given so far belongs to the header,
    so any continuation either completes a header no shorter than them or is refused."""
    try:
        got = parse(data)
    except ProxyError:
        return
    if got is None:
        assert len(data) < MAX_HEADER
        if data.startswith(b"P"):
            assert len(data) < V1_MAX
    else:
        assert 0 < got.length <= len(data)
        assert parse(data[: got.length]) == got  # the header alone parses the same


@given(_headers(), st.binary(max_size=100), st.lists(st.integers(1, 40), max_size=8))
@settings(max_examples=150, deadline=None)
def test_fuzz_read_header_leaves_every_byte_after_the_header_in_the_socket(
    header: bytes, behind: bytes, pieces: list[int]
) -> None:
    """read_header over a real socket, the bytes arriving in pieces: it returns the header, and what the
    session then reads is exactly what followed it (an EHLO, a ClientHello)."""

    async def main() -> tuple[ProxyHeader, bytes]:
        ours, theirs = socket.socketpair()
        with ours, theirs:
            ours.setblocking(False)
            reading = asyncio.ensure_future(read_header(ours))
            data, pos = header + behind, 0
            for n in pieces:
                theirs.sendall(data[pos : pos + n])
                pos += n
                await asyncio.sleep(0)  # let the reader see this piece alone
            theirs.sendall(data[pos:])
            theirs.shutdown(socket.SHUT_WR)
            got = await asyncio.wait_for(reading, 10)
            ours.setblocking(True)
            rest = b""
            while chunk := ours.recv(4096):
                rest += chunk
            return got, rest

    got, rest = asyncio.run(main())
    assert got.length == len(header)
    assert rest == behind
