"""Connections spread over the workers (server.reuse_port): each worker slot accepts on its own
SO_REUSEPORT member of every address, all bound and held by the master (mailsrv/master.py); a member
whose worker is stuck or dead is adopted by the others (mailsrv/net/listener.py, ADOPT_INTERVAL)."""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support.server import ServerProcess, init_setup, mailsrv_cmd, unverified_tls, wait_until

from mailsrv.master import Groups, bind_socket, slot_sockets
from mailsrv.net.listener import LISTEN_BACKLOG, accept_queue

#: Connections opened at once: the chance that the kernel's hash leaves one of 3 workers without any
#: is 3 * (2/3)**40, about 3e-7.
BURST = 40


def start(tmp_path: Path, workers: int, reuse_port: bool = True, proxy: bool = False) -> ServerProcess:
    config = init_setup(tmp_path / "srv", workers=workers)
    text = config.read_text().replace('log_level = "info"', 'log_level = "debug"')  # conn.open worker=N
    if not reuse_port:
        text = text.replace("[server]", "[server]\nreuse_port = false", 1)
    if proxy:
        text = text.replace("[listener.pop3]\n", '[listener.pop3]\nproxy_protocol = true\n'
                            'proxy_trusted_networks = ["127.0.0.1/32"]\n', 1)
    config.write_text(text)
    srv = ServerProcess(config).wait_ready()
    srv.wait_for(r"worker\.ready", count=workers)
    srv.wait_for(r"singleton\.started name=queue")
    return srv


def open_burst(port: int, n: int = BURST) -> list[socket.socket]:
    """``n`` connections made at once, before any greeting is read; none refused or reset."""
    return [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(n)]


def finish(conns: list[socket.socket], timeout: float = 30.0) -> None:
    """Read each connection's POP3 greeting, QUIT it, close it (all within ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    for s in conns:
        with s:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            f = s.makefile("rb")
            assert f.readline().startswith(b"+OK")
            s.sendall(b"QUIT\r\n")
            assert f.readline().startswith(b"+OK")


def served_by(srv: ServerProcess, start_at: int, n: int) -> Counter[int]:
    """Worker slot -> POP3 sessions opened since ``start_at`` (their ``conn.open`` log lines)."""
    found = srv.wait_for(r"conn\.open worker=(\d+) .*proto=pop3", start=start_at, count=n)
    return Counter(int(m.group(1)) for m in found)


def listening_inodes(port: int) -> set[int]:
    """Inodes of the IPv4 sockets listening on 127.0.0.1:``port`` (/proc/net/tcp, state 0A)."""
    out = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":
            out.add(int(fields[9]))
    return out


def held(pid: int, inodes: set[int]) -> set[int]:
    """Which of ``inodes`` process ``pid`` holds a descriptor of."""
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if m := re.fullmatch(r"socket:\[(\d+)\]", target):
            out.add(int(m.group(1)))
    return out & inodes


def workers_by_slot(srv: ServerProcess, start_at: int = 0) -> dict[int, int]:
    """Slot -> pid of the latest worker started there (from ``start_at``)."""
    return {int(m.group(2)): int(m.group(1))
            for m in (re.search(r"worker\.started pid=(\d+) slot=(\d+)", ln) for ln in srv.lines[start_at:]) if m}


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_each_worker_accepts_on_its_own_socket_held_by_the_master(tmp_path: Path, workers: int) -> None:
    srv = start(tmp_path, workers)
    try:
        port = srv.ports["pop3"]
        assert srv.wait_for(rf"listener\.bound name=pop3 .*:{port} tls=\S+ sockets=(\d+)")[0].group(1) == str(workers)
        inodes = listening_inodes(port)
        assert len(inodes) == workers
        assert held(srv.proc.pid, inodes) == inodes  # the master keeps every member
        slots = workers_by_slot(srv)
        # each worker holds every member: its own to accept on, the others' to adopt if not drained
        assert all(held(slots[slot], inodes) == inodes for slot in range(workers))
        # the workers' asyncio servers keep the master's backlog (ss: Send-Q of a listening socket)
        ss = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True)
        assert [line.split()[2] for line in ss.stdout.splitlines()] == [str(LISTEN_BACKLOG)] * workers
        queue = int(srv.wait_for(r"singleton\.started name=queue pid=(\d+)")[0].group(1))
        assert held(queue, inodes) == set()  # a singleton takes no connection
    finally:
        srv.stop()


def test_without_reuse_port_the_workers_share_one_socket(tmp_path: Path) -> None:
    srv = start(tmp_path, 2, reuse_port=False)
    try:
        inodes = listening_inodes(srv.ports["pop3"])
        assert len(inodes) == 1
        assert all(held(pid, inodes) == inodes for pid in workers_by_slot(srv).values())
        mark = srv.mark()
        finish(open_burst(srv.ports["pop3"], 5))
        assert sum(served_by(srv, mark, 5).values()) == 5
    finally:
        srv.stop()


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_a_burst_of_connections_is_served_by_every_worker(tmp_path: Path, workers: int) -> None:
    srv = start(tmp_path, workers)
    try:
        mark = srv.mark()
        finish(open_burst(srv.ports["pop3"]))
        share = served_by(srv, mark, BURST)
        assert sorted(share) == list(range(workers)), share
        assert sum(share.values()) == BURST
        assert not [line for line in srv.lines if "listener.adopted" in line]  # healthy: every queue drained
    finally:
        srv.stop()


def adopted_by(srv: ServerProcess, start_at: int, listener: str) -> set[int]:
    """Worker slots that logged adopting a member of ``listener`` since ``start_at`` (at least one)."""
    srv.wait_for(rf"listener\.adopted .*listener={listener} ", start=start_at)
    return {int(m.group(1)) for line in srv.lines[start_at:]
            if (m := re.search(rf"listener\.adopted worker=(\d+) .*listener={listener} ", line))}


@contextmanager
def stuck(srv: ServerProcess, slot: int = 0) -> Iterator[None]:
    """Worker ``slot`` alive but taking nothing, and the master stopped too (nothing restarts anything)."""
    pid = workers_by_slot(srv)[slot]
    srv.signal(signal.SIGSTOP)
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: Path(f"/proc/{pid}/stat").read_text().split()[2] == "T")
        yield
    finally:
        os.kill(pid, signal.SIGCONT)
        srv.signal(signal.SIGCONT)


def test_a_stuck_worker_s_connections_are_served_by_the_other(tmp_path: Path) -> None:
    srv = start(tmp_path, 2)
    try:
        mark = srv.mark()
        with stuck(srv):
            finish(open_burst(srv.ports["pop3"]), timeout=10)  # half of them hashed to the stuck worker's member
            assert served_by(srv, mark, BURST) == {1: BURST}
            assert adopted_by(srv, mark, "pop3") == {1}
    finally:
        srv.stop()


def test_implicit_tls_through_an_adopted_member(tmp_path: Path) -> None:
    srv = start(tmp_path, 2)
    client = unverified_tls()
    try:
        mark = srv.mark()
        with stuck(srv):
            conns = [socket.create_connection(("127.0.0.1", srv.ports["imaps"]), timeout=10) for _ in range(20)]
            for raw in conns:  # the handshake of each: those queued on the stuck member wait for the adoption
                with client.wrap_socket(raw, server_hostname="localhost") as tls:
                    f = tls.makefile("rb")
                    assert f.readline().startswith(b"* OK")
                    tls.sendall(b"a LOGOUT\r\n")
                    assert f.readline().startswith(b"* BYE")
            assert adopted_by(srv, mark, "imaps") == {1}
    finally:
        srv.stop()


def test_a_proxy_protocol_listener_reads_the_header_of_an_adopted_connection(tmp_path: Path) -> None:
    srv = start(tmp_path, 2, proxy=True)
    try:
        mark = srv.mark()
        with stuck(srv):
            conns = open_burst(srv.ports["pop3"])
            for i, s in enumerate(conns):
                s.sendall(f"PROXY TCP4 192.0.2.7 127.0.0.1 {5000 + i} 110\r\n".encode())
            finish(conns, timeout=10)
            found = srv.wait_for(r"conn\.open worker=(\d+) .*peer=192\.0\.2\.7:(\d+) proxy=127\.0\.0\.1:",
                                 start=mark, count=BURST)
            assert {int(m.group(1)) for m in found} == {1}
            assert sorted(int(m.group(2)) for m in found) == list(range(5000, 5000 + BURST))
            assert adopted_by(srv, mark, "pop3") == {1}
    finally:
        srv.stop()


def test_a_dead_worker_s_connections_are_served_by_the_other_until_its_replacement(tmp_path: Path) -> None:
    srv = start(tmp_path, 2)
    try:
        victim = workers_by_slot(srv)[0]
        mark = srv.mark()
        srv.signal(signal.SIGSTOP)  # the master cannot restart slot 0 until SIGCONT: a window as long as we like
        try:
            os.kill(victim, signal.SIGKILL)
            wait_until(lambda: Path(f"/proc/{victim}/stat").read_text().split()[2] == "Z")  # dead, not reaped
            finish(open_burst(srv.ports["pop3"]), timeout=10)  # none refused, none waits for the restart
        finally:
            srv.signal(signal.SIGCONT)
        assert served_by(srv, mark, BURST) == {1: BURST}
        assert adopted_by(srv, mark, "pop3") == {1}
        srv.wait_for(rf"worker\.died pid={victim} slot=0 ", start=mark)
        srv.wait_for(r"worker\.ready worker=0 ", start=mark)
        # the queue found empty: worker 1 stops adopting and says how many it took (of about half the burst)
        ended = srv.wait_for(rf"listener\.adoption_ended worker=1 .*listener=pop3 addr=127\.0\.0\.1:{srv.ports['pop3']} "
                             r"accepted=(\d+)", start=mark)
        assert 0 < int(ended[0].group(1)) < BURST
        # the replacement takes its member back: a burst is spread again
        mark = srv.mark()
        finish(open_burst(srv.ports["pop3"]))
        share = served_by(srv, mark, BURST)
        assert workers_by_slot(srv)[0] != victim and share[0] > 0 and share[1] > 0, share
    finally:
        srv.stop()


def test_slot_sockets_after_a_reload_to_fewer_workers_serve_every_member() -> None:
    a, b, c = (socket.socket() for _ in range(3))
    shared = socket.socket()
    try:
        groups: Groups = {"smtp": [[a, b, c]], "pop3": [[shared]]}
        assert slot_sockets(groups, 0, 3) == {"smtp": [a], "pop3": [shared]}
        assert slot_sockets(groups, 2, 3) == {"smtp": [c], "pop3": [shared]}
        assert slot_sockets(groups, 0, 2) == {"smtp": [a, c], "pop3": [shared]}
        assert slot_sockets(groups, 1, 2) == {"smtp": [b], "pop3": [shared]}
        assert slot_sockets(groups, 0, 1) == {"smtp": [a, b, c], "pop3": [shared]}
        # more workers than members (reuse_port turned off by a reload): members are shared round the slots
        assert slot_sockets({"smtp": [[a, b]]}, 2, 3) == {"smtp": [a]}
    finally:
        for s in (a, b, c, shared):
            s.close()


def test_a_port_another_reuse_port_group_listens_on_is_not_joined(tmp_path: Path) -> None:
    """A second server of the same user (SO_REUSEPORT would let it take half of the first one's
    connections) stops with the bind error instead."""
    config = init_setup(tmp_path / "srv", workers=2)
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        config.write_text(config.read_text().replace('bind = ["127.0.0.1:0"]', f'bind = ["127.0.0.1:{port}"]', 1))
        res = subprocess.run(mailsrv_cmd("serve", "-c", str(config)), capture_output=True, text=True, timeout=30)
    assert res.returncode == 1
    assert f"cannot bind listener.smtp 127.0.0.1:{port}" in res.stderr


def test_a_failed_reload_to_more_workers_unbinds_the_members_it_added(tmp_path: Path) -> None:
    srv = start(tmp_path, 2)
    try:
        port = srv.ports["pop3"]
        config = srv.config
        original = config.read_text()
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("")
        text = re.sub(r"(?m)^workers = .*$", "workers = 3", original, count=1)
        config.write_text(re.sub(r'(?m)^data_dir = .*$', f'data_dir = "{blocker}"', text, count=1))
        mark = srv.mark()
        srv.signal(signal.SIGHUP)
        srv.wait_for(r"reload\.failed error=\"new workers did not become ready", start=mark)
        # the third member goes (once the failed workers' copies are gone too): nobody would accept on it
        wait_until(lambda: len(listening_inodes(port)) == 2)
        mark = srv.mark()
        finish(open_burst(port))
        assert sorted(served_by(srv, mark, BURST)) == [0, 1]
    finally:
        srv.stop()


def test_an_ipv6_group_beside_an_ipv4_group_on_one_port() -> None:
    """"[::1]:0" and then "127.0.0.1" on the port it got: V6ONLY keeps the groups apart, and each
    group's members share the connections made to its address family."""
    v6 = [bind_socket("[::1]:0", reuse_port=True)]
    port = v6[0].getsockname()[1]
    v6.append(bind_socket("[::1]:0", reuse_port=True, port=port))
    v4 = [bind_socket(f"127.0.0.1:{port}", reuse_port=True)]
    v4.append(bind_socket("127.0.0.1:0", reuse_port=True, port=port))
    clients: list[socket.socket] = []
    try:
        assert all(s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1 for s in v6)
        for host in ("::1", "127.0.0.1"):
            clients += [socket.create_connection((host, port), timeout=10) for _ in range(BURST)]
        taken: Counter[int] = Counter()
        listening = v6 + v4
        deadline = time.monotonic() + 10
        while sum(taken.values()) < 2 * BURST and time.monotonic() < deadline:  # accepts as they are queued
            ready, _, _ = select.select(listening, [], [], max(0.0, deadline - time.monotonic()))
            for s in ready:
                conn, addr = s.accept()
                conn.close()
                i = listening.index(s)
                assert (":" in addr[0]) == (i < 2)
                taken[i] += 1
        assert sum(taken.values()) == 2 * BURST and sorted(taken) == [0, 1, 2, 3], taken
    finally:
        for s in v6 + v4 + clients:
            s.close()


def test_accept_queue_counts_the_connections_waiting_on_a_listening_socket() -> None:
    lsock = bind_socket("127.0.0.1:0")
    clients: list[socket.socket] = []
    try:
        assert accept_queue(lsock) == 0
        port = lsock.getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
        wait_until(lambda: accept_queue(lsock) == 3)  # the handshakes complete in the kernel
        conn, _ = lsock.accept()
        conn.close()
        assert accept_queue(lsock) == 2
    finally:
        for s in [lsock, *clients]:
            s.close()
    assert accept_queue(lsock) == -1  # closed: not known


def test_a_failed_reload_that_drops_a_listener_leaves_it_whole_for_restarted_workers(tmp_path: Path) -> None:
    """The sockets of an address the new configuration drops are closed only once the new workers serve:
    after a failed reload the old workers go on serving it, and a worker restarted later gets it open."""
    srv = start(tmp_path, 2)
    try:
        port = srv.ports["pop3"]
        victim = workers_by_slot(srv)[0]  # of the generation that goes on serving
        original = srv.config.read_text()
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("")
        text = re.sub(r"(?ms)^\[listener\.pop3\]\n.*?(?=^\[)", "", original, count=1)
        assert "[listener.pop3]\n" not in text and "[listener.pop3s]\n" in text
        srv.config.write_text(re.sub(r'(?m)^data_dir = .*$', f'data_dir = "{blocker}"', text, count=1))
        mark = srv.mark()
        srv.signal(signal.SIGHUP)
        srv.wait_for(r"reload\.failed error=\"new workers did not become ready", start=mark)
        srv.config.write_text(original)
        mark = srv.mark()
        os.kill(victim, signal.SIGKILL)
        srv.wait_for(r"worker\.ready worker=0 ", start=mark)
        mark = srv.mark()
        finish(open_burst(port))
        assert sorted(served_by(srv, mark, BURST)) == [0, 1]  # the replacement accepts on its member too
    finally:
        srv.stop()
