"""Names the store reserves are refused, store paths stay plain, and domain limits survive export/import."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from mailsrv.directory import Conflict, DirectoryError, SyncDirectory, exchange
from mailsrv.directory import addresses as A
from mailsrv.store.folders import STAGING


def test_store_staging_name_is_reserved() -> None:
    assert STAGING.startswith(A.RESERVED_PREFIX)  # the store's entry beside accounts stays reserved


@pytest.mark.parametrize("local", [STAGING, ".mailsrv", ".mailsrv-x", ".MAILSRV-NEW"])
def test_reserved_local_parts_refused_for_users_aliases_groups(sd: SyncDirectory, local: str) -> None:
    sd.add_user("owner@example.test")
    for add in (lambda a: sd.add_user(a), lambda a: sd.add_alias(a, "owner@example.test"),
                lambda a: sd.add_group(a), lambda a: sd.add_dept(a)):
        with pytest.raises(DirectoryError, match="reserved for the mail store"):
            add(f"{local}@example.test")
    assert [u["address"] for u in sd.list_users()] == ["owner@example.test"]


@pytest.mark.parametrize("local", [".hidden", "a/b", "..", "a..b", "-x", "x-", "tab\there", "nul\x00", "a\\b"])
def test_unsafe_directory_names_refused(sd: SyncDirectory, local: str) -> None:
    with pytest.raises(DirectoryError):
        sd.add_user(f"{local}@example.test")


@pytest.mark.parametrize("store", ["../etc", "mail/../x", "mail/.mailsrv-new/x", "mail//x", "mail/x/", ".x",
                                   "/var/mail/../root", "mail/\x01x", "", "/"])
def test_bad_store_paths_refused(sd: SyncDirectory, store: str) -> None:
    if store == "":  # empty means "derive it": accepted
        assert sd.add_user("e@example.test", store=store).store == "mail/example.test/e"
        return
    with pytest.raises(DirectoryError, match="store"):
        sd.add_user("s@example.test", store=store)


def test_good_store_paths_kept(sd: SyncDirectory) -> None:
    assert sd.add_user("r@example.test", store="other/example.test/r").store == "other/example.test/r"
    assert sd.add_user("v@example.test", store="/var/vmail/example.test/v").store == "/var/vmail/example.test/v"


NAME = st.text(st.characters(codec="utf-8", exclude_characters="/"), max_size=12)


@given(st.lists(NAME, min_size=1, max_size=4), st.booleans())
def test_check_store_accepts_only_plain_names(parts: list[str], absolute: bool) -> None:
    path = ("/" if absolute else "") + "/".join(parts)
    assume(absolute or not path.startswith("/"))  # an empty first name would make it absolute
    plain = all(p and not p.startswith(".") and "\\" not in p
                and not any(ord(c) < 0x20 or c == "\x7f" for c in p) for p in parts)
    try:
        assert A.check_store(path) == path
        assert plain, path
    except ValueError:
        assert not plain or len(path) > 1024


def test_export_import_with_domain_limits_and_unlimited_users(sd: SyncDirectory, tmp_path) -> None:
    sd.add_domain("lim.test", max_users=5, max_storage=10_000)
    sd.add_user("free@lim.test")
    sd.add_user("q@lim.test", quota_bytes=50_000)
    sd.add_user("c@lim.test")
    sd.set_domain("lim.test", max_users=2, catchall="c@lim.test")  # lowered below the count
    data = exchange.export(sd)
    other = SyncDirectory(tmp_path / "other.sqlite3")
    try:
        counts = exchange.import_(other, data)
        assert counts["users"] == len(data["users"])
        assert exchange.export(other) == data
        with pytest.raises(Conflict, match="maximum of 2"):
            other.add_user("more@lim.test")
    finally:
        other.close()
