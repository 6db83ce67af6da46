"""IMAP listener service (placeholder until the IMAP issue lands: greets, CAPABILITY, NOOP, LOGOUT)."""

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

logger = log.get("imap")

CAPABILITY = b"IMAP4rev1"


class ImapService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    async def refuse(self, conn: Connection, reason: str) -> None:
        # RFC 9051 §7.1.5: BYE as the greeting rejects the connection.
        await conn.send(f"* BYE [UNAVAILABLE] {reason}\r\n".encode())

    async def handle(self, conn: Connection) -> None:
        await conn.send(b"* OK [CAPABILITY " + CAPABILITY + b"] " + self.ctx.hostname.encode() + b" mailsrv ready\r\n")
        while True:
            try:
                line = await conn.readline()
            except LineTooLong:
                await conn.send(b"* BAD [TOOBIG] Line too long\r\n")
                continue
            except ServerShutdown:
                await conn.send(b"* BYE [UNAVAILABLE] Server shutting down\r\n")
                return
            except IdleTimeout:
                await conn.send(b"* BYE Autologout; idle for too long\r\n")
                return
            except ConnectionClosed:
                return
            parts = line.strip().split(b" ")
            if len(parts) < 2:
                await conn.send(b"* BAD Missing command\r\n")
                continue
            tag, verb = parts[0], parts[1].upper()
            if verb == b"LOGOUT":
                await conn.send(b"* BYE Logging out\r\n" + tag + b" OK LOGOUT completed\r\n")
                return
            if verb == b"CAPABILITY":
                await conn.send(b"* CAPABILITY " + CAPABILITY + b"\r\n" + tag + b" OK CAPABILITY completed\r\n")
            elif verb == b"NOOP":
                await conn.send(tag + b" OK NOOP completed\r\n")
            else:
                await conn.send(tag + b" BAD Command not implemented\r\n")


def make_service(ctx: ServiceContext) -> ImapService:
    return ImapService(ctx)
