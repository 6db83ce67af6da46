"""SMTP listener service (placeholder until the SMTP issue lands: greets, NOOP, QUIT)."""

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

logger = log.get("smtp")


class SmtpService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    async def refuse(self, conn: Connection, reason: str) -> None:
        # RFC 5321 §3.1: 421 at connection time when the service is not available.
        await conn.send(f"421 4.7.0 {self.ctx.hostname} {reason}, try again later\r\n".encode())

    async def handle(self, conn: Connection) -> None:
        host = self.ctx.hostname
        await conn.send(f"220 {host} ESMTP mailsrv\r\n".encode())
        while True:
            try:
                line = await conn.readline()
            except LineTooLong:
                # RFC 5321 §4.5.3.1.4
                await conn.send(b"500 5.5.2 Line too long\r\n")
                continue
            except ServerShutdown:
                await conn.send(f"421 4.3.2 {host} shutting down\r\n".encode())
                return
            except IdleTimeout:
                await conn.send(f"421 4.4.2 {host} idle timeout\r\n".encode())
                return
            except ConnectionClosed:
                return
            verb = line.strip().split(b" ", 1)[0].upper()
            if verb == b"QUIT":
                await conn.send(f"221 2.0.0 {host} closing connection\r\n".encode())
                return
            if verb == b"NOOP":
                await conn.send(b"250 2.0.0 OK\r\n")
            else:
                await conn.send(b"502 5.5.1 Command not implemented\r\n")


def make_service(ctx: ServiceContext) -> SmtpService:
    return SmtpService(ctx)
