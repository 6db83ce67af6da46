"""Links made by [files] convert_over stay pending until their message is accepted (docs/files.md): live
before the 250, removed when the delivery fails after the conversion, swept when their process died."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from filetest import message
from support.server import wait_until_async

from mailsrv.config import Config, FilesConfig, ServerConfig, SmtpConfig
from mailsrv.directory import open_directory, open_sync
from mailsrv.files import FileLinks
from mailsrv.files.links import PENDING_AGE, LinkStore, files_root
from mailsrv.smtp.backend import SessionInfo
from mailsrv.smtp.session import Session
from mailsrv.smtp.wiring import DirectoryBackend
from mailsrv.store import Store

ALICE, BOB = "alice@example.test", "bob@example.test"


@contextlib.asynccontextmanager
async def open_backend(tmp_path: Path, convert_over: int,
                       users: tuple[str, ...] = (ALICE, BOB)) -> AsyncIterator[DirectoryBackend]:
    """The worker's SMTP backend (real directory, store, file links) with ``convert_over``; ``users`` and
    their domains exist."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    cfg = Config(server=ServerConfig(data_dir=data_dir, hostname="mx.example.test"))
    sd = open_sync(cfg.directory, data_dir)
    for dom in sorted({u.partition("@")[2] for u in users}):
        sd.add_domain(dom)
    for user in users:
        sd.add_user(user)
    sd.close()
    directory = open_directory(cfg.directory, data_dir)
    store = Store(cfg.store, data_dir, hostname="mx.example.test")
    links = FileLinks(FilesConfig(), files_root(data_dir))
    be = DirectoryBackend(directory, store, data_dir, None, files=links, convert_over=convert_over,
                          link_base="https://x")
    try:
        yield be
    finally:
        links.close()
        await store.close()
        await directory.close()


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[DirectoryBackend]:
    """:func:`open_backend` with convert_over = 20 000."""
    async with open_backend(tmp_path, 20_000) as be:
        yield be


async def send(be: DirectoryBackend, raw: bytes, sender: str = ALICE) -> bytes:
    """``sender`` (authenticated; alice) to bob through a real SMTP session; the DATA reply."""
    acct = await be.directory.account_by_address(sender)
    info = SessionInfo(sid="t1", hostname="mx.example.test", listener="submission", peer_ip="127.0.0.1",
                       account=acct)
    session = Session(info, SmtpConfig(), be)
    await session.command(b"EHLO client.test\r\n")
    assert (await session.command(f"MAIL FROM:<{sender}>\r\n".encode())).reply.startswith(b"250 ")
    assert (await session.command(f"RCPT TO:<{BOB}>\r\n".encode())).reply.startswith(b"250 ")
    assert (await session.command(b"DATA\r\n")).then == "data"
    assert session.spool is not None
    await session.spool.write(raw)
    try:
        return (await session.data_end(bare_newline=False, too_big=False)).reply  # type: ignore[no-any-return]
    except Exception as exc:  # the connection loop's reply to it
        reply = getattr(exc, "reply", None)
        return reply() if reply is not None else repr(exc).encode()


def rows(be: DirectoryBackend) -> list[tuple[str, str]]:
    store = be.files.store
    with store._lock:
        return [(r[0], r[1]) for r in store._conn().execute("SELECT id, state FROM links ORDER BY created")]


async def test_an_accepted_messages_links_are_live_before_the_reply(backend: DirectoryBackend) -> None:
    reply = await send(backend, message(b"a" * 40_000))
    assert reply.startswith(b"250 "), reply
    ((lid, state),) = rows(backend)
    assert state == "live" and backend.files.store.data_path(lid).exists()


async def test_a_delivery_failing_after_the_conversion_removes_its_links(backend: DirectoryBackend,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[tuple[str, str]]] = []

    async def failing(*args: Any, **kw: Any) -> Any:
        seen.append(rows(backend))  # the links exist (pending) when the delivery starts
        raise OSError("disk on fire")

    monkeypatch.setattr(backend.local, "deliver", failing)
    reply = await send(backend, message(b"b" * 40_000))
    assert not reply.startswith(b"250 "), reply
    assert [[s for _, s in r] for r in seen] == [["pending"]]
    ((lid, _),) = seen[0]
    # the row goes first, then its file (a crash between them leaves an orphan file the sweep takes)
    await wait_until_async(lambda: rows(backend) == [] and not backend.files.store.data_path(lid).exists())
    assert await backend.files.used("1") == 0  # the quota it held is free again


async def test_a_refused_message_removes_its_links(backend: DirectoryBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    from mailsrv.delivery.local import LocalOutcome

    async def tempfailed(spool: Any, recipients: Any, **kw: Any) -> Any:
        return LocalOutcome(delivered=0, retry=[a for a, _ in recipients])

    monkeypatch.setattr(backend.local, "deliver", tempfailed)
    monkeypatch.setattr(backend.queue, "enqueue", failing_enqueue)
    reply = await send(backend, message(b"c" * 40_000))
    assert reply.startswith(b"451 "), reply
    await wait_until_async(lambda: rows(backend) == [])


async def failing_enqueue(*args: Any, **kw: Any) -> str:
    raise OSError("queue on fire")


CHILD = textwrap.dedent("""
    import asyncio, os, signal, sys
    from pathlib import Path
    from mailsrv.config import FilesConfig
    from mailsrv.files import FileLinks
    from mailsrv.files.convert import converted

    async def main() -> None:
        links = FileLinks(FilesConfig(), Path(sys.argv[1]))
        out = await converted(Path(sys.argv[2]).read_bytes(), links, 20_000, "1", "a", "https://x")
        assert out is not None
        print(out.links[0], flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # before the message is accepted: nothing settles the link

    asyncio.run(main())
""")


def test_a_pending_link_of_a_killed_process_is_swept(tmp_path: Path) -> None:
    root = tmp_path / "files"
    raw = tmp_path / "msg"
    raw.write_bytes(message(b"d" * 40_000))
    p = subprocess.run([sys.executable, "-c", CHILD, str(root), str(raw)], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert p.returncode == -signal.SIGKILL, p.stderr
    lid = p.stdout.strip()
    store = LinkStore(root)
    try:
        link = store.get(lid)
        assert link is not None and link.state == "pending"  # durable, never live, on nobody's list
        assert store.data_path(lid).stat().st_size == 40_000 and store.list() == []
        assert store.sweep() == (0, 0) and store.get(lid) is not None  # young: its message may still come
        assert store.sweep(now=time.time() + PENDING_AGE + 1) == (1, 40_000)
        assert store.get(lid) is None and not store.data_path(lid).exists()
        assert not any(f.is_file() for f in (root / "data").rglob("*"))
    finally:
        store.close()


async def test_a_conversion_failing_after_its_first_link_removes_it(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from email.message import EmailMessage

    from mailsrv.files.convert import converted

    msg = EmailMessage()
    msg["Subject"] = "two files"
    msg.set_content("two files\n")
    for name in ("one.bin", "two.bin"):
        msg.add_attachment(b"e" * 40_000, maintype="application", subtype="octet-stream", filename=name)
    links = FileLinks(FilesConfig(), tmp_path / "files")
    made = links.from_chunks
    calls = 0

    async def second_fails(*args: Any, **kw: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("the pool is gone")  # not a per-attachment failure: the conversion ends
        return await made(*args, **kw)

    monkeypatch.setattr(links, "from_chunks", second_fails)
    try:
        assert await converted(msg.as_bytes(), links, 20_000, "1", "a", "https://x") is None  # sent as written
        assert calls == 2
        store = links.store
        await wait_until_async(lambda: store.list(live_only=False) == []
                               and not any(f.is_file() for f in (store.root / "data").rglob("*")))
    finally:
        links.close()


async def test_a_jmap_submission_keeps_its_links_only_when_accepted(backend: DirectoryBackend,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from mailsrv.jmap.submission import DirectorySubmitter

    sub = DirectorySubmitter(backend.directory, backend.local.store, backend.local.data_dir)
    sub.convert_with(backend.files, 20_000, "https://x")
    acct = await backend.directory.account_by_address(ALICE)
    who = SimpleNamespace(account=acct, id=str(acct.id))
    _, out = await sub.submit_queued(who, message(b"f" * 40_000), ALICE, [BOB])
    assert out[BOB][0] == "yes" and [s for _, s in rows(backend)] == ["live"]
    # every recipient refused: nobody will ever see the links; they go at once
    _, out = await sub.submit_queued(who, message(b"g" * 40_000), ALICE, ["nobody@example.test"])
    assert out["nobody@example.test"][0] == "no" and [s for _, s in rows(backend)] == ["live"]

    async def failing(*args: Any, **kw: Any) -> Any:
        raise OSError("disk on fire")

    monkeypatch.setattr(sub.local, "deliver", failing)
    with pytest.raises(OSError):
        await sub.submit_queued(who, message(b"h" * 40_000), ALICE, [BOB])
    assert [s for _, s in rows(backend)] == ["live"]
