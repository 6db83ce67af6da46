"""``mailsrv policy list|add|del``: the block and allow lists of the inbound policy (issue 12);
``mailsrv policy learn --spam|--ham FILE...`` and ``mailsrv policy stats``: the spam learner.

``policy learn`` learns :data:`LEARN_BATCH` messages per write transaction (one thread-pool job reads and
tokenizes a batch, holding one message at a time): an interrupted run leaves whole batches learned and
consistent counts, and running it again learns the rest (messages already known are skipped by digest).
With ``--until-correct [PASSES]`` it trains on error instead (train until no errors): a message is learned only
when the learner, as it stands, misjudges it or is unsure; the messages it judged right are judged again in
the next pass, at most PASSES passes, until a pass learns nothing (one write transaction per batch per pass).

Scopes: ``--scope ""`` (default, the whole server), a domain, or a user
address. Entries: an address, a domain (with its subdomains), ``@domain``
(that domain only) or an IP network. Workers see a change within
``mailsrv.policy.lists.CACHE_SECONDS``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Sequence
from pathlib import Path

from mailsrv import config as config_mod
from mailsrv.cli import CliError, config_path
from mailsrv.directory import SyncDirectory, open_sync
from mailsrv.policy.bayes import Lesson, message_digest, tokens
from mailsrv.policy.lists import KINDS, normalize_entry, normalize_scope
from mailsrv.policy.pipeline import Policy

#: Messages ``policy learn`` learns per write transaction (2 000 messages: 4 transactions).
LEARN_BATCH = 500
#: Passes of ``policy learn --until-correct`` without a number.
UNTIL_CORRECT_PASSES = 5


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
    lrn = ps.add_parser("learn", help="teach the spam learner from message files (directories are walked)")
    label = lrn.add_mutually_exclusive_group(required=True)
    label.add_argument("--spam", dest="label", action="store_const", const="spam")
    label.add_argument("--ham", dest="label", action="store_const", const="ham")
    lrn.add_argument("files", nargs="+", metavar="FILE", help="one message per file (a leading mbox From_ line "
                     "is dropped); a directory (e.g. a maildir) gives every file below it")
    lrn.add_argument("--scope", default="", help='"" (default) for the server, a domain, or a user address')
    lrn.add_argument("--batch", type=int, default=LEARN_BATCH, metavar="N",
                     help=f"messages learned per write transaction (default {LEARN_BATCH})")
    lrn.add_argument("--until-correct", type=int, nargs="?", const=UNTIL_CORRECT_PASSES, default=None,
                     metavar="PASSES", help="train on error: learn only the messages the learner misjudges or is "
                     "unsure of, judging those it got right again in up to PASSES passes (default "
                     f"{UNTIL_CORRECT_PASSES}); the plain run (everything) catches more spam (docs/policy.md)")
    lrn.set_defaults(func=cmd_learn)
    st = ps.add_parser("stats", help="messages the spam learner has learned, per scope")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_stats)
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


def _message_files(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():  # regular files only: a FIFO or socket in a maildir is not a message
            out += sorted(p for root, _, files in os.walk(path) for f in files if (p := Path(root) / f).is_file())
        elif path.is_file():
            out.append(path)
        else:
            raise CliError(f"{name}: no such file or directory")
    return out


def read_message(path: Path, limit: int) -> bytes | None:
    """One message file as bytes (None when larger than ``limit``); a leading mbox ``From `` line is dropped."""
    if path.stat().st_size > limit:
        return None
    data = path.read_bytes()
    if data.startswith(b"From "):
        data = data.partition(b"\n")[2]
    return data


def _prepare(paths: Sequence[Path], limit: int) -> list[tuple[str, set[str]] | None]:
    """Digest and tokens of each message file (None: larger than ``limit``); one message in memory at a time."""
    out: list[tuple[str, set[str]] | None] = []
    for path in paths:
        data = read_message(path, limit)
        out.append(None if data is None else (message_digest(data), tokens(data)))
    return out


def cmd_learn(args: argparse.Namespace) -> int:
    cfg = config_mod.load(config_path(args))
    try:
        scope = normalize_scope(args.scope)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if not cfg.policy.bayes and not cfg.policy.rspamd_url:
        raise CliError("no learner: set policy.bayes = true (or policy.rspamd_url for rspamd)")
    if args.batch < 1:
        raise CliError("--batch must be at least 1")
    if args.until_correct is not None and (args.until_correct < 1 or cfg.policy.rspamd_url):
        raise CliError("--until-correct takes a number of passes (1 or more) and needs our learner, not rspamd")
    files = _message_files(args.files)
    counts = {"learned": 0, "known": 0, "too big": 0, "transactions": 0, "right": 0, "passes": 0}

    async def by_rspamd(policy: Policy) -> None:  # rspamd's controller learns one message per request
        for path in files:
            data = read_message(path, cfg.policy.max_scan_size)
            if data is None:
                counts["too big"] += 1
                continue
            counts["learned" if await policy.learn(args.label, data, [scope]) else "known"] += 1

    async def run() -> None:
        policy = Policy.from_config(cfg.policy, hostname=cfg.server.hostname, data_dir=cfg.server.data_dir)
        try:
            if policy.bayes is None:
                await by_rspamd(policy)
                return
            loop = asyncio.get_running_loop()
            todo = files
            while todo and counts["passes"] < (args.until_correct or 1):
                counts["passes"] += 1
                learned_before = counts["learned"]
                right: list[Path] = []  # judged right in this pass: judged again in the next
                for i in range(0, len(todo), args.batch):
                    batch = todo[i:i + args.batch]
                    prepared = await loop.run_in_executor(policy.executor, _prepare, batch, cfg.policy.max_scan_size)
                    lessons = [(path, Lesson((scope,), args.label, *p)) for path, p in zip(batch, prepared, strict=True)
                               if p is not None]
                    counts["too big"] += len(prepared) - len(lessons)
                    if not lessons:
                        continue
                    commits = policy.bayes.state.commits
                    if args.until_correct:
                        verdicts = await policy.bayes.learn_unless_right([lesson for _, lesson in lessons])
                        right += [path for (path, _), v in zip(lessons, verdicts, strict=True) if v == "right"]
                        changed = [v == "learned" for v in verdicts if v != "right"]
                    else:
                        changed = await policy.bayes.learn_many([lesson for _, lesson in lessons])
                    counts["transactions"] += policy.bayes.state.commits - commits
                    counts["learned"] += sum(changed)
                    counts["known"] += len(changed) - sum(changed)
                counts["right"] = len(right)
                if counts["learned"] == learned_before:  # nothing changed: the next pass would judge the same
                    break
                todo = right
        finally:
            policy.close()

    try:
        asyncio.run(run())
    except Exception as exc:  # rspamd unreachable or refusing, a file unreadable: say so, no traceback
        raise CliError(f"learning failed: {exc}") from None
    tx = counts["transactions"]
    where = "rspamd" if cfg.policy.rspamd_url else f"scope {scope or '*'}, {tx} transaction{'' if tx == 1 else 's'}"
    if args.until_correct:
        passes = counts["passes"]
        where += f", {passes} pass{'' if passes == 1 else 'es'}, {counts['right']} judged right and not learned"
    print(f"{args.label}: {counts['learned']} learned, {counts['known']} already known, "
          f"{counts['too big']} too big ({where})")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    cfg = config_mod.load(config_path(args))

    async def run() -> list[tuple[str, int, int]]:
        policy = Policy.from_config(cfg.policy, hostname=cfg.server.hostname, data_dir=cfg.server.data_dir)
        try:
            return await policy.bayes.scope_totals() if policy.bayes is not None else []
        finally:
            policy.close()

    rows = asyncio.run(run())
    if args.json:
        print(json.dumps([{"scope": s, "spam": sp, "ham": h} for s, sp, h in rows]))
    else:
        ready = f"(scores from {cfg.policy.bayes_min_spam} spam and {cfg.policy.bayes_min_ham} ham)"
        print(f"scope\tspam\tham\t{ready}")
        for s, sp, h in rows:
            print(f"{s or '*'}\t{sp}\t{h}")
    return 0
