"""The seeding of a grantee's private \\Seen from the owner's (store/privateseen.py), on real SQLite
files: once per UIDVALIDITY, the grantee's own rows kept, a step only where they wrote before."""

from __future__ import annotations

from pathlib import Path

from mailsrv.store.privateseen import _db_load, _db_seed, _db_write

KEY = ("7", "mbox-id", 42)


def test_first_seed_adds_rows_without_a_private_write(tmp_path: Path) -> None:
    notify = tmp_path / "notify"
    assert _db_seed(tmp_path, notify, KEY, [1, 3], 10)
    d = _db_load(tmp_path, KEY, -1)
    assert d.seeded and d.counter == 0 and d.steps == []
    assert d.rows == {1: (True, 0), 3: (True, 0)}
    assert notify.exists()  # the grantee's other sessions hear of it
    assert not _db_seed(tmp_path, notify, KEY, [1, 2, 3], 11)  # once per UIDVALIDITY
    assert set(_db_load(tmp_path, KEY, -1).rows) == {1, 3}
    assert _db_load(tmp_path, KEY, 0).rows == {}  # an incremental load does not read them again
    other = (KEY[0], KEY[1], KEY[2] + 1)  # a recreated folder is seeded anew
    assert _db_seed(tmp_path, notify, other, [2], 11)
    assert set(_db_load(tmp_path, other, -1).rows) == {2}


def test_seed_after_private_writes_keeps_them_and_is_one_write(tmp_path: Path) -> None:
    notify = tmp_path / "notify"
    changed, failed, counter, modseq = _db_write(tmp_path, notify, KEY, [2], False, 10, None, {})
    assert changed == [] and counter == 0  # an unseen of an unseen message is no change
    changed, _, counter, modseq = _db_write(tmp_path, notify, KEY, [1], True, 10, None, {})
    _db_write(tmp_path, notify, KEY, [1], False, 10, None, {})  # the grantee marked 1 unread again
    assert _db_seed(tmp_path, notify, KEY, [1, 2], 20)
    d = _db_load(tmp_path, KEY, -1)
    assert d.rows[1][0] is False  # the grantee's own choice stays
    assert d.rows[2] == (True, 20 + 3) and d.counter == 3 and d.steps[-1] == (20, 3)  # one private write
