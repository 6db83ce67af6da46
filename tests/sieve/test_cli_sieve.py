"""``mailsrv sieve ...`` through the ``mailsrv`` program (subprocess), on an ``init`` setup."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from support.server import init_setup, mailsrv_cmd

from mailsrv import config as config_mod
from mailsrv.directory import open_sync
from mailsrv.sieve import scripts
from mailsrv.store import account_root

RULES = 'require "fileinto";\nif address :is "from" "boss@example.test" { fileinto "Boss"; }\n'


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = init_setup(tmp_path_factory.mktemp("sievecli") / "s", workers=1)
    for cmd in (("domain", "add", "example.test"), ("domain", "add", "other.test"),
                ("user", "add", "ann@example.test", "--no-password"),
                ("user", "add", "olga@other.test", "--no-password"),
                ("user", "add", "boss@example.test", "--no-password"),
                ("admin", "grant", "boss@example.test", "domain", "example.test")):
        run(cfg, *cmd)
    return cfg


def run(cfg: Path, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(mailsrv_cmd(*args, "-c", str(cfg)), input=stdin, capture_output=True, text=True, timeout=120)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def root(cfg: Path, user: str) -> Path:
    c = config_mod.load(cfg)
    d = open_sync(c.directory, c.server.data_dir)
    try:
        acct = d.account_by_address(user)
    finally:
        d.close()
    assert acct is not None
    return account_root(c.server.data_dir, acct.id, acct.store or None)


def test_put_activate_list_get_delete(setup: Path, tmp_path: Path) -> None:
    f = tmp_path / "rules.sieve"
    f.write_text(RULES)
    out = json.loads(run(setup, "sieve", "put", "ann@example.test", "rules", str(f), "--activate", "--json").stdout)
    assert out == {"user": "ann@example.test", "name": "rules", "size": len(RULES), "active": True}
    # what delivery reads
    assert scripts.active_script(root(setup, "ann@example.test")) == ("rules", RULES)
    run(setup, "sieve", "put", "ann@example.test", "spare", "-", stdin="keep;\n")
    listed = json.loads(run(setup, "sieve", "list", "ann@example.test", "--json").stdout)
    assert listed == [{"name": "rules", "active": True}, {"name": "spare", "active": False}]
    assert run(setup, "sieve", "list", "ann@example.test").stdout.splitlines() == \
        ["name=rules  active=True", "name=spare  active=False"]
    assert run(setup, "sieve", "get", "ann@example.test", "rules").stdout == RULES
    p = run(setup, "sieve", "delete", "ann@example.test", "rules", check=False)
    assert p.returncode == 2 and "(ACTIVE)" in p.stderr
    run(setup, "sieve", "activate", "ann@example.test", "spare")
    assert scripts.active_script(root(setup, "ann@example.test")) == ("spare", "keep;\n")
    run(setup, "sieve", "delete", "ann@example.test", "rules")
    run(setup, "sieve", "deactivate", "ann@example.test")
    assert scripts.active_script(root(setup, "ann@example.test")) is None
    assert json.loads(run(setup, "sieve", "list", "ann@example.test", "--json").stdout) == \
        [{"name": "spare", "active": False}]
    p = run(setup, "sieve", "get", "ann@example.test", "rules", check=False)
    assert p.returncode == 2 and "(NONEXISTENT)" in p.stderr


def test_invalid_script_and_check(setup: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.sieve"
    bad.write_text('require "fileinto";\n\nfrobnicate;\n')
    p = run(setup, "sieve", "put", "ann@example.test", "bad", str(bad), check=False)
    assert p.returncode == 2 and "line 3:" in p.stderr
    p = run(setup, "sieve", "check", str(bad), check=False)
    assert p.returncode == 1 and "line 3:" in p.stderr
    out = json.loads(run(setup, "sieve", "check", "-", "--json", stdin=RULES).stdout)
    assert out == {"valid": True}
    p = run(setup, "sieve", "check", str(bad), "--json", check=False)
    assert p.returncode == 1 and json.loads(p.stdout)["line"] == 3
    p = run(setup, "sieve", "put", "nobody@example.test", "x", "-", stdin="keep;\n", check=False)
    assert p.returncode == 2 and "no user" in p.stderr
    p = run(setup, "sieve", "put", "ann@example.test", "a/b", "-", stdin="keep;\n", check=False)
    assert p.returncode == 2 and "'/'" in p.stderr


def test_admin_scope(setup: Path) -> None:
    as_boss = ("--as", "boss@example.test")
    run(setup, "sieve", "put", "ann@example.test", "scoped", "-", *as_boss, stdin="keep;\n")
    p = run(setup, "sieve", "put", "olga@other.test", "x", "-", *as_boss, stdin="keep;\n", check=False)
    assert p.returncode == 2 and "not in your scope" in p.stderr
    p = run(setup, "sieve", "list", "olga@other.test", *as_boss, check=False)
    assert p.returncode == 2 and "not in your scope" in p.stderr
    assert not (root(setup, "olga@other.test") / "sieve").exists()


def test_rename_keeps_the_active_script(setup: Path) -> None:
    run(setup, "sieve", "put", "ann@example.test", "old", "-", "--activate", stdin="keep;\n")
    out = json.loads(run(setup, "sieve", "rename", "ann@example.test", "old", "new", "--json").stdout)
    assert out == {"user": "ann@example.test", "renamed": "old", "to": "new"}
    assert scripts.active_script(root(setup, "ann@example.test")) == ("new", "keep;\n")
    run(setup, "sieve", "put", "ann@example.test", "other", "-", stdin="discard;\n")
    p = run(setup, "sieve", "rename", "ann@example.test", "other", "new", check=False)
    assert p.returncode == 2 and "(ALREADYEXISTS)" in p.stderr
    p = run(setup, "sieve", "rename", "ann@example.test", "gone", "x", check=False)
    assert p.returncode == 2 and "(NONEXISTENT)" in p.stderr
    assert "regex" in run(setup, "sieve", "check", "--help").stdout
