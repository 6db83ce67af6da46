"""``mailsrv queue list [DOMAIN] | show ID | flush [DOMAIN] | hold ID | release ID | delete ID``: the outbound queue."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import time

from mailsrv import config as config_mod
from mailsrv.cli import CliError, config_path
from mailsrv.queue.store import PENDING, Envelope, QueueDir, queue_dir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("queue", help="inspect and control the outbound queue")
    qs = p.add_subparsers(dest="queue_command", metavar="ACTION")
    ls = qs.add_parser("list", help="list queued messages (all, or those to one domain)")
    ls.add_argument("domain", nargs="?", default=None, help="only messages with a pending recipient at this domain")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(func=cmd_list)
    for name, func, doc in (
        ("show", cmd_show, "show one message's envelope and recipient state"),
        ("hold", cmd_hold, "stop delivery attempts for a message"),
        ("release", cmd_release, "resume delivery of a held message (attempted now)"),
        ("delete", cmd_delete, "remove a message from the queue without a bounce"),
    ):
        q = qs.add_parser(name, help=doc)
        q.add_argument("id", help="queue id (from `mailsrv queue list`)")
        if name == "show":
            q.add_argument("--json", action="store_true", help="JSON (what show always prints; for scripts)")
        q.set_defaults(func=func)
    fl = qs.add_parser("flush", help="attempt queued messages now (all, or those to one domain)",
                       description="Attempt now every message that is not held (or, with DOMAIN, every one with "
                       "a pending recipient at DOMAIN). A delayed send (JMAP sendAt / FUTURERELEASE) keeps its time.")
    fl.add_argument("domain", nargs="?", default=None, help="only messages with a recipient at this domain")
    fl.set_defaults(func=cmd_flush)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _qd(args: argparse.Namespace) -> QueueDir:
    cfg = config_mod.load(config_path(args))
    return queue_dir(cfg.server.data_dir)


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _load(qd: QueueDir, qid: str) -> Envelope:
    if not qid.isalnum():  # an id names a file: nothing but the id's hex digits
        raise CliError(f"no queued message {qid}")
    try:
        return qd.load(qid)
    except FileNotFoundError:
        raise CliError(f"no queued message {qid}") from None


def _domain(args: argparse.Namespace) -> str | None:
    return args.domain.strip().lower().lstrip("@") if args.domain else None


def cmd_list(args: argparse.Namespace) -> int:
    qd = _qd(args)
    domain = _domain(args)
    entries = [env for env in qd.all() if domain is None or env.bound_for(domain)]
    for env in entries:
        pending = [r.addr for r in env.rcpts if r.status == PENDING]
        if args.json:
            print(json.dumps({"id": env.id, "sender": env.sender, "created": env.created,
                              "held": env.held, "attempts": env.attempts, "pending": pending,
                              "next_attempt": env.next_attempt}, ensure_ascii=False))
            continue
        flag = " HELD" if env.held else ""
        size = qd.message_path(env.id).stat().st_size if qd.message_path(env.id).exists() else 0
        print(f"{env.id}{flag}  {size:>9}  {_when(env.created)}  <{env.sender}>  attempts={env.attempts}")
        for r in env.rcpts:
            if r.status == PENDING:
                print(f"    {r.addr}  {r.diag}")
    if not args.json:
        print(f"-- {len(entries)} message(s) in the queue")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """The queued envelope; for a message that left the queue, its outcome record (``finished``, and
    per recipient sent / failed / expired with the last reply) while ``queue.outcome_keep`` keeps it."""
    qd = _qd(args)
    if args.id.isalnum():
        # the runner writes done/ before it removes env/: env/ first, then done/, misses neither
        with contextlib.suppress(FileNotFoundError):
            print(qd.load(args.id).to_json().decode())
            return 0
        with contextlib.suppress(FileNotFoundError):
            print((qd.done / f"{args.id}.json").read_text())
            return 0
    raise CliError(f"no queued message {args.id}, nor the outcome of one (kept for queue.outcome_keep)")


def cmd_hold(args: argparse.Namespace) -> int:
    qd = _qd(args)
    _load(qd, args.id)
    qd.update(args.id, held=True)
    qd.poke(b"reload " + args.id.encode())
    print(f"{args.id}: held")
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    qd = _qd(args)
    _load(qd, args.id)
    qd.update(args.id, held=False, next_attempt=0.0)
    qd.poke(b"reload " + args.id.encode())
    print(f"{args.id}: released")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    qd = _qd(args)
    if not qd.remove(args.id):
        raise CliError(f"no queued message {args.id}")
    qd.poke(b"reload " + args.id.encode())
    print(f"{args.id}: deleted")
    return 0


def cmd_flush(args: argparse.Namespace) -> int:
    qd = _qd(args)
    domain = _domain(args)
    now = time.time()
    flushed = []
    for env in qd.all():
        if not env.held and env.flushable(now) and (domain is None or env.bound_for(domain)):
            qd.update(env.id, next_attempt=0.0)
            flushed.append(env.id)
    if domain is None:
        running = qd.poke(b"flush")
    else:  # the runner reads these entries again (their next attempt is now); the others keep their times
        running = all([qd.poke(b"reload " + qid.encode()) for qid in flushed]) if flushed else qd.poke(b"wake")
    what = f"{len(flushed)} message(s) to {domain}" if domain is not None else "queue"
    print(f"{what} flushed" + ("" if running else " (runner not running: delivery at its next start)"))
    return 0
