"""What the sieve tests' SMTP sink (the ``sink`` fixture of conftest.py) received."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Sink:
    port: int = 0
    #: (MAIL FROM, RCPT TOs, message bytes) of each message received
    got: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.got.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content or b""))
        return "250 2.0.0 stored"

    def messages(self) -> list[tuple[str, list[str], bytes]]:
        with self.lock:
            return list(self.got)
