"""Authentication for every protocol: passwords, SASL, bearer tokens, lockout (docs/directory-api.md)."""

from __future__ import annotations

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

__all__ = [
    "AuthSession", "Authenticator", "Challenge", "ChannelBinding", "Failure", "LoginResult", "Success",
    "UnknownMechanism", "channel_binding", "endpoint_binding", "endpoint_binding_from_file",
]
