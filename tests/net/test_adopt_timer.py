"""The adoption looks (mailsrv/net/listener.py, ADOPT_INTERVAL) of all a worker's listeners share one timer:
an idle worker wakes once per interval, not once per listener; a stuck member is still adopted by the
listener it belongs to, and the timer ends with the last listener that stops accepting."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest
from support.server import wait_until_async

from mailsrv.config import LimitsConfig, ListenerConfig
from mailsrv.net import listener as listener_mod
from mailsrv.net.connection import Connection
from mailsrv.net.listener import Listener


class Greeter:
    """A stream service that says one line and ends the session."""

    def __init__(self) -> None:
        self.served = 0

    async def handle(self, conn: Connection) -> None:
        self.served += 1
        conn.write(b"hello\r\n")

    async def refuse(self, conn: Connection, reason: str) -> None:
        conn.write(b"busy\r\n")


def member() -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    return s


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    yield socks
    for s in socks:
        s.close()


async def test_one_timer_for_every_listener_and_a_stuck_member_is_adopted(
        sockets: list[socket.socket], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listener_mod, "ADOPT_INTERVAL", 0.05)
    loop = asyncio.get_running_loop()
    timers: list[float] = []
    call_later = loop.call_later

    def counting(delay: float, cb, *args):  # type: ignore[no-untyped-def]
        if delay == 0.05:
            timers.append(delay)
        return call_later(delay, cb, *args)

    monkeypatch.setattr(loop, "call_later", counting)
    services = [Greeter() for _ in range(3)]
    listeners = []
    for i, svc in enumerate(services):
        own, other = member(), member()  # "other": a stuck worker's member of the same group
        sockets += [own, other]
        lst = Listener(f"l{i}", ListenerConfig(protocol="smtp", bind=("127.0.0.1:0",)), LimitsConfig(),
                       [own], svc, None, others=[socket.socket(fileno=socket.dup(other.fileno()))])
        await lst.start()
        listeners.append(lst)
    watch = listener_mod._AdoptionWatch._per_loop[loop]
    assert watch.listeners == listeners
    # connections queued on listener 1's stuck member: not drained between two looks, so adopted by it
    port = sockets[3].getsockname()[1]
    clients = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
    await wait_until_async(lambda: services[1].served == 2)
    assert [s.served for s in services] == [0, 2, 0]
    for r, w in clients:
        assert await r.readline() == b"hello\r\n"
        w.close()
    looked: list[str] = []
    look = Listener._look

    def counted(self: Listener) -> None:
        looked.append(self.name)
        look(self)

    monkeypatch.setattr(Listener, "_look", counted)
    armed = len(timers)
    await wait_until_async(lambda: looked.count("l0") >= 4)
    # every listener looks each time, and one timer is re-armed per round (one per listener would be 3x)
    rounds = looked.count("l0")
    assert looked[:3 * (rounds - 1)] == ["l0", "l1", "l2"] * (rounds - 1)
    assert watch.timer is not None and len(timers) - armed <= rounds + 1
    for lst in listeners[:2]:
        lst.stop_accepting()
    assert watch.listeners == listeners[2:] and listener_mod._AdoptionWatch._per_loop.get(loop) is watch
    listeners[2].stop_accepting()
    assert loop not in listener_mod._AdoptionWatch._per_loop and watch.timer.cancelled()
    for lst in listeners:
        await lst.drain(1.0)
