"""Admin API routes for the inbound policy's block and allow lists (issue 12), scoped like the directory.

Scope ``""`` (the whole server) is for super administrators; a domain scope for
that domain's administrators; a user scope for whoever administers the user
(their domain's or department's administrators). Entries are validated and
canonicalised as ``mailsrv policy add`` does; workers see changes within
``mailsrv.policy.lists.CACHE_SECONDS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mailsrv.directory import NotFound, SyncDirectory
from mailsrv.directory.scope import Actor
from mailsrv.policy.lists import KINDS, normalize_entry, normalize_scope

ENTRY_SCHEMA: dict[str, Any] = {"type": "object", "required": ["kind", "entry"], "properties": {
    "scope": {"type": "string", "description": '"" for the server, a domain, or a user address'},
    "kind": {"enum": list(KINDS)},
    "entry": {"type": "string", "description": "an address, a domain (with subdomains), @domain, or an IP network"}}}


def may_manage(d: SyncDirectory, actor: Actor, scope: str) -> bool:
    if not scope:
        return actor.is_super
    if "@" in scope:
        return actor.can_address(d, scope)
    return actor.can_domain(d, scope)


def require_scope(d: SyncDirectory, actor: Actor, scope: str) -> None:
    """PermissionDenied unless ``actor`` administers ``scope`` ("" the server, a domain, or an address)."""
    if not scope:
        actor.require_super()
    elif "@" in scope:
        actor.require_address(d, scope)
    else:
        actor.require_domain(d, scope)


def _parse(b: dict[str, Any]) -> tuple[str, str, str]:
    kind = b["kind"]
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    scope, entry = b.get("scope", ""), b["entry"]
    if not isinstance(scope, str) or not isinstance(entry, str):
        raise ValueError("scope and entry are strings")
    return normalize_scope(scope), kind, normalize_entry(entry)


def list_entries(d: SyncDirectory, actor: Actor, scope: str | None) -> list[dict[str, str]]:
    if scope is not None:
        scope = normalize_scope(scope)
        require_scope(d, actor, scope)
        rows = d.policy_lists([scope])
    else:
        rows = [r for r in d.policy_list_all() if may_manage(d, actor, r[0])]
    return [{"scope": s, "kind": k, "entry": e} for s, k, e in rows]


def add_entry(d: SyncDirectory, actor: Actor, b: dict[str, Any]) -> dict[str, Any]:
    scope, kind, entry = _parse(b)
    require_scope(d, actor, scope)
    return {"scope": scope, "kind": kind, "entry": entry, "added": d.policy_list_add(scope, kind, entry)}


def remove_entry(d: SyncDirectory, actor: Actor, b: dict[str, Any]) -> dict[str, Any]:
    scope, kind, entry = _parse(b)
    require_scope(d, actor, scope)
    if not d.policy_list_del(scope, kind, entry):
        raise NotFound(f"not listed: {scope or '*'} {kind} {entry}")
    return {"scope": scope, "kind": kind, "entry": entry, "removed": True}


def register(add: Callable[..., None]) -> None:
    """Add the list routes through ``AdminApi._add`` (so they are authenticated, scoped and documented)."""
    add("GET", "/policy/lists", "Block and allow lists in your scope (?scope= for one scope)", None,
        lambda d, ac, r, b: list_entries(d, ac, r.query.get("scope")))
    add("POST", "/policy/lists", "Add a block or allow entry", ENTRY_SCHEMA,
        lambda d, ac, r, b: add_entry(d, ac, b))
    add("POST", "/policy/lists/remove", "Remove a block or allow entry", ENTRY_SCHEMA,
        lambda d, ac, r, b: remove_entry(d, ac, b))
