"""A small outbound SMTP client (RFC 5321 client side) for the queue runner.

Streams the message file from disk with dot-stuffing, never holding it whole;
opportunistic or required STARTTLS (RFC 3207), AUTH (RFC 4954: SCRAM-SHA-256,
PLAIN or LOGIN, never over plain text unless the route allows it) toward a
smarthost, DSN parameters passed on when the server offers DSN (RFC 3461 §5).
Every wait is bounded by the configured timeouts.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from mailsrv.queue import sasl_client
from mailsrv.queue.store import Envelope, QRcpt

# RFC 5321 §4.5.3.2: client timeouts (initial 5 min, MAIL 5, RCPT 5, DATA init 2, block 3, end 10 min).
DATA_END_TIMEOUT = 600.0
MAX_REPLY_LINES = 100
READ_BLOCK = 256 * 1024
#: SASL challenges answered before we give up on a server that keeps asking.
MAX_AUTH_ROUNDS = 5


class OutboundError(Exception):
    """The conversation failed. ``code`` is the SMTP reply code, 0 for network/TLS errors (temporary)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code} {text}" if code else text)
        self.code = code
        self.text = text

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600

    @property
    def diag(self) -> str:
        return f"{self.code} {self.text}" if self.code else f"4.4.1 {self.text}"


@dataclass(frozen=True)
class Reply:
    code: int
    text: str

    @property
    def diag(self) -> str:
        return f"{self.code} {self.text}"


class SmtpClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str,
                 timeout: float) -> None:
        self.reader = reader
        self.writer = writer
        self.host = host
        self.timeout = timeout
        self.extensions: dict[str, str] = {}
        self.tls = False

    @classmethod
    async def connect(cls, host: str, port: int, *, connect_timeout: float, implicit_tls: ssl.SSLContext | None = None,
                      server_hostname: str | None = None) -> SmtpClient:
        try:
            async with asyncio.timeout(connect_timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=implicit_tls, server_hostname=server_hostname if implicit_tls else None,
                    limit=65536,
                )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise OutboundError(0, f"cannot connect to {host}:{port}: {exc or type(exc).__name__}") from None
        client = cls(reader, writer, host, connect_timeout)
        client.tls = implicit_tls is not None
        greet = await client.read_reply(connect_timeout)
        if greet.code != 220:
            await client.close()
            raise OutboundError(greet.code, greet.text)
        return client

    async def read_reply(self, wait: float | None = None) -> Reply:
        lines: list[str] = []
        try:
            async with asyncio.timeout(wait or self.timeout):
                while True:
                    line = await self.reader.readline()
                    if not line.endswith(b"\n"):
                        raise OutboundError(0, f"{self.host} closed the connection")
                    if len(line) < 4 or not line[:3].isdigit() or len(lines) > MAX_REPLY_LINES:
                        raise OutboundError(0, f"{self.host} sent a malformed reply")
                    lines.append(line[4:].rstrip(b"\r\n").decode("utf-8", "replace"))
                    if line[3:4] != b"-":
                        return Reply(int(line[:3]), "\n".join(lines))
        except TimeoutError:
            raise OutboundError(0, f"timeout waiting for {self.host}") from None
        except (OSError, ssl.SSLError) as exc:
            raise OutboundError(0, f"connection to {self.host} broke: {exc}") from None

    async def command(self, line: str | bytes, wait: float | None = None) -> Reply:
        data = line.encode("utf-8") if isinstance(line, str) else line
        try:
            self.writer.write(data + b"\r\n")
            await self.writer.drain()
        except (OSError, ssl.SSLError) as exc:
            raise OutboundError(0, f"connection to {self.host} broke: {exc}") from None
        return await self.read_reply(wait)

    async def ehlo(self, name: str) -> None:
        r = await self.command(f"EHLO {name}")
        if r.code != 250:
            r = await self.command(f"HELO {name}")
            if r.code != 250:
                raise OutboundError(r.code, r.text)
            self.extensions = {}
            return
        ext = {}
        for item in r.text.split("\n")[1:]:
            key, _, value = item.partition(" ")
            ext[key.upper()] = value
        self.extensions = ext

    async def starttls(self, ctx: ssl.SSLContext, server_hostname: str) -> None:
        r = await self.command("STARTTLS")
        if r.code != 220:
            raise OutboundError(r.code, r.text)
        try:
            await self.writer.start_tls(ctx, server_hostname=server_hostname)
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            raise OutboundError(0, f"TLS handshake with {self.host} failed: {exc}") from None
        self.tls = True

    async def authenticate(self, user: str, password: str, *, allow_plaintext: bool = False) -> str:
        """AUTH with the best mechanism the server offers (SCRAM-SHA-256 > PLAIN > LOGIN); returns its name.

        Refuses to send credentials over an unencrypted connection unless ``allow_plaintext``.
        Every failure is temporary (code 454 or 0): wrong relay credentials are an
        operator's problem, and bouncing the mail would not fix them (Postfix's
        smtp_sasl_auth_soft_bounce does the same).
        """
        if not self.tls and not allow_plaintext:
            raise OutboundError(0, f"{self.host}: not sending AUTH credentials over plain text "
                                   "(route needs tls or auth_plaintext = true)")
        mech = sasl_client.choose(self.extensions.get("AUTH", ""), user, password)
        if mech is None:
            raise OutboundError(0, f"{self.host} offers no AUTH mechanism we use "
                                   f"({' / '.join(sasl_client.PREFERENCE)}); offered: "
                                   f"{self.extensions.get('AUTH', 'none')!r}")
        try:
            initial = mech.start()
            # RFC 4954 §4: an empty initial response is sent as "="
            line = f"AUTH {mech.name}"
            if initial is not None:
                line += " " + (base64.b64encode(initial).decode() or "=")
            r = await self.command(line)
            rounds = 0
            while r.code == 334 and rounds < MAX_AUTH_ROUNDS:
                rounds += 1
                try:
                    challenge = base64.b64decode(r.text.strip(), validate=True)
                except ValueError:
                    raise sasl_client.SaslError("challenge is not base64") from None
                r = await self.command(base64.b64encode(mech.step(challenge)))
            if r.code != 235:
                raise OutboundError(454, f"4.7.0 AUTH {mech.name} at {self.host} failed: {r.code} {r.text}")
            mech.done(None)
        except sasl_client.SaslError as exc:
            raise OutboundError(0, f"AUTH {mech.name} with {self.host} failed: {exc}") from None
        return mech.name

    async def send(self, env: Envelope, rcpts: list[QRcpt], message: Path,
                   prefix: bytes = b"", size: int = 0) -> tuple[dict[str, Reply], Reply | None]:
        """One transaction. Returns per-recipient RCPT replies and the DATA reply (None if no RCPT took).

        Raises OutboundError when MAIL fails or the connection breaks.
        """
        dsn = "DSN" in self.extensions
        params = []
        if "SIZE" in self.extensions:
            params.append(f"SIZE={size + len(prefix)}")
        if env.body == "8BITMIME" and "8BITMIME" in self.extensions:
            params.append("BODY=8BITMIME")
        if env.smtputf8:
            if "SMTPUTF8" not in self.extensions:
                # RFC 6531 §3.2: cannot downgrade; a permanent failure
                raise OutboundError(553, "5.6.7 remote server does not support SMTPUTF8")
            params.append("SMTPUTF8")
        if dsn:
            # RFC 3461 §4.3, §4.4: carried on to a DSN-capable server
            if env.ret:
                params.append(f"RET={env.ret}")
            if env.envid:
                params.append(f"ENVID={xtext(env.envid)}")
        mail = await self.command(f"MAIL FROM:<{env.sender}>" + "".join(" " + p for p in params))
        if mail.code != 250:
            raise OutboundError(mail.code, mail.text)
        results: dict[str, Reply] = {}
        for r in rcpts:
            extra = ""
            if dsn and r.notify:
                extra += " NOTIFY=" + ",".join(r.notify)
            if dsn and r.orcpt:
                atype, _, addr = r.orcpt.partition(";")
                extra += f" ORCPT={atype};{xtext(addr)}"
            results[r.addr] = await self.command(f"RCPT TO:<{r.addr}>{extra}")
        if not any(rep.code in (250, 251) for rep in results.values()):
            await self.command("RSET")
            return results, None
        start = await self.command("DATA", 120)
        if start.code != 354:
            raise OutboundError(start.code, start.text)
        try:
            async for block in _stuffed(message, prefix):
                self.writer.write(block)
                async with asyncio.timeout(180):
                    await self.writer.drain()
        except (OSError, ssl.SSLError) as exc:
            raise OutboundError(0, f"connection to {self.host} broke in DATA: {exc}") from None
        except TimeoutError:
            raise OutboundError(0, f"timeout sending data to {self.host}") from None
        end = await self.read_reply(DATA_END_TIMEOUT)
        return results, end

    async def quit(self) -> None:
        try:
            await self.command("QUIT", 10)
        except OutboundError:
            pass
        await self.close()

    async def close(self) -> None:
        try:
            self.writer.close()
            async with asyncio.timeout(5):
                await self.writer.wait_closed()
        except (OSError, ssl.SSLError, TimeoutError):
            pass


def xtext(value: str) -> str:
    """RFC 3461 §4 xtext encoding."""
    return "".join(c if 33 <= ord(c) <= 126 and c not in "+=" else f"+{ord(c):02X}" for c in value)


def strip_return_path(head: bytes) -> bytes:
    """RFC 5321 §4.4: Return-Path is added at final delivery; a relay must not pass ours on."""
    if head[:12].lower() == b"return-path:":
        end = head.find(b"\r\n")
        while end >= 0 and head[end + 2 : end + 3] in (b" ", b"\t"):
            end = head.find(b"\r\n", end + 2)
        return head[end + 2 :] if end >= 0 else head
    return head


async def _open_in_thread(loop: asyncio.AbstractEventLoop, path: Path) -> BinaryIO:
    """``open(path, "rb")`` in a thread; a caller cancelled meanwhile does not leak the file the thread
    opens after all (a delivery cancelled by a hold, a delete or shutdown)."""
    job = loop.run_in_executor(None, open, path, "rb")
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:
        job.add_done_callback(_close_result)
        raise


def _close_result(job: asyncio.Future[Any]) -> None:
    if not job.cancelled() and job.exception() is None:
        job.result().close()


async def _stuffed(path: Path, prefix: bytes) -> AsyncIterator[bytes]:
    """The message file dot-stuffed (RFC 5321 §4.5.2) with the end marker, in blocks, read in a thread."""
    loop = asyncio.get_running_loop()
    fh = await _open_in_thread(loop, path)
    try:
        first = True
        carry = b""
        while True:
            block = await loop.run_in_executor(None, fh.read, READ_BLOCK)
            if first:
                block = prefix + strip_return_path(block)
                if block.startswith(b"."):
                    block = b"." + block
                first = False
            if not block:
                break
            buf = carry + block
            # hold back a trailing CR or CRLF so a "\r\n." split across blocks is still seen
            if buf.endswith(b"\r\n"):
                keep = 2
            elif buf.endswith(b"\r"):
                keep = 1
            else:
                keep = 0
            body, carry = (buf[:-keep], buf[-keep:]) if keep else (buf, b"")
            if carry == b"\r\n" and not body:
                continue
            if body:
                # a line start hidden at the block edge: carry "\r\n" then "." at block start
                yield body.replace(b"\r\n.", b"\r\n..")
        tail = carry
        if not tail.endswith(b"\r\n"):
            tail += b"\r\n"
        yield tail + b".\r\n"
    finally:
        fh.close()  # read-only: no data to flush; never skipped by a cancel, unlike an awaited close
