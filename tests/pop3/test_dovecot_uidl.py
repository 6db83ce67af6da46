"""An adopted Dovecot maildir keeps the UIDLs and sizes Dovecot's POP3 server gave (Debian's dovecot-pop3d)."""

from __future__ import annotations

import asyncio
import poplib
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pop3fakes import FakeAccount

from mailsrv.config import StoreConfig
from mailsrv.pop3.maildrop import StoreMaildrops
from mailsrv.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.pop3 import PASSWORD, _fill, _start_dovecot  # one Dovecot setup for bench and test

pytestmark = pytest.mark.peer


def _messages() -> list[bytes]:
    out = []
    for i in range(12):
        eol = b"\n" if i % 2 else b"\r\n"  # Dovecot keeps what it is given; half have bare LF
        out.append(b"From: d%d@example.test" % i + eol + b"Subject: dovecot %d" % i + eol + eol
                   + (b".line" + eol) * (i + 1))
    return out


def dovecot_view(base: Path) -> tuple[list[bytes], list[bytes]]:
    """UIDL and LIST as Dovecot's POP3 server answers them for user "small"."""
    proc, port, why = _start_dovecot(base)
    assert proc is not None, why
    try:
        c = poplib.POP3("127.0.0.1", port, timeout=20)
        c.user("small")
        c.pass_(PASSWORD)
        uidl, listing = c.uidl()[1], c.list()[1]
        c.quit()
        return uidl, listing
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


async def mailsrv_view(base: Path, acct: FakeAccount) -> tuple[list[bytes], list[bytes]]:
    store = Store(StoreConfig(), base)
    try:
        drop = await StoreMaildrops(store, base).open(acct)
        uidl = [f"{i} {m.uidl}".encode() for i, m in enumerate(drop.messages, 1)]
        listing = [f"{i} {m.size}".encode() for i, m in enumerate(drop.messages, 1)]
        await drop.close()
        return uidl, listing
    finally:
        await store.close()


@pytest.fixture
def world_readable_dir() -> Iterator[Path]:
    """Dovecot's unprivileged processes must reach the files (pytest's tmp dir is root-only)."""
    base = Path(tempfile.mkdtemp(prefix="pop3-dovecot-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_uidl_and_sizes_survive_adoption(world_readable_dir: Path) -> None:
    assert Path("/usr/lib/dovecot/pop3").exists(), "dovecot-pop3d is not installed (tools/install-peers.sh)"
    base = world_readable_dir
    _fill(base / "seed-small", _messages())
    _fill(base / "seed-big", [])
    theirs = dovecot_view(base)
    dovecot_maildir = base / "dmail" / "small" / "Maildir"
    assert (dovecot_maildir / "dovecot-uidlist").exists()
    acct = FakeAccount(77, "small@example.test", "mail/example.test/small")
    shutil.copytree(dovecot_maildir, base / acct.store)
    ours = asyncio.run(mailsrv_view(base, acct))
    assert len(theirs[0]) == 12
    assert ours == theirs
