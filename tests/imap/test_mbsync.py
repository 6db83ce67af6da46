"""Debian's mbsync (isync) against the server: sync a mailbox both ways."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from imaptest import ServerHandle

MSG = b"From: a@example.test\r\nTo: alice@example.test\r\nSubject: sync %d\r\nMessage-ID: <s%d@example.test>\r\n\r\nbody %d\r\n"


def _mbsync(conf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mbsync", "-c", str(conf), "-a"], capture_output=True, text=True, timeout=60)


@pytest.mark.peer
def test_mbsync_both_ways(server: ServerHandle, tmp_path: Path) -> None:
    async def seed() -> None:
        acct = await server.store.account("1")
        for i in range(3):
            await acct.append("INBOX", MSG % (i, i, i))

    server.call(seed())
    local = tmp_path / "local"
    local.mkdir()
    conf = tmp_path / "mbsyncrc"
    conf.write_text(f"""
IMAPAccount test
Host {server.host}
Port {server.port}
User alice
Pass wonderland
SSLType None
AuthMechs LOGIN

IMAPStore remote
Account test

MaildirStore local
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel test
Master :remote:
Slave :local:
Patterns INBOX
Create Both
Expunge Both
SyncState *
""")
    r = _mbsync(conf)
    assert r.returncode == 0, r.stderr
    pulled = sorted((local / "INBOX" / "cur").iterdir()) + sorted((local / "INBOX" / "new").iterdir())
    assert len(pulled) == 3
    # locally: mark the first seen, delete the second, add a new one
    first, second = sorted(pulled)[:2]
    first.rename(first.with_name(first.name.split(":2,")[0] + ":2,S"))
    second.rename(second.with_name(second.name.split(":2,")[0] + ":2,T"))
    (local / "INBOX" / "new" / "1700000000.local.host").write_bytes(MSG % (9, 9, 9))
    r = _mbsync(conf)
    assert r.returncode == 0, r.stderr

    async def check() -> tuple[list[frozenset[str]], list[bytes]]:
        acct = await server.store.account("1")
        view = await acct.open_mailbox("INBOX")
        bodies = [await acct.read_message("INBOX", m.uid) for m in view.messages]
        return [m.flags for m in view.messages], bodies

    flags, bodies = server.call(check())
    assert len(bodies) == 3  # 3 - 1 expunged + 1 new
    assert any(b"Subject: sync 9" in b for b in bodies)
    assert not any(b"Subject: sync 1\r\n" in b for b in bodies)
    assert "\\Seen" in flags[0]
