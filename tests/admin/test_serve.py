"""End to end: `mailsrv serve` with an admin listener (2 workers), driven over HTTP with a CLI-issued token."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from support.server import ServerProcess, init_setup, mailsrv_cmd


def cli(config: Path, *args: str) -> str:
    p = subprocess.run(mailsrv_cmd(*args, "-c", str(config)), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout


def call(port: int, method: str, path: str, token: str | None = None, body: dict | None = None) -> tuple[int, object]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


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
