"""SieveScript/* is the caller's own: never announced on or served for an account shared with them; off with Sieve."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from jmaptest import Client, FakeAccount, FakeGrant, Server

from mailsrv.config import SieveConfig
from mailsrv.sieve import scripts

SIEVE = "urn:ietf:params:jmap:sieve"
USING = ["urn:ietf:params:jmap:core", SIEVE]


async def test_sieve_capability_own_account_only(tmp_path: Path) -> None:
    server = Server(tmp_path)
    server.app.sieve = SieveConfig(max_scripts=3)
    server.shared["1"] = [FakeGrant(FakeAccount(2, "bob@example.test"), read_only=False)]
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            c = Client(server, http)
            async with http.get(server.url + "/jmap/session", headers=c.headers) as r:
                session = await r.json()
            assert session["primaryAccounts"][SIEVE] == "a1"
            assert session["accounts"]["a1"]["accountCapabilities"][SIEVE]["maxNumberScripts"] == 3
            assert SIEVE not in session["accounts"]["a2"]["accountCapabilities"]
            shared, own = await c.call(["SieveScript/get", {"accountId": "a2"}, "s"],
                                       ["SieveScript/get", {"accountId": "a1"}, "o"], using=USING)
            assert shared[0] == "error" and shared[1]["type"] == "accountNotSupportedByMethod"
            assert own[0] == "error" and own[1]["type"] == "serverUnavailable"  # in-memory mail: no script files
            server.app.sieve = None  # [sieve] enabled = false
            async with http.get(server.url + "/jmap/session", headers=c.headers) as r:
                session = await r.json()
            assert SIEVE not in session["capabilities"] and SIEVE not in session["primaryAccounts"]
            (off,) = await c.call(["SieveScript/get", {"accountId": "a1"}, "o"], using=USING)
            assert off[0] == "error" and off[1]["type"] == "serverUnavailable"
    finally:
        await server.stop()


def test_create_never_replaces(tmp_path: Path) -> None:
    """SieveScript/set create stores through scripts.create_script: a name taken meanwhile (ManageSieve) stays."""
    scripts.put_script(tmp_path, "main", "keep;\n")
    with pytest.raises(scripts.ScriptExists):
        scripts.create_script(tmp_path, "main", "discard;\n")
    assert scripts.get_script(tmp_path, "main") == "keep;\n"
    scripts.create_script(tmp_path, "other", "discard;\n")
    assert scripts.list_scripts(tmp_path) == [("main", False), ("other", False)]
