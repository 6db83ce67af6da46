"""tls-server-end-point channel binding: our server-side value equals scramp's, computed by a real TLS client."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import scramp
import trustme
from scramp.core import CBindData

from mailsrv.auth import (
    Authenticator,
    Challenge,
    ChannelBinding,
    Success,
    channel_binding,
    endpoint_binding_from_file,
)

from .conftest import PASSWORD


async def test_binding_matches_a_real_tls_client_and_scram_plus_succeeds(tmp_path: Path, auth: Authenticator) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("mail.example.test")
    pem = tmp_path / "cert.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(server_ctx)
    ours = endpoint_binding_from_file(pem)
    got: asyncio.Future[ChannelBinding | None] = asyncio.get_running_loop().create_future()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.set_result(channel_binding(writer.get_extra_info("ssl_object"), ssl.PEM_cert_to_DER_cert(
            cert.cert_chain_pems[0].bytes().decode())))
        await reader.read()
        writer.close()

    server = await asyncio.start_server(on_client, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx,
                                                   server_hostname="mail.example.test")
    client_sock = writer.get_extra_info("ssl_object")
    # scramp computes the binding from the peer certificate it received (asn1crypto + hashlib)
    client = scramp.ScramClient(["SCRAM-SHA-256-PLUS"], "alice@example.test", PASSWORD,
                                channel_binding=("tls-server-end-point", client_sock))
    theirs = CBindData.from_der(client_sock.getpeercert(binary_form=True)).data
    assert ours == ChannelBinding("tls-server-end-point", theirs)
    assert await got == ours
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    assert channel_binding(None, b"") is None

    s = auth.sasl("SCRAM-SHA-256-PLUS", protocol="imap", client_ip="127.0.0.1", tls=True, channel_binding=ours)
    step = await s.step(client.get_client_first().encode())
    assert isinstance(step, Challenge)
    client.set_server_first(step.data.decode())
    step = await s.step(client.get_client_final().encode())
    assert isinstance(step, Success) and step.data is not None
    client.set_server_final(step.data.decode())
