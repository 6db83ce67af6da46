"""The master process: binds every listener once, forks and supervises workers.

Invariants (DESIGN.md, process model):
- The master never runs an event loop or a thread: it forks first, so each
  worker starts clean and creates its own uvloop loop.
- Listening sockets are bound here and inherited; replacing workers (restart,
  reload) never closes them, so no connection is refused meanwhile.
- With ``server.reuse_port`` (Linux SO_REUSEPORT) each address has a group of
  sockets, one per worker slot, and the kernel hashes new connections over the
  group: a burst is spread over the workers instead of taken whole by the one
  that wakes first. A group only grows: closing a member would reset the
  connections queued in its backlog, so a slot serves members slot, slot + N...
  (N workers), and a dead worker's member keeps its queue for the replacement.
- Signals are blocked and taken synchronously with ``sigtimedwait``: SIGCHLD
  reaps and restarts, SIGHUP reloads, SIGTERM/SIGINT drain and exit 0.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import sqlite3
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mailsrv import config as config_mod
from mailsrv import log, worker
from mailsrv.config import Config, ConfigError, parse_bind
from mailsrv.delivery import archive
from mailsrv.net.listener import LISTEN_BACKLOG, format_addr
from mailsrv.net.tls import TlsSetupError, server_context
from mailsrv.queue.store import queue_dir
from mailsrv.store import journal
from mailsrv.util import sqlitemem
from mailsrv.util.sdnotify import monotonic_usec, notify

logger = log.get("master")

SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
READY_TIMEOUT = 30.0
#: A worker that ran this long before dying is restarted at once, and its backoff resets.
STABLE_AFTER = 10.0


#: Single-owner background processes (DESIGN.md: "queue runner: one owner").
#: name -> "module:function"; the function takes the Config and returns an exit status,
#: runs its own event loop and returns on SIGTERM.
SINGLETONS: dict[str, str] = {
    "queue": "mailsrv.queue.runner:main",  # outbound delivery, retries, bounces
    "archive": "mailsrv.delivery.archive:main",  # retention sweep of archived copies (docs/archive.md)
}
#: Singletons that only some configurations need: name -> does this Config need it (default: yes).
SINGLETON_NEEDED: dict[str, Callable[[Config], bool]] = {
    "archive": lambda cfg: bool(archive.retention(cfg.archive)),  # a rule with retention_days
}


class StartupError(Exception):
    """The server cannot start; the message is for the operator."""


@dataclass
class WorkerProc:
    pid: int
    slot: int
    generation: int
    ready_r: int
    lifeline_w: int
    started: float = field(default_factory=time.monotonic)
    ready: bool = False


@dataclass
class SingletonProc:
    name: str
    pid: int
    started: float = field(default_factory=time.monotonic)


def _set_parent_death_signal() -> None:
    """Linux prctl(PR_SET_PDEATHSIG, SIGTERM): a singleton must not outlive a killed master."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def worker_count(cfg: Config) -> int:
    if cfg.server.workers == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # pragma: no cover - not Linux
            return os.cpu_count() or 1
    return int(cfg.server.workers)


def worker_cpu(slot: int) -> int | None:
    """The CPU worker ``slot`` is pinned to (``server.pin_workers``): the slot-th of the CPUs this
    process may run on, round-robin; None where that set is one CPU or affinity is not supported."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return None
    return cpus[slot % len(cpus)] if len(cpus) > 1 else None


def _pin(slot: int) -> None:
    """In a worker before it starts a thread (they inherit it): run on :func:`worker_cpu` only. A lone
    session's delivery wakes a pool thread and is woken by it: ~20-35 us on the same CPU, 50-70
    across two on the VMs we measure on (bench/_floors.py), and its loop and threads share one GIL,
    so they gain little from a second CPU."""
    cpu = worker_cpu(slot)
    if cpu is None:
        return
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as exc:  # (a CPU taken away since, a container's cpuset): unpinned, as before
        logger.warning("worker.pin_failed", slot=slot, cpu=cpu, error=str(exc))


#: SO_REUSEPORT spreads connections over a group of listening sockets on Linux only (the BSDs' and
#: macOS's option lets sockets share a port without balancing them): elsewhere one socket is shared.
REUSE_PORT_WORKS = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def bind_socket(spec: str, *, reuse_port: bool = False, port: int | None = None) -> socket.socket:
    """A listening socket for ``spec``; ``reuse_port``: one member of a SO_REUSEPORT group (the
    first binds ``spec``'s port, possibly 0; the others are given the ``port`` it got)."""
    host, spec_port = parse_bind(spec)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if reuse_port and port is None and spec_port != 0:
        # SO_REUSEPORT would let us join a group that another process of our user listens with (a
        # second mailsrv started by mistake) and take half its connections: a plain bind finds it
        _check_free(family, host, spec_port)
    port = spec_port if port is None else port
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # So that "[::]:25" and "0.0.0.0:25" can both be configured.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _check_free(family: socket.AddressFamily, host: str, port: int) -> None:
    """Raise OSError (EADDRINUSE) if a socket listens on (host, port)."""
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are no owner
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        probe.bind((host, port))


def _reuses_port(sock: socket.socket) -> bool:
    return REUSE_PORT_WORKS and bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))


#: listener name -> one socket group per bind address (a group: the SO_REUSEPORT members, or one socket)
Groups = dict[str, list[list[socket.socket]]]


def slot_sockets(groups: Groups, slot: int, workers: int) -> dict[str, list[socket.socket]]:
    """The sockets worker ``slot`` of ``workers`` accepts on: members slot, slot + workers... of
    each group (a group never shrinks, so after a reload to fewer workers a slot serves several);
    a group smaller than the workers (one shared socket) is shared."""
    return {
        name: [s for group in per_addr
               for s in (group[slot::workers] if len(group) >= workers else [group[slot % len(group)]])]
        for name, per_addr in groups.items()
    }


def other_members(groups: Groups, served: dict[str, list[socket.socket]]) -> dict[str, list[socket.socket]]:
    """Per listener, the members of its groups that a worker serving ``served`` does not accept on:
    it holds them open and adopts the connections a stuck or dead worker leaves queued there
    (mailsrv/net/listener.py, ADOPT_INTERVAL)."""
    return {name: [s for group in per_addr for s in group if s not in served[name]]
            for name, per_addr in groups.items()}


class Master:
    def __init__(self, config_path: str) -> None:
        self.config_path = config_path
        self.cfg: Config = config_mod.load(config_path)
        self.ssl_context: ssl.SSLContext | None = None
        #: bind spec as configured (port 0: "listener/spec") -> its socket group, kept across reloads
        self.bound: dict[str, list[socket.socket]] = {}
        #: groups of addresses a reload removed, until its workers are ready (then closed; else bound again)
        self.retiring: dict[str, list[socket.socket]] = {}
        self.sockets: Groups = {}
        self.workers: dict[int, WorkerProc] = {}
        self.generation = 0
        self.restart_due: dict[int, float] = {}  # slot -> monotonic time
        self.failures: dict[int | str, int] = {}  # slot or singleton name -> consecutive quick deaths
        self.singles: dict[int, SingletonProc] = {}  # pid -> singleton
        self.single_due: dict[str, float] = {}  # singleton name -> monotonic restart time
        self.stopping = False

    # -- setup -------------------------------------------------------------

    def _tls_for(self, cfg: Config) -> ssl.SSLContext | None:
        if not any(lst.tls != "none" for lst in cfg.listener.values()):
            return None
        try:
            return server_context(cfg.tls)
        except TlsSetupError as exc:
            raise StartupError(str(exc)) from None

    def _bind_all(self, cfg: Config) -> Groups:
        """Bind what is new, grow what is bound to one member per worker (``server.reuse_port``),
        keep the rest; return listener name -> one socket group per bind address."""
        spread = cfg.server.reuse_port and REUSE_PORT_WORKS
        members = worker_count(cfg) if spread else 1
        wanted: Groups = {}
        keep: dict[str, list[socket.socket]] = {}
        fresh: list[socket.socket] = []
        try:
            for name, lcfg in cfg.listener.items():
                groups = []
                for spec in lcfg.bind:
                    # Port 0 means "any free port": such a socket belongs to its listener alone.
                    key = f"{name}/{spec}" if parse_bind(spec)[1] == 0 else spec
                    group = keep.get(key) or list(self.bound.get(key, ()))
                    try:
                        if not group:
                            group.append(bind_socket(spec, reuse_port=spread))
                            fresh.append(group[-1])
                        # a socket bound without SO_REUSEPORT admits no others beside it: it stays alone
                        while len(group) < members and _reuses_port(group[0]):
                            group.append(bind_socket(spec, reuse_port=True, port=group[0].getsockname()[1]))
                            fresh.append(group[-1])
                    except OSError as exc:
                        raise StartupError(
                            f"cannot bind listener.{name} {spec}: {exc.strerror or exc}"
                        ) from None
                    keep[key] = group
                    groups.append(group)
                wanted[name] = groups
        except StartupError:
            for sock in fresh:
                sock.close()
            raise
        # addresses no longer configured: closed once the new generation serves (_retire), kept if it fails
        self.retiring = {key: group for key, group in self.bound.items() if key not in keep}
        self.bound = keep
        for name, lcfg in cfg.listener.items():
            for group in wanted[name]:
                logger.info("listener.bound", name=name, proto=lcfg.protocol, addr=format_addr(group[0]),
                            tls=lcfg.tls, sockets=len(group))
        return wanted

    # -- workers -----------------------------------------------------------

    def _spawn(self, slot: int, generation: int, cfg: Config, groups: Groups,
               ctx: ssl.SSLContext | None) -> WorkerProc:
        socks = slot_sockets(groups, slot, worker_count(cfg))
        others = other_members(groups, socks)
        ready_r, ready_w = os.pipe()
        lifeline_r, lifeline_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # child
            status = 1
            try:
                os.close(ready_r)
                os.close(lifeline_w)
                for other in self.workers.values():
                    self._close_fds(other)
                # this generation's members, ours and the other slots' (watched and adopted when not drained)
                mine = {id(sock) for per_addr in groups.values() for group in per_addr for sock in group}
                for group in self.bound.values():
                    for sock in group:
                        if id(sock) not in mine:
                            sock.close()  # bound for a generation that is not ours
                log.bind(worker=slot)
                if cfg.server.pin_workers:
                    _pin(slot)
                status = worker.run(cfg, socks, ctx, ready_w, lifeline_r, others)
            except BaseException as exc:
                logger.exception("worker.crash", exc, slot=slot)
            finally:
                os._exit(status)
        os.close(ready_w)
        os.close(lifeline_r)
        proc = WorkerProc(pid=pid, slot=slot, generation=generation, ready_r=ready_r, lifeline_w=lifeline_w)
        self.workers[pid] = proc
        logger.info("worker.started", pid=pid, slot=slot, generation=generation,
                    cpu=worker_cpu(slot) if cfg.server.pin_workers else None)
        return proc

    def _spawn_single(self, name: str) -> None:
        target = SINGLETONS[name]
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # child
            status = 1
            try:
                for other in self.workers.values():
                    self._close_fds(other)
                for group in self.bound.values():
                    for sock in group:
                        sock.close()  # a singleton serves no listener
                signal.pthread_sigmask(signal.SIG_SETMASK, set())
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
                _set_parent_death_signal()
                sqlitemem.set_soft_heap_limit(self.cfg.store.sqlite_memory_mib)  # the queue's, archive's SQLite
                log.bind(role=name)
                module, _, func = target.partition(":")
                import importlib

                status = int(getattr(importlib.import_module(module), func)(self.cfg) or 0)
            except BaseException as exc:  # report, then leave without running master code
                logger.exception("singleton.crash", exc, name=name)
            finally:
                os._exit(status)
        self.singles[pid] = SingletonProc(name=name, pid=pid)
        logger.info("singleton.started", name=name, pid=pid)

    def _start_singletons(self) -> None:
        running = {p.name for p in self.singles.values()}
        for name in SINGLETONS:
            needed = SINGLETON_NEEDED.get(name)
            if name not in running and name not in self.single_due and (needed is None or needed(self.cfg)):
                self._spawn_single(name)

    def _backoff(self, key: int | str, started: float) -> float:
        lived = time.monotonic() - started
        fails = 0 if lived >= STABLE_AFTER else self.failures.get(key, 0) + 1
        self.failures[key] = fails
        return 0.0 if fails == 0 else min(self.cfg.server.restart_backoff_max, 0.1 * 2 ** (fails - 1))

    def _wait_ready(self, procs: list[WorkerProc], timeout: float = READY_TIMEOUT) -> bool:
        """Wait until every proc wrote its ready byte; False if one died or the time ran out."""
        deadline = time.monotonic() + timeout
        pending = {p.ready_r: p for p in procs if not p.ready}
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            r, _, _ = select.select(list(pending), [], [], left)
            for fd in r:
                proc = pending.pop(fd)
                try:
                    data = os.read(fd, 1)
                except OSError:
                    data = b""
                if not data:
                    return False
                proc.ready = True
        return True

    def _close_fds(self, proc: WorkerProc) -> None:
        for fd in (proc.ready_r, proc.lifeline_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _start_generation(self, cfg: Config, groups: Groups, ctx: ssl.SSLContext | None) -> list[WorkerProc]:
        self.generation += 1
        return [self._spawn(slot, self.generation, cfg, groups, ctx) for slot in range(worker_count(cfg))]

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            single = self.singles.pop(pid, None)
            if single is not None:
                if self.stopping:
                    logger.info("singleton.exited", name=single.name, pid=pid, status=code)
                elif single.name in self.single_due and self.single_due[single.name] == 0.0:
                    # retired by a reload: its successor starts now, never beside it
                    logger.info("singleton.exited", name=single.name, pid=pid, status=code)
                    del self.single_due[single.name]
                    if single.name in SINGLETONS:
                        self._spawn_single(single.name)
                else:
                    delay = self._backoff(single.name, single.started)
                    logger.error("singleton.died", name=single.name, pid=pid, status=code, restart_in=f"{delay:.1f}s")
                    self.single_due[single.name] = time.monotonic() + max(delay, 0.001)
                continue
            proc = self.workers.pop(pid, None)
            if proc is None:
                continue
            self._close_fds(proc)
            current = proc.generation == self.generation
            if self.stopping or not current:
                logger.info("worker.exited", pid=pid, slot=proc.slot, status=code)
                continue
            delay = self._backoff(proc.slot, proc.started)
            logger.error("worker.died", pid=pid, slot=proc.slot, status=code, restart_in=f"{delay:.1f}s")
            self.restart_due[proc.slot] = time.monotonic() + delay

    def _restart_due(self) -> None:
        now = time.monotonic()
        for slot, due in list(self.restart_due.items()):
            if due <= now:
                del self.restart_due[slot]
                proc = self._spawn(slot, self.generation, self.cfg, self.sockets, self.ssl_context)
                if not self._wait_ready([proc], READY_TIMEOUT):
                    logger.error("worker.not_ready", pid=proc.pid, slot=slot)
        for name, due in list(self.single_due.items()):
            if 0.0 < due <= now:
                del self.single_due[name]
                self._spawn_single(name)

    def _next_timeout(self) -> float:
        dues = list(self.restart_due.values()) + [d for d in self.single_due.values() if d > 0.0]
        if not dues:
            return 5.0
        return max(0.0, min(dues) - time.monotonic())

    # -- control -----------------------------------------------------------

    def _status(self) -> str:
        listeners = ", ".join(
            f"{name}={'/'.join(format_addr(g[0]) for g in groups)}" for name, groups in self.sockets.items()
        )
        return f"STATUS={len(self.workers)} workers; {listeners}"

    def reload(self) -> None:
        notify("RELOADING=1", monotonic_usec())
        logger.info("reload.start", config=self.config_path)
        try:
            cfg = config_mod.load(self.config_path)
            archive.check(cfg)
            ctx = self._tls_for(cfg)
            serving = {id(sock) for group in self.bound.values() for sock in group}
            socks = self._bind_all(cfg)
        except (ConfigError, StartupError) as exc:
            logger.error("reload.failed", error=str(exc))
            notify("READY=1", f"STATUS=reload failed, still serving the old configuration: {exc}")
            return
        old = [p for p in self.workers.values()]
        old_generation = self.generation
        new = self._start_generation(cfg, socks, ctx)
        if not self._wait_ready(new):
            logger.error("reload.failed", error="new workers did not become ready")
            for proc in new:
                self._kill(proc.pid, signal.SIGKILL)
            self.generation = old_generation
            self._unbind_new(serving)
            self.bound.update(self.retiring)  # the old generation (and its restarts) still serve these
            self.retiring = {}
            notify("READY=1", "STATUS=reload failed, still serving the old configuration")
            return
        log.configure(cfg.server.log_level)
        self.cfg, self.ssl_context, self.sockets = cfg, ctx, socks
        self.restart_due.clear()
        self._retire()
        for proc in old:
            self._kill(proc.pid, signal.SIGTERM)
        # Singletons restart with the new configuration: the old one stops first
        # (0.0 = "start the successor when it has exited"), so there is one owner at a time.
        for single in list(self.singles.values()):
            self.single_due[single.name] = 0.0
            self._kill(single.pid, signal.SIGTERM)
        self._start_singletons()
        logger.info("reload.done", generation=self.generation, retired=len(old))
        notify("READY=1", self._status())

    def _retire(self) -> None:
        """Close the groups of addresses the configuration no longer has (the new generation serves)."""
        for group in self.retiring.values():
            for sock in group:
                sock.close()
        self.retiring = {}

    def _unbind_new(self, serving: set[int]) -> None:
        """Close the sockets bound for a generation that never served (no old worker accepts on them:
        a connection hashed there would wait forever; the few queued meanwhile are reset)."""
        for key, group in list(self.bound.items()):
            for sock in [s for s in group if id(s) not in serving]:
                group.remove(sock)
                sock.close()
            if not group:
                del self.bound[key]

    def _kill(self, pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def stop(self) -> int:
        self.stopping = True
        notify("STOPPING=1")
        logger.info("stop.start", workers=len(self.workers))
        for pid in list(self.workers) + list(self.singles):
            self._kill(pid, signal.SIGTERM)
        # Our copies of the listening sockets go now, so that once the workers stop
        # accepting, new clients are refused at once instead of waiting in the backlog.
        for group in self.bound.values():
            for sock in group:
                sock.close()
        deadline = time.monotonic() + self.cfg.server.shutdown_grace + 10
        while self.workers or self.singles:
            left = deadline - time.monotonic()
            if left <= 0:
                for pid in list(self.workers) + list(self.singles):
                    logger.error("worker.killed", pid=pid)
                    self._kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
            signal.sigtimedwait({signal.SIGCHLD}, max(0.05, min(left, 1.0)))
            self._reap()
        logger.info("stop.done")
        return 0

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT. Raises :class:`StartupError` if it cannot start."""
        log.configure(self.cfg.server.log_level)
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        sqlitemem.set_soft_heap_limit(self.cfg.store.sqlite_memory_mib)  # the master's own (workers set theirs)
        self.cfg.server.data_dir.mkdir(parents=True, exist_ok=True)
        archive.check(self.cfg)  # before any fork: the archive accounts exist (ConfigError naming the key)
        if self.cfg.archive.rule:  # docs/archive.md: queue entries from before the markers' MAC, signed once
            try:
                archive.sign_old_markers(self.cfg.server.data_dir, queue_dir(self.cfg.server.data_dir).rewrite_orcpts)
            except OSError as exc:  # their delivery makes one more archive copy (never one less); next start tries
                logger.error("archive.markers_sign_failed", error=str(exc))
        # before any worker serves: deliveries acknowledged before a crash whose links it lost
        # (docs/store-api.md, Durability), whatever [store] journal says now (files left while it was on)
        try:
            journal.replay(journal.journal_dir(self.cfg.server.data_dir))
        except (OSError, sqlite3.Error) as exc:  # the files stay: each worker tries again at its start
            logger.error("journal.replay_failed", error=str(exc))
        self.ssl_context = self._tls_for(self.cfg)
        self.sockets = self._bind_all(self.cfg)
        self._retire()
        procs = self._start_generation(self.cfg, self.sockets, self.ssl_context)
        if not self._wait_ready(procs):
            for proc in procs:
                self._kill(proc.pid, signal.SIGKILL)
            self.stopping = True
            self._reap()
            raise StartupError("workers failed to start (see the log lines above)")
        self._start_singletons()
        logger.info("master.ready", pid=os.getpid(), workers=len(procs), generation=self.generation)
        notify("READY=1", f"MAINPID={os.getpid()}", self._status())
        while True:
            try:
                info = signal.sigtimedwait(SIGNALS, self._next_timeout())
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
            if info is None:
                self._restart_due()
                continue
            if info.si_signo == signal.SIGCHLD:
                self._reap()
                self._restart_due()
            elif info.si_signo == signal.SIGHUP:
                self.reload()
            elif info.si_signo in (signal.SIGTERM, signal.SIGINT):
                return self.stop()


def serve(config_path: str) -> int:
    """``mailsrv serve``: run the master in the foreground."""
    try:
        master = Master(config_path)
        return master.run()
    except ConfigError as exc:
        print(f"mailsrv: {exc}", file=sys.stderr)
        return 2
    except StartupError as exc:
        print(f"mailsrv: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            print(f"mailsrv: {exc}", file=sys.stderr)
            return 1
        raise
