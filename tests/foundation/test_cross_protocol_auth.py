"""One directory guards every protocol: the same credentials everywhere, one lockout everywhere.

A real ``mailsrv serve`` (two workers) with the demo users; real clients:
smtplib, imaplib, poplib and aiohttp (JMAP), all over TLS.
"""

from __future__ import annotations

import asyncio
import base64
import imaplib
import poplib
import re
import smtplib
import subprocess
from pathlib import Path

import aiohttp
import pytest
from support.server import init_setup, mailsrv_cmd, serve_users


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("xauth")
    cfg = init_setup(base / "s", "--demo", workers=2)
    users = dict(re.findall(r"demo user (\S+) password (\S+)", (base / "s" / "demo-users.txt").read_text()))
    srv = serve_users(cfg, users)
    yield srv
    assert srv.stop() == 0


def smtp_login(srv, user: str, password: str) -> int:
    with smtplib.SMTP_SSL("127.0.0.1", srv.ports["submissions"], context=srv.ctx, timeout=30) as s:
        try:
            code, _ = s.login(user, password)
        except smtplib.SMTPAuthenticationError as exc:
            return exc.smtp_code
        return code


def imap_login(srv, user: str, password: str) -> bool:
    m = imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=srv.ctx, timeout=30)
    try:
        m.login(user, password)
    except imaplib.IMAP4.error:
        return False
    finally:
        try:
            m.logout()
        except (imaplib.IMAP4.abort, OSError):
            pass
    return True


def pop3_login(srv, user: str, password: str) -> bool:
    p = poplib.POP3_SSL("127.0.0.1", srv.ports["pop3s"], context=srv.ctx, timeout=30)
    try:
        p.user(user)
        p.pass_(password)
    except poplib.error_proto:
        return False
    finally:
        try:
            p.quit()
        except (poplib.error_proto, OSError):
            pass
    return True


def jmap_status(srv, *, basic: tuple[str, str] | None = None, bearer: str | None = None) -> int:
    async def go() -> int:
        headers = {}
        if basic:
            headers["Authorization"] = "Basic " + base64.b64encode(":".join(basic).encode()).decode()
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.get(f"https://127.0.0.1:{srv.ports['jmaps']}/.well-known/jmap", ssl=srv.ctx) as r:
                await r.read()
                return r.status

    return asyncio.run(go())


def test_same_credentials_on_every_protocol(server) -> None:
    user, pw = "alice@example.test", server.users["alice@example.test"]
    assert smtp_login(server, user, pw) == 235
    assert imap_login(server, user, pw)
    assert pop3_login(server, user, pw)
    assert jmap_status(server, basic=(user, pw)) == 200
    token = subprocess.run(mailsrv_cmd("token", "issue", user, "--scope", "mail", "-c", str(server.config)),
                           capture_output=True, text=True, check=True).stdout.split()[-1]
    assert jmap_status(server, bearer=token) == 200
    assert jmap_status(server, bearer=token + "x") == 401
    # a wrong password is refused everywhere, with nothing that tells the account exists
    assert smtp_login(server, user, "wrong") == 535
    assert not imap_login(server, user, "wrong")
    assert not pop3_login(server, user, "wrong")
    assert jmap_status(server, basic=(user, "wrong")) == 401
    # (smtplib tried two mechanisms: that made five failures, which locks alice; unlock her)
    subprocess.run(mailsrv_cmd("lockout", "clear", user, "-c", str(server.config)), check=True, capture_output=True)
    assert imap_login(server, user, pw)


def test_lockout_on_one_protocol_refuses_the_others_across_workers(server) -> None:
    user, pw = "bob@example.test", server.users["bob@example.test"]
    assert imap_login(server, user, pw)
    # auth.account_failures = 5 (default): fail five times over IMAP; the kernel spreads
    # these connections over both workers, so the count is shared state, not memory.
    for _ in range(5):
        assert not imap_login(server, user, "guess")
    # now even the right password is refused, on every protocol
    assert not imap_login(server, user, pw)
    assert smtp_login(server, user, pw) == 535
    assert not pop3_login(server, user, pw)
    assert jmap_status(server, basic=(user, pw)) == 401
    # the lock is per account: alice, from the same address, still gets in
    assert imap_login(server, "alice@example.test", server.users["alice@example.test"])
    # and the operator can lift it
    subprocess.run(mailsrv_cmd("lockout", "clear", user, "-c", str(server.config)), check=True, capture_output=True)
    assert pop3_login(server, user, pw)
    assert smtp_login(server, user, pw) == 235


def test_login_networks_refuse_other_addresses(server, tmp_path: Path) -> None:
    user, pw = "alice@example.test", server.users["alice@example.test"]
    run = subprocess.run(mailsrv_cmd("user", "set", user, "--networks", "192.0.2.0/24", "-c", str(server.config)),
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    try:
        assert not imap_login(server, user, pw)  # 127.0.0.1 is outside 192.0.2.0/24: same neutral answer
        assert smtp_login(server, user, pw) == 535
    finally:
        subprocess.run(mailsrv_cmd("user", "set", user, "--networks", "", "-c", str(server.config)), check=True,
                       capture_output=True)
    assert imap_login(server, user, pw)
