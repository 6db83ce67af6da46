"""A worker process: one uvloop event loop serving every listener on sockets the master bound.

Life: the master forks us with the listening sockets inherited; we create the
loop (never before the fork), start every listener, report ready on a pipe,
serve until SIGTERM (or until the master dies, seen as EOF on the lifeline
pipe), then drain: stop accepting, let sessions finish up to the grace period,
exit 0.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import inspect
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mailsrv import log
from mailsrv.config import Config
from mailsrv.delivery import spool
from mailsrv.delivery.archive import ArchiveRules, marker_key
from mailsrv.files import FileLinks, files_root
from mailsrv.net.listener import Listener
from mailsrv.net.service import ServiceContext
from mailsrv.policy.pipeline import Policy
from mailsrv.search import SearchService
from mailsrv.search.service import Exists, Reader, ReadMany, ReadManyBlocking, Resolver
from mailsrv.store import MailboxNotFound, Store, account_root
from mailsrv.util import sqlitemem, timeline

logger = log.get("worker")

#: protocol name in the config -> module with ``make_service(ctx)``.
SERVICES = {
    "smtp": "mailsrv.smtp.server",
    "submission": "mailsrv.smtp.server",
    "imap": "mailsrv.imap.server",
    "pop3": "mailsrv.pop3.server",
    "managesieve": "mailsrv.managesieve.server",
    "jmap": "mailsrv.jmap.server",
    "admin": "mailsrv.admin.server",
}


def _training_reader(directory: Any, store: Store, data_dir: Path) -> Any:
    """The policy trainer's reader for any account: (address or account id, mailbox, uid) -> bytes."""

    async def read(account: str, mailbox: str, uid: int) -> bytes:
        entry = await directory.account_by_address(account)
        if entry is None and account.isdigit():
            entry = await directory.account(int(account))
        if entry is None:
            raise LookupError(f"no account {account!r}")
        maildir = account_root(data_dir, entry.id, entry.store) if entry.store else None
        acct = await store.account(str(entry.id), maildir, domain=entry.domain)
        return await acct.read_message(mailbox, uid)

    return read


def search_resolver(store: Store) -> Resolver:
    """Lets a delivery in this worker index a mailbox that no session has opened yet."""

    def resolve(account_id: str, mailbox_id: str) -> tuple[Path, Reader, ReadMany, ReadManyBlocking] | None:
        acct = store.cached_account(account_id)
        if acct is None:
            return None

        async def read(uid: int) -> bytes:
            for info in await acct.list_mailboxes():  # O(mailboxes): counters, no scan
                if info.id == mailbox_id:
                    return await acct.read_message(info.name, uid)
            raise MailboxNotFound(mailbox_id)

        async def read_many(uids: Sequence[int]) -> dict[int, bytes]:
            return await acct.read_messages(mailbox_id, uids)  # one store job per batch

        def read_many_blocking(uids: Sequence[int]) -> dict[int, bytes]:
            return acct.read_messages_blocking(mailbox_id, uids)  # in the search job itself

        return acct.root / "mailsrv-search", read, read_many, read_many_blocking

    return resolve


def search_exists(store: Store) -> Exists:
    """Blocking (the search pool): does the store still have the mailbox? A search round in this worker
    never makes again the index of a mailbox deleted in another (whose ``mailbox_deleted`` it never hears)."""

    def exists(account_id: str, mailbox_id: str) -> bool:
        acct = store.cached_account(account_id)
        if acct is None:
            return True  # not open here: not known, the round goes on
        try:
            acct.read_messages_blocking(mailbox_id, ())  # no UIDs: the mailbox's lookup alone
        except MailboxNotFound:
            return False
        return True

    return exists


def make_listeners(
    cfg: Config,
    socks: dict[str, list[socket.socket]],
    ssl_context: ssl.SSLContext | None,
    resources: dict[str, Any],
    others: dict[str, list[socket.socket]] | None = None,
) -> list[Listener]:
    listeners = []
    for name, lcfg in cfg.listener.items():
        module = importlib.import_module(SERVICES[lcfg.protocol])
        ctx = ServiceContext(config=cfg, name=name, listener=lcfg, ssl_context=ssl_context, resources=resources)
        service = module.make_service(ctx)
        listeners.append(Listener(name, lcfg, cfg.limits, socks[name], service, ssl_context,
                                  (others or {}).get(name, ())))
    return listeners


#: Cyclic GC thresholds of a serving worker (CPython's default is (700, 10, 10)). A message's SMTP
#: transaction allocates a few thousand container objects, nearly all freed by reference counting;
#: a larger first generation collects them less often, and fewer young collections promote less
#: into the old generations that the full collections walk.
GC_THRESHOLDS = (10_000, 20, 20)


def _settle_gc() -> None:
    """Once the worker's long-lived objects exist (modules, config, directory and policy caches):
    move them out of the collector's generations (``gc.freeze``), so that a full collection walks
    only what was made since, and raise the young generation's threshold (:data:`GC_THRESHOLDS`).
    Whole server, 50 sessions: full collections took ~26 ms each over ~73 000 tracked objects."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def _serve(cfg: Config, socks: dict[str, list[socket.socket]], ssl_context: ssl.SSLContext | None,
                 ready_fd: int, lifeline_fd: int, others: dict[str, list[socket.socket]] | None) -> None:
    loop = asyncio.get_running_loop()
    log.buffer_on_loop(loop)  # one write per ~50 ms instead of one per line (run() flushes at exit)
    spool.batch_removals()  # one removal job per ~20 ms of discarded spools (flushed below at the end)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)  # a terminal's ^C reaches the whole group; the master decides
    if _dump_allocations is not None:
        loop.add_signal_handler(signal.SIGUSR2, _dump_allocations)

    def _lifeline() -> None:
        try:
            data = os.read(lifeline_fd, 1)
        except OSError:
            data = b""
        if not data:  # the master is gone: do not linger as an orphan
            logger.warning("master.gone")
            loop.remove_reader(lifeline_fd)
            stop.set()

    loop.add_reader(lifeline_fd, _lifeline)
    # Per-worker shared objects, one line per subsystem (store, directory, auth, queue...).
    resources: dict[str, Any] = {}
    resources.update(importlib.import_module("mailsrv.auth").worker_resources(cfg))  # "directory", "auth"
    store = resources["store"] = Store(cfg.store, cfg.server.data_dir, hostname=cfg.server.hostname,
                                       mime=cfg.mime)  # docs/store-api.md: one per worker
    await store.start()  # before serving: dead processes' delivery journals replayed (docs/store-api.md)
    # domain quota roots: the limits come from the directory (docs/store-api.md, domain quota)
    store.set_domain_quota_source(resources["directory"].domain_quota)
    # docs/policy.md: inbound checks for SMTP, spam training for IMAP and JMAP moves into/out of Junk.
    if cfg.policy.enabled:
        directory = resources["directory"]
        resources["policy"] = Policy.from_config(
            cfg.policy, hostname=cfg.server.hostname, data_dir=cfg.server.data_dir,
            lists=directory, is_local_domain=directory.is_local_domain)
        trainer = resources["policy"].trainer
        if trainer is not None:
            # docs/policy.md "Learning": journaled Junk moves of a dead worker are replayed from the store
            trainer.reader = _training_reader(directory, store, cfg.server.data_dir)
            trainer.start()
    # docs/search-api.md: one search service per worker, kept in step by the store's observer hook.
    search = resources["search"] = SearchService(cfg.search, search_resolver(store), search_exists(store))
    store.add_observer(search)
    # docs/archive.md: the archiving rules, shared by the SMTP backends and JMAP submission
    # (their markers' key, made on first use, read in the pool: docs/archive.md)
    key = (await asyncio.get_running_loop().run_in_executor(None, marker_key, cfg.server.data_dir)
           if cfg.archive.rule else None)
    resources["archive"] = ArchiveRules(cfg.archive, resources["directory"], key)
    # docs/files.md: one FileLinks per worker, for JMAP (/files, FileLink/*) and submission's convert_over
    if cfg.files.enabled:
        resources["files"] = FileLinks(cfg.files, files_root(cfg.server.data_dir))
        resources["files"].start_sweeper()  # links of converted mail expire without a JMAP listener too
    listeners = make_listeners(cfg, socks, ssl_context, resources, others)  # others: see master.other_members
    for lst in listeners:
        await lst.start()
    _settle_gc()
    os.write(ready_fd, b"1")
    os.close(ready_fd)
    logger.info("worker.ready", pid=os.getpid(), listeners=len(listeners))
    await stop.wait()
    grace = cfg.server.shutdown_grace
    # the master SIGKILLs a worker shutdown_grace + 10 s after SIGTERM (master.stop): what the drain leaves
    # of that, less a margin for the closes after it, bounds the store's wait for deliveries in flight
    kill_at = loop.time() + grace + 10.0
    logger.info("worker.draining", pid=os.getpid(), grace=grace)
    await asyncio.gather(*(lst.drain(grace) for lst in listeners), return_exceptions=True)
    spool.flush_removals()  # the sessions are over: no timer of the remover will run after us
    # After the sessions, newest first: the services' own objects, then the store, auth, directory.
    order = list(reversed(resources))
    if "search" in order and "store" in order:  # search observes the store: the store's last indexing
        order.remove("search")  # (Store.close) reports to it, so it closes after the store
        order.insert(order.index("store") + 1, "search")
    for name in order:
        res = resources[name]
        close = getattr(res, "close", None)
        if close is None:
            continue
        try:
            result = close(grace=max(1.0, kill_at - loop.time() - 5.0)) if name == "store" else close()
            if inspect.isawaitable(result):
                await result
        except Exception as exc:  # one failed close must not keep the worker from exiting
            logger.exception("resource.close_failed", exc, resource=name)
    logger.info("worker.stopped", pid=os.getpid())


def _trace_allocations(out_dir: str) -> None:
    """tracemalloc from now on; SIGUSR2 writes the allocation sites that grew since the previous dump.

    Each dump is ``out_dir/worker-PID-N.txt``: the top sites by growth since the previous dump (the
    first against the start), by file, by line and by 8-frame traceback, and the traced total. Tracing makes
    every allocation slower and uses memory of its own: a debugging aid, off unless the variable is set.
    """
    import tracemalloc

    tracemalloc.start(8)
    state: dict[str, Any] = {"snap": tracemalloc.take_snapshot(), "n": 0}

    def dump() -> None:
        snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        state["n"] += 1
        traced, sqlite_own = tracemalloc.get_traced_memory()[0], sqlitemem.memory_used()
        lines = [f"traced now {traced} bytes; SQLite's own {sqlite_own} bytes"]
        for group, top in (("filename", 15), ("lineno", 30), ("traceback", 8)):
            lines.append(f"--- top {top} by {group}")
            for stat in snap.compare_to(state["snap"], group)[:top]:
                lines.append(f"{stat.size_diff:+d} B {stat.count_diff:+d} blocks (now {stat.size} B)")
                lines += [f"    {frame}" for frame in reversed(stat.traceback)]  # the most recent first
        state["snap"] = snap
        with open(os.path.join(out_dir, f"worker-{os.getpid()}-{state['n']}.txt"), "w") as fh:
            fh.write("\n".join(lines) + "\n")

    global _dump_allocations
    _dump_allocations = dump


#: set by :func:`_trace_allocations`; _serve runs it on SIGUSR2 (a loop handler: an idle loop wakes for it)
_dump_allocations: Callable[[], None] | None = None


def run(cfg: Config, socks: dict[str, list[socket.socket]], ssl_context: ssl.SSLContext | None,
        ready_fd: int, lifeline_fd: int, others: dict[str, list[socket.socket]] | None = None) -> int:
    """Entry point in the forked child. Returns the exit status. ``others``: the other slots' members
    of our SO_REUSEPORT groups, adopted when their worker does not drain them."""
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reload is the master's business
    sqlitemem.set_soft_heap_limit(cfg.store.sqlite_memory_mib)  # every connection's page cache, together
    # Development only: MAILSRV_PROFILE_DIR=DIR writes DIR/worker-PID.prof (cProfile, CPU time) at exit.
    profile_dir = os.environ.get("MAILSRV_PROFILE_DIR")
    profiler = None
    if profile_dir:
        import cProfile

        profiler = cProfile.Profile(time.process_time)
        profiler.enable()
    # Development only: MAILSRV_TRACEMALLOC_DIR=DIR traces allocations; each SIGUSR2 writes DIR/worker-PID-N.txt
    trace_dir = os.environ.get("MAILSRV_TRACEMALLOC_DIR")
    if trace_dir:
        _trace_allocations(trace_dir)
    # Development only: MAILSRV_TIMELINE=PREFIX keeps the delivery path's stamps (util/timeline.py) and
    # writes PREFIX.PID.json at exit
    if os.environ.get("MAILSRV_TIMELINE"):
        timeline.start(os.environ["MAILSRV_TIMELINE"])
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
        runner(_serve(cfg, socks, ssl_context, ready_fd, lifeline_fd, others))
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
            r.run(_serve(cfg, socks, ssl_context, ready_fd, lifeline_fd, others))
    if profiler is not None and profile_dir:
        profiler.disable()
        profiler.dump_stats(os.path.join(profile_dir, f"worker-{os.getpid()}.prof"))
    timeline.dump()
    log.unbuffer()
    sys.stderr.flush()
    return 0
