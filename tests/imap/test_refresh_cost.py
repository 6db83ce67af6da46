"""The refresh after every IMAP command in the selected state costs one store pool job when
nothing waits in ``new/`` (it was two: the check, then the changes), and still indexes what does."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from mailsrv.store import Store


def _drop(path: Path, data: bytes) -> None:
    """What another program delivering into the maildir does: the file, durable."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def test_refresh_is_one_pool_job_unless_new_mail_waits(tmp_path: Path) -> None:
    async def go() -> None:
        store = Store(None, tmp_path)
        try:
            acct = await store.account("1")
            await acct.append("INBOX", b"Subject: one\r\n\r\nx\r\n")
            view = await acct.open_mailbox("INBOX")
            jobs: list[Any] = []
            run = store.io.run

            async def counting(fn: Any, *args: Any) -> Any:
                jobs.append(fn)
                return await run(fn, *args)

            store.io.run = counting  # type: ignore[method-assign]
            changes = await view.refresh()
            assert len(jobs) == 1 and not changes.added and not changes.expunged
            await acct.store_flags("INBOX", [view.messages[0].uid], frozenset({"\\Seen"}), "add")
            jobs.clear()
            changes = await view.refresh()  # another session's flag change, seen in the same one job
            assert len(jobs) == 1 and [m.flags for m in changes.flags] == [frozenset({"\\Seen"})]
            # mail dropped into new/ by another program: the refresh indexes it and reports it
            _drop(Path(acct.root) / "new" / "1700000000.M1P1.other", b"Subject: two\r\n\r\ny\r\n")
            jobs.clear()
            changes = await view.refresh()
            assert len(jobs) > 1 and [m.uid for m in changes.added] == [view.messages[0].uid + 1]
            assert len(view.messages) == 2
        finally:
            await store.close()

    asyncio.run(go())
