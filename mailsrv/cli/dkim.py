"""``mailsrv dkim keygen DOMAIN``: create a domain's DKIM key and print the DNS record to publish."""

from __future__ import annotations

import argparse

from mailsrv import config as config_mod
from mailsrv.cli import config_path
from mailsrv.queue.dkim import keygen


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dkim", help="DKIM keys for outbound signing")
    ds = p.add_subparsers(dest="dkim_command", metavar="ACTION")
    k = ds.add_parser("keygen", help="create (or show) DOMAIN's key and print its DNS TXT record")
    k.add_argument("domain")
    k.add_argument("--selector", default=None, help="selector (default: queue.dkim_selector)")
    k.add_argument("--bits", type=int, default=2048, help="RSA key size (default 2048)")
    k.set_defaults(func=cmd_keygen)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def cmd_keygen(args: argparse.Namespace) -> int:
    cfg = config_mod.load(config_path(args))
    selector = args.selector or cfg.queue.dkim_selector
    path, record = keygen(cfg.server.data_dir, args.domain, selector, args.bits)
    print(f"; key: {path}")
    print(record)
    return 0
