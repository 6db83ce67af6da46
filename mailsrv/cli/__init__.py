"""The ``mailsrv`` command line: one sub-command group per module in COMMAND_MODULES.

Each module has ``register(subparsers)`` that adds its sub-commands with
``set_defaults(func=...)``; ``func(args)`` returns the exit status.
Operator errors print one line (no traceback) and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pwd
import sys

from mailsrv import __version__
from mailsrv import config as config_mod
from mailsrv.config import ConfigError, default_path

COMMAND_MODULES = [
    "mailsrv.cli.core",
    "mailsrv.cli.directory",
    "mailsrv.cli.queue",
    "mailsrv.cli.dkim",
    "mailsrv.cli.policy",
    "mailsrv.cli.share",
    "mailsrv.cli.quota",
    "mailsrv.cli.recall",
    "mailsrv.cli.files",
    "mailsrv.cli.sieve",
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


#: Commands that write nothing under server.data_dir (or, for serve, run as whoever the unit names; init
#: checks the directory it writes to itself).
NO_DATA_COMMANDS = frozenset({"init", "serve", "check-config", "version"})

#: 128 + SIGPIPE: the status of a program whose reader (``| head``) went away, as the shell reports it.
EXIT_BROKEN_PIPE = 141


def check_data_owner(data_dir: os.PathLike[str] | str, euid: int) -> None:
    """Refuse root in a data directory that belongs to another user (the service's, ``mailsrv``).

    Files root would make there (the directory's SQLite files, DKIM keys, queue entries) are
    unreadable or read-only to the server, which runs as that user. Raises :class:`CliError`.
    """
    if euid != 0:
        return
    try:
        owner = os.stat(data_dir).st_uid
    except FileNotFoundError:
        return  # nothing there yet: whatever creates it (systemd-tmpfiles, init) decides
    if owner == 0:
        return
    try:
        name = pwd.getpwuid(owner).pw_name
    except KeyError:
        name = str(owner)
    raise CliError(f"{data_dir} belongs to user {name}: run this command as that user "
                   f"(sudo -u {name} mailsrv ...); files made there by root would be unreadable to the server")


def _config_hint(args: argparse.Namespace, exc: ConfigError) -> str:
    """What to do when no config was named and the system default is missing."""
    if exc.message != "file not found" or args.config or os.environ.get("MAILSRV_CONFIG"):
        return ""
    return " (name one with -c FILE or MAILSRV_CONFIG; the demo of `make run` is var/mailsrv.toml)"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        if args.command not in NO_DATA_COMMANDS:
            check_data_owner(config_mod.load(config_path(args)).server.data_dir, os.geteuid())
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"mailsrv: {exc}{_config_hint(args, exc)}", file=sys.stderr)
        return 2
    except CliError as exc:
        print(f"mailsrv: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader (`mailsrv user list | head`) went away: no traceback, and none at exit when
        # Python flushes stdout again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        return 130
