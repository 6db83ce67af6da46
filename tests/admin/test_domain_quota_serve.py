"""The domain quota root under `mailsrv serve` as the worker wires it: limits from the directory, usage
freed when the admin API deletes a user (issue 3)."""

from __future__ import annotations

import json
import smtplib
from pathlib import Path

from support.admin import call, cli
from support.server import ServerProcess, init_setup, wait_until

MSG = b"Subject: q\r\n\r\n" + b"x" * 3000 + b"\r\n"


def usage(config: Path) -> dict:
    return json.loads(cli(config, "quota", "show", "example.test", "--json"))


def test_domain_limit_enforced_and_freed_by_admin_delete(tmp_path: Path) -> None:
    config = init_setup(tmp_path / "s", "--demo", workers=2)
    cli(config, "user", "add", "carol@example.test", "--no-password")
    # room for two messages with their trace headers, not three
    cli(config, "domain", "set", "example.test", "--max-storage", str(2 * len(MSG) + 1500))
    cli(config, "admin", "grant", "alice@example.test", "super")
    token = json.loads(cli(config, "token", "issue", "alice@example.test", "--scope", "admin", "--json"))["token"]
    server = ServerProcess(config).wait_ready()
    try:
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"]) as c:
            c.ehlo("client.test")
            c.sendmail("a@remote.test", ["alice@example.test"], MSG)
            c.sendmail("a@remote.test", ["bob@example.test"], MSG)
        wait_until(lambda: usage(config)["messages"] == 2)  # counted by the background indexer
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"]) as c:
            c.ehlo("client.test")
            c.mail("a@remote.test", [f"SIZE={len(MSG)}"])
            code, text = c.rcpt("carol@example.test")
            assert (code, text[:5]) == (452, b"4.2.2")  # the domain is full, though carol has no quota
        status, out = call(server.ports["admin"], "DELETE", "/users/bob@example.test", token)
        assert status == 200, out
        assert usage(config)["messages"] == 1  # bob's mail left the domain's total with him
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"]) as c:
            c.ehlo("client.test")
            assert c.sendmail("a@remote.test", ["carol@example.test"], MSG) == {}
        wait_until(lambda: usage(config)["messages"] == 2)
    finally:
        assert server.stop() == 0
