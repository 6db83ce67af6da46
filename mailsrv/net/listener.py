"""Listeners: accept on sockets the master bound, enforce connection limits, run sessions.

A protocol plugs in a :class:`StreamService` (SMTP, IMAP, POP3) or an
:class:`HttpService` (JMAP, admin API). The listener owns the accept loop,
the limits, the session id and log context, and the drain on shutdown; the
service owns the conversation. An HTTP service serves its own sockets; the
listener accepts for it only what aiohttp cannot: connections of another
worker's adopted member, and connections that start with a PROXY header
(served with the client's address as their peer: mailsrv.net.proxy_transport).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import ssl
import struct
import weakref
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol, cast, runtime_checkable

from mailsrv import log
from mailsrv.config import LimitsConfig, ListenerConfig
from mailsrv.net import proxy
from mailsrv.net.connection import Connection
from mailsrv.net.proxy_transport import ProxiedProtocol

logger = log.get("net")

#: Seconds a session has, after the grace period, to say goodbye before it is cut.
GOODBYE_TIMEOUT = 5.0
#: Pending connections a listening socket holds (the master's listen(), kept by the workers).
LISTEN_BACKLOG = 1024
#: Seconds between two looks at the accept queues of the other workers' SO_REUSEPORT members: a member
#: whose queue is not drained between two looks (its worker is stuck, or dead and waiting for its restart
#: backoff) is adopted: this worker accepts what it holds until a look finds it empty.
ADOPT_INTERVAL = 2.0

_TCP_INFO = getattr(socket, "TCP_INFO", None)  # Linux


def accept_queue(sock: socket.socket) -> int:
    """Connections waiting in a listening socket's accept queue, or -1 where this is not known.
    Linux TCP_INFO of a listener: ``tcpi_unacked`` (the 5th u32 after 8 u8) is the queue's length,
    ``tcpi_sacked`` its limit."""
    if _TCP_INFO is None:
        return -1
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 104)
    except OSError:  # closed meanwhile
        return -1
    return int(struct.unpack_from("8B6I", info)[12])


@runtime_checkable
class StreamService(Protocol):
    """A line-based protocol served on a stream."""

    async def handle(self, conn: Connection) -> None:
        """Run one session to its end. Must not raise for anything the peer does."""

    async def refuse(self, conn: Connection, reason: str) -> None:
        """Tell a connection over a limit that the server is busy, in the protocol's words."""


@runtime_checkable
class HttpService(Protocol):
    """An HTTP application (aiohttp) served on the listener's sockets."""

    async def start(self, socks: list[socket.socket], ssl_context: ssl.SSLContext | None) -> None: ...

    async def stop(self, grace: float) -> None: ...

    # Optional (looked up with getattr): ``protocol_factory() -> Callable[[], asyncio.Protocol]``, after
    # start, the per-connection protocol of its application, for connections the listener accepts
    # itself (an adopted member's, a PROXY header's). A service without it is adopted for and proxied by nobody.


class Listener:
    """One configured listener in one worker."""

    def __init__(
        self,
        name: str,
        cfg: ListenerConfig,
        limits: LimitsConfig,
        socks: list[socket.socket],
        service: StreamService | HttpService,
        ssl_context: ssl.SSLContext | None,
        others: Sequence[socket.socket] = (),
    ) -> None:
        """``others``: the other workers' members of the same SO_REUSEPORT groups, watched and adopted
        when not drained (:data:`ADOPT_INTERVAL`); closed by :meth:`stop_accepting`."""
        self.name = name
        self.cfg = cfg
        self.socks = socks
        self.others = list(others)
        self.service = service
        self.ssl_context = ssl_context
        self.max_connections: int = cfg.limit(limits, "max_connections")
        self.max_per_ip: int = cfg.limit(limits, "max_connections_per_ip")
        self.idle_timeout: float = cfg.limit(limits, "idle_timeout")
        self.max_line_length: int = cfg.limit(limits, "max_line_length")
        self.servers: list[asyncio.Server] = []
        self.connections: set[Connection] = set()
        self.per_ip: Counter[str] = Counter()
        self._idle = asyncio.Event()
        self._idle.set()
        self.proxy_networks = [ipaddress.ip_network(n, strict=False) for n in cfg.proxy_trusted_networks]
        self._accepting: set[asyncio.Task[None]] = set()  # proxy_protocol: the accept loops and header reads
        self._unstarted: dict[asyncio.Task[None], socket.socket] = {}  # header reads not begun: own their socket
        self._reading: set[asyncio.Task[None]] = set()  # header reads in flight: at most max_connections
        #: an HTTP service's per-connection protocol factory (set by start), None for a stream service
        self._http: Callable[[], Callable[[], asyncio.Protocol]] | None = None
        #: adoption (:meth:`_look`): each other member's queue at the last look, and the connections taken
        #: from it while adopted (None: not adopted)
        self._before = [0] * len(self.others)
        self._adopted_count: list[int | None] = [None] * len(self.others)
        self._implicit: ssl.SSLContext | None = None

    async def start(self) -> None:
        implicit = self.ssl_context if self.cfg.tls == "implicit" else None
        if isinstance(self.service, HttpService) and not isinstance(self.service, StreamService):
            self._http = getattr(self.service, "protocol_factory", None)
            if self._http is None:  # serves its sockets alone: no adoption, no PROXY header
                await self.service.start(self.socks, implicit)
                return
            # with proxy_protocol the header is read here, so the service gets no socket of its own
            await self.service.start([] if self.cfg.proxy_protocol else self.socks, implicit)
        loop = asyncio.get_running_loop()
        if self.others and _TCP_INFO is not None:
            self._implicit = implicit
            _AdoptionWatch.of(loop).add(self)
        if self.cfg.proxy_protocol:
            for sock in self.socks:
                sock.setblocking(False)
                self._track(loop.create_task(self._accept_proxied(sock, implicit)))
            return
        if self._http is not None:
            return
        for sock in self.socks:
            server = await asyncio.start_server(
                self._on_client,
                sock=sock,
                ssl=implicit,
                ssl_handshake_timeout=30.0 if implicit else None,
                # +2 for CRLF; readline enforces the exact limit.
                limit=self.max_line_length + 2,
                # start_server listens again with its own backlog (100): keep the master's, which holds
                # connections that arrive while this worker is being restarted (mailsrv/master.py)
                backlog=LISTEN_BACKLOG,
            )
            self.servers.append(server)

    # -- PROXY protocol ---------------------------------------------------------------------------------

    def _track(self, task: asyncio.Task[None]) -> None:
        self._accepting.add(task)
        task.add_done_callback(self._accepting.discard)

    async def _accept_proxied(self, lsock: socket.socket, implicit: ssl.SSLContext | None) -> None:
        """Accept on a proxy_protocol listener: each connection's header is read off the bare socket before
        asyncio (and TLS, on an implicit-TLS listener) gets it, so the bytes after the header stay unread."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, addr = await loop.sock_accept(lsock)
            except OSError as exc:  # EMFILE, ENOBUFS: the connection stays in the backlog; try again shortly
                logger.warning("accept.failed", listener=self.name, error=str(exc))
                await asyncio.sleep(0.1)
                continue
            self._take_proxied(sock, addr, implicit)

    def _take_proxied(self, sock: socket.socket, addr: Any, implicit: ssl.SSLContext | None) -> None:
        if len(self._reading) >= self.max_connections:
            # a proxy (or a flood through it) holding max_connections headers unsent: each would hold a
            # socket for proxy_timeout; this one is closed at once, like a session over the limit
            logger.warning("proxy.refused", listener=self.name, peer=f"{addr[0]}:{addr[1]}",
                           reason="too many PROXY headers awaited")
            sock.close()
            return
        task = self._start(sock, self._proxied(sock, addr, implicit))
        self._reading.add(task)
        task.add_done_callback(self._reading.discard)

    def _start(self, sock: socket.socket, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro``, which owns ``sock`` once it begins (until then stop_accepting closes it)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._unstarted[task] = sock
        self._track(task)
        return task

    def _proxy_trusted(self, host: str) -> bool:
        ip = ipaddress.ip_address(host.partition("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # a dual-stack socket's IPv4 client
        return any(ip in net for net in self.proxy_networks)

    async def _proxied(self, sock: socket.socket, addr: Any, implicit: ssl.SSLContext | None) -> None:
        """Read the PROXY header of one accepted connection, then serve it as the client's address."""
        self._unstarted.pop(asyncio.current_task(), None)  # type: ignore[arg-type]  # from here we close sock
        real = f"{addr[0]}:{addr[1]}"
        try:
            if not self._proxy_trusted(addr[0]):
                # not one of our proxies: it could claim any address. No reply: the peer speaks no protocol of ours
                logger.warning("proxy.untrusted", listener=self.name, peer=real)
                sock.close()
                return
            async with asyncio.timeout(self.cfg.proxy_timeout):
                header = await proxy.read_header(sock)
        except (proxy.ProxyError, TimeoutError, OSError) as exc:
            reason = "timeout" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            logger.warning("proxy.refused", listener=self.name, peer=real, reason=reason)
            sock.close()
            return
        except BaseException:
            sock.close()
            raise
        try:
            # implicit TLS starts here, after the header: the ClientHello was left in the socket
            await self._hand_over(sock, implicit, (header, addr))
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            logger.info("tls.handshake_failed", listener=self.name, peer=real, proxy_source=_addr(header.source),
                        error=str(exc) or type(exc).__name__)
            sock.close()

    async def _hand_over(self, sock: socket.socket, implicit: ssl.SSLContext | None,
                         proxied: tuple[proxy.ProxyHeader, Any] | None = None) -> None:
        """Serve an accepted socket as asyncio.start_server (or the HTTP service's own server) would, as the
        client of ``proxied`` (its PROXY header and the proxy's address) if given; an implicit-TLS handshake
        begins here."""
        loop = asyncio.get_running_loop()
        protocol: Callable[[], asyncio.BaseProtocol]
        if self._http is not None:
            inner = self._http()
            header = proxied[0] if proxied is not None else None
            if header is not None and header.source is not None and header.destination is not None:
                source, destination = header.source, header.destination
                protocol = lambda: ProxiedProtocol(inner(), source, destination)  # noqa: E731
            else:  # no header, or one that keeps the connection's own addresses (spec: LOCAL, UNKNOWN)
                protocol = inner
        else:
            on_client = self._on_client if proxied is None else functools.partial(self._on_client, proxied=proxied)

            def protocol() -> asyncio.StreamReaderProtocol:
                # as asyncio.start_server builds it; +2 for CRLF (readline enforces the exact limit)
                reader = asyncio.StreamReader(limit=self.max_line_length + 2, loop=loop)
                return asyncio.StreamReaderProtocol(reader, on_client, loop=loop)

        await loop.connect_accepted_socket(protocol, sock, ssl=implicit,
                                           ssl_handshake_timeout=30.0 if implicit else None)

    # -- adoption of another worker's SO_REUSEPORT member ------------------------------------------------

    def _look(self) -> None:
        """One look at the other members' accept queues (every :data:`ADOPT_INTERVAL`, from the loop's one
        :class:`_AdoptionWatch`). The kernel hashes each connection to one member: one whose worker is stuck
        or dead (restart backoff up to ``server.restart_backoff_max``) would hold its share for that long.
        A member is adopted when its queue did not shrink between two looks (its worker took nothing); an
        adopted member is emptied at each look until a look finds it empty. Healthy: one getsockopt per
        member, nothing accepted."""
        before, adopted = self._before, self._adopted_count
        for i, lsock in enumerate(self.others):
            queued = accept_queue(lsock)
            taken = adopted[i]
            if queued <= 0:
                if taken is not None:
                    logger.info("listener.adoption_ended", listener=self.name, addr=format_addr(lsock),
                                accepted=taken)
                adopted[i] = None
            elif taken is not None or queued >= before[i] > 0:
                if taken is None:  # its worker took nothing since the last look
                    logger.warning("listener.adopted", listener=self.name, addr=format_addr(lsock), queued=queued)
                adopted[i] = (taken or 0) + self._adopt(lsock, queued, self._implicit)
            before[i] = max(queued, 0)

    def _adopt(self, lsock: socket.socket, queued: int, implicit: ssl.SSLContext | None) -> int:
        """Accept at most ``queued`` connections from another worker's member and serve them as ours
        (its own worker may take some meanwhile: accept is atomic, EAGAIN ends the round); how many."""
        for n in range(queued):
            try:
                sock, addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return n
            except OSError as exc:  # EMFILE, ENOBUFS: they stay queued for the next look
                logger.warning("accept.failed", listener=self.name, error=str(exc))
                return n
            sock.setblocking(False)
            if self.cfg.proxy_protocol:
                self._take_proxied(sock, addr, implicit)
            else:
                self._start(sock, self._adopted(sock, addr, implicit))
        return queued

    async def _adopted(self, sock: socket.socket, addr: Any, implicit: ssl.SSLContext | None) -> None:
        self._unstarted.pop(asyncio.current_task(), None)  # type: ignore[arg-type]  # from here we close sock
        try:
            await self._hand_over(sock, implicit)
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            logger.info("tls.handshake_failed", listener=self.name, peer=f"{addr[0]}:{addr[1]}",
                        error=str(exc) or type(exc).__name__)
            sock.close()

    # -- sessions -----------------------------------------------------------------------------------------

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         proxied: tuple[proxy.ProxyHeader, Any] | None = None) -> None:
        conn = Connection(
            reader,
            writer,
            listener=self.name,
            max_line_length=self.max_line_length,
            idle_timeout=self.idle_timeout,
        )
        conn.task = asyncio.current_task()
        if proxied is None:
            log.bind(sid=conn.sid, proto=self.cfg.protocol, peer=f"{conn.peer_host}:{conn.peer_port}")
        else:
            header, addr = proxied
            if header.source is not None and header.destination is not None:
                conn.peer_host, conn.peer_port = header.source  # the client, everywhere the session looks
                conn.local_host, conn.local_port = header.destination  # the address the client connected to
            log.bind(sid=conn.sid, proto=self.cfg.protocol, peer=f"{conn.peer_host}:{conn.peer_port}",
                     proxy=f"{addr[0]}:{addr[1]}")
        ip = conn.peer_host
        # start() served an HttpService itself: only a StreamService accepts here (a runtime-checkable
        # Protocol's isinstance costs ~10 us: not per connection)
        service = cast(StreamService, self.service)
        if len(self.connections) >= self.max_connections or self.per_ip[ip] >= self.max_per_ip:
            reason = "too many connections" if len(self.connections) >= self.max_connections else "too many connections from your address"
            logger.warning("conn.refused", listener=self.name, reason=reason)
            try:
                await asyncio.wait_for(service.refuse(conn, reason), 5)
            except Exception:
                pass
            await conn.close()
            return
        self.connections.add(conn)
        self.per_ip[ip] += 1
        self._idle.clear()
        if log.enabled("debug"):  # tls_info() is not called for a line nobody prints
            logger.debug("conn.open", listener=self.name, **conn.tls_info())
        try:
            await service.handle(conn)
        except asyncio.CancelledError:
            logger.info("conn.cancelled", listener=self.name)
        except Exception as exc:
            logger.exception("session.crash", exc, listener=self.name)
        finally:
            # Bookkeeping before the close, so a client that sees EOF may reconnect at once.
            self.connections.discard(conn)
            self.per_ip[ip] -= 1
            if self.per_ip[ip] <= 0:
                del self.per_ip[ip]
            await conn.close()
            if not self.connections:
                self._idle.set()
            logger.debug("conn.close", listener=self.name)

    def stop_accepting(self) -> None:
        _AdoptionWatch.leave(self)
        for server in self.servers:
            server.close()
        for task in list(self._accepting):  # proxy_protocol: accept loops, and headers not read yet; the watch
            task.cancel()
        for lsock in self.others:  # our copies: the master's keep the members (and their queues)
            lsock.close()
        for sock in self._unstarted.values():  # a task cancelled before it began never runs its own close
            sock.close()
        self._unstarted.clear()

    async def drain(self, grace: float) -> None:
        """Stop accepting; let sessions end by themselves for ``grace`` seconds; then
        ask the rest to say goodbye at their next command boundary; cut what is left."""
        self.stop_accepting()
        if not isinstance(self.service, StreamService):
            await self.service.stop(grace)
            return
        if await self._wait_idle(grace):
            return
        logger.info("drain.goodbye", listener=self.name, sessions=len(self.connections))
        for conn in list(self.connections):
            conn.request_shutdown()
        if await self._wait_idle(GOODBYE_TIMEOUT):
            return
        logger.warning("drain.cut", listener=self.name, sessions=len(self.connections))
        for conn in list(self.connections):
            if conn.task is not None:
                conn.task.cancel()
        await self._wait_idle(GOODBYE_TIMEOUT)

    async def _wait_idle(self, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True


def _addr(a: proxy.Address | None) -> str:
    return "-" if a is None else f"{a[0]}:{a[1]}"


def format_addr(sock: socket.socket) -> str:
    """``host:port`` (``[host]:port`` for IPv6) of a bound socket."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _AdoptionWatch:
    """One timer per loop for every listener's looks at the other workers' members (:meth:`Listener._look`):
    an idle worker wakes once per :data:`ADOPT_INTERVAL` for all its listeners, not once per listener; a
    plain ``call_later`` callback (no task, no future, no getpid(2) of ``asyncio.sleep`` per wake-up)."""

    _per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _AdoptionWatch] = weakref.WeakKeyDictionary()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.listeners: list[Listener] = []
        self.timer: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _AdoptionWatch:
        watch = cls._per_loop.get(loop)
        if watch is None:
            watch = cls._per_loop[loop] = cls(loop)
        return watch

    def add(self, listener: Listener) -> None:
        self.listeners.append(listener)
        if self.timer is None:
            self.timer = self.loop.call_later(ADOPT_INTERVAL, self._tick)

    @classmethod
    def leave(cls, listener: Listener) -> None:
        """``listener`` stops accepting: no more looks for it (the timer ends with the last one)."""
        for loop, watch in list(cls._per_loop.items()):
            if listener in watch.listeners:
                watch.listeners.remove(listener)
                if not watch.listeners:
                    if watch.timer is not None:
                        watch.timer.cancel()
                    del cls._per_loop[loop]

    def _tick(self) -> None:
        for listener in list(self.listeners):
            try:
                listener._look()
            except Exception as exc:  # the next look tries again
                logger.exception("listener.look_failed", exc, listener=listener.name)
        self.timer = self.loop.call_later(ADOPT_INTERVAL, self._tick) if self.listeners else None
