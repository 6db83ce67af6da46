"""``mailsrv sieve list|get|put|activate|deactivate|rename|delete|check``: users' Sieve filters for administrators.

The same scripts users manage over ManageSieve (port 4190), in the same place
(``<maildir root>/sieve``, mailsrv.sieve.scripts): ``put`` checks a script with the
compiler before storing it, ``activate`` makes it the one run at delivery (at once, in
every worker: nothing is cached beyond the file's stat). With ``--as ADMIN`` the user
must be within that administrator's scope. Safe while the server runs (docs/sieve.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mailsrv import config as config_mod
from mailsrv.cli import CliError, config_path
from mailsrv.cli.directory import _emit, _run
from mailsrv.directory import SyncDirectory
from mailsrv.directory.scope import Actor
from mailsrv.sieve import EXTENSIONS
from mailsrv.sieve import scripts as S
from mailsrv.store import account_root


def _root(cfg: config_mod.Config, d: SyncDirectory, actor: Actor, user: str) -> Path:
    actor.require_address(d, user)
    acct = d.account_by_address(user)
    if acct is None:
        raise CliError(f"no user {user}")
    return account_root(cfg.server.data_dir, acct.id, acct.store or None)


def _storage(fn: Any) -> Any:
    """A storage refusal as one operator line (with the RFC 5804 code ManageSieve would send)."""
    try:
        return fn()
    except S.ScriptError as exc:
        raise CliError(f"{exc} ({exc.code})" if exc.code else str(exc)) from None


def _read(path: str) -> str:
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise CliError(f"{path}: a Sieve script is UTF-8 text") from None


def _list(cfg: config_mod.Config, d: SyncDirectory, actor: Actor, args: argparse.Namespace) -> Any:
    root = _root(cfg, d, actor, args.user)
    return [{"name": n, "active": a} for n, a in S.list_scripts(root)]


def _get(cfg: config_mod.Config, d: SyncDirectory, actor: Actor, args: argparse.Namespace) -> Any:
    root = _root(cfg, d, actor, args.user)
    text = _storage(lambda: S.get_script(root, args.name))
    if args.json:
        return {"name": args.name, "script": text, "active": S.active_script(root) == (args.name, text)}
    sys.stdout.write(text)
    return None


def _put(cfg: config_mod.Config, d: SyncDirectory, actor: Actor, args: argparse.Namespace) -> Any:
    root = _root(cfg, d, actor, args.user)
    text = _read(args.file)
    _storage(lambda: S.put_script(root, args.name, text, max_size=cfg.sieve.max_script_size,
                                  max_scripts=cfg.sieve.max_scripts))
    if args.activate:
        _storage(lambda: S.set_active(root, args.name))
    return {"user": args.user.lower(), "name": args.name, "size": len(text.encode()), "active": args.activate}


def _activate(cfg: config_mod.Config, d: SyncDirectory, actor: Actor, args: argparse.Namespace) -> Any:
    root = _root(cfg, d, actor, args.user)
    _storage(lambda: S.set_active(root, args.name))
    return {"user": args.user.lower(), "active": args.name}


def _deactivate(cfg: config_mod.Config, d: SyncDirectory, actor: Actor, args: argparse.Namespace) -> Any:
    root = _root(cfg, d, actor, args.user)
    _storage(lambda: S.set_active(root, None))
    return {"user": args.user.lower(), "active": None}


def _delete(cfg: config_mod.Config, d: SyncDirectory, actor: Actor, args: argparse.Namespace) -> Any:
    root = _root(cfg, d, actor, args.user)
    _storage(lambda: S.delete_script(root, args.name))
    return {"user": args.user.lower(), "deleted": args.name}


def _rename(cfg: config_mod.Config, d: SyncDirectory, actor: Actor, args: argparse.Namespace) -> Any:
    root = _root(cfg, d, actor, args.user)
    _storage(lambda: S.rename_script(root, args.name, args.new))  # RFC 5804 §2.11.1: stays active if it was
    return {"user": args.user.lower(), "renamed": args.name, "to": args.new}


def cmd_check(args: argparse.Namespace) -> int:
    """Compile FILE; exit 0 when it is a valid script, 1 (with the line) when not."""
    limit = config_mod.load(config_path(args)).sieve.max_script_size
    try:
        S.validate(_read(args.file), limit)
    except S.ScriptError as exc:
        if args.json:
            _emit(args, {"valid": False, "line": getattr(exc, "line", 0), "error": str(exc)})
        else:
            print(f"{args.file}: {exc}", file=sys.stderr)
        return 1
    _emit(args, {"valid": True} if args.json else f"{args.file}: valid")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sieve", help="users' Sieve filters: list, get, put, activate, rename, delete, check")
    ss = p.add_subparsers(dest="sieve_command", metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument("--as", dest="as_admin", metavar="ADMIN", default=None,
                        help="act as this administrator (within their scope)")
    for verb, fn, text, with_name in (
            ("list", _list, "USER's scripts and which one is active", False),
            ("get", _get, "print USER's script NAME", True),
            ("activate", _activate, "make NAME USER's active script (run at delivery)", True),
            ("deactivate", _deactivate, "no active script for USER (mail is kept as is)", False),
            ("delete", _delete, "delete USER's script NAME (not the active one)", True)):
        q = ss.add_parser(verb, parents=[common], help=text)
        q.add_argument("user")
        if with_name:
            q.add_argument("name")
        q.set_defaults(func=_run(fn))
    put = ss.add_parser("put", parents=[common], help="store FILE (or - for stdin) as USER's script NAME")
    put.add_argument("user")
    put.add_argument("name")
    put.add_argument("file", help="the script, UTF-8; - reads standard input")
    put.add_argument("--activate", action="store_true", help="also make it the active script")
    put.set_defaults(func=_run(_put))
    ren = ss.add_parser("rename", parents=[common], help="rename USER's script NAME to NEW (stays active if it was)")
    ren.add_argument("user")
    ren.add_argument("name")
    ren.add_argument("new")
    ren.set_defaults(func=_run(_rename))
    ck = ss.add_parser("check", help="compile FILE (or -): exit 0 if valid, 1 with the line of the error",
                       description="Compile a Sieve script as delivery would. Extensions (require): "
                                   + ", ".join(EXTENSIONS) + ".")
    ck.add_argument("file")
    ck.add_argument("--json", action="store_true", help="machine-readable output")
    ck.set_defaults(func=cmd_check)
    p.set_defaults(func=lambda args: p.print_help() or 2)
