"""Keywords at delivery (Sieve imap4flags, docs/sieve.md): a DeliveryTarget's keywords get their folder's
dovecot-keywords letters in the file's name before it is linked, so any process indexing the file (not
only the delivering one) sees them; a fallback into INBOX keeps the system flags only."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mailsrv.config import StoreConfig
from mailsrv.store import DeliveryTarget, Store
from mailsrv.store import maildir as md

MSG = b"From: a@example.test\r\nTo: k@example.test\r\nSubject: s\r\nMessage-ID: <k1@example.test>\r\n\r\nbody\r\n"


def _spool(tmp_path: Path) -> Path:
    p = tmp_path / "spool"
    with open(p, "wb") as f:
        f.write(MSG)
    return p


def test_keywords_delivered_are_in_the_file_name_and_the_index(tmp_path: Path) -> None:
    async def main() -> None:
        store = Store(StoreConfig(), tmp_path / "data", hostname="test.example")
        try:
            a = await store.account("kate")
            await a.create_mailbox("Projects")
            res = await store.deliver(_spool(tmp_path), [
                DeliveryTarget(a, "Projects", frozenset({"$Work", "Project", "\\Flagged"})),
                DeliveryTarget(a, "NoSuchFolder", frozenset({"$Work", "\\Seen"})),
            ])
            assert [r.status for r in res] == ["ok", "ok"]
            view = await a.open_mailbox("Projects")
            assert view.messages[0].flags == frozenset({"$Work", "Project", "\\Flagged"})
            inbox = await a.open_mailbox("INBOX")  # the missing folder's copy: system flags only
            assert inbox.messages[0].flags == frozenset({"\\Seen"})
            path = await a.message_path("Projects", 1)
            letters = md.parse_keywords((path.parent.parent / "dovecot-keywords").read_bytes())
            assert set(letters) == {"$Work", "Project"}
            assert md.split_filename(path.name)[1] == md.flags_to_info(
                frozenset({"$Work", "Project", "\\Flagged"}), letters)
        finally:
            await store.close()
        # another process's store (a new index read from the maildir) sees the same keywords
        root = tmp_path / "data"
        index = list(root.rglob("mailsrv-index.sqlite*"))
        assert index
        for db in index:
            db.unlink()
        again = Store(StoreConfig(), root, hostname="test.example")
        try:
            b = await again.account("kate")
            view = await b.open_mailbox("Projects")
            assert view.messages[0].flags == frozenset({"$Work", "Project", "\\Flagged"})
        finally:
            await again.close()

    asyncio.run(main())
