"""Authentication for every protocol: passwords, SASL, bearer tokens, lockout (docs/directory-api.md)."""

from __future__ import annotations

from typing import Any

from mailsrv.auth.authenticator import (
    Authenticator,
    AuthSession,
    Challenge,
    Failure,
    LoginResult,
    Success,
    UnknownMechanism,
)
from mailsrv.auth.channel import channel_binding, endpoint_binding, endpoint_binding_from_file
from mailsrv.auth.sasl import ChannelBinding
from mailsrv.config import Config
from mailsrv.directory import open_directory

__all__ = [
    "AuthSession", "Authenticator", "Challenge", "ChannelBinding", "Failure", "LoginResult", "Success",
    "UnknownMechanism", "channel_binding", "endpoint_binding", "endpoint_binding_from_file", "worker_resources",
]


def worker_resources(cfg: Config) -> dict[str, Any]:
    """The per-worker objects: ``{"directory": Directory, "auth": Authenticator}`` (call inside the worker)."""
    directory = open_directory(cfg.directory, cfg.server.data_dir)
    return {"directory": directory, "auth": Authenticator(directory, cfg.auth)}

