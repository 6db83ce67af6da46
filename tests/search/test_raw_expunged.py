"""A delivered message's held bytes (the store's ``raw=``) and an expunge that comes before its batch."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mailsrv.config import SearchConfig
from mailsrv.search import SearchService

from .searchbox import Box, indexed, open_index


def test_a_message_expunged_before_its_batch_is_not_indexed_from_its_held_bytes(tmp_path: Path) -> None:
    """Batches of one: while the first is indexed, the second message is expunged. Read back, it
    would be skipped (gone); its held bytes must not index it after the expunge (a ghost UID)."""
    box = Box()
    first, second = box.add(b"Subject: one\r\n\r\nalpha\r\n"), box.add(b"Subject: two\r\n\r\nbeta\r\n")
    infos = {m.uid: m for m in box.view.messages}

    async def go() -> tuple[set[int], int]:
        svc = SearchService(SearchConfig(batch=1))
        idx = open_index(svc, box, tmp_path)
        for uid in (first, second):
            svc.message_added("acct1", "Mbox1", infos[uid], None, raw=box.raw[uid])
        box.expunge([second])
        del box.raw[second]
        svc.messages_expunged("acct1", "Mbox1", [second])
        await svc.idle()
        try:
            return indexed(idx), svc.raw_held
        finally:
            await svc.close()

    held_uids, held_bytes = asyncio.run(go())
    assert held_uids == {first}
    assert held_bytes == 0
