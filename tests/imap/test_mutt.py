"""Debian's mutt, driven through a pseudo-terminal with pushed keys: save a message to another
folder over IMAP (COPY/UID STORE/EXPUNGE) and check the result in the store."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest
from imaptest import ServerHandle


@pytest.mark.peer
def test_mutt_saves_a_message_to_another_folder(server: ServerHandle, tmp_path: Path) -> None:
    async def seed() -> None:
        acct = await server.store.account("1")
        for i in range(3):
            await acct.append("INBOX", b"From: a@example.test\r\nSubject: m%d\r\n\r\nbody\r\n" % i)

    server.call(seed())
    rc = tmp_path / "muttrc"
    rc.write_text(
        "set imap_user=alice\nset imap_pass=wonderland\nset ssl_starttls=no\nset ssl_force_tls=no\n"
        f"set folder=imap://127.0.0.1:{server.port}/\nset spoolfile=+INBOX\nset record=\"\"\n"
        "set move=no\nset confirmappend=no\nset delete=yes\nset mail_check=0\n"
    )
    keys = "<tag-pattern>~s m1<enter><tag-prefix><save-message>=Archive<enter><sync-mailbox><quit>"
    cmd = ["mutt", "-n", "-F", str(rc), "-f", f"imap://127.0.0.1:{server.port}/INBOX", "-e", f"push '{keys}'"]
    # mutt needs a terminal: script(1) gives it a pseudo-terminal
    r = subprocess.run(["script", "-qec", shlex.join(cmd), "/dev/null"], capture_output=True, timeout=60,
                       env={**os.environ, "TERM": "xterm"}, input=b"")
    assert r.returncode == 0, r.stdout[-500:]

    async def subjects() -> tuple[list[bytes], list[bytes]]:
        acct = await server.store.account("1")
        out = []
        for name in ("INBOX", "Archive"):
            view = await acct.open_mailbox(name)
            out.append([(await acct.read_message(name, m.uid)).split(b"Subject: ")[1].split(b"\r\n")[0]
                        for m in view.messages])
        return out[0], out[1]

    inbox, archive = server.call(subjects())
    assert inbox == [b"m0", b"m2"] and archive == [b"m1"]
