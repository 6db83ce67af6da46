"""In-memory fakes for POP3 session tests: a channel, an authenticator, maildrops (put on the path by conftest)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mailsrv.auth import Challenge, Failure, Success
from mailsrv.pop3.grammar import Pop3Error, wire_size
from mailsrv.pop3.maildrop import DropMessage, InUse, MaildropUnavailable, MessageGone, dovecot_uidl


class FakeChannel:
    def __init__(self, *, tls: bool = False, starttls: bool = True, peer: str = "192.0.2.7") -> None:
        self.tls_active = tls
        self.peer_host = peer
        self._starttls = starttls
        self.out = bytearray()
        self.continuations: deque[bytes] = deque()
        self.drains = 0
        self.upgrades = 0

    @property
    def starttls_available(self) -> bool:
        return self._starttls and not self.tls_active

    def write(self, data: bytes) -> None:
        self.out += data

    async def drain(self) -> None:
        self.drains += 1

    async def read_continuation(self) -> bytes:
        if not self.continuations:
            raise AssertionError("session wanted a continuation line the test did not provide")
        return self.continuations.popleft()

    async def starttls(self) -> None:
        self.upgrades += 1
        self.tls_active = True

    def channel_binding(self) -> Any:
        return None

    def take(self) -> bytes:
        data = bytes(self.out)
        self.out.clear()
        return data


@dataclass(frozen=True)
class FakeAccount:
    id: int
    address: str
    store: str = ""


@dataclass(frozen=True)
class FakeLogin:
    ok: bool
    account: Any
    reason: str = ""
    delay: float = 0.0


class FakeSasl:
    """SASL PLAIN over the fake user table."""

    def __init__(self, auth: FakeAuth) -> None:
        self.auth = auth
        self.aborted = False

    async def step(self, data: bytes | None) -> Any:
        if data is None:
            return Challenge(b"")
        parts = data.split(b"\0")
        if len(parts) != 3:
            return Failure("malformed")
        user, pw = parts[1].decode(), parts[2].decode()
        acct = self.auth.check(user, pw)
        return Success(acct, acct.address) if acct else Failure("bad password")

    def abort(self) -> None:
        self.aborted = True


class FakeAuth:
    def __init__(self, users: dict[str, tuple[str, FakeAccount]], *, loopback_plain: bool = False) -> None:
        self.users = users
        self.loopback_plain = loopback_plain
        self.logins: list[tuple[str, str, bool]] = []
        self.sessions: list[FakeSasl] = []

    def check(self, user: str, pw: str) -> FakeAccount | None:
        entry = self.users.get(user)
        return entry[1] if entry and entry[0] == pw else None

    def plaintext_allowed(self, *, tls: bool, client_ip: str) -> bool:
        return tls or (self.loopback_plain and client_ip == "127.0.0.1")

    def mechanisms(self, *, tls: bool, client_ip: str, channel_binding: bool) -> list[str]:
        return ["SCRAM-SHA-256", "PLAIN"] if tls else ["SCRAM-SHA-256"]

    async def login(self, username: str, password: str, *, protocol: str, client_ip: str, tls: bool) -> Any:
        self.logins.append((username, protocol, tls))
        acct = self.check(username, password)
        return FakeLogin(acct is not None, acct, "" if acct else "bad password")

    def sasl(self, mechanism: str, *, protocol: str, client_ip: str, tls: bool, channel_binding: Any) -> Any:
        s = FakeSasl(self)
        self.sessions.append(s)
        return s


@dataclass
class MemoryBox:
    uidvalidity: int = 1234
    messages: dict[int, bytes] = field(default_factory=dict)
    next_uid: int = 1
    last_login: float | None = None
    seen: set[int] = field(default_factory=set)  # uids flagged \Seen

    def add(self, data: bytes) -> int:
        uid = self.next_uid
        self.next_uid += 1
        self.messages[uid] = data
        return uid


class MemoryDrop:
    def __init__(self, owner: MemoryDrops, key: int, box: MemoryBox) -> None:
        self.owner, self.key, self.box = owner, key, box
        self.messages = [DropMessage(uid, wire_size(data), dovecot_uidl(uid, box.uidvalidity),
                                     seen=uid in box.seen)
                         for uid, data in sorted(box.messages.items())]
        self.last_login = box.last_login
        self.closed = False

    async def record_login(self) -> None:
        self.box.last_login = time.time()

    async def read(self, uid: int, offset: int, length: int) -> bytes:
        self.owner.reads += 1
        if uid not in self.box.messages:
            raise MessageGone(uid)
        if (uid, offset) in self.owner.fail_reads:
            raise MaildropUnavailable("EIO")
        return self.box.messages[uid][offset:offset + length]

    async def read_first(self, uids: Sequence[int], length: int) -> dict[int, bytes]:
        self.owner.batches.append(list(uids))
        return {uid: self.box.messages[uid][:length] for uid in uids
                if uid in self.box.messages and (uid, 0) not in self.owner.fail_reads}

    async def expunge(self, uids: Sequence[int]) -> None:
        if self.owner.fail_expunge:
            raise MaildropUnavailable("disk on fire")
        for uid in uids:
            self.box.messages.pop(uid, None)

    async def note_retrieved(self, uids: Sequence[int]) -> None:
        self.owner.noted.extend(uids)

    async def mark_seen(self, uids: Sequence[int]) -> None:
        if self.owner.fail_mark_seen:
            raise MaildropUnavailable("disk on fire")
        self.owner.marked.append(list(uids))
        self.box.seen.update(u for u in uids if u in self.box.messages)

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.owner.locked.discard(self.key)
            if self.owner.released is not None:
                self.owner.released.set()


class MemoryDrops:
    def __init__(self) -> None:
        self.boxes: dict[int, MemoryBox] = {}
        self.locked: set[int] = set()
        self.reads = 0
        self.batches: list[list[int]] = []  # uids of each read_first (the session's read-ahead)
        self.fail_expunge = False
        self.fail_mark_seen = False
        self.marked: list[list[int]] = []  # uids of each mark_seen call
        self.released: asyncio.Event | None = None  # set when a maildrop is closed
        self.noted: list[int] = []  # uids passed to note_retrieved (EXPIRE days)
        self.fail_reads: set[tuple[int, int]] = set()  # (uid, offset) that raise EIO
        self.unavailable = False

    async def open(self, account: Any) -> MemoryDrop:
        if self.unavailable:
            raise MaildropUnavailable("store down")
        if account.id in self.locked:
            raise InUse(str(account.id))
        self.locked.add(account.id)
        return MemoryDrop(self, account.id, self.boxes.setdefault(account.id, MemoryBox()))


ALICE = FakeAccount(1, "alice@example.test")
BOB = FakeAccount(2, "bob@example.test")


# Shared by the session tests (test_session.py, test_seen.py).
MSG1 = b"From: a@example.test\r\nSubject: one\r\n\r\nbody one\r\n.dot line\r\n"
MSG2 = b"From: b@example.test\nSubject: two\n\nline 1\nline 2\nline 3\n"


async def run(session: Any, ch: FakeChannel, line: bytes) -> bytes:
    try:
        await session.handle(line)
    except Pop3Error as exc:
        ch.write(exc.reply())
    return ch.take()


async def login(session: Any, ch: FakeChannel, user: bytes = b"alice@example.test",
                pw: bytes = b"secret") -> bytes:
    assert (await run(session, ch, b"USER " + user + b"\r\n")) == b"+OK\r\n"
    return await run(session, ch, b"PASS " + pw + b"\r\n")


def fill(drops: MemoryDrops, *msgs: bytes, account: Any = ALICE) -> MemoryBox:
    box = drops.boxes.setdefault(account.id, MemoryBox())
    for m in msgs:
        box.add(m)
    return box
