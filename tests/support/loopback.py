"""A :class:`Connection` over a real loopback socket, with the client's side, for connection tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from mailsrv.net.connection import Connection


@contextlib.asynccontextmanager
async def connection_pair(*, max_line_length: int, idle_timeout: float, limit: int | None = None
                          ) -> AsyncIterator[tuple[Connection, asyncio.StreamReader, asyncio.StreamWriter]]:
    """(the server side's Connection, the client's reader and writer) on 127.0.0.1:0; ``limit``: the
    server reader's buffer limit (asyncio's default when None). Everything is closed on exit."""
    got: asyncio.Future[Connection] = asyncio.get_running_loop().create_future()
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.set_result(Connection(reader, writer, listener="t", max_line_length=max_line_length,
                                  idle_timeout=idle_timeout))
        await done.wait()

    kwargs = {} if limit is None else {"limit": limit}
    server = await asyncio.start_server(handle, "127.0.0.1", 0, **kwargs)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = await asyncio.wait_for(got, 10)
    try:
        yield conn, reader, writer
    finally:
        done.set()
        writer.close()
        await conn.close()
        server.close()
        await server.wait_closed()
