"""Queue test harness: aiosmtpd sinks on 127.0.0.1:0 and a config pointing routes at them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from mailsrv.config import Config, QueueConfig, RouteConfig, ServerConfig
from mailsrv.queue.dkim import Signer
from mailsrv.queue.runner import QueueRunner


@dataclass
class Received:
    sender: str
    rcpts: list[str]
    data: bytes


@dataclass
class SinkHandler:
    """Records messages; ``rcpt_script[addr]`` is a list of replies to give on successive RCPTs."""

    received: list[Received] = field(default_factory=list)
    rcpt_script: dict[str, list[str]] = field(default_factory=dict)
    data_gate: asyncio.Event | None = None
    in_data: asyncio.Event = field(default_factory=asyncio.Event)
    hide: tuple[str, ...] = ()  # EHLO keywords not to announce (e.g. "8BITMIME")
    smtputf8: bool = False  # announce SMTPUTF8 (as our own MTA does)
    mail_options: list[list[str]] = field(default_factory=list)
    connections: int = 0  # sessions opened so far
    open_now: int = 0
    open_peak: int = 0  # most sessions open at once
    in_data_now: int = 0

    def opened(self) -> None:
        self.connections += 1
        self.open_now += 1
        self.open_peak = max(self.open_peak, self.open_now)

    def closed(self) -> None:
        self.open_now -= 1

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        return [r for r in responses if r[4:].split(" ")[0].upper() not in self.hide]

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        script = self.rcpt_script.get(address)
        if script:
            answer = script.pop(0)
            if not answer.startswith("250"):
                return answer
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.in_data.set()
        self.in_data_now += 1
        if self.data_gate is not None:
            await self.data_gate.wait()
        self.in_data_now -= 1
        data = envelope.original_content or b""
        sender = "" if envelope.mail_from in (None, "<>") else envelope.mail_from
        self.received.append(Received(sender, list(envelope.rcpt_tos), data))
        self.mail_options.append(list(envelope.mail_options))
        return "250 2.0.0 accepted by sink"


class CountingSMTP(SMTP):
    """aiosmtpd that tells its SinkHandler when sessions open and close."""

    def connection_made(self, transport: Any) -> None:
        self.event_handler.opened()
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.event_handler.closed()
        super().connection_lost(exc)


async def start_sink(handler: SinkHandler) -> tuple[asyncio.Server, int]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: CountingSMTP(handler, hostname="sink.test", enable_SMTPUTF8=handler.smtputf8), "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def make_config(data_dir: Path, routes: dict[str, int], **queue: Any) -> Config:
    q = QueueConfig(
        route={d: RouteConfig(smarthost=f"127.0.0.1:{p}", tls="none") for d, p in routes.items()},
        **{"retry_schedule": (0.05,), "connect_timeout": 5.0, "command_timeout": 10.0, **queue},
    )
    return replace(Config(server=ServerConfig(data_dir=data_dir, hostname="mx.example.test")), queue=q)


async def wait_for(pred: Callable[[], bool], limit: float = 15.0) -> None:
    """Poll ``pred`` with a deadline (no fixed sleeps as synchronisation)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not pred():
        if loop.time() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.01)


async def local_example(domain: str) -> bool:
    return domain == "example.test"


async def run_scenario(tmp_path: Path, routes: dict[str, SinkHandler], body: Any, **queue: Any) -> Any:
    servers = {}
    ports = {}
    for domain, handler in routes.items():
        servers[domain], ports[domain] = await start_sink(handler)
    local = ports.pop("example.test", None)
    extra = dict(queue)
    if local is not None:
        extra["local_relay"] = f"127.0.0.1:{local}"
    cfg = make_config(tmp_path / "data", ports, **extra)
    runner = QueueRunner(cfg, is_local=local_example, signer=Signer.from_config(cfg))
    stop = asyncio.Event()
    task = asyncio.ensure_future(runner.run(stop))
    try:
        return await body(cfg, runner)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        for s in servers.values():
            s.close()
            await s.wait_closed()
