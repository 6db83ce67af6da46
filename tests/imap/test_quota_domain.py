"""RFC 9208 quota roots over a real server: the user's root "" and the domain's root (issue 3)."""

from __future__ import annotations

import imaplib
from pathlib import Path
from typing import Any

from imaptest import start_server

from mailsrv.auth import Authenticator
from mailsrv.auth.passwords import Hasher
from mailsrv.config import AuthConfig, DirectoryConfig
from mailsrv.directory import open_directory, open_sync
from mailsrv.store import Store

AUTH = AuthConfig(allow_plaintext_loopback=True, argon2_time_cost=1, argon2_memory_kib=256)
MSG = b"From: a@example.test\r\nSubject: q\r\n\r\n" + b"x" * 3000 + b"\r\n"


def test_getquotaroot_names_the_domain_root_and_append_respects_it(tmp_path: Path) -> None:
    dcfg = DirectoryConfig()
    sd = open_sync(dcfg, tmp_path)
    sd.add_domain("example.test")
    pw, scram = Hasher(AUTH).make("wonderland")
    sd.add_user("alice@example.test", password_hash=pw, scram=scram, quota_bytes=8 * 1024)
    sd.add_user("bob@example.test", password_hash=pw, scram=scram, quota_bytes=8 * 1024)
    # overbooked on purpose (the directory refuses that for new users; an operator may lower the limit later)
    sd.set_domain("example.test", max_storage=10 * 1024)
    sd.close()
    objects: dict[str, Any] = {}

    async def setup() -> tuple[Any, Any]:
        d = objects["directory"] = open_directory(dcfg, tmp_path)
        store = Store(None, tmp_path)
        store.set_domain_quota_source(d.domain_quota)  # as the worker wires it
        return Authenticator(d, AUTH), store

    async def teardown(store: Store) -> None:
        await store.close()
        await objects["directory"].close()

    handle, stop = start_server(setup=setup, teardown=teardown, data_dir=tmp_path)
    try:
        bob = imaplib.IMAP4(handle.host, handle.port, timeout=20)
        bob.login("bob@example.test", "wonderland")
        assert bob.append("INBOX", None, None, MSG)[0] == "OK"
        c = imaplib.IMAP4(handle.host, handle.port, timeout=20)
        c.login("alice@example.test", "wonderland")
        assert c.append("INBOX", None, None, MSG)[0] == "OK"
        typ, data = c.getquotaroot("INBOX")
        assert typ == "OK"
        roots, quotas = data
        assert roots == [b'INBOX "" example.test']
        assert quotas == [b'"" (STORAGE 3 8)', b"example.test (STORAGE 6 10)"]
        assert c.getquota("example.test") == ("OK", [b"example.test (STORAGE 6 10)"])
        assert c.getquota('"other.test"')[0] == "NO"
        # alice's own quota has room for one more, the domain's (10 KiB) does too ...
        assert c.append("INBOX", None, None, MSG)[0] == "OK"
        # ... then bob's own quota has room, the domain root refuses (RFC 9208 §4.1 OVERQUOTA)
        typ, data = bob.append("INBOX", None, None, MSG)
        assert typ == "NO" and b"OVERQUOTA" in data[0]
        assert bob.append("INBOX", None, None, b"Subject: s\r\n\r\nsmall\r\n")[0] == "OK"
        bob.logout()
        c.logout()
    finally:
        stop()
