"""The directory commands as an operator runs them: real `mailsrv` processes on a setup made by `mailsrv init`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailsrv import config as config_mod
from mailsrv.directory import Kind, open_sync


def mailsrv(setup: Path, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "MAILSRV_CONFIG": str(setup / "mailsrv.toml")}
    p = subprocess.run([sys.executable, "-m", "mailsrv", *args], input=stdin, capture_output=True, text=True,
                       env=env, timeout=120)
    if check:
        assert p.returncode == 0, p.stderr
    return p


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("setup")
    p = subprocess.run([sys.executable, "-m", "mailsrv", "init", "--dir", str(root / "s"), "--demo", "--any-port"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "demo user alice@example.test password " in p.stdout
    return root / "s"


def test_init_demo_users_can_log_in(setup: Path) -> None:
    import asyncio

    from mailsrv.auth import worker_resources

    out = mailsrv(setup, "user", "list", "--json").stdout
    assert [u["address"] for u in json.loads(out)] == ["alice@example.test", "bob@example.test"]
    cfg = config_mod.load(setup / "mailsrv.toml")
    echo = "pw for carol 1"
    mailsrv(setup, "user", "add", "carol@example.test", "--password-stdin", "--quota", "500M", stdin=echo + "\n")

    async def check() -> bool:
        res = worker_resources(cfg)
        r = await res["auth"].login("carol@example.test", echo, protocol="imap", client_ip="127.0.0.1")
        await res["auth"].close()
        await res["directory"].close()
        return r.ok

    assert asyncio.run(check())
    show = json.loads(mailsrv(setup, "user", "show", "carol@example.test", "--json").stdout)
    assert show["quota_bytes"] == 500 * 1024 * 1024 and show["store"] == "mail/example.test/carol"


def test_password_never_from_argv_and_prompt_needs_tty(setup: Path) -> None:
    p = mailsrv(setup, "user", "add", "dave@example.test", check=False, stdin="")
    assert p.returncode == 2 and "--password-stdin" in p.stderr
    p = mailsrv(setup, "user", "add", "dave@example.test", "--password", "x", check=False)
    assert p.returncode == 2  # no such option


def test_domain_set_changes_only_the_options_given(setup: Path) -> None:
    def domain() -> dict:
        rows = json.loads(mailsrv(setup, "domain", "list", "--json").stdout)
        return next(r for r in rows if r["name"] == "settable.test")

    mailsrv(setup, "domain", "add", "settable.test")  # its own domain: the module's example.test stays as it is
    mailsrv(setup, "user", "add", "erin@settable.test", "--no-password")
    before = domain()
    out = json.loads(mailsrv(setup, "domain", "set", "settable.test", "--max-storage", "3G", "--json").stdout)
    assert out["changed"] == ["max_storage"]
    after = domain()
    assert after["max_storage"] == 3 * 1024 ** 3
    assert {k: v for k, v in after.items() if k != "max_storage"} == \
        {k: v for k, v in before.items() if k != "max_storage"}
    mailsrv(setup, "domain", "set", "settable.test", "--catchall", "erin@settable.test")
    assert domain()["catchall"] == "erin@settable.test"
    mailsrv(setup, "domain", "set", "settable.test", "--catchall", "none")
    assert domain()["catchall"] is None
    assert domain()["max_storage"] == 3 * 1024 ** 3
    mailsrv(setup, "domain", "set", "settable.test", "--max-storage", "unlimited")
    assert domain()["max_storage"] is None


def test_domain_admin_cannot_touch_another_domain(setup: Path) -> None:
    mailsrv(setup, "domain", "add", "other.test")
    mailsrv(setup, "user", "add", "eve@other.test", "--no-password")
    mailsrv(setup, "admin", "grant", "bob@example.test", "domain", "example.test")
    as_bob = ("--as", "bob@example.test")
    p = mailsrv(setup, "user", "suspend", "eve@other.test", *as_bob, check=False)
    assert p.returncode == 2 and "not in your scope" in p.stderr
    p = mailsrv(setup, "user", "add", "mallory@other.test", "--no-password", *as_bob, check=False)
    assert p.returncode == 2 and "not in your scope" in p.stderr
    p = mailsrv(setup, "admin", "grant", "bob@example.test", "super", *as_bob, check=False)
    assert p.returncode == 2
    p = mailsrv(setup, "domain", "del", "other.test", *as_bob, check=False)
    assert p.returncode == 2
    mailsrv(setup, "user", "add", "frank@example.test", "--no-password", *as_bob)
    listed = json.loads(mailsrv(setup, "user", "list", "--json", *as_bob).stdout)
    assert "eve@other.test" not in {u["address"] for u in listed}
    cfg = config_mod.load(setup / "mailsrv.toml")
    d = open_sync(cfg.directory, cfg.server.data_dir)
    assert d.resolve("eve@other.test").kind is Kind.USER
    assert d.resolve("mallory@other.test").kind is Kind.UNKNOWN
    d.close()


def test_groups_departments_and_lockout_commands(setup: Path) -> None:
    mailsrv(setup, "dept", "add", "staff@example.test", "--name", "Staff")
    mailsrv(setup, "dept", "add", "ops@example.test", "--name", "Ops", "--parent", "staff@example.test")
    mailsrv(setup, "user", "set", "alice@example.test", "--dept", "ops@example.test", "--send-outside", "no")
    mailsrv(setup, "group", "add", "team@example.test", "--policy", "members")
    mailsrv(setup, "group", "member", "add", "team@example.test", "staff@example.test")
    mailsrv(setup, "group", "member", "add", "team@example.test", "partner@outside.test")
    info = json.loads(mailsrv(setup, "group", "show", "team@example.test", "--json").stdout)
    assert info["members"] == ["partner@outside.test", "staff@example.test"]
    cfg = config_mod.load(setup / "mailsrv.toml")
    d = open_sync(cfg.directory, cfg.server.data_dir)
    assert [a.address for a in d.expand_accounts("team@example.test", 0, 100)] == ["alice@example.test"]
    acct = d.account_by_address("alice@example.test")
    assert acct is not None and acct.department == "Staff/Ops" and not acct.may_send_outside
    d.record_failure("acct:alice@example.test", now=1e12, window=900, threshold=1, lock_time=60, lock_max=60)
    d.close()
    locks = json.loads(mailsrv(setup, "lockout", "list", "--json").stdout)
    assert locks[0]["key"] == "acct:alice@example.test"
    assert json.loads(mailsrv(setup, "lockout", "clear", "alice@example.test", "--json").stdout) == {"cleared": 1}
    assert json.loads(mailsrv(setup, "lockout", "list", "--json").stdout) == []


def test_token_issue_and_revoke(setup: Path) -> None:
    tok = json.loads(mailsrv(setup, "token", "issue", "alice@example.test", "--json").stdout)
    assert tok["token"].startswith("msv_") and tok["scopes"] == ["mail"]
    p = mailsrv(setup, "token", "issue", "alice@example.test", "--scope", "admin", check=False)
    assert p.returncode == 2 and "not an administrator" in p.stderr
    assert json.loads(mailsrv(setup, "token", "revoke", str(tok["id"]), "--json").stdout)["revoked"] is True


def test_export_import_round_trip(setup: Path, tmp_path: Path) -> None:
    dump = tmp_path / "dir.json"
    mailsrv(setup, "directory", "export", str(dump))
    assert dump.stat().st_mode & 0o077 == 0  # holds password hashes
    data = json.loads(dump.read_text())
    # a fresh setup imports it, including a legacy hash from another server
    data["users"].append({"address": "legacy@example.test", "password_hash":
                          "{SHA512-CRYPT}$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"})
    dump.write_text(json.dumps(data))
    other = tmp_path / "other"
    subprocess.run([sys.executable, "-m", "mailsrv", "init", "--dir", str(other), "--any-port"], check=True,
                   capture_output=True, timeout=120)
    counts = json.loads(mailsrv(other, "directory", "import", str(dump), "--json").stdout)
    assert counts["users"] == len(data["users"]) and counts["domains"] == len(data["domains"])
    exported = json.loads(mailsrv(other, "directory", "export").stdout)
    assert {u["address"] for u in exported["users"]} == {u["address"] for u in data["users"]}
    assert {g["address"]: g["members"] for g in exported["groups"]} == {g["address"]: g["members"] for g in data["groups"]}
    # all or nothing: a bad hash format rejects the whole import
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "mailsrv-directory/1", "domains": [{"name": "new.test"}],
                               "users": [{"address": "a@new.test", "password_hash": "{PLAIN}secret"}]}))
    p = mailsrv(other, "directory", "import", str(bad), check=False)
    assert p.returncode == 2 and "not supported" in p.stderr
    assert "new.test" not in mailsrv(other, "domain", "list").stdout
    # a restore over the live directory (export, then import into the same one) says
    # what an import is for, and keeps nothing
    again = mailsrv(other, "directory", "import", str(dump), check=False)
    assert again.returncode == 2 and "exists already: an import adds to the directory and merges nothing" \
        in again.stderr and "restore a backup into an empty one" in again.stderr
    assert json.loads(mailsrv(other, "directory", "export").stdout) == exported


def test_parse_size() -> None:
    import argparse

    from hypothesis import given
    from hypothesis import strategies as st

    from mailsrv.cli.directory import parse_size

    assert parse_size("500M") == 500 * 1024**2
    assert parse_size("2GiB") == 2 * 1024**3
    assert parse_size("1.5k") == 1536
    assert parse_size("unlimited") is None and parse_size("0") is None
    for bad in ("-1G", "lots", "G", "inf", "nanM", "1e400"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_size(bad)

    @given(st.integers(min_value=1, max_value=10**6), st.sampled_from(["", "K", "M", "G", "T"]))
    def round_trip(n: int, unit: str) -> None:
        assert parse_size(f"{n}{unit}") == n * {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}[unit]

    @given(st.text(max_size=12))
    def never_crashes(text: str) -> None:
        try:
            parse_size(text)
        except argparse.ArgumentTypeError:
            pass

    round_trip()
    never_crashes()
