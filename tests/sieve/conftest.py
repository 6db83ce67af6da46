"""An aiosmtpd sink on 127.0.0.1:0 in this process (a loop thread): what the queue relays to "remote.test"
(redirects, vacation replies), with its envelope."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP
from support.loopthread import LoopThread

sys.path.insert(0, str(Path(__file__).parent))

from sievesink import Sink


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    lt = LoopThread()
    s = Sink()

    async def start() -> Any:
        import asyncio

        server = await asyncio.get_running_loop().create_server(
            lambda: SMTP(s, hostname="sink.test", data_size_limit=0), "127.0.0.1", 0)
        return server

    server = lt.run(start())
    s.port = server.sockets[0].getsockname()[1]
    yield s

    async def stop() -> None:
        server.close()
        await server.wait_closed()

    lt.run(stop())
    lt.stop()
