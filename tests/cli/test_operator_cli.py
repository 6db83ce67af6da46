"""The command line as a newcomer meets it: a missing config, output piped to head, root in the service's data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.server import init_setup

import mailsrv.cli
from mailsrv.cli import EXIT_BROKEN_PIPE, main


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_setup(tmp_path_factory.mktemp("setup") / "s", "--demo").parent


def test_output_piped_to_a_reader_that_went_away_is_no_traceback(setup: Path) -> None:
    # `mailsrv user list --json | head -1`: head exits first; here the reader is gone before we write
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run([sys.executable, "-m", "mailsrv", "-c", str(setup / "mailsrv.toml"), "user", "list",
                            "--json"], stdout=w, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(w)
    assert "Traceback" not in p.stderr and p.stderr == ""
    assert p.returncode == EXIT_BROKEN_PIPE


def test_missing_default_config_says_how_to_name_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "etc" / "mailsrv.toml"
    monkeypatch.delenv("MAILSRV_CONFIG", raising=False)
    monkeypatch.setattr(mailsrv.cli, "default_path", lambda: str(missing))
    assert main(["domain", "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mailsrv: {missing}: file not found (")
    assert "-c FILE or MAILSRV_CONFIG" in err and "var/mailsrv.toml" in err
    # a file named on purpose gets the plain message
    assert main(["-c", str(missing), "domain", "list"]) == 2
    assert capsys.readouterr().err == f"mailsrv: {missing}: file not found\n"


def _foreign_data_dir(setup: Path) -> tuple[Path, int]:
    """The setup's data dir owned by someone else than root (nobody when we are root); its owner."""
    data = setup / "data"
    if os.geteuid() == 0:
        os.chown(data, 65534, -1)
    return data, os.stat(data).st_uid


def test_root_is_refused_in_a_data_dir_of_another_user(setup: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    data, owner = _foreign_data_dir(setup)
    assert owner != 0
    cfg = str(setup / "mailsrv.toml")
    try:
        monkeypatch.setattr(os, "geteuid", lambda: 0)
        assert main(["-c", cfg, "domain", "add", "refused.test"]) == 2
        err = capsys.readouterr().err
        assert f"mailsrv: {data} belongs to user " in err and "sudo -u " in err and "unreadable" in err
        assert not (data / "dkim").exists()
        assert main(["-c", cfg, "dkim", "keygen", "example.test"]) == 2
        assert not (data / "dkim").exists()
        # commands that write nothing there still run
        assert main(["-c", cfg, "check-config"]) == 0
        capsys.readouterr()
        # the owner itself (any user but root) is never refused
        mailsrv.cli.check_data_owner(data, owner)
    finally:
        monkeypatch.undo()
        if os.geteuid() == 0:
            os.chown(data, 0, -1)
    assert main(["-c", cfg, "domain", "list", "--json"]) == 0
    assert "refused.test" not in [d["name"] for d in json.loads(capsys.readouterr().out)]


def test_root_init_into_a_directory_of_another_user_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    # `sudo mailsrv init --dir /var/lib/mailsrv --force` over the service's setup: root's key.pem (0600) and
    # directory files would be unreadable to the server
    target = tmp_path / "s"
    target.mkdir()
    if os.geteuid() == 0:
        os.chown(target, 65534, -1)
    assert os.stat(target).st_uid != 0
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert main(["init", "--dir", str(target), "--demo", "--force"]) == 2
    monkeypatch.undo()
    assert "belongs to user " in capsys.readouterr().err
    assert os.listdir(target) == []


def test_root_in_a_data_dir_not_made_yet_is_not_refused(tmp_path: Path) -> None:
    mailsrv.cli.check_data_owner(tmp_path / "not-yet", 0)  # systemd-tmpfiles or init will make it
    if os.geteuid() == 0:
        mailsrv.cli.check_data_owner(tmp_path, 0)  # root's own (the demo of `make run` as root)
        os.chown(tmp_path, 65534, -1)
    with pytest.raises(mailsrv.cli.CliError, match="belongs to user"):
        mailsrv.cli.check_data_owner(tmp_path, 0)


def test_init_port_base_moves_every_development_port(tmp_path: Path) -> None:
    from mailsrv import config as config_mod
    from mailsrv.cli.core import DEV_LISTENERS

    p = subprocess.run([sys.executable, "-m", "mailsrv", "init", "--dir", str(tmp_path / "s"), "--port-base", "3000"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    cfg = config_mod.load(tmp_path / "s" / "mailsrv.toml")
    got = {name: list(lst.bind) for name, lst in cfg.listener.items()}
    assert got == {name: [f"127.0.0.1:{port + 1000}"] for name, _, port, _ in DEV_LISTENERS}
    assert got["smtp"] == ["127.0.0.1:3525"] and got["imaps"] == ["127.0.0.1:3993"]


@pytest.mark.parametrize("base", ["0", "64541", "x", "-5"])
def test_init_port_base_out_of_range(tmp_path: Path, base: str) -> None:
    p = subprocess.run([sys.executable, "-m", "mailsrv", "init", "--dir", str(tmp_path / "s"), "--port-base", base],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and f"argument --port-base: {base!r}: a number from 1 to 64540" in p.stderr
    assert not (tmp_path / "s").exists()


def test_user_add_store_refuses_a_store_that_overlaps_another_accounts(setup: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Two accounts on one maildir would read, expunge and count each other's mail: the same store, one
    inside the other, the same through a symlink or an absolute spelling, and a store holding the data
    directory are refused; a maildir of its own is taken."""
    cfg = str(setup / "mailsrv.toml")
    data = setup / "data"
    alice = data / "mail" / "example.test" / "alice"
    link = tmp_path / "link-to-alice"
    link.symlink_to(alice)
    for store in ("mail/example.test/alice", str(alice), str(link), "mail/example.test/alice/sub",
                  "mail/example.test"):
        assert main(["-c", cfg, "user", "add", "mallory@example.test", "--no-password", "--store", store]) == 2
        assert "the store of alice@example.test" in capsys.readouterr().err
    assert main(["-c", cfg, "user", "add", "mallory@example.test", "--no-password", "--store", str(setup)]) == 2
    assert "holds the data directory" in capsys.readouterr().err
    assert main(["-c", cfg, "user", "list", "--json"]) == 0
    assert "mallory@example.test" not in [u["address"] for u in json.loads(capsys.readouterr().out)]
    own = tmp_path / "Maildir"
    assert main(["-c", cfg, "user", "add", "mallory@example.test", "--no-password", "--store", str(own)]) == 0
    capsys.readouterr()
    assert main(["-c", cfg, "user", "del", "mallory@example.test"]) == 0
