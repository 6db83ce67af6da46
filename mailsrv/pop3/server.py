"""POP3 listener service (placeholder until the POP3 issue lands: greets, CAPA, NOOP, QUIT)."""

from __future__ import annotations

from mailsrv import log
from mailsrv.net.connection import (
    Connection,
    ConnectionClosed,
    IdleTimeout,
    LineTooLong,
    ServerShutdown,
)
from mailsrv.net.service import ServiceContext

logger = log.get("pop3")


class Pop3Service:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    async def refuse(self, conn: Connection, reason: str) -> None:
        # RFC 2449 §8.1.2: [SYS/TEMP] marks a transient system problem.
        await conn.send(f"-ERR [SYS/TEMP] {reason}\r\n".encode())

    async def handle(self, conn: Connection) -> None:
        await conn.send(b"+OK " + self.ctx.hostname.encode() + b" mailsrv POP3 ready\r\n")
        while True:
            try:
                line = await conn.readline()
            except LineTooLong:
                await conn.send(b"-ERR Line too long\r\n")
                continue
            except ServerShutdown:
                await conn.send(b"-ERR [SYS/TEMP] Server shutting down\r\n")
                return
            except (IdleTimeout, ConnectionClosed):
                return
            verb = line.strip().split(b" ", 1)[0].upper()
            if verb == b"QUIT":
                await conn.send(b"+OK Bye\r\n")
                return
            if verb == b"CAPA":
                await conn.send(b"+OK Capability list follows\r\nIMPLEMENTATION mailsrv\r\n.\r\n")
            elif verb == b"NOOP":
                await conn.send(b"+OK\r\n")
            else:
                await conn.send(b"-ERR Command not implemented\r\n")


def make_service(ctx: ServiceContext) -> Pop3Service:
    return Pop3Service(ctx)
