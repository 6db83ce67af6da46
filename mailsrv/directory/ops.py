"""Administrative operations with scope checks: the one implementation behind the CLI and the admin API.

Each function takes a :class:`SyncDirectory`, the acting :class:`Actor`, and
plain values; returns JSON-ready data; raises :class:`DirectoryError`
subclasses (``PermissionDenied`` when the actor's scope does not cover the
object). Passwords arrive hashed (``secrets = (argon2id hash, SCRAM verifier)``).
"""

from __future__ import annotations

from typing import Any

from mailsrv.directory import addresses as A
from mailsrv.directory.manage import SyncDirectory, account_dict
from mailsrv.directory.scope import Actor
from mailsrv.directory.types import DirectoryError, PermissionDenied

Secrets = tuple[str, str]


def _domain_of(address: str) -> str:
    try:
        return A.split(A.normalise(address))[1]
    except ValueError as exc:
        raise DirectoryError(str(exc)) from None


# -- domains -----------------------------------------------------------------------------

def domain_add(d: SyncDirectory, actor: Actor, name: str, *, max_users: int | None = None,
               max_storage: int | None = None, networks: tuple[str, ...] = ()) -> dict[str, Any]:
    actor.require_super()
    d.add_domain(name, max_users=max_users, max_storage=max_storage, networks=networks)
    return {"domain": A.normalise(name)}


def domain_del(d: SyncDirectory, actor: Actor, name: str) -> dict[str, Any]:
    actor.require_super()
    d.del_domain(name)
    return {"deleted": A.normalise(name)}


def domain_set(d: SyncDirectory, actor: Actor, name: str, **changes: Any) -> dict[str, Any]:
    actor.require_domain(d, name)
    if not actor.is_super and ({"max_users", "max_storage"} & set(changes)):
        raise PermissionDenied(f"{actor.name}: domain limits are set by a super administrator")
    d.set_domain(name, **changes)
    return {"domain": A.normalise(name), "changed": sorted(changes)}


def domain_alias_add(d: SyncDirectory, actor: Actor, alias: str, target: str) -> dict[str, Any]:
    actor.require_super()
    d.add_domain_alias(alias, target)
    return {"alias": A.normalise(alias), "domain": A.normalise(target)}


def domain_alias_del(d: SyncDirectory, actor: Actor, alias: str) -> dict[str, Any]:
    actor.require_super()
    d.del_domain_alias(alias)
    return {"deleted": A.normalise(alias)}


def domain_list(d: SyncDirectory, actor: Actor) -> list[dict[str, Any]]:
    return [x for x in d.list_domains() if actor.can_domain(d, x["name"])]


# -- users ---------------------------------------------------------------------------------

def user_add(d: SyncDirectory, actor: Actor, address: str, secrets: Secrets | None, **fields: Any) -> dict[str, Any]:
    dept = fields.get("dept")
    if not actor.can_domain(d, _domain_of(address)):
        if not dept:
            raise PermissionDenied(f"{actor.name}: {A.normalise(address)} is not in your scope (give a department)")
        actor.require_dept(d, dept)
    pw, scram = secrets or ("", "")
    return account_dict(d.add_user(address, password_hash=pw, scram=scram, **fields))


def user_set(d: SyncDirectory, actor: Actor, address: str, **changes: Any) -> dict[str, Any]:
    actor.require_address(d, address)
    if changes.get("dept"):
        actor.require_dept(d, changes["dept"])
    return account_dict(d.set_user(address, **changes))


def user_passwd(d: SyncDirectory, actor: Actor, address: str, secrets: Secrets) -> dict[str, Any]:
    actor.require_address(d, address)
    acct = d.account_by_address(address)
    if acct is None:
        raise DirectoryError(f"no user {A.normalise(address)}")
    d.set_secrets(acct.id, *secrets)
    d.clear_failures(f"acct:{acct.address}")
    return {"user": acct.address, "password": "changed"}


def user_del(d: SyncDirectory, actor: Actor, address: str) -> dict[str, Any]:
    actor.require_address(d, address)
    d.del_user(address)
    return {"deleted": A.normalise(address)}


def user_show(d: SyncDirectory, actor: Actor, address: str) -> dict[str, Any]:
    actor.require_address(d, address)
    return d.user_info(address)


def user_list(d: SyncDirectory, actor: Actor, domain: str | None = None) -> list[dict[str, Any]]:
    if domain is not None and not actor.is_super and not actor.can_domain(d, domain):
        # a department admin sees the users of their departments only
        return [u for u in d.list_users(domain) if actor.can_address(d, u["address"])]
    if domain is None and not actor.is_super:
        return [u for u in d.list_users(None) if actor.can_address(d, u["address"])]
    return d.list_users(domain)


# -- aliases -------------------------------------------------------------------------------

def alias_add(d: SyncDirectory, actor: Actor, alias: str, user: str) -> dict[str, Any]:
    actor.require_address(d, user)
    if _domain_of(alias) != _domain_of(user):
        actor.require_domain(d, _domain_of(alias))
    d.add_alias(alias, user)
    return {"alias": A.normalise(alias), "user": A.normalise(user)}


def alias_del(d: SyncDirectory, actor: Actor, alias: str) -> dict[str, Any]:
    actor.require_address(d, alias)
    d.del_alias(alias)
    return {"deleted": A.normalise(alias)}


def alias_list(d: SyncDirectory, actor: Actor, domain: str | None = None) -> list[dict[str, str]]:
    return [a for a in d.list_aliases(domain) if actor.can_address(d, a["user"])]


# -- groups and departments -------------------------------------------------------------------

def group_add(d: SyncDirectory, actor: Actor, address: str, *, name: str = "", post_policy: str = "anyone") -> dict[str, Any]:
    actor.require_domain(d, _domain_of(address))
    d.add_group(address, name=name, post_policy=post_policy)
    return d.group_info(address)


def group_set(d: SyncDirectory, actor: Actor, address: str, **changes: Any) -> dict[str, Any]:
    actor.require_address(d, address)
    d.set_group(address, **changes)
    return d.group_info(address)


def group_del(d: SyncDirectory, actor: Actor, address: str) -> dict[str, Any]:
    actor.require_address(d, address)
    d.del_group(address)
    return {"deleted": A.normalise(address)}


def member_add(d: SyncDirectory, actor: Actor, group: str, member: str) -> dict[str, Any]:
    actor.require_address(d, group)
    what = d.add_member(group, member)
    return {"group": A.normalise(group), "member": A.normalise(member), "kind": what}


def member_del(d: SyncDirectory, actor: Actor, group: str, member: str) -> dict[str, Any]:
    actor.require_address(d, group)
    d.del_member(group, member)
    return {"group": A.normalise(group), "removed": A.normalise(member)}


def sender_add(d: SyncDirectory, actor: Actor, group: str, sender: str) -> dict[str, Any]:
    actor.require_address(d, group)
    d.add_sender(group, sender)
    return d.group_info(group)


def sender_del(d: SyncDirectory, actor: Actor, group: str, sender: str) -> dict[str, Any]:
    actor.require_address(d, group)
    d.del_sender(group, sender)
    return d.group_info(group)


def send_as_grant(d: SyncDirectory, actor: Actor, group: str, user: str) -> dict[str, Any]:
    actor.require_address(d, group)
    actor.require_address(d, user)
    d.grant_send_as(group, user)
    return d.group_info(group)


def send_as_revoke(d: SyncDirectory, actor: Actor, group: str, user: str) -> dict[str, Any]:
    actor.require_address(d, group)
    d.revoke_send_as(group, user)
    return d.group_info(group)


def group_show(d: SyncDirectory, actor: Actor, address: str) -> dict[str, Any]:
    actor.require_address(d, address)
    return d.group_info(address)


def group_list(d: SyncDirectory, actor: Actor, domain: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
    return [g for g in d.list_groups(domain, kind)
            if actor.can_address(d, g["address"]) or (g["kind"] == "dept" and actor.can_dept(d, g["address"]))]


def dept_add(d: SyncDirectory, actor: Actor, address: str, *, name: str = "", parent: str | None = None) -> dict[str, Any]:
    if not actor.can_domain(d, _domain_of(address)):
        if not parent:
            raise PermissionDenied(f"{actor.name}: only a domain administrator may add a top-level department")
        actor.require_dept(d, parent)
    d.add_dept(address, name=name, parent=parent)
    return d.group_info(address)


def dept_move(d: SyncDirectory, actor: Actor, address: str, parent: str | None) -> dict[str, Any]:
    actor.require_address(d, address)
    if parent:
        actor.require_dept(d, parent)
    else:
        actor.require_domain(d, _domain_of(address))
    d.move_dept(address, parent)
    return d.group_info(address)


# -- administrators ----------------------------------------------------------------------------

def admin_grant(d: SyncDirectory, actor: Actor, user: str, scope: str, target: str | None = None) -> dict[str, Any]:
    if scope == "super":
        actor.require_super()
    elif scope == "domain":
        actor.require_domain(d, target or "")
        actor.require_address(d, user)
    elif scope == "dept":
        actor.require_dept(d, target or "")
        actor.require_address(d, user)
    d.grant_admin(user, scope, target)
    return {"user": A.normalise(user), "scope": scope, "target": target}


def admin_revoke(d: SyncDirectory, actor: Actor, user: str, scope: str | None = None,
                 target: str | None = None) -> dict[str, Any]:
    if scope is None or scope == "super":
        actor.require_super()
    elif scope == "domain":
        actor.require_domain(d, target or "")
    else:
        actor.require_dept(d, target or "")
    n = d.revoke_admin(user, scope, target)
    return {"user": A.normalise(user), "revoked": n}


# -- lockout --------------------------------------------------------------------------------------

def lockout_list(d: SyncDirectory, actor: Actor, now: float) -> list[dict[str, Any]]:
    actor.require_super()
    return [{"key": f.key, "failures": f.count, "locked": f.locked_until > now,
             "locked_for": max(0.0, round(f.locked_until - now, 1)), "level": f.level}
            for f in d.list_failures()]


def lockout_clear(d: SyncDirectory, actor: Actor, key: str | None) -> dict[str, Any]:
    actor.require_super()
    if key is not None and not key.startswith(("acct:", "ip:")):
        key = f"ip:{key}" if (":" in key or key.replace(".", "").isdigit()) else f"acct:{A.normalise(key)}"
    return {"cleared": d.clear_failures(key)}
