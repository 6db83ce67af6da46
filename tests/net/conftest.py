"""Fixtures of the tests/net connection and listener tests: TLS contexts of a test CA, the log captured."""

from __future__ import annotations

import io
import ssl
import sys
from collections.abc import Iterator

import pytest
import trustme

from mailsrv import log


@pytest.fixture(scope="module")
def contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts: the server's certificate for localhost, trusted by the client."""
    ca = trustme.CA()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx


@pytest.fixture
def captured_log() -> Iterator[io.StringIO]:
    """Everything logged (debug and up) during the test."""
    buf = io.StringIO()
    log.configure("debug", buf)
    yield buf
    log.flush()
    log.configure("info", sys.stderr)
