"""Admin API routes for the per-domain and per-user file-link settings (docs/files.md "Per domain and per
user"): the ``convert_over`` threshold, scoped like the directory and the policy lists. A domain's
administrators set their domain's and its users' thresholds, a department's administrators their users',
super administrators any; a listing shows the settings in the caller's scope. ``mailsrv files convert
--as ADMIN`` goes through the same functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mailsrv.admin.lists import may_manage, require_scope
from mailsrv.directory import SyncDirectory
from mailsrv.directory import addresses as A
from mailsrv.directory.scope import Actor

SET_SCHEMA: dict[str, Any] = {"type": "object", "required": ["convert_over"], "properties": {
    "convert_over": {"type": ["integer", "null"], "minimum": 0,
                     "description": "bytes; 0: never convert; null: remove (the domain's, else [files] convert_over, applies)"}}}


def list_settings(d: SyncDirectory, actor: Actor, scope: str | None) -> list[dict[str, Any]]:
    """The settings of ``scope`` (a domain or user in the actor's scope) and, for a user, of their domain;
    without ``scope`` every setting the actor may change."""
    rows = d.list_convert_settings()
    if scope is None:
        return [r for r in rows if may_manage(d, actor, r["scope"])]
    scope = A.normalise(scope)
    if not scope:
        raise ValueError("a domain or a user's address")
    require_scope(d, actor, scope)
    acct = d.account_by_address(scope) if "@" in scope else None
    return [r for r in rows if r["scope"] in (scope, acct.domain if acct is not None else None)]


def set_setting(d: SyncDirectory, actor: Actor, scope: str, value: int | None) -> dict[str, Any]:
    """Set (or, with None, remove) ``scope``'s threshold; PermissionDenied outside the actor's scope."""
    scope = A.normalise(scope)
    if not scope:
        raise ValueError("a domain or a user's address")
    require_scope(d, actor, scope)
    return d.set_convert_over(scope, value)


def register(add: Callable[..., None]) -> None:
    """Add the routes through ``AdminApi._add`` (authenticated, scoped, in the OpenAPI document)."""
    add("GET", "/files/convert", "convert_over settings in your scope (?scope= a domain or user: theirs)", None,
        lambda d, ac, r, b: list_settings(d, ac, r.query.get("scope")))
    add("PUT", "/files/convert/{scope}", "Set a domain's or user's convert_over (null: remove)", SET_SCHEMA,
        lambda d, ac, r, b: set_setting(d, ac, r.match_info["scope"], b["convert_over"]))
