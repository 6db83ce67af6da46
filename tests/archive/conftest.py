"""In-process archive harness: a real directory (SQLite), a real store (maildir) and the real SMTP
session and backend (mailsrv.smtp.wiring.DirectoryBackend), with the archiving rules given per test."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.loopthread import LoopThread

from mailsrv.config import ArchiveConfig, ArchiveRuleConfig, Config, ServerConfig, SmtpConfig
from mailsrv.delivery.archive import ArchiveRules, marker_key
from mailsrv.directory import open_directory, open_sync
from mailsrv.queue.client import xtext
from mailsrv.queue.store import queue_dir
from mailsrv.smtp.backend import SessionInfo
from mailsrv.smtp.grammar import SmtpError
from mailsrv.smtp.session import Session
from mailsrv.smtp.wiring import DirectoryBackend
from mailsrv.store import MailboxNotFound, Store

# the folder's helper modules (archiveserve) import by name, as in tests/jmap and tests/imap
sys.path.insert(0, str(Path(__file__).parent))

D = "example.test"
#: members of the big group: more than one store call's batch (DELIVERY_BATCH 256)
BIG = 300


def rule(match: tuple[str, ...], direction: str = "both", to: str = f"archive@{D}", folder: str = "Audit",
         retention_days: int = 0) -> ArchiveRuleConfig:
    return ArchiveRuleConfig(match=match, direction=direction, to=to, folder=folder,  # type: ignore[arg-type]
                             retention_days=retention_days)


@dataclass
class Site:
    cfg: Config
    data_dir: Path
    loop: LoopThread
    store: Store
    directory: Any
    sync: Any

    def rules(self, rules: dict[str, ArchiveRuleConfig]) -> ArchiveRules:
        """The rules as a worker holds them: the markers' key of the data directory (made on first use)."""
        return ArchiveRules(ArchiveConfig(rule=rules), self.directory, marker_key(self.data_dir))

    def backend(self, rules: dict[str, ArchiveRuleConfig] | None) -> DirectoryBackend:
        archive = None if rules is None else self.rules(rules)
        return self.loop.run(_backend(self, archive))  # type: ignore[no-any-return]

    def send(self, backend: DirectoryBackend, sender: str, rcpts: list[str], *, auth: str | None = None,
             body: bytes = b"Subject: hello\r\n\r\nbody\r\n") -> bytes:
        """One message through a real SMTP session (``auth``: the authenticated user); the DATA reply."""
        async def run() -> bytes:
            acct = await self.directory.account_by_address(auth) if auth else None
            info = SessionInfo(sid="t1", hostname="mx.example.test", listener="submission" if auth else "smtp",
                               peer_ip="192.0.2.7", account=acct)
            session = Session(info, SmtpConfig(), backend)
            await session.command(b"EHLO client.test\r\n")
            assert (await session.command(f"MAIL FROM:<{sender}>\r\n".encode())).reply.startswith(b"250 ")
            for r in rcpts:
                reply = (await session.command(f"RCPT TO:<{r}>\r\n".encode())).reply
                assert reply.startswith(b"250 "), reply
            assert (await session.command(b"DATA\r\n")).then == "data"
            assert session.spool is not None
            await session.spool.write(body)
            return (await session.data_end(bare_newline=False, too_big=False)).reply  # type: ignore[no-any-return]

        return self.loop.run(run())  # type: ignore[no-any-return]

    def replay(self, backend: DirectoryBackend, *, peer_ip: str = "127.0.0.1", local_only: bool = False) -> list[bytes]:
        """Each queued entry handed to ``backend`` as the queue runner hands local mail to our MTA
        (mailsrv.queue.client: MAIL, RCPT with NOTIFY and ORCPT, DATA of the queued file, from
        ``peer_ip``); an entry answered 250 leaves the queue, as the runner records it. The DATA replies.
        ``local_only``: only the recipients of our domain (the runner sends the others to their MX)."""
        qd = queue_dir(self.data_dir)

        async def run() -> list[bytes]:
            replies = []
            for env in qd.all():
                info = SessionInfo(sid="q1", hostname="mx.example.test", listener="smtp", peer_ip=peer_ip)
                session = Session(info, SmtpConfig(), backend)
                await session.command(b"EHLO mx.example.test\r\n")
                assert (await session.command(f"MAIL FROM:<{env.sender}>\r\n".encode())).reply.startswith(b"250 ")
                for r in env.rcpts:
                    if local_only and not r.addr.endswith("@" + D):
                        continue
                    params = (" NOTIFY=" + ",".join(r.notify) if r.notify else "") + (
                        f" ORCPT={r.orcpt.partition(';')[0]};{xtext(r.orcpt.partition(';')[2])}" if r.orcpt else "")
                    reply = (await session.command(f"RCPT TO:<{r.addr}>{params}\r\n".encode())).reply
                    assert reply.startswith(b"250 "), reply
                assert (await session.command(b"DATA\r\n")).then == "data"
                assert session.spool is not None
                await session.spool.write(qd.message_path(env.id).read_bytes())
                try:
                    reply = (await session.data_end(bare_newline=False, too_big=False)).reply
                except SmtpError as exc:  # the connection loop's reply to it
                    reply = exc.reply()
                if reply.startswith(b"250 "):
                    qd.remove(env.id)
                replies.append(reply)
            return replies

        return self.loop.run(run())  # type: ignore[no-any-return]

    def messages(self, address: str, folder: str = "INBOX") -> list[bytes]:
        """Raw messages of a user's folder, read through the store API ([] when there is no folder)."""
        async def read() -> list[bytes]:
            acct = await self.directory.account_by_address(address)
            sacct = await self.store.account(str(acct.id), self.data_dir / acct.store)
            try:
                view = await sacct.open_mailbox(folder)
            except MailboxNotFound:
                return []
            return [await sacct.read_message(folder, m.uid) for m in view.messages]

        return self.loop.run(read())  # type: ignore[no-any-return]

    def queued(self) -> list[tuple[str, list[tuple[str, list[str]]]]]:
        """(sender, [(recipient, NOTIFY)]) of every queued message."""
        return [(e.sender, [(r.addr, r.notify) for r in e.rcpts]) for e in queue_dir(self.data_dir).all()]


async def _backend(site: Site, archive: ArchiveRules | None) -> DirectoryBackend:
    return DirectoryBackend(site.directory, site.store, site.data_dir, archive)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    cfg = Config(server=ServerConfig(data_dir=data_dir, hostname="mx.example.test"))
    sd = open_sync(cfg.directory, data_dir)
    sd.add_domain(D)
    for name in ("alice", "bob", "carol", "dave", "archive", "archive2"):
        sd.add_user(f"{name}@{D}")
    sd.add_user(f"fullarchive@{D}", quota_bytes=10)
    sd.add_alias(f"boss@{D}", f"alice@{D}")
    sd.add_group(f"team@{D}")
    for name in ("bob", "carol"):
        sd.add_member(f"team@{D}", f"{name}@{D}")
    sd.add_group(f"all@{D}")
    sd.add_members_bulk(f"all@{D}", [sd.add_user(f"m{i}@{D}").id for i in range(BIG)])
    lt = LoopThread(timeout=120)

    async def setup() -> tuple[Any, Store]:
        return open_directory(cfg.directory, data_dir), Store(cfg.store, data_dir, hostname="mx.example.test")

    directory, store = lt.run(setup())
    yield Site(cfg, data_dir, lt, store, directory, sd)

    async def teardown() -> None:
        await store.close()
        await directory.close()

    lt.run(teardown())
    lt.stop()
    sd.close()
