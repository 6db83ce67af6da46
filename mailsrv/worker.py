"""A worker process: one uvloop event loop serving every listener on sockets the master bound.

Life: the master forks us with the listening sockets inherited; we create the
loop (never before the fork), start every listener, report ready on a pipe,
serve until SIGTERM (or until the master dies, seen as EOF on the lifeline
pipe), then drain: stop accepting, let sessions finish up to the grace period,
exit 0.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import socket
import ssl
import sys
from typing import Any

from mailsrv import log
from mailsrv.config import Config
from mailsrv.net.listener import Listener
from mailsrv.net.service import ServiceContext

logger = log.get("worker")

#: protocol name in the config -> module with ``make_service(ctx)``.
SERVICES = {
    "smtp": "mailsrv.smtp.server",
    "submission": "mailsrv.smtp.server",
    "imap": "mailsrv.imap.server",
    "pop3": "mailsrv.pop3.server",
    "jmap": "mailsrv.jmap.server",
    "admin": "mailsrv.admin.server",
}


def make_listeners(
    cfg: Config,
    socks: dict[str, list[socket.socket]],
    ssl_context: ssl.SSLContext | None,
    resources: dict[str, Any],
) -> list[Listener]:
    listeners = []
    for name, lcfg in cfg.listener.items():
        module = importlib.import_module(SERVICES[lcfg.protocol])
        ctx = ServiceContext(config=cfg, name=name, listener=lcfg, ssl_context=ssl_context, resources=resources)
        service = module.make_service(ctx)
        listeners.append(Listener(name, lcfg, cfg.limits, socks[name], service, ssl_context))
    return listeners


async def _serve(cfg: Config, socks: dict[str, list[socket.socket]], ssl_context: ssl.SSLContext | None,
                 ready_fd: int, lifeline_fd: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)  # a terminal's ^C reaches the whole group; the master decides

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
    resources["store"] = importlib.import_module("mailsrv.store").Store(
        cfg.store, cfg.server.data_dir, hostname=cfg.server.hostname)  # docs/store-api.md: one per worker
    listeners = make_listeners(cfg, socks, ssl_context, resources)
    for lst in listeners:
        await lst.start()
    os.write(ready_fd, b"1")
    os.close(ready_fd)
    logger.info("worker.ready", pid=os.getpid(), listeners=len(listeners))
    await stop.wait()
    grace = cfg.server.shutdown_grace
    logger.info("worker.draining", pid=os.getpid(), grace=grace)
    await asyncio.gather(*(lst.drain(grace) for lst in listeners), return_exceptions=True)
    await resources["store"].close()  # after the sessions: stops the store's notifier and threads
    logger.info("worker.stopped", pid=os.getpid())


def run(cfg: Config, socks: dict[str, list[socket.socket]], ssl_context: ssl.SSLContext | None,
        ready_fd: int, lifeline_fd: int) -> int:
    """Entry point in the forked child. Returns the exit status."""
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reload is the master's business
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
        runner(_serve(cfg, socks, ssl_context, ready_fd, lifeline_fd))
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
            r.run(_serve(cfg, socks, ssl_context, ready_fd, lifeline_fd))
    sys.stderr.flush()
    return 0
