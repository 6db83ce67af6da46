"""``mailsrv share grant|revoke|list``: shared access to a user's mail (JMAP shared accounts, issue 8;
IMAP "Other Users" folders, docs/shared-mailboxes.md).

An administrator lets user B read (``--rights read``, the default) or read and change (``--rights
write``) user A's mail; B's JMAP session then lists A's account (``isPersonal: false``) and B's IMAP
client A's folders under ``Other Users/<A's address>/`` (RFC 4314 rights ``lr`` or ``lrswite``).
Nobody may send as A through a grant. With ``--as ADMIN`` the change must be within that
administrator's scope for both users. Workers see a change at the next request or IMAP command
(nothing is cached).
"""

from __future__ import annotations

import argparse
from typing import Any

from mailsrv import config as config_mod
from mailsrv.cli.directory import _run
from mailsrv.directory import Grant, SyncDirectory
from mailsrv.directory.scope import Actor
from mailsrv.directory.types import GRANT_RIGHTS


def grant_dict(g: Grant) -> dict[str, Any]:
    return {"owner": g.owner.address, "grantee": g.grantee.address, "rights": g.rights}


def _grant(cfg: config_mod.Config, d: SyncDirectory, actor: Actor, args: argparse.Namespace) -> Any:
    actor.require_address(d, args.owner)
    actor.require_address(d, args.grantee)
    changed = d.grant(args.owner, args.grantee, args.rights)
    return {"owner": args.owner.lower(), "grantee": args.grantee.lower(), "rights": args.rights,
            "changed": changed}


def _revoke(cfg: config_mod.Config, d: SyncDirectory, actor: Actor, args: argparse.Namespace) -> Any:
    actor.require_address(d, args.owner)
    actor.require_address(d, args.grantee)
    return {"owner": args.owner.lower(), "grantee": args.grantee.lower(), "revoked": d.revoke(args.owner, args.grantee)}


def _list(cfg: config_mod.Config, d: SyncDirectory, actor: Actor, args: argparse.Namespace) -> Any:
    if args.user:
        actor.require_address(d, args.user)
    grants = d.list_grants(args.user)
    if not actor.is_super:  # a scoped administrator sees the grants that concern users in scope
        grants = [g for g in grants if actor.can_address(d, g.owner.address) or actor.can_address(d, g.grantee.address)]
    return [grant_dict(g) for g in grants]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("share", help="shared access to a user's mail (read-only or read-write)")
    ps = p.add_subparsers(dest="share_command", metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument("--as", dest="as_admin", metavar="ADMIN", default=None,
                        help="act as this administrator (within their scope)")
    g = ps.add_parser("grant", parents=[common], help="let GRANTEE use OWNER's mail")
    g.add_argument("owner", help="the user whose mail is shared")
    g.add_argument("grantee", help="the user who gets access")
    g.add_argument("--rights", choices=GRANT_RIGHTS, default="read",
                   help="read (default: read-only; IMAP rights lr) or write (read, change, delete; IMAP "
                        "lrswite; never send as OWNER)")
    g.set_defaults(func=_run(_grant))
    r = ps.add_parser("revoke", parents=[common], help="end GRANTEE's access to OWNER's mail")
    r.add_argument("owner")
    r.add_argument("grantee")
    r.set_defaults(func=_run(_revoke))
    ls = ps.add_parser("list", parents=[common], help="list grants (all, or those of one user)")
    ls.add_argument("user", nargs="?", default=None, help="only grants where USER is the owner or the grantee")
    ls.set_defaults(func=_run(_list))
    p.set_defaults(func=lambda args: p.print_help() or 2)
