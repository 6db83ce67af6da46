"""Shared access grants and the credentials generation (issue 8): the directory side."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from mailsrv.directory import Directory, DirectoryError, NotFound, SyncDirectory, schema


@pytest.fixture
def users(sd: SyncDirectory) -> SyncDirectory:
    for name in ("alice", "bob", "carol"):
        sd.add_user(f"{name}@example.test", password_hash="h", scram="s")
    sd.add_alias("boss@example.test", "alice@example.test")
    return sd


def test_grant_list_revoke(users: SyncDirectory) -> None:
    assert users.grant("alice@example.test", "bob@example.test", "read") is True
    assert users.grant("alice@example.test", "bob@example.test", "read") is False  # nothing changed
    (g,) = users.grants_for("bob@example.test")
    assert (g.owner.address, g.grantee.address, g.rights, g.read_only) == (
        "alice@example.test", "bob@example.test", "read", True)
    assert users.grants_for(g.grantee.id) == [g]
    assert users.grants_for("alice@example.test") == []  # one direction only
    # upgrading replaces the grant
    assert users.grant("boss@example.test", "BOB@example.test", "write") is True
    (g2,) = users.grants_for("bob@example.test")
    assert g2.rights == "write" and not g2.read_only
    users.grant("carol@example.test", "bob@example.test", "read")
    assert [x.owner.address for x in users.grants_for("bob@example.test")] == ["alice@example.test", "carol@example.test"]
    assert {(x.owner.address, x.grantee.address) for x in users.list_grants("alice@example.test")} == {
        ("alice@example.test", "bob@example.test")}
    assert len(users.list_grants()) == 2
    assert users.revoke("alice@example.test", "bob@example.test") is True
    assert users.revoke("alice@example.test", "bob@example.test") is False
    assert [x.owner.address for x in users.grants_for("bob@example.test")] == ["carol@example.test"]


def test_grant_refusals(users: SyncDirectory) -> None:
    with pytest.raises(DirectoryError, match="rights"):
        users.grant("alice@example.test", "bob@example.test", "admin")
    with pytest.raises(DirectoryError, match="own account"):
        users.grant("alice@example.test", "boss@example.test", "read")
    with pytest.raises(NotFound):
        users.grant("nobody@example.test", "bob@example.test", "read")
    with pytest.raises(NotFound):
        users.revoke("alice@example.test", "nobody@example.test")
    assert users.list_grants() == []
    assert users.grants_for("nobody@example.test") == []


def test_deleting_a_user_ends_their_grants(users: SyncDirectory) -> None:
    users.grant("alice@example.test", "bob@example.test", "write")
    users.grant("bob@example.test", "carol@example.test", "read")
    users.del_user("bob@example.test")
    assert users.list_grants() == []


async def test_async_facade(users: SyncDirectory, ad: Directory) -> None:
    users.grant("alice@example.test", "bob@example.test", "write")
    bob = users.account_by_address("bob@example.test")
    assert bob is not None
    (g,) = await ad.grants_for(bob.id)
    assert g.owner.address == "alice@example.test" and g.rights == "write"
    stamp = await ad.login_stamp(bob.id)
    assert stamp is not None and stamp.usable
    users.set_secrets(bob.id, "h2", "s2")
    again = await ad.login_stamp(bob.id)
    assert again is not None and again.generation == stamp.generation + 1


def test_login_stamp_changes_with_login_data(users: SyncDirectory) -> None:
    alice = users.account_by_address("alice@example.test")
    assert alice is not None
    s0 = users.login_stamp(alice.id)
    assert s0 is not None and s0.usable
    users.set_secrets(alice.id, "new-hash", "new-scram")
    s1 = users.login_stamp(alice.id)
    assert s1 is not None and s1.generation == s0.generation + 1 and s1.usable
    users.set_user("alice@example.test", state="suspended")
    s2 = users.login_stamp(alice.id)
    assert s2 is not None and s2.generation > s1.generation and not s2.usable
    users.set_user("alice@example.test", state="active", networks=("192.0.2.0/24",))
    s3 = users.login_stamp(alice.id)
    assert s3 is not None and s3.generation > s2.generation and s3.usable
    # a lockout makes it unusable until it ends, with no generation change
    now = time.time()
    for _ in range(3):
        users.record_failure("acct:alice@example.test", now=now, window=60, threshold=3, lock_time=100, lock_max=100)
    s4 = users.login_stamp(alice.id, now=now)
    assert s4 is not None and s4.generation == s3.generation and not s4.usable
    later = users.login_stamp(alice.id, now=now + 101)
    assert later is not None and later.usable
    users.clear_failures("acct:alice@example.test")
    s5 = users.login_stamp(alice.id)
    assert s5 is not None and s5.usable
    users.del_user("alice@example.test")
    assert users.login_stamp(alice.id) is None


def downgrade(db_path: Path, version: int, *tables: str) -> None:
    """Make the directory look like one of schema ``version``: without ``tables``."""
    db = sqlite3.connect(db_path)
    for t in tables:
        db.execute(f"DROP TABLE {t}")
    db.execute("UPDATE meta SET value = ? WHERE key = 'version'", (str(version),))
    db.commit()
    db.close()


def test_migration_from_version_2_keeps_data(db_path: Path) -> None:
    d = SyncDirectory(db_path)
    d.add_domain("example.test")
    d.add_user("alice@example.test", password_hash="h")
    d.close()
    downgrade(db_path, 2, "grants", "credential_generations", "folder_rights")  # without the new tables
    d = SyncDirectory(db_path)
    try:
        assert d.db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0] == str(schema.VERSION)
        d.add_user("bob@example.test", password_hash="h")
        assert d.grant("alice@example.test", "bob@example.test", "read")
        acct = d.account_by_address("alice@example.test")
        assert acct is not None
        stamp = d.login_stamp(acct.id)
        assert stamp is not None and stamp.generation == 0
    finally:
        d.close()


def test_folder_rights_set_move_drop_inherit(users: SyncDirectory) -> None:
    A, B, C = "alice@example.test", "bob@example.test", "carol@example.test"
    alice = users.account_by_address(A)
    assert alice is not None
    assert users.set_folder_rights(A, B, "Work", "rl") is True
    assert users.set_folder_rights("boss@example.test", B, "Work", "lr") is False  # stored in RFC order already
    users.set_folder_rights(A, B, "Work/Q1", "")
    users.set_folder_rights(A, C, "Work", "lrswipkxtea")
    assert [(e.mailbox, e.grantee.address, e.rights) for e in users.folder_rights_of(A)] == [
        ("Work", B, "lr"), ("Work", C, "lrswipkxtea"), ("Work/Q1", B, "")]
    assert [e.mailbox for e in users.folder_rights_for(B)] == ["Work", "Work/Q1"]
    grants, entries, anyone = users.shares_for(users.account_by_address(B).id)  # type: ignore[union-attr]
    assert grants == [] and len(entries) == 2 and anyone == []
    with pytest.raises(DirectoryError, match="letters"):
        users.set_folder_rights(A, B, "Work", "lrQ")
    with pytest.raises(DirectoryError, match="own account"):
        users.set_folder_rights(A, "boss@example.test", "Work", "lr")
    # a rename carries the folder's entries and its children's, replacing any left at the new names
    users.set_folder_rights(A, B, "Play", "l")
    assert users.move_folder_rights(alice.id, "Work", "Play") == 2
    assert {(e.mailbox, e.grantee.address, e.rights) for e in users.folder_rights_of(A)} == {
        ("Play", B, "lr"), ("Play", C, "lrswipkxtea"), ("Play/Q1", B, "")}
    assert users.move_folder_rights(alice.id, "Pla", "X") == 0  # a prefix that is not a parent
    assert users.inherit_folder_rights(alice.id, "Play", "Play/New") == 2
    assert users.drop_folder_rights(alice.id, "Play") == 2
    assert {e.mailbox for e in users.folder_rights_of(A)} == {"Play/Q1", "Play/New"}
    assert users.set_folder_rights(A, B, "Play/Q1", None) is True and users.set_folder_rights(A, B, "Play/Q1", None) is False
    # a revoke ends every entry between the two; deleting a user ends theirs
    users.grant(A, B, "read")
    assert users.revoke(A, B) is True and users.folder_rights_for(B) == []
    users.del_user(C)
    assert users.all_folder_rights() == []


def test_migration_from_version_3_adds_folder_rights_and_keeps_grants(db_path: Path) -> None:
    d = SyncDirectory(db_path)
    d.add_domain("example.test")
    d.add_user("alice@example.test", password_hash="h")
    d.add_user("bob@example.test", password_hash="h")
    d.grant("alice@example.test", "bob@example.test", "write")
    d.close()
    downgrade(db_path, 3, "folder_rights")
    d = SyncDirectory(db_path)
    try:
        assert d.db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0] == str(schema.VERSION)
        (g,) = d.grants_for("bob@example.test")
        assert g.rights == "write"  # the account grant is every folder's ACL, as before
        assert d.set_folder_rights("alice@example.test", "bob@example.test", "INBOX", "lr")
    finally:
        d.close()


def test_anyone_entries_reach_the_owners_domain_and_follow_the_folder(users: SyncDirectory) -> None:
    A, B = "alice@example.test", "bob@example.test"
    users.add_domain("other.test")
    users.add_user("dave@other.test", password_hash="h")
    alice, bob, dave = (users.account_by_address(x) for x in (A, B, "dave@other.test"))
    assert alice is not None and bob is not None and dave is not None
    assert users.set_anyone_rights(A, "anyone", "Team", "rl") is True
    assert users.set_anyone_rights(A, "anyone", "Team", "lr") is False
    users.set_anyone_rights(A, "authenticated", "Team", "s")
    with pytest.raises(DirectoryError, match="anyone or authenticated"):
        users.set_anyone_rights(A, "everyone", "Team", "lr")
    assert [(e.identifier, e.rights) for e in users.anyone_rights(domain_of=bob.id)] == [
        ("anyone", "lr"), ("authenticated", "s")]
    assert users.anyone_rights(domain_of=alice.id) == [] and users.anyone_rights(domain_of=dave.id) == []
    assert len(users.shares_for(bob.id, True)[2]) == 2 and users.shares_for(bob.id)[2] == []
    users.move_folder_rights(alice.id, "Team", "Crew")
    users.inherit_folder_rights(alice.id, "Crew", "Crew/Sub")
    assert sorted({e.mailbox for e in users.anyone_rights(owner=A)}) == ["Crew", "Crew/Sub"]
    users.drop_folder_rights(alice.id, "Crew")
    assert users.set_anyone_rights(A, "anyone", "Crew/Sub", "") is True  # removed
    assert [e.identifier for e in users.anyone_rights(owner=alice.id)] == ["authenticated"]


def test_shares_travel_with_an_export_and_import(users: SyncDirectory, tmp_path: Path) -> None:
    """A backup restored elsewhere keeps every share: account grants, folder entries (a renamed
    folder's under its new name, an explicit "no rights here" too) and ``anyone`` entries."""
    from mailsrv.directory.exchange import export, import_

    A, B, C = "alice@example.test", "bob@example.test", "carol@example.test"
    alice = users.account_by_address(A)
    assert alice is not None
    users.grant(A, B, "read")
    users.grant(C, A, "write")
    users.set_folder_rights(A, C, "Projects", "lrs")
    users.set_folder_rights(A, C, "Projects/Secret", "")
    users.set_folder_rights(A, B, "Projects", "lrswi")
    users.set_anyone_rights(A, "anyone", "Projects", "lr")
    users.set_anyone_rights(A, "authenticated", "Notices", "l")
    assert users.folder_changed(alice.id, "rename", "Projects", "Archive/2025") == 3  # as IMAP RENAME does (names moved, per table)
    data = json.loads(json.dumps(export(users)))  # what the file holds
    dst = SyncDirectory(tmp_path / "restored.sqlite3")
    try:
        counts = import_(dst, data)
        assert (counts["grants"], counts["folder_rights"]) == (2, 5)
        assert [(g.owner.address, g.grantee.address, g.rights) for g in dst.list_grants()] == [
            (A, B, "read"), (C, A, "write")]
        assert [(e.mailbox, e.grantee.address, e.rights) for e in dst.folder_rights_of(A)] == [
            ("Archive/2025", B, "lrswi"), ("Archive/2025", C, "lrs"), ("Archive/2025/Secret", C, "")]
        assert sorted((a.mailbox, a.identifier, a.rights) for a in dst.anyone_rights(owner=A)) == [
            ("Archive/2025", "anyone", "lr"), ("Notices", "authenticated", "l")]
        assert json.loads(json.dumps(export(dst))) == data  # and again: the same file
    finally:
        dst.close()
