"""Builds the worker's SMTP backend from the directory, the store and the queue (resources)."""

from __future__ import annotations

from mailsrv.net.service import ServiceContext
from mailsrv.smtp.backend import MailBackend


def build_backend(ctx: ServiceContext) -> MailBackend:
    raise RuntimeError("SMTP backend not wired yet: needs resources['directory'] and resources['store']")
