"""read_message in one pool round trip (cached file names), MIME cache entries of another version
or corrupt ones re-parsed and rewritten, and the [mime] limits applied where the store parses."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from mailsrv.config import MimeConfig, StoreConfig
from mailsrv.mime import MessageStructure, parse
from mailsrv.store import DeliveryTarget, MessageGone, Store
from mailsrv.store import engine as engine_mod
from mailsrv.store.engine import INDEX_NAME

from .conftest import msg, spool


def _multipart(parts: int) -> bytes:
    body = "".join(f"--b\r\nContent-Type: text/plain\r\n\r\npart {i}\r\n" for i in range(parts))
    return (
        "From: a@example.test\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/mixed; boundary="b"\r\n\r\n{body}--b--\r\n'
    ).encode()


class _Counting:
    """Counts the store's I/O-pool round trips."""

    def __init__(self, store: Store) -> None:
        self.calls = 0
        self._run = store.io.run
        store.io.run = self.run  # type: ignore[method-assign]

    async def run(self, fn: Any, /, *args: Any, **kw: Any) -> Any:
        self.calls += 1
        return await self._run(fn, *args, **kw)


def test_read_message_one_round_trip_and_follows_renames(make_store, run, tmp_path: Path) -> None:
    store = make_store()
    a = run(store.account("alice"))
    data = msg(1, extra="X-Long: " + "y" * 5000 + "\r\n")
    run(store.deliver(spool(tmp_path, data), [DeliveryTarget(a)]))
    assert run(a.read_message("INBOX", 1)) == data
    counting = _Counting(store)
    assert run(a.read_message("INBOX", 1, 10, 20)) == data[10:30]
    assert counting.calls == 1
    # a flag change renames the file: the cached name misses and the index is asked (same call)
    run(a.store_flags("INBOX", [1], frozenset({"\\Flagged"}), "add"))
    counting.calls = 0
    assert run(a.read_message("INBOX", 1)) == data
    assert counting.calls == 1
    # expunged by another worker: the cached name is gone, so is the message
    other = make_store()
    b = run(other.account("alice"))
    assert run(b.expunge("INBOX", [1], only_deleted=False)) == [1]
    with pytest.raises(MessageGone):
        run(a.read_message("INBOX", 1))


def _corrupt(root: Path, uid: int, blob: bytes) -> None:
    db = sqlite3.connect(root / INDEX_NAME)
    db.execute("UPDATE messages SET structure=? WHERE uid=?", (blob, uid))
    db.commit()
    db.close()


def _blob(root: Path, uid: int) -> bytes:
    db = sqlite3.connect(root / INDEX_NAME)
    (blob,) = db.execute("SELECT structure FROM messages WHERE uid=?", (uid,)).fetchone()
    db.close()
    return bytes(blob)


@pytest.mark.parametrize("bad", [b"\x7eother-version", b"\x01\x00\x01garbage", b""])
def test_structures_reparse_and_rewrite_unusable_entries(make_store, run, tmp_path: Path, bad: bytes) -> None:
    store = make_store()
    a = run(store.account("alice"))
    data = _multipart(3)
    run(store.deliver(spool(tmp_path, data), [DeliveryTarget(a)]))
    root = tmp_path / "mail" / "alice"
    good = _blob(root, 1)
    _corrupt(root, 1, bad)
    with pytest.raises(ValueError):
        MessageStructure.from_cache(_blob(root, 1))
    got = run(a.structures("INBOX", [1]))[1]
    assert got.root.imap_bodystructure() == parse(data).root.imap_bodystructure()
    assert _blob(root, 1) == good  # the entry was rewritten
    assert MessageStructure.from_cache(_blob(root, 1)).root.imap_envelope() == parse(data).root.imap_envelope()


def test_observer_gets_a_reparsed_structure_for_a_bad_entry(make_store, run, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store()
    seen: list[MessageStructure | None] = []

    class Obs:
        def message_added(self, account_id: str, mailbox_id: str, info: Any, structure: Any) -> None:
            seen.append(structure)

        def messages_expunged(self, *args: Any) -> None:
            pass

        def flags_changed(self, *args: Any) -> None:
            pass

    store.add_observer(Obs())
    a = run(store.account("alice"))
    monkeypatch.setattr(engine_mod, "parse_structure", lambda raw, *args: b"\x7estale")
    root = tmp_path / "mail" / "alice"
    data = _multipart(2)
    (root / "tmp" / "ext1").write_bytes(data)
    os.rename(root / "tmp" / "ext1", root / "new" / "ext1")
    run(a.open_mailbox("INBOX"))
    assert len(seen) == 1 and seen[0] is not None
    assert seen[0].root.imap_bodystructure() == parse(data).root.imap_bodystructure()
    assert MessageStructure.from_cache(_blob(root, 1)).root.imap_bodystructure() == \
        parse(data).root.imap_bodystructure()


def test_mime_limits_apply_to_delivery_parse(tmp_path: Path, run) -> None:
    limits = MimeConfig(max_parts=3)
    store = Store(StoreConfig(), tmp_path, hostname="test.example", mime=limits)
    try:
        a = run(store.account("alice"))
        data = _multipart(8)
        run(store.deliver(spool(tmp_path, data), [DeliveryTarget(a)]))
        run(a.append("Archive", data))
        for box in ("INBOX", "Archive"):
            st = run(a.structures(box, [1]))[1]
            assert st.root.imap_bodystructure() == parse(data, limits).root.imap_bodystructure()
            assert len(list(st.root.walk())) == len(list(parse(data, limits).root.walk()))
            assert len(list(st.root.walk())) < len(list(parse(data).root.walk()))
    finally:
        run(store.close())
