"""MIME engine public API (stub: the MIME issue replaces this with the real parser).

Contract used by the store:
    parse(raw: bytes) -> MessageStructure
    MessageStructure.to_cache() -> bytes ; MessageStructure.from_cache(bytes)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MessageStructure:
    header_end: int
    size: int

    def to_cache(self) -> bytes:
        return f"{self.header_end} {self.size}".encode()

    @classmethod
    def from_cache(cls, data: bytes) -> MessageStructure:
        a, b = data.split()
        return cls(int(a), int(b))


def parse(raw: bytes) -> MessageStructure:
    end = raw.find(b"\r\n\r\n")
    end = len(raw) if end < 0 else end + 4
    return MessageStructure(end, len(raw))
