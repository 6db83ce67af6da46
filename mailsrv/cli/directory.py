"""Directory commands: domain, user, alias, group, dept, admin, token, lockout, directory export/import.

Every command opens the directory named by the configuration, acts as the
local operator (full rights) or, with ``--as ADMIN``, within that
administrator's scope, and prints either a short human form or ``--json``.
Passwords come from a prompt or ``--password-stdin``, never from argv.
"""

from __future__ import annotations

import argparse
import getpass
import json
import math
import os
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mailsrv import config as config_mod
from mailsrv.cli import CliError, config_path
from mailsrv.directory import DirectoryError, SyncDirectory, open_sync, ops
from mailsrv.directory.exchange import export, import_
from mailsrv.directory.scope import Actor

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int | None:
    """``"2G"`` -> 2147483648; ``"unlimited"``/``"0"`` -> None."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    if t in ("UNLIMITED", "NONE", "0", ""):
        return None
    unit = t[-1] if t[-1] in _UNITS and not t[-1].isdigit() else ""
    num = t[: -1] if unit else t
    try:
        value = float(num)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 500M, 2G, unlimited)") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 500M, 2G, unlimited)")
    return int(value * _UNITS[unit])


def _count(text: str) -> int | None:
    if text.lower() in ("unlimited", "none", "0"):
        return None
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a number")
    return int(text)


def _nets(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _yesno(text: str) -> bool:
    if text.lower() in ("yes", "y", "true", "1", "on"):
        return True
    if text.lower() in ("no", "n", "false", "0", "off"):
        return False
    raise argparse.ArgumentTypeError("expected yes or no")


# -- plumbing --------------------------------------------------------------------------------

def _open(args: argparse.Namespace) -> tuple[config_mod.Config, SyncDirectory]:
    cfg = config_mod.load(config_path(args))
    try:
        return cfg, open_sync(cfg.directory, cfg.server.data_dir)
    except DirectoryError as exc:
        raise CliError(str(exc)) from None


def _actor(d: SyncDirectory, args: argparse.Namespace) -> Actor:
    who = getattr(args, "as_admin", None)
    return Actor.admin(d, who) if who else Actor.operator()


def _emit(args: argparse.Namespace, result: Any) -> None:
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
        return
    if isinstance(result, list):
        for item in result:
            if isinstance(item, dict):
                print("  ".join(f"{k}={_short(v)}" for k, v in item.items() if v not in (None, [], "")))
            else:
                print(item)
        return
    if isinstance(result, dict):
        for k, v in result.items():
            print(f"{k}: {_short(v)}")
        return
    if result is not None:
        print(result)


def _short(v: Any) -> str:
    return ",".join(map(str, v)) if isinstance(v, list) else str(v)


def read_password(args: argparse.Namespace) -> str:
    """From stdin (first line) with ``--password-stdin``, else prompted twice on the terminal."""
    if getattr(args, "password_stdin", False):
        pw = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise CliError("no terminal to prompt for a password: use --password-stdin")
        pw = getpass.getpass("New password: ")
        if getpass.getpass("Again: ") != pw:
            raise CliError("the passwords differ")
    if len(pw) < 8:
        raise CliError("a password needs at least 8 characters")
    return pw


def _secrets(cfg: config_mod.Config, password: str) -> tuple[str, str]:
    from mailsrv.auth.passwords import Hasher

    return Hasher(cfg.auth).make(password)


def _run(fn: Callable[[config_mod.Config, SyncDirectory, Actor, argparse.Namespace], Any]) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        cfg, d = _open(args)
        try:
            result = fn(cfg, d, _actor(d, args), args)
        except (DirectoryError, ValueError) as exc:
            raise CliError(str(exc)) from None
        finally:
            d.close()
        _emit(args, result)
        return 0

    return command


# -- commands ---------------------------------------------------------------------------------

def _user_del(cfg: config_mod.Config, d: SyncDirectory, actor: Actor, args: argparse.Namespace) -> Any:
    from mailsrv.cli.quota import forget_usage

    acct = d.account_by_address(args.address)
    out = ops.user_del(d, actor, args.address)
    if acct is not None:  # its mail no longer counts towards the domain's quota
        forget_usage(cfg, str(acct.id))
    return out


def _user_fields(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attr, key in (("name", "display_name"), ("dept", "dept"), ("title", "title"), ("phone", "phone"),
                      ("quota", "quota_bytes"), ("quota_messages", "quota_messages"),
                      ("send_outside", "may_send_outside"), ("networks", "networks")):
        v = getattr(args, attr, argparse.SUPPRESS)
        if v is not argparse.SUPPRESS:
            out[key] = v
    return out


def _domain_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The options given to ``domain set`` (absent ones are left unchanged; ``--catchall none`` clears)."""
    out: dict[str, Any] = {}
    for key in ("catchall", "networks", "max_users", "max_storage"):
        v = getattr(args, key, argparse.SUPPRESS)
        if v is not argparse.SUPPRESS:
            out[key] = None if key == "catchall" and v == "none" else v
    return out


def _within(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def _check_store_free(cfg: config_mod.Config, d: SyncDirectory, store: str) -> None:
    """Refuse a store that is, holds or lies in another account's (their mail would mix: each would read,
    expunge and count the other's), or that holds the data directory (its spool, queue, directory).
    Compared as real paths: a symlink or an absolute spelling of a relative store is the same store."""
    data = os.path.realpath(cfg.server.data_dir)
    mine = os.path.realpath(os.path.join(data, store))
    if _within(data, mine):
        raise CliError(f"--store {store}: {mine} holds the data directory {data}")
    for u in d.list_users():
        other = os.path.realpath(os.path.join(data, u["store"]))
        if _within(mine, other) or _within(other, mine):
            raise CliError(f"--store {store}: {mine} overlaps {other}, the store of {u['address']}")


def _user_add(cfg: config_mod.Config, d: SyncDirectory, actor: Actor, args: argparse.Namespace) -> Any:
    fields = _user_fields(args)
    if args.store:
        actor.require_super()  # a store path may name any maildir on the machine, another user's too
        _check_store_free(cfg, d, args.store)
        fields["store"] = args.store
    secrets_ = None if args.no_password else _secrets(cfg, read_password(args))
    return ops.user_add(d, actor, args.address, secrets_, **fields)


def _user_passwd(cfg: config_mod.Config, d: SyncDirectory, actor: Actor, args: argparse.Namespace) -> Any:
    actor.require_address(d, args.address)  # before prompting
    return ops.user_passwd(d, actor, args.address, _secrets(cfg, read_password(args)))


def _token_issue(cfg: config_mod.Config, d: SyncDirectory, actor: Actor, args: argparse.Namespace) -> Any:
    from mailsrv.auth import tokens

    actor.require_address(d, args.user)
    scopes = set(args.scope or ["mail"])
    if "admin" in scopes and not d.admin_scopes(args.user):
        raise CliError(f"{args.user} is not an administrator: grant a scope first (mailsrv admin grant)")
    tid, secret = tokens.issue(d, args.user, scopes, label=args.label, ttl=args.ttl)
    return {"id": tid, "user": args.user.lower(), "scopes": sorted(scopes), "token": secret}


def _token_revoke(cfg: config_mod.Config, d: SyncDirectory, actor: Actor, args: argparse.Namespace) -> Any:
    owner = d.token_owner(args.id)
    if owner is None:
        raise CliError(f"no token {args.id}")
    actor.require_address(d, owner)
    return {"id": args.id, "revoked": d.revoke_token(args.id)}


def _export(cfg: config_mod.Config, d: SyncDirectory, actor: Actor, args: argparse.Namespace) -> Any:
    actor.require_super()
    data = export(d)
    text = json.dumps(data, indent=2, sort_keys=True)
    if args.file and args.file != "-":
        import os

        fd = os.open(args.file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds password hashes
        with os.fdopen(fd, "w") as fh:
            fh.write(text + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return {"exported": args.file, "users": len(data["users"]), "domains": len(data["domains"])}
    print(text)
    return None


def _import(cfg: config_mod.Config, d: SyncDirectory, actor: Actor, args: argparse.Namespace) -> Any:
    from mailsrv.auth.passwords import is_supported

    actor.require_super()
    try:
        with (sys.stdin if args.file == "-" else open(args.file)) as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise CliError(f"{args.file}: {exc}") from None
    return import_(d, data, hash_check=is_supported)


def register(sub: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument("--as", dest="as_admin", metavar="ADMIN", default=None,
                        help="act within this administrator's scope (default: the local operator)")
    pw = argparse.ArgumentParser(add_help=False)
    pw.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")

    def cmd(parent: argparse._SubParsersAction, name: str, fn: Callable[..., Any], help_: str,
            parents: list[argparse.ArgumentParser] | None = None) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help_, parents=[common] + (parents or []))
        p.set_defaults(func=_run(fn))
        return p

    def group_of(name: str, help_: str) -> argparse._SubParsersAction:
        p = sub.add_parser(name, help=help_)
        p.set_defaults(func=lambda a: (p.print_help(), 2)[1])
        return p.add_subparsers(dest=f"{name}_cmd", metavar="ACTION")

    # domain
    g = group_of("domain", "mail domains")
    p = cmd(g, "add", lambda c, d, a, x: ops.domain_add(d, a, x.name, max_users=x.max_users,
                                                      max_storage=x.max_storage, networks=x.networks), "add a domain")
    p.add_argument("name")
    p.add_argument("--max-users", type=_count, default=None)
    p.add_argument("--max-storage", type=parse_size, default=None)
    p.add_argument("--networks", type=_nets, default=(), help="allowed login networks, CIDR list")
    cmd(g, "list", lambda c, d, a, x: ops.domain_list(d, a), "list domains")
    p = cmd(g, "del", lambda c, d, a, x: ops.domain_del(d, a, x.name), "delete an empty domain")
    p.add_argument("name")
    p = cmd(g, "set", lambda c, d, a, x: ops.domain_set(d, a, x.name, **_domain_fields(x)), "change a domain")
    p.add_argument("name")
    p.add_argument("--catchall", default=argparse.SUPPRESS, help='user receiving unknown addresses, or "none"')
    p.add_argument("--networks", type=_nets, default=argparse.SUPPRESS)
    p.add_argument("--max-users", type=_count, default=argparse.SUPPRESS)
    p.add_argument("--max-storage", type=parse_size, default=argparse.SUPPRESS)
    p = cmd(g, "alias", lambda c, d, a, x: ops.domain_alias_add(d, a, x.alias, x.domain), "add a domain alias")
    p.add_argument("alias")
    p.add_argument("domain")
    p = cmd(g, "unalias", lambda c, d, a, x: ops.domain_alias_del(d, a, x.alias), "delete a domain alias")
    p.add_argument("alias")

    # user
    g = group_of("user", "mailbox users")

    def user_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("--name", default=argparse.SUPPRESS, help="display name")
        p.add_argument("--dept", default=argparse.SUPPRESS, help="department address")
        p.add_argument("--title", default=argparse.SUPPRESS)
        p.add_argument("--phone", default=argparse.SUPPRESS)
        p.add_argument("--quota", type=parse_size, default=argparse.SUPPRESS, help="storage quota (500M, 2G, unlimited)")
        p.add_argument("--quota-messages", type=_count, default=argparse.SUPPRESS)
        p.add_argument("--send-outside", type=_yesno, default=argparse.SUPPRESS, help="yes or no")
        p.add_argument("--networks", type=_nets, default=argparse.SUPPRESS, help="allowed login networks (CIDR list)")

    p = cmd(g, "add", _user_add, "add a user", [pw])
    p.add_argument("address")
    p.add_argument("--no-password", action="store_true", help="create without a password (cannot log in)")
    p.add_argument("--store", default=None, metavar="PATH",
                   help="the mail store: relative to server.data_dir, or an existing (Dovecot) maildir to adopt "
                        "where it lies, UIDs kept (default: mail/DOMAIN/LOCAL)")
    user_opts(p)
    p = cmd(g, "passwd", _user_passwd, "set a user's password", [pw])
    p.add_argument("address")
    p = cmd(g, "set", lambda c, d, a, x: ops.user_set(d, a, x.address, **_user_fields(x)), "change a user")
    p.add_argument("address")
    user_opts(p)
    p = cmd(g, "suspend", lambda c, d, a, x: ops.user_set(d, a, x.address, state="suspended"), "suspend a user")
    p.add_argument("address")
    p = cmd(g, "activate", lambda c, d, a, x: ops.user_set(d, a, x.address, state="active"), "re-activate a user")
    p.add_argument("address")
    p = cmd(g, "del", _user_del, "delete a user (the store is kept)")
    p.add_argument("address")
    p = cmd(g, "list", lambda c, d, a, x: ops.user_list(d, a, x.domain), "list users")
    p.add_argument("domain", nargs="?")
    p = cmd(g, "show", lambda c, d, a, x: ops.user_show(d, a, x.address), "show one user")
    p.add_argument("address")

    # alias
    g = group_of("alias", "additional addresses of users")
    p = cmd(g, "add", lambda c, d, a, x: ops.alias_add(d, a, x.alias, x.user), "add an alias")
    p.add_argument("alias")
    p.add_argument("user")
    p = cmd(g, "del", lambda c, d, a, x: ops.alias_del(d, a, x.alias), "delete an alias")
    p.add_argument("alias")
    p = cmd(g, "list", lambda c, d, a, x: ops.alias_list(d, a, x.domain), "list aliases")
    p.add_argument("domain", nargs="?")

    # group
    g = group_of("group", "distribution groups")
    p = cmd(g, "add", lambda c, d, a, x: ops.group_add(d, a, x.address, name=x.name, post_policy=x.policy), "add a group")
    p.add_argument("address")
    p.add_argument("--name", default="")
    p.add_argument("--policy", default="anyone", choices=["anyone", "members", "listed", "domain"], help="who may post")
    p = cmd(g, "set", lambda c, d, a, x: ops.group_set(d, a, x.address, post_policy=x.policy, name=x.name), "change a group")
    p.add_argument("address")
    p.add_argument("--name", default=None)
    p.add_argument("--policy", default=None, choices=["anyone", "members", "listed", "domain"])
    p = cmd(g, "del", lambda c, d, a, x: ops.group_del(d, a, x.address), "delete a group")
    p.add_argument("address")
    p = cmd(g, "list", lambda c, d, a, x: ops.group_list(d, a, x.domain, "group"), "list groups")
    p.add_argument("domain", nargs="?")
    p = cmd(g, "show", lambda c, d, a, x: ops.group_show(d, a, x.address), "show a group")
    p.add_argument("address")
    mp = g.add_parser("member", help="group members")
    mg = mp.add_subparsers(dest="member_cmd", metavar="ACTION")
    mp.set_defaults(func=lambda a: (mp.print_help(), 2)[1])
    p = cmd(mg, "add", lambda c, d, a, x: ops.member_add(d, a, x.group, x.member), "add a member (user, group or outside address)")
    p.add_argument("group")
    p.add_argument("member")
    p = cmd(mg, "del", lambda c, d, a, x: ops.member_del(d, a, x.group, x.member), "remove a member")
    p.add_argument("group")
    p.add_argument("member")

    p = cmd(g, "sender", lambda c, d, a, x: (ops.sender_del if x.remove else ops.sender_add)(d, a, x.group, x.sender),
            'allow (or with --remove, stop allowing) an address to post (policy "listed")')
    p.add_argument("group")
    p.add_argument("sender")
    p.add_argument("--remove", action="store_true")
    p = cmd(g, "send-as", lambda c, d, a, x: (ops.send_as_revoke if x.remove else ops.send_as_grant)(d, a, x.group, x.user),
            "let a user send as the group address (--remove: no longer)")
    p.add_argument("group")
    p.add_argument("user")
    p.add_argument("--remove", action="store_true")

    # dept
    g = group_of("dept", "departments (each is also a group address)")
    p = cmd(g, "add", lambda c, d, a, x: ops.dept_add(d, a, x.address, name=x.name, parent=x.parent), "add a department")
    p.add_argument("address")
    p.add_argument("--name", default="")
    p.add_argument("--parent", default=None, help="parent department address")
    p = cmd(g, "move", lambda c, d, a, x: ops.dept_move(d, a, x.address, x.parent), "move a department")
    p.add_argument("address")
    p.add_argument("--parent", default=None, help="new parent (none: top level)")
    p = cmd(g, "list", lambda c, d, a, x: ops.group_list(d, a, x.domain, "dept"), "list departments")
    p.add_argument("domain", nargs="?")

    # admin
    g = group_of("admin", "administrators and their scope")
    p = cmd(g, "grant", lambda c, d, a, x: ops.admin_grant(d, a, x.user, x.scope, x.target), "grant a scope")
    p.add_argument("user")
    p.add_argument("scope", choices=["super", "domain", "dept"])
    p.add_argument("target", nargs="?", help="domain or department address")
    p = cmd(g, "revoke", lambda c, d, a, x: ops.admin_revoke(d, a, x.user, x.scope, x.target), "revoke scopes")
    p.add_argument("user")
    p.add_argument("scope", nargs="?", choices=["super", "domain", "dept"])
    p.add_argument("target", nargs="?")
    cmd(g, "list", lambda c, d, a, x: [vars_(s) for s in d.list_admins()] if a.is_super else [], "list administrators")

    # token
    g = group_of("token", "bearer tokens for JMAP and the admin API")
    p = cmd(g, "issue", _token_issue, "issue a token (printed once)")
    p.add_argument("user")
    p.add_argument("--scope", action="append", choices=["mail", "admin"], help="repeatable (default: mail)")
    p.add_argument("--label", default="")
    p.add_argument("--ttl", type=float, default=None, help="lifetime in seconds (default: until revoked)")
    p = cmd(g, "revoke", _token_revoke, "revoke a token")
    p.add_argument("id", type=int)
    p = cmd(g, "list", lambda c, d, a, x: [t for t in d.list_tokens(x.user) if a.can_address(d, t["user"])], "list live tokens")
    p.add_argument("user", nargs="?")

    # lockout
    g = group_of("lockout", "login failure counters and locks")
    cmd(g, "list", lambda c, d, a, x: ops.lockout_list(d, a, time.time()), "show counters and locks")
    p = cmd(g, "clear", lambda c, d, a, x: ops.lockout_clear(d, a, None if x.all else x.key), "clear a user's or IP's counters")
    p.add_argument("key", nargs="?", help="user address, IP, or acct:/ip: key")
    p.add_argument("--all", action="store_true")

    # directory export / import
    g = group_of("directory", "export and import the whole directory as JSON")
    p = cmd(g, "export", _export, "write the directory as JSON (password hashes and shares included)")
    p.add_argument("file", nargs="?", default="-")
    p = cmd(g, "import", _import, "add the contents of a JSON export")
    p.add_argument("file")


def vars_(obj: Any) -> dict[str, Any]:
    return {k: getattr(obj, k) for k in obj.__slots__}


def demo_password() -> str:
    """16 URL-safe characters that never start with "-" (a command line would read it as an option:
    swaks, curl, mutt's -e) or "_"."""
    while True:
        password = secrets.token_urlsafe(12)
        if password[0].isalnum():
            return password


def init_directory(cfg: config_mod.Config, args: argparse.Namespace) -> None:
    """``mailsrv init`` hook: create the directory; with ``--demo`` add example.test, alice and bob."""
    from mailsrv.auth.passwords import Hasher

    d = open_sync(cfg.directory, cfg.server.data_dir)
    try:
        if not getattr(args, "demo", False) or d.is_local_domain("example.test"):
            return
        d.add_domain("example.test")
        hasher = Hasher(cfg.auth)
        lines = []
        for name, display in (("alice", "Alice Example"), ("bob", "Bob Example")):
            password = demo_password()
            h, s = hasher.make(password)
            d.add_user(f"{name}@example.test", password_hash=h, scram=s, display_name=display)
            lines.append(f"mailsrv: demo user {name}@example.test password {password}")
            print(lines[-1])
        # `make run` shows them again on every start (a demo setup only; mode 0600).
        users_file = Path(args.dir) / "demo-users.txt"
        fd = os.open(users_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(lines) + "\n")
    finally:
        d.close()
