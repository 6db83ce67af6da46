"""What an operator sees from `mailsrv` for reserved names and for a domain limit over unlimited users."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from support.server import init_setup, mailsrv_cmd


def mailsrv(config: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(mailsrv_cmd(*args, "-c", str(config)), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 or not check, p.stderr
    return p


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_setup(tmp_path_factory.mktemp("names") / "s", "--demo")


@pytest.mark.parametrize("args", [
    ("user", "add", ".mailsrv-new@example.test", "--no-password"),
    ("alias", "add", ".mailsrv-x@example.test", "alice@example.test"),
    ("group", "add", ".mailsrv@example.test"),
])
def test_reserved_local_parts_refused_with_a_clear_error(setup: Path, args: tuple[str, ...]) -> None:
    p = mailsrv(setup, *args, check=False)
    assert p.returncode == 2 and "reserved for the mail store" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


def test_unsafe_names_refused(setup: Path) -> None:
    for bad in ("..@example.test", "a/b@example.test", "x-@example.test"):
        p = mailsrv(setup, "user", "add", bad, "--no-password", check=False)
        assert p.returncode == 2 and "local part" in p.stderr, (bad, p.stderr)


def test_domain_limit_with_unlimited_users_exports_and_imports(setup: Path, tmp_path: Path) -> None:
    mailsrv(setup, "domain", "add", "lim.test", "--max-users", "10")
    mailsrv(setup, "user", "add", "u1@lim.test", "--no-password")
    mailsrv(setup, "domain", "set", "lim.test", "--max-storage", "1G")
    mailsrv(setup, "user", "add", "u2@lim.test", "--no-password")  # no quota: the domain root alone applies
    mailsrv(setup, "user", "add", "u3@lim.test", "--no-password", "--quota", "2G")  # larger than the domain
    mailsrv(setup, "user", "set", "u3@lim.test", "--quota", "unlimited")
    mailsrv(setup, "domain", "set", "lim.test", "--max-users", "1")  # below today's 3 users
    p = mailsrv(setup, "user", "add", "u4@lim.test", "--no-password", check=False)
    assert p.returncode == 2 and "maximum of 1" in p.stderr
    backup = tmp_path / "backup.json"
    backup.write_text(mailsrv(setup, "directory", "export").stdout)
    fresh = init_setup(tmp_path / "fresh")
    mailsrv(fresh, "directory", "import", str(backup))
    exported = json.loads(backup.read_text())
    assert json.loads(mailsrv(fresh, "directory", "export").stdout) == exported
    dom = next(x for x in json.loads(mailsrv(fresh, "domain", "list", "--json").stdout) if x["name"] == "lim.test")
    assert (dom["max_users"], dom["max_storage"]) == (1, 1024 ** 3)
    users = {u["address"]: u for u in exported["users"]}
    assert users["u2@lim.test"]["quota_bytes"] is None and users["u3@lim.test"]["quota_bytes"] is None
