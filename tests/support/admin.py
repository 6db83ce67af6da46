"""Driving a `mailsrv serve` admin listener and the CLI from tests (synchronous, stdlib only)."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from support.server import mailsrv_cmd


def cli(config: Path, *args: str) -> str:
    """Run `mailsrv ARGS -c CONFIG` as an operator would; its stdout (it must succeed)."""
    p = subprocess.run(mailsrv_cmd(*args, "-c", str(config)), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout


def call(port: int, method: str, path: str, token: str | None = None, body: dict | None = None) -> tuple[int, object]:
    """One admin API request on 127.0.0.1:PORT; (HTTP status, decoded JSON body)."""
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
