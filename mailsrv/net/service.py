"""What a protocol's ``make_service`` receives: configuration and the worker's shared objects."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any

from mailsrv.config import Config, ListenerConfig


@dataclass
class ServiceContext:
    """Everything a protocol service needs, built once per listener per worker.

    ``resources`` holds per-worker shared objects (the store, the directory,
    the queue client) by name; the worker fills it, the services read it.
    """

    config: Config
    name: str
    listener: ListenerConfig
    ssl_context: ssl.SSLContext | None
    resources: dict[str, Any] = field(default_factory=dict)

    @property
    def hostname(self) -> str:
        return self.config.server.hostname

    @property
    def starttls_context(self) -> ssl.SSLContext | None:
        """The context for an in-protocol upgrade, when this listener offers one."""
        return self.ssl_context if self.listener.tls == "starttls" else None
