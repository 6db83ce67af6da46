"""convert_over per domain and per user under a real ``mailsrv serve`` ([files] convert_over = 0): set with
``mailsrv files convert`` before the start and while it runs (the worker sees the change within seconds,
no reload); and the download rate limit of its config, with curl."""

from __future__ import annotations

import email
import email.policy
import itertools
import os
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from support.server import ServerProcess, init_setup, mailsrv_cmd, serve_users, wait_until
from test_submission import ALICE, BASE, BOB, fetch, submit, with_attachment

SIZE = 120_000  # the attachment; the domain's threshold is under it


def convert(srv_cfg: Any, *args: str) -> None:
    p = subprocess.run(mailsrv_cmd("files", "convert", *args, "-c", str(srv_cfg)), capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("convert_scope")
    cfg = init_setup(base / "s", "--demo", workers=1)
    with open(cfg, "a") as f:
        f.write(f'\n[files]\nconvert_over = 0\npublic_url = "{BASE}"\ndownload_rate_per_ip = 2\n')
    convert(cfg, "example.test", "100K")  # the domain converts...
    convert(cfg, BOB, "off")  # ...but not for bob
    users = dict(re.findall(r"demo user (\S+) password (\S+)", (base / "s" / "demo-users.txt").read_text()))
    srv = serve_users(cfg, users)
    yield srv
    assert srv.stop() == 0


def sent_as_link(srv: ServerProcess, sender: str, subject: str) -> bool:
    rcpt = BOB if sender == ALICE else ALICE
    submit(srv, sender, rcpt, with_attachment(subject, os.urandom(SIZE), sender=sender))
    msg = email.message_from_bytes(fetch(srv, rcpt, subject), policy=email.policy.default)
    return not any(p.get_filename() == "figures.bin" for p in msg.walk())


def test_the_domains_threshold_and_a_users_own_apply(server: ServerProcess) -> None:
    assert sent_as_link(server, ALICE, "alice in a converting domain")
    assert not sent_as_link(server, BOB, "bob who is off")


def test_a_change_applies_without_a_reload(server: ServerProcess) -> None:
    convert(server.cfg, BOB, "default")  # bob inherits his domain's threshold again
    tries = itertools.count()
    wait_until(lambda: sent_as_link(server, BOB, f"bob after the change {next(tries)}"), timeout=60,
               interval=0.05)
    convert(server.cfg, "example.test", "off")
    wait_until(lambda: not sent_as_link(server, ALICE, f"alice after the domain went off {next(tries)}"),
               timeout=60, interval=0.05)


def test_downloads_past_the_configured_rate_get_429(server: ServerProcess, tmp_path: Any) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(b"x" * 1000)
    p = subprocess.run(mailsrv_cmd("files", "add", ALICE, str(src), "-c", str(server.cfg)), capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    url = p.stdout.splitlines()[0].replace(BASE, f"https://127.0.0.1:{server.ports['jmaps']}")

    def curl(*extra: str) -> str:
        out = subprocess.run(["curl", "-sS", "--cacert", str(server.cfg.parent / "tls" / "cert.pem"), "-o",
                              "/dev/null", "-D", "-", *extra, url], capture_output=True, text=True, timeout=60)
        return out.stdout.lower()

    assert curl().startswith("http/1.1 200") and curl("-I").startswith("http/1.1 200")  # HEAD counts too
    third = curl()
    assert third.startswith("http/1.1 429")
    wait = int(re.search(r"^retry-after: (\d+)", third, re.M).group(1))  # type: ignore[union-attr]
    assert 1 <= wait <= 30  # 2 a minute: the next one within 30 s
