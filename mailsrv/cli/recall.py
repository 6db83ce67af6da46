"""``mailsrv recall USER MESSAGE-ID``: take back the unread local copies of a message USER sent.

Runs in its own process beside the server (the store is shared through files: IMAP IDLE and JMAP
push clients of the workers see the expunge). One line per recipient; exit status 0 when at least
one copy was recalled, 1 when none was, 2 on an operator error (unknown user, recall disabled). A
scan cut short by ``[recall] max_accounts`` is said on stderr (the results may be incomplete).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from mailsrv import config as config_mod
from mailsrv.cli import CliError, config_path
from mailsrv.directory import open_directory
from mailsrv.recall import Recaller, RecallError, RecallResults
from mailsrv.search import SearchService
from mailsrv.store import Store
from mailsrv.worker import search_exists, search_resolver


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recall", help="take back the unread local copies of a message a user sent")
    p.add_argument("user", help="the sender (any of their addresses)")
    p.add_argument("message_id", metavar="MESSAGE-ID", help="the message's Message-ID, with or without <>")
    p.add_argument("--json", action="store_true", help="one JSON object per recipient")
    p.set_defaults(func=cmd_recall)


async def _run(cfg: config_mod.Config, user: str, message_id: str) -> RecallResults:
    data_dir = Path(cfg.server.data_dir)
    directory = open_directory(cfg.directory, data_dir)
    store = Store(cfg.store, data_dir, hostname=cfg.server.hostname, mime=cfg.mime)
    store.set_domain_quota_source(directory.domain_quota)
    # the expunges are committed in this process: its search service takes the copies out of the indexes
    search = SearchService(cfg.search, search_resolver(store), search_exists(store))
    store.add_observer(search)
    try:
        return await Recaller.of(cfg, store, directory).recall(user, message_id)
    finally:
        await store.close()
        await search.close()
        await directory.close()


def cmd_recall(args: argparse.Namespace) -> int:
    cfg = config_mod.load(config_path(args))
    try:
        results = asyncio.run(_run(cfg, args.user, args.message_id))
    except RecallError as exc:
        raise CliError(str(exc)) from None
    for r in results:
        if args.json:
            print(json.dumps(r.as_dict()))
        else:
            print(f"{r.recipient}: {r.status}")
    if not results:
        print(f"no local copy of {args.message_id} sent by {args.user}")
    if results.truncated:  # on stderr: --json output stays one recipient per line
        print(f"warning: incomplete: the scan stopped after [recall] max_accounts = {cfg.recall.max_accounts} "
              "accounts; copies in the others were not looked at", file=sys.stderr)
    return 0 if any(r.status == "recalled" for r in results) else 1
