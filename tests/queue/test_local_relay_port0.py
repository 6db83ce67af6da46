"""The queue hands local mail to our own smtp listener: one bound to port 0 (``mailsrv init
--any-port``) is found among the master's listening sockets, in the order the master binds them."""

from __future__ import annotations

import contextlib
import ipaddress
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from mailsrv.config import Config, ListenerConfig, QueueConfig
from mailsrv.queue.routing import _proc_addr, local_relay, master_listeners

#: a stand-in master: binds its listeners in order, prints the ports, waits for its stdin to close
MASTER = """
import socket, sys
socks = []
for host in sys.argv[1:]:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.bind((host, 0))
    s.listen()
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks), flush=True)
sys.stdin.read()
"""


def config(*listeners: tuple[str, str]) -> Config:
    return replace(Config(), listener={f"l{i}_{proto}": ListenerConfig(protocol=proto, bind=(bind,))  # type: ignore[arg-type]
                                       for i, (proto, bind) in enumerate(listeners)})


@contextlib.contextmanager
def stand_in(script: str, hosts: list[str]) -> Iterator[tuple[int, list[int]]]:
    """A stand-in master binding ``hosts``: its pid and the ports it printed; it ends when left."""
    proc = subprocess.Popen([sys.executable, "-c", script, *hosts], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield proc.pid, [int(p) for p in proc.stdout.readline().split()]
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


def test_port_zero_smtp_listener_learnt_from_the_master() -> None:
    hosts = ["127.0.0.1", "127.0.0.1", "::1", "127.0.0.1"]
    with stand_in(MASTER, hosts) as (pid, ports):
        assert master_listeners(pid) == list(zip(hosts, ports, strict=True))
        cfg = config(("imap", "127.0.0.1:0"), ("submission", "127.0.0.1:0"), ("jmap", "[::1]:0"),
                     ("smtp", "127.0.0.1:0"))
        assert local_relay(cfg, pid) == ("127.0.0.1", ports[3])
        # without the master, or when its sockets do not match the configuration: no guess
        assert local_relay(cfg) == ("127.0.0.1", 0)
        assert local_relay(config(("smtp", "127.0.0.1:0"), ("imap", "127.0.0.1:0")), pid) is None
        assert local_relay(config(("imap", "127.0.0.1:0"), ("submission", "127.0.0.1:0"), ("jmap", "127.0.0.1:0"),
                                  ("smtp", "127.0.0.1:0")), pid) is None
        # a fixed port or an explicit local_relay needs no master
        assert local_relay(config(("smtp", "0.0.0.0:2525")), pid) == ("127.0.0.1", 2525)
        explicit = replace(cfg, queue=QueueConfig(local_relay="127.0.0.1:2600"))
        assert local_relay(explicit, pid) == ("127.0.0.1", 2600)
    assert master_listeners(pid) == []  # gone


#: a stand-in master with server.reuse_port: each address a SO_REUSEPORT group of 3 (one per worker), and
#: a reload's growth of the first group bound after all the others
GROUPS = """
import socket, sys
socks, first = [], []
def member(host, port):
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((host, port))
    s.listen()
    socks.append(s)
    return s.getsockname()[1]
for host in sys.argv[1:]:
    first.append(member(host, 0))
    member(host, first[-1]); member(host, first[-1])
member(sys.argv[1], first[0])
print(" ".join(map(str, first)), flush=True)
sys.stdin.read()
"""


def test_port_zero_smtp_listener_of_a_reuse_port_master() -> None:
    hosts = ["127.0.0.1", "::1", "127.0.0.1"]
    with stand_in(GROUPS, hosts) as (pid, ports):
        assert master_listeners(pid) == list(zip(hosts, ports, strict=True))
        cfg = config(("imap", "127.0.0.1:0"), ("jmap", "[::1]:0"), ("smtp", "127.0.0.1:0"))
        assert local_relay(cfg, pid) == ("127.0.0.1", ports[2])


def kernel_format(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
    """How the kernel prints an address in /proc/net/tcp{,6}: each 32-bit word as a native int."""
    packed = addr.packed
    return "".join(packed[i:i + 4][::-1].hex().upper() for i in range(0, len(packed), 4)) + f":{port:04X}"


@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)), st.integers(0, 65535))
def test_proc_addr_round_trip(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> None:
    assert _proc_addr(kernel_format(addr, port)) == (str(addr), port)


def test_proc_addr_examples() -> None:
    assert _proc_addr("0100007F:0CFD") == ("127.0.0.1", 3325)
    assert _proc_addr("00000000000000000000000001000000:0050") == ("::1", 80)
