"""End to end: `mailsrv serve` with an admin listener (2 workers), driven over HTTP with a CLI-issued token."""

from __future__ import annotations

import json
from pathlib import Path

from support.admin import call, cli
from support.server import ServerProcess, init_setup


def test_admin_listener_serves_the_api(tmp_path: Path) -> None:
    config = init_setup(tmp_path / "s", "--demo", workers=2)
    text = config.read_text()
    # only the admin API here: the mail protocols have their own end-to-end tests
    config.write_text(text[: text.index("[listener.")] + '[listener.admin]\nprotocol = "admin"\n'
                      'bind = ["127.0.0.1:0"]\ntls = "none"\n')
    cli(config, "admin", "grant", "alice@example.test", "super")
    token = json.loads(cli(config, "token", "issue", "alice@example.test", "--scope", "admin", "--json"))["token"]
    server = ServerProcess(config).wait_ready()
    try:
        port = server.ports["admin"]
        status, doc = call(port, "GET", "/openapi.json")
        assert status == 200 and isinstance(doc, dict) and doc["info"]["title"] == "mailsrv admin API"
        assert call(port, "GET", "/users")[0] == 401
        status, made = call(port, "POST", "/users", token, {"address": "zoe@example.test", "password": "zoe's password"})
        assert status == 200, made
        # every request may land on either worker; both see the new user at once
        for _ in range(6):
            status, shown = call(port, "GET", "/users/zoe@example.test", token)
            assert status == 200 and isinstance(shown, dict) and shown["address"] == "zoe@example.test"
        assert "zoe@example.test" in cli(config, "user", "list")
    finally:
        assert server.stop() == 0
