"""The queue runner: the one process that owns outbound delivery, retries, delay notices and bounces.

Entry point :func:`main` (blocking; its own uvloop loop; stops on SIGTERM).
Invariants:
- Only this process sends queued mail; the CLI and the SMTP workers only add
  entries or flip ``held`` under the queue lock and poke ``runner.sock``.
- A recipient's state is written (fsync'd) after each attempt; ``sent`` only
  after the remote 250. After SIGKILL the restart resends what was in flight,
  nothing else (SMTP's at-least-once window), and loses nothing.
- DSNs are queued as new entries with the null sender before the original
  entry records ``dsn_sent``; a crash in between may duplicate a DSN, never lose it.
- No DSN is ever sent for a null-sender message (RFC 5321 §4.5.5, RFC 3461 §6.2).
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import ssl
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from mailsrv import log
from mailsrv.config import Config, ConfigError, load
from mailsrv.mime.hops import TOO_MANY_HOPS_REPLY, too_many_hops
from mailsrv.queue import downgrade, dsn
from mailsrv.queue.client import OutboundError, SmtpClient
from mailsrv.queue.routing import Destination, NoRoute, Resolver, Router
from mailsrv.queue.store import FAILED, PENDING, SENT, Envelope, QRcpt, QueueDir, new_id, queue_dir
from mailsrv.util import fsio
from mailsrv.util.runloop import run_until_signalled

logger = log.get("queue")

#: Rescan the envelope directory this often even without a poke (entries added while we were down).
RESCAN_INTERVAL = 60.0
#: Seconds an idle outbound session is kept for the next message to the same host.
POOL_IDLE = 5.0


class QueueRunner:
    def __init__(
        self,
        cfg: Config,
        *,
        resolver: Resolver | None = None,
        is_local: Callable[[str], Awaitable[bool]] | None = None,
        signer: Any = None,
        clock: Callable[[], float] = time.time,
        master: int | None = None,
    ) -> None:
        """``master``: the pid of the master that bound the listeners (a port-0 smtp listener's port
        is learnt from it, for mail to local domains)."""
        self.cfg = cfg
        self.qcfg = cfg.queue
        self.qd: QueueDir = queue_dir(cfg.server.data_dir)
        self.router = Router(cfg, resolver, is_local, master)
        self.signer = signer
        self.clock = clock
        self.entries: dict[str, Envelope] = {}
        self.inflight: set[str] = set()
        self.wake = asyncio.Event()
        self.slots = asyncio.Semaphore(self.qcfg.max_deliveries)
        self.per_dest: dict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(self.qcfg.max_per_destination)
        )
        self.tasks: set[asyncio.Task[None]] = set()
        self._sock: socket.socket | None = None
        self._reload: set[str] = set()
        self._flush = False
        self.delivered = 0  # counters for tests and logs
        self.pool: dict[tuple[Any, ...], list[tuple[SmtpClient, float]]] = {}
        self._seq = 0  # names of per-attempt temp files (8BITMIME downgrades)

    # -- life ---------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        removed = await loop.run_in_executor(None, self.qd.clean_orphans)
        await loop.run_in_executor(None, self.qd.prune_outcomes, self.qcfg.outcome_keep)
        if removed:
            logger.info("queue.orphans_removed", count=removed)
        self._bind()
        await self._rescan()
        logger.info("queue.started", entries=len(self.entries))
        last_scan = self.clock()
        try:
            while not stop.is_set():
                # Clear before looking at the state: a poke that arrives while we work
                # (during an await below) must wake the next wait, not be lost.
                self.wake.clear()
                now = self.clock()
                if self._flush:
                    self._flush = False
                    for env in self.entries.values():
                        if env.flushable(now):  # a delayed send (not_before) keeps its time
                            env.next_attempt = 0
                if self._reload or now - last_scan >= RESCAN_INTERVAL:
                    if now - last_scan >= RESCAN_INTERVAL:
                        await loop.run_in_executor(None, self.qd.prune_outcomes, self.qcfg.outcome_keep)
                    await self._rescan()
                    last_scan = now
                next_due = now + RESCAN_INTERVAL
                if self.pool:
                    await self._expire_pool()
                    next_due = min(next_due, now + POOL_IDLE)
                for env in list(self.entries.values()):
                    if env.id in self.inflight or env.held:
                        continue
                    if env.next_attempt <= now:
                        self._start(env)
                    else:
                        next_due = min(next_due, env.next_attempt)
                waiter = asyncio.ensure_future(self.wake.wait())
                stopper = asyncio.ensure_future(stop.wait())
                await asyncio.wait({waiter, stopper}, timeout=max(0.0, next_due - self.clock()),
                                   return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
        finally:
            if self._sock is not None:
                loop.remove_reader(self._sock.fileno())
                self._sock.close()
                self._sock = None
            for t in list(self.tasks):
                t.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            await self._expire_pool(everything=True)
            logger.info("queue.stopped")

    def _bind(self) -> None:
        path = str(self.qd.sock_path)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(path)
        s.setblocking(False)
        self._sock = s
        asyncio.get_running_loop().add_reader(s.fileno(), self._on_poke)

    def _on_poke(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data = self._sock.recv(1024)
            except (BlockingIOError, InterruptedError):
                break
            if data == b"flush":
                self._flush = True
            elif data.startswith(b"reload "):
                self._reload.add(data[7:].decode("ascii", "replace"))
            self._reload.add("")  # rescan for new entries
        self.wake.set()

    async def _rescan(self) -> None:
        """Pick up new entries and reload changed ones (CLI hold/release/delete)."""
        loop = asyncio.get_running_loop()
        # taken before the listing: a poke that arrives while it runs asks for the next rescan (cleared
        # after it, such a poke was lost and its entry waited for RESCAN_INTERVAL)
        reload_ids = {i for i in self._reload if i}
        self._reload.clear()
        ids = await loop.run_in_executor(None, self.qd.ids)
        present = set(ids)
        for qid in list(self.entries):
            if qid not in present and qid not in self.inflight:
                del self.entries[qid]
        for qid in ids:
            if (qid in self.entries and qid not in reload_ids) or qid in self.inflight:
                continue
            try:
                env = await loop.run_in_executor(None, self.qd.load, qid)
            except (FileNotFoundError, ValueError) as exc:
                logger.warning("queue.bad_entry", id=qid, error=str(exc))
                continue
            self.entries[qid] = env

    def _start(self, env: Envelope) -> None:
        self.inflight.add(env.id)
        task = asyncio.ensure_future(self._attempt(env))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- one attempt ------------------------------------------------------------

    async def _attempt(self, env: Envelope) -> None:
        try:
            async with self.slots:
                await self._deliver(env)
                await self._after_attempt(env)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("queue.attempt_crash", exc, id=env.id)
            env.next_attempt = self.clock() + self.qcfg.retry_schedule[0]
        finally:
            self.inflight.discard(env.id)
            self.wake.set()

    async def _deliver(self, env: Envelope) -> None:
        # RFC 5321 §6.3: a message over [smtp] max_hops Received fields is a loop: bounced, never sent
        head = await asyncio.get_running_loop().run_in_executor(None, fsio.read_prefix, self.qd.message_path(env.id),
                                                                dsn.MAX_RETURNED_BODY)
        if too_many_hops(head, self.cfg.smtp.max_hops):
            for r in env.pending():
                r.diag, r.status = TOO_MANY_HOPS_REPLY, FAILED
            logger.info("queue.too_many_hops", id=env.id)
            return
        by_domain: dict[str, list[QRcpt]] = defaultdict(list)
        for r in env.pending():
            by_domain[r.addr.rpartition("@")[2].lower()].append(r)
        await asyncio.gather(*(self._deliver_domain(env, d, rs) for d, rs in by_domain.items()))

    async def _deliver_domain(self, env: Envelope, domain: str, rcpts: list[QRcpt]) -> None:
        try:
            dest = await self.router.destination(domain)
        except NoRoute as exc:
            for r in rcpts:
                r.diag = str(exc) if not str(exc)[:1].isdigit() or " " not in str(exc) else \
                    (("550 " if exc.permanent else "451 ") + str(exc))
                if exc.permanent:
                    r.status = FAILED
            return
        last: OutboundError | None = None
        async with self.per_dest[dest.key]:
            for host, port in dest.hosts:
                try:
                    await self._deliver_host(env, rcpts, dest, host, port)
                    return
                except OutboundError as exc:
                    last = exc
                    logger.info("queue.host_failed", id=env.id, host=host, port=port, error=exc.diag)
                    if exc.permanent:
                        break
        assert last is not None
        for r in rcpts:
            r.diag = last.diag
            r.remote = dest.hosts[0][0]
            if last.permanent:
                r.status = FAILED

    async def _deliver_host(self, env: Envelope, rcpts: list[QRcpt], dest: Destination, host: str,
                            port: int) -> None:
        route = dest.route
        key = (host, port, route.tls, route.username)
        client = await self._pooled(key)
        if client is None:
            client = await self._open(host, port, route)
        reusable = False
        loop = asyncio.get_running_loop()
        path = self.qd.message_path(env.id)
        converted: Path | None = None
        try:
            if "8BITMIME" not in client.extensions and not env.smtputf8:
                # RFC 6152 §3: the next hop takes 7-bit only; convert before signing so DKIM covers what is sent
                self._seq += 1
                tmp = self.qd.tmp / f"{env.id}.{self._seq}.7bit"
                if await loop.run_in_executor(None, downgrade.downgrade, path, tmp):
                    path = converted = tmp
                    logger.info("queue.downgraded", id=env.id, host=host)
            prefix = b""
            if self.signer is not None:
                prefix = await self.signer.header_for(env, path)
            size = (await loop.run_in_executor(None, path.stat)).st_size
            results, end = await client.send(env, rcpts, path, prefix, size)
            dsn_remote = "DSN" in client.extensions
            for r in rcpts:
                rep = results.get(r.addr)
                r.remote = host
                if rep is None:
                    continue
                if rep.code >= 400:
                    r.diag = rep.diag
                    if rep.code >= 500:
                        r.status = FAILED
                    continue
                if end is None:
                    continue
                r.diag = end.diag
                if end.code < 300:
                    r.status = SENT
                    if dsn_remote:
                        r.dsn_sent = True  # RFC 3461 §5.2.2: the next hop carries NOTIFY on
                    self.delivered += 1
                    logger.info("queue.sent", id=env.id, rcpt=r.addr, host=host, reply=end.diag[:120])
                elif end.code >= 500:
                    r.status = FAILED
            reusable = True
        finally:
            if converted is not None:
                await loop.run_in_executor(None, _unlink, converted)
            if reusable:
                self._release(key, client)
            else:
                await client.quit()

    async def _open(self, host: str, port: int, route: Any) -> SmtpClient:
        timeout = self.qcfg.connect_timeout
        implicit = _client_tls(route.verify_cert) if route.tls == "implicit" else None
        client = await SmtpClient.connect(host, port, connect_timeout=timeout, implicit_tls=implicit,
                                          server_hostname=host)
        client.timeout = self.qcfg.command_timeout
        try:
            await client.ehlo(self.cfg.server.hostname)
            if not client.tls and route.tls in ("opportunistic", "required"):
                if "STARTTLS" in client.extensions:
                    # RFC 3207 §4.1: a failed handshake leaves the connection unusable: next host / retry
                    await client.starttls(_client_tls(route.verify_cert), host)
                    await client.ehlo(self.cfg.server.hostname)
                elif route.tls == "required":
                    raise OutboundError(0, f"{host} does not offer STARTTLS (required by route)")
            if route.username:
                await client.authenticate(route.username, route.password, allow_plaintext=route.auth_plaintext)
        except BaseException:
            await client.close()
            raise
        return client

    # -- connection reuse: idle sessions per destination host ------------------------

    async def _pooled(self, key: tuple[Any, ...]) -> SmtpClient | None:
        """An idle session to the same host (RFC 5321 §3.3: RSET, then a new transaction)."""
        idle = self.pool.get(key)
        now = self.clock()
        while idle:
            client, since = idle.pop()
            if now - since < POOL_IDLE:
                try:
                    if (await client.command("RSET", 10)).code == 250:
                        return client
                except OutboundError:
                    pass
            await client.close()
        return None

    def _release(self, key: tuple[Any, ...], client: SmtpClient) -> None:
        self.pool.setdefault(key, []).append((client, self.clock()))

    async def _expire_pool(self, everything: bool = False) -> None:
        now = self.clock()
        for key, idle in list(self.pool.items()):
            keep = []
            for client, since in idle:
                if everything or now - since >= POOL_IDLE:
                    await client.quit()
                else:
                    keep.append((client, since))
            if keep:
                self.pool[key] = keep
            else:
                del self.pool[key]

    async def _after_attempt(self, env: Envelope) -> None:
        now = self.clock()
        env.attempts += 1
        pending = env.pending()
        expired: frozenset[str] = frozenset()
        if pending and now - env.created >= self.qcfg.lifetime:
            expired = frozenset(r.addr for r in pending)
            for r in pending:
                r.status = FAILED
                # RFC 3463: 4.4.7 delivery time expired (reported with Action: failed)
                r.diag = f"{r.diag} (gave up: 4.4.7 message expired after {self.qcfg.lifetime:.0f}s)".strip()
            pending = []
        if pending:
            sched = self.qcfg.retry_schedule
            env.next_attempt = now + sched[min(env.attempts - 1, len(sched) - 1)]
        notices: list[tuple[str, list[QRcpt]]] = []
        if not env.sender or env.is_bounce:
            for r in env.rcpts:
                r.dsn_sent = r.status != PENDING
        else:
            failed = [r for r in env.rcpts if r.status == FAILED and not r.dsn_sent]
            success = [r for r in env.rcpts if r.status == SENT and not r.dsn_sent and r.wants("SUCCESS")]
            if failed_wanted := [r for r in failed if r.wants("FAILURE")]:
                notices.append(("failed", failed_wanted))
            if success:
                notices.append(("relayed", success))
            for r in failed:
                r.dsn_sent = True
            for r in env.rcpts:
                if r.status == SENT:
                    r.dsn_sent = True
            delay_after = self.qcfg.delay_notice_after
            if pending and delay_after and not env.delay_notified and now - env.created >= delay_after:
                env.delay_notified = True
                if wanted := [r for r in pending if r.wants("DELAY")]:
                    notices.append(("delayed", wanted))
        loop = asyncio.get_running_loop()
        for action, rs in notices:
            await self._queue_dsn(env, rs, action)
        if not env.pending():
            # the final outcome stays readable (JMAP deliveryStatus) after the entry is gone
            await loop.run_in_executor(None, self.qd.record_outcome, env, expired)
            await loop.run_in_executor(None, self.qd.remove, env.id)
            self.entries.pop(env.id, None)
            logger.info("queue.done", id=env.id, attempts=env.attempts,
                        sent=sum(r.status == SENT for r in env.rcpts),
                        failed=sum(r.status == FAILED for r in env.rcpts))
            return
        kept = await loop.run_in_executor(None, self.qd.save, env)
        if not kept:
            self.entries.pop(env.id, None)
        logger.info("queue.deferred", id=env.id, attempts=env.attempts, pending=len(env.pending()),
                    next_in=round(env.next_attempt - now), diag=env.pending()[0].diag[:120] if env.pending() else "")

    async def _queue_dsn(self, env: Envelope, rcpts: list[QRcpt], action: str) -> None:
        loop = asyncio.get_running_loop()
        original = await loop.run_in_executor(None, fsio.read_prefix, self.qd.message_path(env.id),
                                                                dsn.MAX_RETURNED_BODY)
        body = dsn.build(env, rcpts, action, original, reporting_mta=self.cfg.server.hostname,
                         now=self.clock(), lifetime=self.qcfg.lifetime)
        # The notice's envelope needs SMTPUTF8 only for a non-ASCII sender address: its own header is
        # ASCII, and the returned UTF-8 header travels in the (8-bit) body. Asking for SMTPUTF8 when
        # it is not needed would make the bounce of a 5.6.7 failure fail the same way, and be lost.
        notice = Envelope(id=new_id(), sender="", rcpts=[QRcpt(env.sender)], is_bounce=True,
                          smtputf8=not env.sender.isascii(), body="8BITMIME", created=self.clock())
        await loop.run_in_executor(None, self.qd.add, notice, body)
        self.entries[notice.id] = notice
        logger.info("queue.dsn", id=env.id, dsn=notice.id, action=action, to=env.sender,
                    rcpts=",".join(r.addr for r in rcpts))


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


@functools.cache
def _client_tls(verify: bool) -> ssl.SSLContext:
    """One context per policy (loading the CA bundle is slow; contexts are reusable)."""
    ctx = ssl.create_default_context()
    if not verify:
        # RFC 7435 opportunistic security: encrypt without authenticating MX hosts
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def _is_local_from_directory(cfg: Config) -> tuple[Callable[[str], Awaitable[bool]] | None, Any]:
    try:
        from mailsrv.directory import open_directory
    except ImportError:  # pragma: no cover - the directory is part of the package
        return None, None
    try:
        d = open_directory(cfg.directory, cfg.server.data_dir)
    except Exception as exc:
        logger.warning("queue.no_directory", error=str(exc))
        return None, None
    return d.is_local_domain, d


async def serve(cfg: Config, stop: asyncio.Event, **kwargs: Any) -> None:
    """Run a runner until ``stop`` is set (for embedding and tests)."""
    closer = None
    if "is_local" not in kwargs:
        kwargs["is_local"], closer = await _is_local_from_directory(cfg)
    if "signer" not in kwargs:
        from mailsrv.queue.dkim import Signer

        kwargs["signer"] = Signer.from_config(cfg)
    try:
        await QueueRunner(cfg, **kwargs).run(stop)
    finally:
        if closer is not None:
            await closer.close()


def main(config: str | os.PathLike[str] | Config) -> int:
    """Blocking entry point of the queue owner process. Returns the exit status."""
    try:
        cfg = config if isinstance(config, Config) else load(config)
    except ConfigError as exc:
        logger.error("config.error", error=str(exc))
        return 2
    log.configure(cfg.server.log_level)

    # the master forked us: it holds the listeners
    run_until_signalled(lambda stop: serve(cfg, stop, master=os.getppid()))
    return 0


if __name__ == "__main__":  # pragma: no cover - `python -m mailsrv.queue.runner CONFIG`
    import sys

    sys.exit(main(sys.argv[1]))
