"""``convert_over`` per domain and per user (docs/files.md "Per domain and per user"): the user's own
threshold over their domain's over ``[files] convert_over``; set with ``mailsrv files convert``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from filetest import message
from test_pending import ALICE, BOB, open_backend, rows, send

from mailsrv.config import Config, load
from mailsrv.directory import NotFound, open_sync
from mailsrv.files import convert as convert_mod
from mailsrv.files.convert import ConvertPolicy
from mailsrv.smtp.wiring import DirectoryBackend

CAROL = "carol@other.test"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[DirectoryBackend]:
    """The worker's SMTP backend with file links and ``[files] convert_over = 0`` (off setup-wide)."""
    async with open_backend(tmp_path, 0, (ALICE, BOB, CAROL)) as be:
        yield be


def set_over(be: DirectoryBackend, scope: str, value: int | None) -> None:
    sd = open_sync(Config().directory, be.queue.qd.root.parent)  # the data directory
    try:
        sd.set_convert_over(scope, value)
    finally:
        sd.close()


def test_settings_are_stored_listed_replaced_and_go_with_their_user(tmp_path: Path) -> None:
    sd = open_sync(Config().directory, tmp_path)
    try:
        assert sd.convert_settings() == ({}, {}) and sd.list_convert_settings() == []  # no table yet: none
        sd.add_domain("example.test")
        sd.add_user(ALICE)
        uid = sd.account_by_address(ALICE).id  # type: ignore[union-attr]
        sd.set_convert_over("Example.TEST", 1000)
        sd.set_convert_over(ALICE.upper(), 0)
        sd.set_convert_over(ALICE, 5000)  # replaces
        assert sd.convert_settings() == ({uid: 5000}, {"example.test": 1000})
        assert sd.list_convert_settings() == [{"scope": "example.test", "convert_over": 1000},
                                              {"scope": ALICE, "convert_over": 5000}]
        with pytest.raises(NotFound):
            sd.set_convert_over("nobody@example.test", 1)
        with pytest.raises(NotFound):
            sd.set_convert_over("elsewhere.test", 1)
        with pytest.raises(Exception, match=">= 0"):
            sd.set_convert_over(ALICE, -1)
        sd.set_convert_over("example.test", None)  # back to [files] convert_over
        assert sd.convert_settings() == ({uid: 5000}, {})
        sd.del_user(ALICE)
        assert sd.convert_settings() == ({}, {})  # the row went with the user
    finally:
        sd.close()


def test_settings_travel_with_an_export_and_import(tmp_path: Path) -> None:
    from mailsrv.directory.exchange import export, import_

    src = open_sync(Config().directory, tmp_path / "a")
    dst = open_sync(Config().directory, tmp_path / "b")
    try:
        src.add_domain("example.test")
        src.add_user(ALICE)
        src.set_convert_over("example.test", 1000)
        src.set_convert_over(ALICE, 0)
        data = export(src)
        assert data["file_settings"] == src.list_convert_settings()
        import_(dst, data)
        assert dst.list_convert_settings() == [{"scope": "example.test", "convert_over": 1000},
                                               {"scope": ALICE, "convert_over": 0}]
    finally:
        src.close()
        dst.close()


async def test_a_domain_turns_conversion_on_and_a_user_of_it_off(backend: DirectoryBackend) -> None:
    reply = await send(backend, message(b"a" * 40_000))
    assert reply.startswith(b"250 ") and rows(backend) == []  # off setup-wide: sent as written
    set_over(backend, "example.test", 20_000)
    backend.convert = ConvertPolicy(0, backend.directory)  # a fresh worker (no wait for the next look)
    assert (await send(backend, message(b"b" * 40_000))).startswith(b"250 ")
    assert [s for _, s in rows(backend)] == ["live"]
    set_over(backend, ALICE, 0)  # alice: never, though her domain converts
    set_over(backend, BOB, 100_000)
    backend.convert = ConvertPolicy(0, backend.directory)
    assert (await send(backend, message(b"c" * 40_000))).startswith(b"250 ")
    assert len(rows(backend)) == 1
    assert (await send(backend, message(b"d" * 40_000), sender=BOB)).startswith(b"250 ")
    assert len(rows(backend)) == 1  # bob's own threshold (100 000) is over the attachment
    assert (await send(backend, message(b"e" * 120_000), sender=BOB)).startswith(b"250 ")
    assert len(rows(backend)) == 2


async def test_a_user_converts_in_a_domain_that_does_not(backend: DirectoryBackend) -> None:
    set_over(backend, "example.test", 0)
    set_over(backend, CAROL, 10_000)
    backend.convert = ConvertPolicy(50_000, backend.directory)  # on setup-wide at 50 000
    assert (await send(backend, message(b"f" * 40_000))).startswith(b"250 ")
    assert rows(backend) == []  # alice: her domain says never
    assert (await send(backend, message(b"g" * 40_000), sender=CAROL)).startswith(b"250 ")
    assert len(rows(backend)) == 1


async def test_a_worker_sees_a_change_at_its_next_look(backend: DirectoryBackend,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(convert_mod, "STAMP_LOOK", 0.0)
    policy = ConvertPolicy(7, backend.directory)
    alice = await backend.directory.account_by_address(ALICE)
    assert await policy.threshold(alice) == 7
    set_over(backend, ALICE, 12345)
    assert await policy.threshold(alice) in (7, 12345)  # the reload starts now, beside the caller
    assert policy._loading is not None
    await policy._loading
    assert await policy.threshold(alice) == 12345


def test_the_cli_sets_shows_and_removes_a_threshold(tmp_path: Path) -> None:
    site = tmp_path / "s"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([sys.executable, "-m", "mailsrv", *args, "-c", str(site / "mailsrv.toml")]
                           if args[0] != "init" else [sys.executable, "-m", "mailsrv", *args],
                           capture_output=True, text=True, timeout=60, env=env)
        assert not check or p.returncode == 0, p.stderr
        return p

    cli("init", "--dir", str(site), "--any-port", "--hostname", "mail.example.test")
    cfg = load(site / "mailsrv.toml")
    sd = open_sync(cfg.directory, cfg.server.data_dir)
    sd.add_domain("example.test")
    sd.add_user(ALICE)
    sd.close()
    cli("files", "convert", "example.test", "25M")
    cli("files", "convert", ALICE, "off")
    out = json.loads(cli("files", "convert", ALICE, "--json").stdout)
    assert out == {"default": 0, "applies": 0, "settings": [{"scope": "example.test", "convert_over": 25 * 1024**2},
                                                            {"scope": ALICE, "convert_over": 0}]}
    cli("files", "convert", ALICE, "default")
    assert json.loads(cli("files", "convert", ALICE, "--json").stdout)["applies"] == 25 * 1024**2
    text = cli("files", "convert").stdout
    assert "example.test\t26214400" in text and ALICE not in text
    bad = cli("files", "convert", ALICE, "lots", check=False)
    assert bad.returncode != 0 and "'off' or 'default'" in bad.stderr
    assert "no user" in cli("files", "convert", "bob@example.test", "1K", check=False).stderr
    # --as: a domain's administrator sees and changes their domain's and users' settings only
    sd = open_sync(cfg.directory, cfg.server.data_dir)
    sd.add_domain("other.test")
    sd.add_user(CAROL)
    sd.grant_admin(ALICE, "domain", "example.test")
    sd.close()
    cli("files", "convert", "other.test", "1K")
    cli("files", "convert", ALICE, "2K", "--as", ALICE)
    refused = cli("files", "convert", "other.test", "off", "--as", ALICE, check=False)
    assert refused.returncode != 0 and "not in your scope" in refused.stderr
    assert cli("files", "convert", CAROL, "--as", ALICE, check=False).returncode != 0
    assert json.loads(cli("files", "convert", "--json", "--as", ALICE).stdout)["settings"] == [
        {"scope": "example.test", "convert_over": 25 * 1024**2}, {"scope": ALICE, "convert_over": 2048}]
    assert "not an administrator" in cli("files", "convert", "--as", CAROL, check=False).stderr


async def test_a_jmap_submission_follows_the_users_setting(backend: DirectoryBackend) -> None:
    from types import SimpleNamespace

    from mailsrv.jmap.submission import DirectorySubmitter

    set_over(backend, CAROL, 10_000)  # on for carol only; [files] convert_over = 0
    sub = DirectorySubmitter(backend.directory, backend.local.store, backend.local.data_dir)
    sub.convert_with(backend.files, 0, "https://x")
    for sender, links in ((ALICE, 0), (CAROL, 1)):
        acct = await backend.directory.account_by_address(sender)
        _, out = await sub.submit_queued(SimpleNamespace(account=acct, id=str(acct.id)),
                                         message(b"j" * 40_000), sender, [BOB])
        assert out[BOB][0] == "yes" and len(rows(backend)) == links
