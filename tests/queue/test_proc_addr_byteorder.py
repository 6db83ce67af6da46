"""/proc/net/tcp{,6} addresses read right on little- and big-endian hosts (routing._proc_addr)."""

from __future__ import annotations

import ipaddress
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailsrv.queue.routing import _proc_addr

ORDERS = ("little", "big")


def proc_line_addr(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, byteorder: str) -> str:
    """As the kernel prints it (``%08X`` of each 32-bit word as the host reads it, then ``%04X`` port)."""
    p = addr.packed
    return "".join(f"{int.from_bytes(p[i:i + 4], byteorder):08X}"  # type: ignore[arg-type]
                   for i in range(0, len(p), 4)) + f":{port:04X}"


@pytest.mark.parametrize(("byteorder", "field", "want"), [
    # the same sockets as an x86-64 and an s390x kernel print them
    ("little", "0100007F:0CFD", ("127.0.0.1", 3325)),
    ("big", "7F000001:0CFD", ("127.0.0.1", 3325)),
    ("little", "0202000A:0019", ("10.0.2.2", 25)),
    ("big", "0A000202:0019", ("10.0.2.2", 25)),
    ("little", "00000000000000000000000001000000:0050", ("::1", 80)),
    ("big", "00000000000000000000000000000001:0050", ("::1", 80)),
    ("little", "B80D0120000000000000000001000000:01BB", ("2001:db8::1", 443)),
    ("big", "20010DB8000000000000000000000001:01BB", ("2001:db8::1", 443)),
])
def test_both_byte_orders(byteorder: str, field: str, want: tuple[str, int]) -> None:
    assert _proc_addr(field, byteorder) == want


def test_host_order_is_the_default() -> None:
    addr = ipaddress.ip_address("192.0.2.7")
    assert _proc_addr(proc_line_addr(addr, 2525, sys.byteorder)) == ("192.0.2.7", 2525)


@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)), st.integers(0, 65535), st.sampled_from(ORDERS))
def test_round_trip(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, byteorder: str) -> None:
    assert _proc_addr(proc_line_addr(addr, port, byteorder), byteorder) == (str(addr), port)


@given(st.text(max_size=40))
def test_garbage_raises_value_error_only(text: str) -> None:
    try:
        _proc_addr(text, "big")
    except ValueError:
        pass
