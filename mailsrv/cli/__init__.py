"""The ``mailsrv`` command line: one sub-command group per module in COMMAND_MODULES.

Each module has ``register(subparsers)`` that adds its sub-commands with
``set_defaults(func=...)``; ``func(args)`` returns the exit status.
Operator errors print one line (no traceback) and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mailsrv import __version__
from mailsrv.config import ConfigError, default_path

COMMAND_MODULES = [
    "mailsrv.cli.core",
    "mailsrv.cli.directory",
    "mailsrv.cli.queue",
    "mailsrv.cli.dkim",
    "mailsrv.cli.policy",
    "mailsrv.cli.share",
    "mailsrv.cli.quota",
]


class CliError(Exception):
    """An operator error: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailsrv", description="mailsrv mail server")
    parser.add_argument("-c", "--config", default=None, help="configuration file (default: $MAILSRV_CONFIG or /etc/mailsrv/mailsrv.toml)")
    parser.add_argument("--version", action="version", version=f"mailsrv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    _add_config_option(sub)
    return parser


def _add_config_option(sub: argparse._SubParsersAction) -> None:
    """Accept ``-c FILE`` after the sub-command too (``mailsrv serve -c FILE``)."""
    for child in set(sub.choices.values()):
        nested = [a for a in child._actions if isinstance(a, argparse._SubParsersAction)]
        if not any("-c" in a.option_strings for a in child._actions):
            child.add_argument("-c", "--config", default=argparse.SUPPRESS, help="configuration file")
        for n in nested:
            _add_config_option(n)


def config_path(args: argparse.Namespace) -> str:
    return args.config or default_path()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ConfigError, CliError) as exc:
        print(f"mailsrv: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
