"""``mailsrv share grant|revoke|list``: shared access to a user's mail (JMAP shared accounts, issue 8;
IMAP "Other Users" folders, docs/shared-mailboxes.md).

An administrator lets user B read (``--rights read``, the default) or read and change (``--rights
write``) user A's mail; B's JMAP session then lists A's account (``isPersonal: false``) and B's IMAP
client A's folders under ``Other Users/<A's address>/`` (RFC 4314 rights ``lr`` or ``lrswite``).
With ``--folder F`` the grant is one folder's ACL entry instead, with any RFC 4314 rights string
(``--rights lrs``), overriding the account grant on that folder (SETACL does the same over IMAP).
Nobody may send as A through a grant. With ``--as ADMIN`` the change must be within that
administrator's scope for both users. Workers see a change at the next request or IMAP command
(nothing is cached).
"""

from __future__ import annotations

import argparse
from typing import Any

from mailsrv import config as config_mod
from mailsrv.cli.directory import _run
from mailsrv.directory import FolderRights, Grant, SyncDirectory
from mailsrv.directory import rights as R
from mailsrv.directory.scope import Actor
from mailsrv.directory.types import AnyoneRights, DirectoryError


def grant_dict(g: Grant | FolderRights | AnyoneRights) -> dict[str, Any]:
    if isinstance(g, AnyoneRights):  # set over IMAP (SETACL) when [imap] acl_anyone allows it
        return {"owner": g.owner.address, "grantee": g.identifier, "folder": g.mailbox, "rights": g.rights}
    if isinstance(g, FolderRights):
        return {"owner": g.owner.address, "grantee": g.grantee.address, "folder": g.mailbox, "rights": g.rights}
    return {"owner": g.owner.address, "grantee": g.grantee.address, "rights": g.rights}


def _letters(rights: str) -> str:
    """``--rights`` as RFC 4314 letters: read, write, or a rights string ("" allowed: none)."""
    if rights in ("read", "write"):
        return R.grant_letters(rights)
    if set(rights) - set(R.ALL):
        raise DirectoryError(f"rights is read, write or letters among {R.ALL}")
    return R.canonical(rights)


def _grant(cfg: config_mod.Config, d: SyncDirectory, actor: Actor, args: argparse.Namespace) -> Any:
    actor.require_address(d, args.owner)
    actor.require_address(d, args.grantee)
    letters = _letters(args.rights)
    out = {"owner": args.owner.lower(), "grantee": args.grantee.lower()}
    if args.folder is not None:
        changed = d.set_folder_rights(args.owner, args.grantee, args.folder, letters)
        return {**out, "folder": args.folder, "rights": letters, "changed": changed}
    level = {R.READ: "read", R.WRITE: "write"}.get(letters)
    if level is None:
        raise DirectoryError(f"an account grant is read ({R.READ}) or write ({R.WRITE}); other rights go on "
                             "one folder (--folder)")
    return {**out, "rights": level, "changed": d.grant(args.owner, args.grantee, level)}


def _revoke(cfg: config_mod.Config, d: SyncDirectory, actor: Actor, args: argparse.Namespace) -> Any:
    actor.require_address(d, args.owner)
    actor.require_address(d, args.grantee)
    out = {"owner": args.owner.lower(), "grantee": args.grantee.lower()}
    if args.folder is not None:  # the folder's entry goes: the account grant (if any) applies there again
        return {**out, "folder": args.folder,
                "revoked": d.set_folder_rights(args.owner, args.grantee, args.folder, None)}
    return {**out, "revoked": d.revoke(args.owner, args.grantee)}


def _list(cfg: config_mod.Config, d: SyncDirectory, actor: Actor, args: argparse.Namespace) -> Any:
    if args.user:
        actor.require_address(d, args.user)
    grants: list[Grant | FolderRights | AnyoneRights] = list(d.list_grants(args.user))
    grants += d.all_folder_rights() if args.user is None else d.folder_rights_of(args.user) + d.folder_rights_for(args.user)
    grants += d.anyone_rights(owner=args.user)
    if not actor.is_super:  # a scoped administrator sees the grants that concern users in scope
        grants = [g for g in grants if actor.can_address(d, g.owner.address)
                  or (not isinstance(g, AnyoneRights) and actor.can_address(d, g.grantee.address))]
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
    g.add_argument("--rights", default="read", metavar="RIGHTS",
                   help="read (default: read-only; IMAP rights lr), write (read, change, delete; IMAP "
                        "lrswite; never send as OWNER), or with --folder any RFC 4314 rights string among "
                        "lrswipkxtea (e.g. lrs: also mark messages read; lrswikxte: also make and delete folders)")
    g.add_argument("--folder", default=None, metavar="FOLDER",
                   help="only OWNER's folder FOLDER (its name as OWNER sees it, e.g. INBOX or Projects/2026): "
                        "overrides the account grant there; --rights '' hides the folder from GRANTEE")
    g.set_defaults(func=_run(_grant))
    r = ps.add_parser("revoke", parents=[common], help="end GRANTEE's access to OWNER's mail")
    r.add_argument("owner")
    r.add_argument("grantee")
    r.add_argument("--folder", default=None, metavar="FOLDER",
                   help="remove only FOLDER's entry (the account grant, if any, applies there again); "
                        "without it every grant and entry between the two users goes")
    r.set_defaults(func=_run(_revoke))
    ls = ps.add_parser("list", parents=[common], help="list grants (all, or those of one user)")
    ls.add_argument("user", nargs="?", default=None, help="only grants where USER is the owner or the grantee")
    ls.set_defaults(func=_run(_list))
    p.set_defaults(func=lambda args: p.print_help() or 2)
