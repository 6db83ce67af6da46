"""``mailsrv quota show [DOMAIN]`` and ``mailsrv quota recalc [DOMAIN]``: per-domain quota usage.

Workers keep each domain's usage incrementally (docs/store-api.md, Quota); ``recalc``
recomputes it from the per-account indexes, e.g. after a restore from backup or a
crash that lost the last updates. Safe while the server runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mailsrv import config as config_mod
from mailsrv.cli import CliError, config_path
from mailsrv.directory import SyncDirectory, open_sync
from mailsrv.store import account_root
from mailsrv.store.recalc import recalc_domain
from mailsrv.store.usage import BOOK_NAME, UsageBook

#: accounts read from the directory per query
PAGE = 500


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quota", help="per-domain quota usage")
    qs = p.add_subparsers(dest="quota_command", metavar="ACTION")
    for name, func, doc in (
        ("show", cmd_show, "usage and limit of every domain (or one)"),
        ("recalc", cmd_recalc, "recompute domain usage from the per-account indexes"),
    ):
        q = qs.add_parser(name, help=doc)
        q.add_argument("domain", nargs="?", default=None, help="one domain (default: all)")
        q.add_argument("--json", action="store_true", help="one JSON object per domain")
        q.set_defaults(func=func)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _open(args: argparse.Namespace) -> tuple[config_mod.Config, SyncDirectory, UsageBook]:
    cfg = config_mod.load(config_path(args))
    data_dir = Path(cfg.server.data_dir)
    return cfg, open_sync(cfg.directory, data_dir), UsageBook(data_dir / BOOK_NAME)


def forget_usage(cfg: config_mod.Config, account_id: str) -> None:
    """A deleted account's usage leaves its domain's total (``mailsrv user del``)."""
    book = UsageBook(Path(cfg.server.data_dir) / BOOK_NAME)
    try:
        book.forget(account_id)
    finally:
        book.close()


def _domains(d: SyncDirectory, only: str | None) -> list[tuple[str, int | None]]:
    rows = [(x["name"], x["max_storage"]) for x in d.list_domains()]
    if only is not None:
        rows = [r for r in rows if r[0] == only.lower()]
        if not rows:
            raise CliError(f"no domain {only}")
    return rows


def _print(args: argparse.Namespace, domain: str, storage: int, messages: int, limit: int | None) -> None:
    if args.json:
        print(json.dumps({"domain": domain, "storage": storage, "messages": messages, "max_storage": limit}))
    else:
        lim = "unlimited" if limit is None else f"{limit} bytes"
        print(f"{domain}: {storage} bytes in {messages} messages (limit {lim})")


def cmd_show(args: argparse.Namespace) -> int:
    _, d, book = _open(args)
    try:
        usage = book.domains()
        for name, limit in _domains(d, args.domain):
            u = usage.get(name)
            _print(args, name, u.storage if u else 0, u.messages if u else 0, limit)
    finally:
        book.close()
        d.close()
    return 0


def cmd_recalc(args: argparse.Namespace) -> int:
    cfg, d, book = _open(args)
    data_dir = Path(cfg.server.data_dir)
    try:
        domains = _domains(d, args.domain)
        if args.domain is None:
            book.retain_domains(name for name, _ in domains)
        for name, limit in domains:
            accounts: list[tuple[str, Path]] = []
            after = 0
            while True:
                page = d.accounts_page(name, after, PAGE)
                accounts += [(str(a.id), account_root(data_dir, a.id, a.store)) for a in page]
                if len(page) < PAGE:
                    break
                after = page[-1].id
            u = recalc_domain(book, name, accounts)
            _print(args, name, u.storage, u.messages, limit)
    finally:
        book.close()
        d.close()
    return 0
