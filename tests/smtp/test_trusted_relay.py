"""A client on the policy's skip_networks (its MAIL/RCPT skip the policy's calls) is no relay: only the
listener's trusted_networks or an authenticated user may send outside (RFC 5321 §3.6.2, open relays)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailsrv.config import Config, PolicyConfig, ServerConfig, SmtpConfig
from mailsrv.directory import open_directory, open_sync
from mailsrv.net.dns import Resolver
from mailsrv.policy.pipeline import Policy
from mailsrv.smtp.backend import SessionInfo
from mailsrv.smtp.grammar import SmtpError
from mailsrv.smtp.session import Session
from mailsrv.smtp.wiring import DirectoryBackend
from mailsrv.store import Store


async def test_a_skip_networks_client_may_not_relay_unless_trusted(tmp_path: Path) -> None:
    cfg = Config(server=ServerConfig(data_dir=tmp_path, hostname="mx.example.test"))
    sd = open_sync(cfg.directory, tmp_path)
    sd.add_domain("example.test")
    sd.add_user("alice@example.test")
    directory = open_directory(cfg.directory, tmp_path)
    store = Store(cfg.store, tmp_path, hostname="mx.example.test")
    policy = Policy(PolicyConfig(skip_networks=("127.0.0.0/8",), spf=False, dmarc=False), hostname="mx.example.test",
                    resolver=Resolver(["127.0.0.1:1"]), state=None)
    try:
        backend = DirectoryBackend(directory, store, tmp_path)
        for trusted in (False, True):  # trusted: the listener's trusted_networks (mynetworks)
            info = SessionInfo(sid="s1", hostname="mx.example.test", listener="smtp", peer_ip="127.0.0.1",
                               trusted=trusted)
            ps = policy.session(client_ip="127.0.0.1", listener="smtp", trusted=trusted)
            assert ps.outbound and not ps.envelope_checked  # the policy skips this client's envelope
            session = Session(info, SmtpConfig(), backend, policy=ps)
            await session.command(b"EHLO client.test\r\n")
            await session.command(b"MAIL FROM:<someone@remote.test>\r\n")
            assert (await session.command(b"RCPT TO:<alice@example.test>\r\n")).reply.startswith(b"250")
            if trusted:
                assert (await session.command(b"RCPT TO:<x@remote.test>\r\n")).reply.startswith(b"250")
            else:
                with pytest.raises(SmtpError) as e:
                    await session.command(b"RCPT TO:<x@remote.test>\r\n")
                assert (e.value.code, e.value.enh) == (554, "5.7.1")  # relay access denied
            session.abort()
    finally:
        policy.close()
        await store.close()
        await directory.close()
