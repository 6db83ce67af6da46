"""``store.deliver(..., data=...)``: the caller's in-memory copy of the spool is parsed instead of
reading the file back; the stored result is the same as without it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from mailsrv.store import DeliveryTarget, Store

from .conftest import msg, spool

Run = Callable[[Awaitable[Any]], Any]

MESSAGE = msg(1, subject="Re: plans", extra="In-Reply-To: <m0@example.test>\r\nContent-Type: text/plain\r\n")


def _stored(run: Run, store: Store, name: str, tmp_path: Path, data: bytes | None) -> tuple[Any, ...]:
    acct = run(store.account(name))
    res = run(store.deliver(spool(tmp_path, MESSAGE, f"sp-{name}"), [DeliveryTarget(acct)], data=data))
    assert res[0].status == "ok" and res[0].uid is not None
    uid = res[0].uid
    view = run(acct.open_mailbox("INBOX"))
    blob = acct.engine.structures("INBOX", [uid])[uid]
    return blob, view.messages[0].size, run(acct.read_message("INBOX", uid))


def test_data_in_memory_gives_what_the_file_gives(tmp_path: Path, run: Run,
                                                  make_store: Callable[..., Store]) -> None:
    store = make_store()
    from_file = _stored(run, store, "a", tmp_path, None)
    from_memory = _stored(run, store, "b", tmp_path, MESSAGE)
    assert from_file[0] is not None and from_memory == from_file
    assert from_memory[2] == MESSAGE


def test_data_that_is_not_the_file_is_not_used(tmp_path: Path, run: Run,
                                               make_store: Callable[..., Store]) -> None:
    store = make_store()
    from_file = _stored(run, store, "a", tmp_path, None)
    other = b"Subject: something else entirely\r\n\r\nbody\r\n"
    assert len(other) != len(MESSAGE)
    assert _stored(run, store, "b", tmp_path, other) == from_file  # the file is read instead


def test_the_bytes_in_memory_are_what_is_parsed(tmp_path: Path, run: Run,
                                                make_store: Callable[..., Store]) -> None:
    """(Why the caller must pass the file's own bytes: the file is not read back.)"""
    store = make_store()
    from_file = _stored(run, store, "a", tmp_path, None)
    same_size = MESSAGE.replace(b"text/plain", b"text/html!")
    assert len(same_size) == len(MESSAGE) and same_size != MESSAGE
    blob, size, raw = _stored(run, store, "b", tmp_path, same_size)
    assert blob != from_file[0]  # parsed from memory
    assert raw == MESSAGE and size == from_file[1]  # the message itself is the file
