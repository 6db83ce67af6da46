"""FileSpool.buffer: the SMTP loop's way to add a DATA chunk without a coroutine (mailsrv/delivery/spool.py)."""

from __future__ import annotations

import os
from pathlib import Path

from mailsrv.delivery.spool import FLUSH_AT, FileSpool


def _read(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


async def test_buffer_keeps_what_stays_in_memory_and_refuses_the_rest(tmp_path: Path) -> None:
    sp = FileSpool(tmp_path, lazy=True)
    assert sp.buffer(b"Subject: a\r\n\r\n")
    assert sp.buffer(b"body\r\n")
    assert sp.size == 20
    assert sp.held() == b"Subject: a\r\n\r\nbody\r\n"
    # a chunk that would reach FLUSH_AT is refused untouched: write() flushes it to the file
    big = b"x" * (FLUSH_AT - 20)
    assert not sp.buffer(big)
    assert sp.size == 20 and not os.listdir(tmp_path)
    await sp.write(big)
    assert sp.size == FLUSH_AT and os.stat(sp.path).st_size == FLUSH_AT
    assert sp.buffer(b"more")  # after a flush the buffer fills again; commit() writes it
    assert os.stat(sp.path).st_size == FLUSH_AT and sp.held() is None
    await sp.commit()
    assert _read(sp.path) == b"Subject: a\r\n\r\nbody\r\n" + big + b"more"
    assert not sp.buffer(b"late")  # closed: refused, as write() raises
    sp.discard()


async def test_a_sealed_spool_holds_what_was_buffered(tmp_path: Path) -> None:
    sp = FileSpool(tmp_path, lazy=True)
    assert sp.buffer(b"Return-Path: <a@b.test>\r\n") and sp.buffer(b"\r\nhi\r\n")
    assert sp.seal()
    assert sp.content == b"Return-Path: <a@b.test>\r\n\r\nhi\r\n"
    assert not os.listdir(tmp_path)
    sp.discard()
