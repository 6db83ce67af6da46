"""``mailsrv files list|add|delete|sweep``: big-attachment links for scripts and administrators.

``add USER PATH`` copies a file into the link store on USER's behalf (their quota applies) and
prints the link, the only time its token is shown. ``delete ID`` ends a link at once (its URL then
answers 410). ``sweep`` expires links now instead of at the workers' next sweep. Safe while the
server runs (docs/files.md).
"""

from __future__ import annotations

import argparse
import json
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


def public_base(cfg: config_mod.Config) -> str:
    """The URL prefix of links made outside a request: [files] public_url, [jmap] base_url, else the host name."""
    return (cfg.files.public_url or cfg.jmap.base_url or f"https://{cfg.server.hostname}").rstrip("/")


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
    url = f"{public_base(cfg)}/f/{token}/{quote(link.name, safe='')}"
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
