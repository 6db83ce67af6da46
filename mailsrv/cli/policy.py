"""``mailsrv policy list|add|del``: the block and allow lists of the inbound policy (issue 12).

Scopes: ``--scope ""`` (default, the whole server), a domain, or a user
address. Entries: an address, a domain (with its subdomains), ``@domain``
(that domain only) or an IP network. Workers see a change within
``mailsrv.policy.lists.CACHE_SECONDS``.
"""

from __future__ import annotations

import argparse
import json

from mailsrv import config as config_mod
from mailsrv.cli import CliError, config_path
from mailsrv.directory import SyncDirectory, open_sync
from mailsrv.policy.lists import KINDS, normalize_entry, normalize_scope


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("policy", help="spam policy: block and allow lists")
    ps = p.add_subparsers(dest="policy_command", metavar="ACTION")
    ls = ps.add_parser("list", help="show the lists (all scopes, or one)")
    ls.add_argument("--scope", default=None, help='"" for the server, a domain, or a user address')
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)
    for name, func, text in (("add", cmd_add, "add an entry"), ("del", cmd_del, "remove an entry")):
        a = ps.add_parser(name, help=text)
        a.add_argument("kind", choices=KINDS)
        a.add_argument("entry", help="address, domain, @domain or IP network")
        a.add_argument("--scope", default="", help='"" (default) for the server, a domain, or a user address')
        a.set_defaults(func=func)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _open(args: argparse.Namespace) -> SyncDirectory:
    cfg = config_mod.load(config_path(args))
    return open_sync(cfg.directory, cfg.server.data_dir)


def _parse(args: argparse.Namespace) -> tuple[str, str]:
    try:
        return normalize_scope(args.scope), normalize_entry(args.entry)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def cmd_list(args: argparse.Namespace) -> int:
    d = _open(args)
    try:
        rows = d.policy_list_all() if args.scope is None else d.policy_lists([normalize_scope(args.scope)])
    except ValueError as exc:
        raise CliError(str(exc)) from None
    finally:
        d.close()
    if args.json:
        print(json.dumps([{"scope": s, "kind": k, "entry": e} for s, k, e in rows]))
    else:
        for s, k, e in rows:
            print(f"{s or '*'}\t{k}\t{e}")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    scope, entry = _parse(args)
    d = _open(args)
    try:
        added = d.policy_list_add(scope, args.kind, entry)
    finally:
        d.close()
    print(f"{'added' if added else 'already listed'}: {scope or '*'} {args.kind} {entry}")
    return 0


def cmd_del(args: argparse.Namespace) -> int:
    scope, entry = _parse(args)
    d = _open(args)
    try:
        removed = d.policy_list_del(scope, args.kind, entry)
    finally:
        d.close()
    if not removed:
        raise CliError(f"not listed: {scope or '*'} {args.kind} {entry}")
    print(f"removed: {scope or '*'} {args.kind} {entry}")
    return 0
