"""``mailsrv files list|add|delete|sweep|convert``: big-attachment links for scripts and administrators.

``add USER PATH`` copies a file into the link store on USER's behalf (their quota applies) and
prints the link, the only time its token is shown. ``delete ID`` ends a link at once (its URL then
answers 410). ``sweep`` expires links now instead of at the workers' next sweep. ``convert`` shows
or sets the ``convert_over`` threshold of a domain or user (over ``[files] convert_over``). Safe while
the server runs (docs/files.md).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from urllib.parse import quote

from mailsrv import config as config_mod
from mailsrv.cli import CliError, config_path
from mailsrv.directory import open_sync
from mailsrv.files import FileLink, FileLinkError, LinkStore, files_root
from mailsrv.files.links import ID_RE, iso
from mailsrv.files.service import copy_durably, make_link


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("files", help="big attachments through links: list, add, delete")
    fs = p.add_subparsers(dest="files_command", metavar="ACTION")
    ls = fs.add_parser("list", help="live links (of one user, or everyone's)")
    ls.add_argument("user", nargs="?", default=None, help="a user's address (default: all users)")
    ls.add_argument("--all", action="store_true", help="also expired and deleted links (kept 90 days)")
    ls.add_argument("--json", action="store_true", help="one JSON object per link")
    ls.set_defaults(func=cmd_list)
    add = fs.add_parser("add", help="upload PATH as USER's link and print its URL")
    add.add_argument("user", help="the owner's address (their [files] quota applies)")
    add.add_argument("path", type=Path, help="the file")
    add.add_argument("--days", type=int, default=None, help="days the link stays valid (default: [files] retention_days)")
    add.add_argument("--name", default=None, help="the name downloads save as (default: PATH's)")
    add.add_argument("--type", default="application/octet-stream", help="media type recorded with the file")
    add.add_argument("--json", action="store_true", help="the link as JSON")
    add.set_defaults(func=cmd_add)
    rm = fs.add_parser("delete", help="end a link now (its file is removed)")
    rm.add_argument("id", help="the link's id (F + 24 hex digits, from list)")
    rm.set_defaults(func=cmd_delete)
    sw = fs.add_parser("sweep", help="remove the files of expired links now")
    sw.set_defaults(func=cmd_sweep)
    cv = fs.add_parser("convert", help="attachments over N bytes sent as links: per domain or user",
                       description="Without VALUE: the thresholds set (all, or SCOPE's) and the one that applies. "
                       "With it: SCOPE's own threshold, a user's over their domain's over [files] convert_over. "
                       "Workers see a change within a few seconds.")
    cv.add_argument("scope", nargs="?", default=None, help="a local domain, or a user's address")
    cv.add_argument("value", nargs="?", default=None,
                    help="bytes (suffix K, M or G: 25M), 'off' (never for them), or 'default' (remove: inherit)")
    cv.add_argument("--json", action="store_true", help="as JSON")
    cv.add_argument("--as", dest="as_admin", metavar="ADMIN", default=None,
                    help="act as this administrator: only their domain's and users' settings are shown and changed")
    cv.set_defaults(func=cmd_convert)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _open(args: argparse.Namespace) -> tuple[config_mod.Config, LinkStore]:
    cfg = config_mod.load(config_path(args))
    return cfg, LinkStore(files_root(Path(cfg.server.data_dir)))


def _owner(cfg: config_mod.Config, address: str) -> tuple[str, str]:
    d = open_sync(cfg.directory, Path(cfg.server.data_dir))
    try:
        acct = d.account_by_address(address)
    finally:
        d.close()
    if acct is None:
        raise CliError(f"no user {address}")
    return str(acct.id), acct.address


def _line(link: FileLink) -> dict[str, object]:
    return {"id": link.id, "owner": link.owner_name, **{k: v for k, v in link.to_json().items() if k != "id"}}


def cmd_list(args: argparse.Namespace) -> int:
    cfg, store = _open(args)
    try:
        owner = _owner(cfg, args.user)[0] if args.user else None
        links = store.list(owner, live_only=not args.all)
    finally:
        store.close()
    for link in links:
        row = _line(link)
        if args.json:
            print(json.dumps(row, ensure_ascii=False))
        else:
            print(f"{link.id}  {link.owner_name}  {link.size:>12}  expires {row['expires']}  "
                  f"{link.downloads} downloads  {row['state']}  {link.name}")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    cfg, store = _open(args)
    if not cfg.files.enabled:
        raise CliError("file links are disabled ([files] enabled = false)")
    days = cfg.files.retention_days if args.days is None else args.days
    if days <= 0:
        raise CliError("--days must be 1 or more")
    path: Path = args.path
    try:
        owner, owner_name = _owner(cfg, args.user)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise CliError(f"{path}: {exc.strerror}") from None
        if not path.is_file():
            raise CliError(f"{path}: not a regular file")
        if size > cfg.files.max_size:
            raise CliError(f"{path}: larger than [files] max_size ({cfg.files.max_size} bytes)")
        try:
            link, token = make_link(store, cfg.files, lambda tmp: copy_durably(path, tmp), owner, owner_name,
                                    args.name or path.name, args.type, days)
        except FileLinkError as exc:
            raise CliError(str(exc)) from None
    finally:
        store.close()
    from mailsrv.files.convert import link_base

    url = f"{link_base(cfg)}/f/{token}/{quote(link.name, safe='')}"
    if args.json:
        print(json.dumps({**_line(link), "url": url}, ensure_ascii=False))
    else:
        print(url)
        print(f"# {link.id}: {link.size} bytes, valid until {iso(link.expires)} (shown once: keep the link)")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    if not ID_RE.match(args.id):
        raise CliError(f"{args.id!r} is not a link id (F + 24 hex digits; see mailsrv files list)")
    _, store = _open(args)
    try:
        link = store.delete(args.id)
    finally:
        store.close()
    if link is None:
        raise CliError(f"no live link {args.id}")
    print(f"deleted {link.id} ({link.name}, {link.owner_name}, {link.size} bytes)")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    _, store = _open(args)
    t0 = time.monotonic()
    try:
        n, freed = store.sweep()
    finally:
        store.close()
    print(f"expired {n} links, freed {freed} bytes in {time.monotonic() - t0:.2f}s")
    return 0


_SIZE_RE = re.compile(r"^([0-9]{1,15})([KMG]?)$", re.IGNORECASE)


def parse_threshold(text: str) -> int | None:
    """A ``files convert`` VALUE: bytes (a K, M or G suffix: binary multiples), ``off`` (0), ``default`` (None)."""
    word = text.strip().lower()
    if word == "off":
        return 0
    if word == "default":
        return None
    m = _SIZE_RE.match(word)
    if m is None:
        raise CliError(f"{text!r}: a number of bytes (25M, 500K), 'off' or 'default'")
    return int(m.group(1)) * 1024 ** " kmg".index(m.group(2).lower() or " ")


def cmd_convert(args: argparse.Namespace) -> int:
    from mailsrv.admin.filesettings import list_settings, set_setting
    from mailsrv.directory import DirectoryError
    from mailsrv.directory.scope import Actor
    from mailsrv.files.convert import pick_threshold

    cfg = config_mod.load(config_path(args))
    d = open_sync(cfg.directory, Path(cfg.server.data_dir))
    try:
        try:  # as the operator, or within an administrator's scope (--as): as the admin API does
            actor = Actor.admin(d, args.as_admin) if args.as_admin else Actor.operator()
            if args.value is not None:
                if args.scope is None:
                    raise CliError("VALUE needs a SCOPE (a domain or a user's address)")
                set_setting(d, actor, args.scope, parse_threshold(args.value))
            rows = list_settings(d, actor, args.scope)
        except (DirectoryError, ValueError) as exc:
            raise CliError(str(exc)) from None
        applies = None
        if args.scope is not None:
            scope = args.scope.strip().lower()
            acct = d.account_by_address(scope) if "@" in scope else None
            if "@" in scope and acct is None:
                raise CliError(f"no user {scope}")
            if "@" not in scope and not d.is_local_domain(scope):
                raise CliError(f"no domain {scope}")
            users, domains = d.convert_settings()
            applies = pick_threshold(users, domains, cfg.files.convert_over, acct.id if acct is not None else None,
                                     acct.domain if acct is not None else scope)
    finally:
        d.close()
    if args.json:
        out: dict[str, object] = {"default": cfg.files.convert_over, "settings": rows}
        if applies is not None:
            out["applies"] = applies
        print(json.dumps(out))
        return 0
    print(f"*\t{cfg.files.convert_over or 'off'}\t([files] convert_over)")
    for r in rows:
        print(f"{r['scope']}\t{r['convert_over'] or 'off'}")
    if applies is not None:
        print(f"{args.scope.strip().lower()} converts attachments over: {applies or 'never (off)'}"
              f"{' bytes' if applies else ''}")
    return 0
