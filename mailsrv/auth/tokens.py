"""Bearer tokens for JMAP and the admin API: random secrets stored only as SHA-256 digests."""

from __future__ import annotations

import hashlib
import secrets
import time

from mailsrv.directory import NotFound, SyncDirectory

#: Scopes a token can carry: "mail" (JMAP), "admin" (the admin API, with the user's admin grants).
SCOPES = frozenset({"mail", "admin"})
PREFIX = "msv_"


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def issue(d: SyncDirectory, user: str, scopes: frozenset[str] | set[str], *, label: str = "",
          ttl: float | None = None) -> tuple[int, str]:
    """Create a token; returns (id, secret). The secret is shown once and never stored."""
    bad = set(scopes) - SCOPES
    if bad or not scopes:
        raise ValueError(f"scopes must be a non-empty subset of {sorted(SCOPES)}")
    acct = d.account_by_address(user)
    if acct is None:
        raise NotFound(f"no user {user}")
    secret = PREFIX + secrets.token_urlsafe(32)
    expires = time.time() + ttl if ttl else None
    return d.add_token(digest(secret), acct.id, frozenset(scopes), label, expires), secret
