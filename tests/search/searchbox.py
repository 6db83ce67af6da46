"""Search test helpers: a generated mailbox with a view, a reader and brute-force documents."""

from __future__ import annotations

from pathlib import Path

from mailsrv.search import Document, MailboxIndex, SearchService, extract
from mailsrv.search.generate import FakeInfo, FakeView, Generator


class Box:
    """A mailbox for tests: raw messages by UID, a view, and the brute-force documents."""

    def __init__(self, n: int = 0, seed: int = 7) -> None:
        self.gen = Generator(seed)
        self.raw: dict[int, bytes] = {}
        self.view = FakeView()
        self.docs: dict[int, Document] = {}
        self.reads = 0
        for i in range(n):
            raw, when, flags = self.gen.message(i)
            self.add(raw, when, flags)

    def add(self, raw: bytes, when: float = 1.7e9, flags: frozenset[str] = frozenset()) -> int:
        uid = (self.view.messages[-1].uid if self.view.messages else 0) + 1 + (len(self.raw) % 3)
        self.raw[uid] = raw
        self.view.highestmodseq += 1
        info = FakeInfo(uid, flags, self.view.highestmodseq, when, len(raw))
        self.view.messages = [*self.view.messages, info]
        self.docs[uid] = extract(raw)
        return uid

    def expunge(self, uids: list[int]) -> None:
        gone = set(uids)
        self.view.highestmodseq += 1
        self.view.messages = [m for m in self.view.messages if m.uid not in gone]

    def set_flags(self, uid: int, flags: frozenset[str]) -> None:
        self.view.highestmodseq += 1
        self.view.messages = [
            FakeInfo(m.uid, flags, self.view.highestmodseq, m.internal_date, m.size) if m.uid == uid else m
            for m in self.view.messages
        ]

    async def read(self, uid: int) -> bytes:
        self.reads += 1
        try:
            return self.raw[uid]
        except KeyError:
            raise LookupError(f"uid {uid} gone") from None


def open_index(svc: SearchService, box: Box, directory: Path, mailbox_id: str = "Mbox1") -> MailboxIndex:
    return svc.mailbox("acct1", mailbox_id, directory, box.read)


def indexed(idx: MailboxIndex) -> set[int]:
    """UIDs the index holds, in memory or appended to its files (an index kept unloaded is loaded)."""
    if idx.gen < 0:
        idx._locked_load()
    return set(idx.core.indexed)
