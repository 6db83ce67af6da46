"""systemd's sd_notify protocol (READY=1, RELOADING=1, STOPPING=1, STATUS=...), no libsystemd needed."""

from __future__ import annotations

import os
import socket
import time


def notify(*states: str) -> bool:
    """Send ``states`` to $NOTIFY_SOCKET; False when not run by systemd or on error."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]  # abstract namespace
    payload = "\n".join(states).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(addr)
            sock.sendall(payload)
    except OSError:
        return False
    return True


def monotonic_usec() -> str:
    """``MONOTONIC_USEC=`` field that systemd wants with RELOADING=1 (Type=notify-reload)."""
    return f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
