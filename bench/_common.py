"""Pieces the benchmark scenarios share: generated messages and maildirs, free ports,
a real ``mailsrv serve`` from a fresh ``mailsrv init`` (:class:`Mailsrv`), the server's CPU
and peak RSS from /proc (:class:`ServerMeter`), file descriptor limits, Dovecot as a
baseline, and the result rows.

Not a scenario (the leading underscore keeps it out of ``python -m bench``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tools.config_sample import toml_value  # the sample config's TOML writer

PASSWORD = "benchpass"
LOREM = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. "


# --- messages and maildirs ----------------------------------------------------------------


def message(n: int, *, repeat: int, lines: int, tag: str = "b", display_name: bool = False,
            mime: bool = True, body_prefix: str = "") -> bytes:
    """A generated plain-text message: ``lines`` lines of ``repeat`` times the lorem sentence.

    Headers vary with ``n`` (sender ``n % 97``, subject ``n % 500``, Message-ID ``<{tag}{n}@...>``).
    """
    body = (LOREM * repeat + "\r\n") * lines
    sender = f"Sender {n % 97} <sender{n % 97}@example.test>" if display_name else f"sender{n % 97}@example.test"
    mime_headers = "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n" if mime else ""
    return (
        f"From: {sender}\r\nTo: user@example.test\r\n"
        f"Subject: report {n % 500}\r\nMessage-ID: <{tag}{n}@example.test>\r\n"
        f"Date: Thu, 26 Nov 2026 12:00:00 +0000\r\n{mime_headers}\r\n{body_prefix}{body}"
    ).encode()


def fill_maildir(root: Path, messages: Iterable[bytes], name: Callable[[int, bytes], str]) -> None:
    """A maildir at ``root`` (cur/, new/, tmp/) with ``messages`` written as ``cur/<name(i, data)>``."""
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(messages):
        (root / "cur" / name(i, data)).write_bytes(data)


def link_tree(src: Path, dst: Path) -> None:
    """A copy of the tree ``src`` at ``dst`` (which may exist) whose files are hard links (copies
    across file systems).

    For seed maildirs: a server renames message files (flags, new/ -> cur/) but never writes one
    in place, so every copy can share the generated files' inodes.
    """
    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:  # another file system, or links not allowed
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link, dirs_exist_ok=True)


def seed_cache(key: str, n: int, sample: bytes, fill: Callable[[Path, int], None]) -> Path:
    """A generated seed maildir built once and kept for later runs: ``fill(root, n)`` builds it.

    It lives in ``$MAILSRV_BENCH_CACHE`` (default ``<tmp>/mailsrv-bench-cache``, the file system
    of the scenarios' temporary directories, so :func:`link_tree` links rather than copies),
    named by ``key``, ``n`` and a digest of ``sample`` (some generated messages) and of ``fill``'s
    source (how files are named), so a changed generator is a new entry. Built beside its final name and renamed into place, so a run that dies
    half-way or a concurrent run never sees a partial maildir. Treat it as read-only: copy it
    with :func:`link_tree`.
    """
    cache = Path(os.environ.get("MAILSRV_BENCH_CACHE") or Path(tempfile.gettempdir(), "mailsrv-bench-cache"))
    digest = hashlib.sha256(sample + inspect.getsource(fill).encode()).hexdigest()[:16]
    root = cache / f"{key}-{n}-{digest}"
    if root.is_dir():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    os.chmod(cache, 0o755)  # Dovecot's and Postfix's users read linked seed files
    building = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=cache))
    try:
        fill(building / "maildir", n)
        os.rename(building / "maildir", root)
    except OSError:
        if not root.is_dir():  # not a concurrent run that renamed first
            raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return root


#: Seconds after a deletion during which a journal-less ext4 still skips the freed inodes when it
#: allocates one (``recently_deleted`` in fs/ext4/ialloc.c: 60 s once their inode table block is
#: written back, 300 s before), plus a margin: every create scans past them meanwhile.
RECENT_FREE_WINDOW = 65.0
#: time.monotonic() of this process's last :func:`remove_tree` (None: none yet)
_last_removal: float | None = None


def remove_tree(path: Path) -> None:
    """Remove a scenario's temporary tree, remembering when for :func:`settle_after_removal`."""
    global _last_removal
    shutil.rmtree(path, ignore_errors=True)
    _last_removal = time.monotonic()


def settle_after_removal() -> float:
    """``sync`` (so that the freed inodes' blocks are written back and count as recent for 60 s, not
    300), then wait until :data:`RECENT_FREE_WINDOW` seconds have passed since the last
    :func:`remove_tree` of this process (a scenario just before, in ``python -m bench all``): for a
    minute after a big deletion each file create costs 0.2-1 ms instead of 10-60 us, and the first
    cells measured would pay it. Returns the seconds waited."""
    os.sync()
    if _last_removal is None:
        return 0.0
    wait = _last_removal + RECENT_FREE_WINDOW - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    return max(0.0, wait)


def maildir_count(root: Path) -> int:
    """Messages in every maildir below ``root`` (files in new/ and cur/)."""
    return sum(len(files) for d, _, files in os.walk(root) if os.path.basename(d) in ("new", "cur"))


def fill_new(new_dir: Path, messages: Iterable[bytes]) -> None:
    """Drop messages into ``new_dir`` as another MDA would (no fsync: setup, not measured)."""
    for i, data in enumerate(messages):
        (new_dir / f"1700000000.M{i}P1Q{i}.bench").write_bytes(data)


# --- durable file writes without a server: baselines and the disk's floor ------------------


def fsync_create(tmp_dir: Path, name: str, data: bytes, into: Path | None = None) -> None:
    """The plain durable write (blocking): create ``tmp_dir/name`` -> write ``data`` -> fsync -> close,
    then rename it into the directory ``into`` (if given) and fsync the directory that holds it."""
    tmp = tmp_dir / name
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if into is not None:
        os.rename(tmp, into / name)
    dfd = os.open(into if into is not None else tmp_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def syncfs_create(tmp_dir: Path, name: str, data: bytes, into: Path) -> None:
    """mailsrv's durable write with one file per round (blocking): create ``tmp_dir/name`` -> write ``data``
    -> close -> rename into ``into`` -> one ``syncfs(2)`` of the file system (mailsrv.util.fsio)."""
    from mailsrv.util.fsio import syncfs

    fd = os.open(tmp_dir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.rename(tmp_dir / name, into / name)
    syncfs(into)


def durable_loop(write: Callable[[str], None], seconds: float = 0.0, count: int = 0) -> tuple[float, list[float]]:
    """Call ``write(name)`` one after another (a new name each time) for ``count`` calls, or for ``seconds``:
    (calls per second, each call's wall time in seconds)."""
    tag = time.monotonic_ns()
    times: list[float] = []
    perf = time.perf_counter
    t0 = perf()
    until = t0 + seconds
    while len(times) < count or (not count and perf() < until):
        t = perf()
        write(f"{tag}.{len(times)}")
        times.append(perf() - t)
    return len(times) / (perf() - t0), times


# --- processes and ports -------------------------------------------------------------------


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: every socket is held until all are picked (one at a time, the
    kernel may hand the same port out twice: two listeners of one config then collide)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


# --- the server's resources: file descriptors, CPU seconds, peak RSS (from /proc) ----------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def raise_nofile() -> tuple[int, int]:
    """Raise this process's RLIMIT_NOFILE soft limit to the hard limit (children inherit it).

    Returns the (soft, hard) limits now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= want:
        return soft, hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError):  # an unlimited hard limit above fs.nr_open
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1 << 16), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def nofile_of(pid: int) -> int:
    """The soft "Max open files" limit of a running process (from /proc/PID/limits; 0 if gone)."""
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def proc_tree(root: int) -> list[int]:
    """``root`` and every process below it (from the parent ids in /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and of its children that it has waited for: utime + stime +
    cutime + cstime (/proc/PID/stat fields 14-17); 0 if it is gone.

    Summed over a process tree this total only grows: a child that exits and is reaped moves
    its time into its parent's cutime/cstime (whole, not rounded to a tick per child).
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return sum(int(f) for f in fields[11:15]) / CLK_TCK


def cpu_ns(pids: list[int]) -> int:
    """Nanoseconds on CPU of ``pids``' threads (/proc/PID/task/*/schedstat, first field): for short
    windows, where :func:`cpu_seconds`' 10 ms ticks are the whole measurement (an idle server's
    5 s window read 0 or 0.12 CPU s per minute)."""
    total = 0
    for pid in pids:
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    return total


def status_kib(pids: list[int], key: str) -> int:
    """Sum of a /proc/PID/status field in KiB (``VmRSS``, ``VmHWM``) over ``pids``."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def rss_kib(pids: list[int]) -> int:
    return status_kib(pids, "VmRSS")


def pss_kib(pids: list[int]) -> int:
    """Proportional set size summed over ``pids`` (/proc/PID/smaps_rollup): shared pages counted once."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


class ServerMeter:
    """CPU seconds and peak RSS of a server's processes while a scenario drives it.

    ``pids()`` names the processes, the tree's root first (e.g. :meth:`Mailsrv.pids`;
    ``lambda: [os.getpid()]`` for a library measured in-process). CPU is the growth since
    :meth:`start` of the tree's total of :func:`cpu_seconds` (so processes that came and went
    in between count, as long as a process of the tree reaped them). Peak RSS is the largest
    sum, at one :meth:`sample`, of the VmHWM of the processes alive at that sample (each one's
    own high-water mark; pages that forked processes share are counted in each): processes that
    live one after the other (Postfix's smtpd, cleanup and virtual, ~700 in a run of ``smtp``)
    are not added up, and a fixed set of processes (mailsrv's, aiosmtpd's) gives the sum of
    their VmHWM, as it always did. ``operations`` is what the scenario counts (:meth:`add`),
    named by ``unit``.
    """

    def __init__(self, name: str, pids: Callable[[], list[int]], unit: str = "operations") -> None:
        self.name, self.pids, self.unit = name, pids, unit
        self.operations = 0
        self._start = 0.0
        #: every process seen by a sample -> its VmHWM (how many came and went: ``processes_seen``)
        self._hwm: dict[int, int] = {}
        #: the largest sum of VmHWM over the processes alive at one sample, how many they were, and
        #: their VmRSS and PSS at that sample
        self._peak = self._peak_processes = self._peak_rss_now = self._peak_pss_now = 0

    def start(self) -> ServerMeter:
        self._start = sum(cpu_seconds(pid) for pid in self.pids())
        return self

    def add(self, operations: int) -> None:
        self.operations += operations

    def sample(self) -> None:
        """Record the VmHWM of the processes alive now and their sum (call it while the load runs
        and before per-connection processes exit)."""
        alive = {pid: hwm for pid in self.pids() if (hwm := status_kib([pid], "VmHWM"))}
        for pid, hwm in alive.items():
            self._hwm[pid] = max(self._hwm.get(pid, 0), hwm)
        if sum(alive.values()) > self._peak:
            self._peak, self._peak_processes = sum(alive.values()), len(alive)
            self._peak_rss_now, self._peak_pss_now = rss_kib(list(alive)), pss_kib(list(alive))

    def cpu(self) -> float:
        """CPU seconds of the server since :meth:`start` (samples first)."""
        self.sample()
        return sum(cpu_seconds(pid) for pid in self.pids()) - self._start

    def summary(self) -> dict[str, Any]:
        """The report's ``servers`` entry (see bench/README.md, JSON output)."""
        cpu = self.cpu()
        return {"name": self.name, "processes": self._peak_processes, "processes_seen": len(self._hwm),
                "cpu_seconds": round(cpu, 6), "operations": self.operations, "operations_unit": self.unit,
                "cpu_s_per_1k_ops": round(cpu * 1000 / self.operations, 6) if self.operations else None,
                "peak_rss_kib": self._peak, "rss_at_peak_kib": self._peak_rss_now,
                "pss_at_peak_kib": self._peak_pss_now}


class InProcessMeter(ServerMeter):
    """This very process, for the scenarios that measure a library rather than a server:
    CPU from getrusage(RUSAGE_SELF) (exact to the microsecond, threads included), peak RSS
    from VmHWM, which :meth:`start` resets (``5`` into /proc/self/clear_refs) so that an
    earlier scenario of ``python -m bench all`` in the same process does not count."""

    def __init__(self, unit: str) -> None:
        super().__init__("in-process (library)", lambda: [os.getpid()], unit)

    @staticmethod
    def _cpu_now() -> float:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime

    def start(self) -> ServerMeter:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:  # not Linux >= 4.0, or not allowed: the peak is the process's lifetime peak
            pass
        self._start = self._cpu_now()
        return self

    def sample(self) -> None:
        hwm = status_kib([os.getpid()], "VmHWM")
        self._hwm[os.getpid()] = hwm
        self._peak, self._peak_processes = hwm, 1
        self._peak_rss_now, self._peak_pss_now = rss_kib([os.getpid()]), pss_kib([os.getpid()])

    def cpu(self) -> float:
        self.sample()
        return self._cpu_now() - self._start


def in_process_meter(unit: str) -> ServerMeter:
    """A started :class:`InProcessMeter`."""
    return InProcessMeter(unit).start()


# --- mailsrv as an operator runs it: `mailsrv init`, then `mailsrv serve` -------------------

def toml_dump(doc: dict[str, Any], prefix: str = "") -> str:
    """Tables of scalars and lists (what mailsrv.toml holds) as TOML text."""
    out = []
    scalars = {k: v for k, v in doc.items() if not isinstance(v, dict)}
    if prefix and (scalars or not doc):
        out.append(f"\n[{prefix}]")
    out += [f"{k} = {toml_value(v)}" for k, v in scalars.items()]
    for k, v in doc.items():
        if isinstance(v, dict):
            key = k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else toml_value(k)
            out.append(toml_dump(v, f"{prefix}.{key}" if prefix else key))
    return "\n".join(out)


def _merge(into: dict[str, Any], more: dict[str, Any]) -> None:
    for k, v in more.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


#: What every bench server gets on top of `mailsrv init`: plain-text login on loopback and
#: argon2id with cheap parameters (session rates measure the protocol, not hashing), no
#: failure throttling, and connection limits above any scenario's load.
BENCH_CONFIG: dict[str, Any] = {
    "server": {"log_level": "info"},
    "auth": {"allow_plaintext_loopback": True, "argon2_time_cost": 1, "argon2_memory_kib": 1024,
             "ip_block_failures": 10**6, "ip_throttle_failures": 10**6},
    "limits": {"max_connections": 50_000, "max_connections_per_ip": 50_000, "idle_timeout": 3600},
}


#: Starts of ``mailsrv serve`` with newly picked ports when one was taken meanwhile ("Address already in use")
PORT_ATTEMPTS = 3


class Mailsrv:
    """``python -m mailsrv serve`` in its own process group, from a fresh ``mailsrv init`` in ``base``.

    ``config`` is merged over :data:`BENCH_CONFIG` and the generated mailsrv.toml (e.g.
    ``{"listener": {"imap": {"tls": "none"}}}``). ``seeds`` adds domain example.test with a user
    ``<name>@example.test`` (password :data:`PASSWORD`) per entry, the seed maildir copied into
    the user's store (``None``: empty). ``demo`` keeps init's alice and bob (``passwords``).
    Every listener gets a free port on 127.0.0.1 (``ports``: smtp, submission, submissions,
    imap, imaps, pop3, pop3s, jmap, jmaps, admin; picked again, up to :data:`PORT_ATTEMPTS` starts,
    when another process bound one first). The server logs at info, as an operator
    runs it, into ``base/mailsrv.log`` (a file: no pipe for the client to drain); it is ready
    when the master sends READY=1 over $NOTIFY_SOCKET, as under systemd. It inherits this
    process's RLIMIT_NOFILE.
    """

    def __init__(self, base: Path, *, seeds: dict[str, Path | None] | None = None, demo: bool = False,
                 workers: int | str = "auto", config: dict[str, Any] | None = None,
                 hostname: str = "mail.example.test") -> None:
        self.base = base
        cmd = [sys.executable, "-m", "mailsrv", "init", "--dir", str(base), "--any-port", "--hostname", hostname,
               "--workers", str(workers)]
        init = subprocess.run(cmd + (["--demo"] if demo else []), capture_output=True, text=True)
        if init.returncode != 0:
            raise RuntimeError(f"mailsrv init failed ({init.returncode}): {init.stderr.strip()[-1000:]}")
        cfg_file = base / "mailsrv.toml"
        doc = tomllib.loads(cfg_file.read_text())
        _merge(doc, BENCH_CONFIG)
        _merge(doc, config or {})
        self.data_dir = base / doc["server"].get("data_dir", "data")
        self.passwords: dict[str, str] = {}
        if demo:
            self.passwords = {ln.split()[3]: ln.split()[5] for ln in (base / "demo-users.txt").read_text().splitlines()}
        if seeds:
            from mailsrv.config import AuthConfig

            add_users(self.data_dir, AuthConfig(**doc["auth"]), seeds)
        self.log = base / "mailsrv.log"
        names = list(doc.get("listener", {}))
        for attempt in range(1, PORT_ATTEMPTS + 1):
            # a port free_ports() found free may be bound by another process before serve binds it
            self.ports = dict(zip(names, free_ports(len(names)), strict=True))
            for name, port in self.ports.items():
                doc["listener"][name]["bind"] = [f"127.0.0.1:{port}"]
            cfg_file.write_text("# mailsrv init, plus the benchmark's settings (bench/_common.py)\n"
                                + toml_dump(doc) + "\n")
            if self._serve(cfg_file):
                return
            tail = self.log.read_text(errors="replace").splitlines()[-5:]
            if attempt == PORT_ATTEMPTS or not any("Address already in use" in line for line in tail):
                raise RuntimeError("mailsrv did not start: " + "\n".join(tail))

    def _serve(self, cfg_file: Path) -> bool:
        """Start ``mailsrv serve -c cfg_file``: True once it is ready, False (stopped) if it exited or never was."""
        notify = self.base / "notify.sock"
        notify.unlink(missing_ok=True)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as ready, open(self.log, "ab") as log:
            ready.bind(str(notify))
            ready.settimeout(1)
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mailsrv", "serve", "-c", str(cfg_file)],
                stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
                env={**os.environ, "NOTIFY_SOCKET": str(notify)},
            )
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    if b"READY=1" in ready.recv(4096):
                        return True
                except TimeoutError:
                    continue
        self.stop()
        return False

    @property
    def errors(self) -> list[str]:
        """The server's log lines at level error (and tracebacks) so far."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [ln for ln in text.splitlines() if " error " in ln or ln.startswith("Traceback")]

    def pids(self) -> list[int]:
        """The master, its workers and the queue runner."""
        return proc_tree(self.proc.pid) if self.proc.poll() is None else []

    def meter(self, unit: str = "operations") -> ServerMeter:
        """A started :class:`ServerMeter` of this server."""
        return ServerMeter("mailsrv", self.pids, unit).start()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def __enter__(self) -> Mailsrv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- users and their stores ------------------------------------------------------------------


def add_users(base: Path, acfg: Any, seeds: dict[str, Path | None]) -> None:
    """Domain example.test with a user ``<name>@example.test`` (password PASSWORD) per seed maildir,
    the maildir copied into the user's store (``None``: an empty store)."""
    from mailsrv.auth.passwords import Hasher
    from mailsrv.config import DirectoryConfig
    from mailsrv.directory import open_sync

    sd = open_sync(DirectoryConfig(), base)
    sd.add_domain("example.test")
    pw, scram = Hasher(acfg).make(PASSWORD)
    accounts = {name: sd.add_user(f"{name}@example.test", password_hash=pw, scram=scram) for name in seeds}
    sd.close()
    for name, seed in seeds.items():
        if seed is None:
            continue
        (base / accounts[name].store).parent.mkdir(parents=True, exist_ok=True)
        link_tree(seed, base / accounts[name].store)


# --- Dovecot -----------------------------------------------------------------------------


def start_dovecot(base: Path, protocol: str, seeds: dict[str, Path], services: str,
                  greeting: bytes) -> tuple[subprocess.Popen[bytes] | None, int, str]:
    """Dovecot serving ``protocol`` with a {PLAIN} passdb (PASSWORD) and a copy of each seed maildir.

    ``services`` is the protocol's part of dovecot.conf; ``{port}`` in it is the listening port.
    Returns (process, port, "") or (None, 0, why it is missing).
    """
    exe = shutil.which("dovecot") or "/usr/sbin/dovecot"
    if not Path(exe).exists():
        return None, 0, "dovecot not installed"
    if protocol == "pop3" and not Path("/usr/lib/dovecot/pop3").exists():
        return None, 0, "dovecot-pop3d not installed (tools/install-peers.sh)"
    import pwd

    port = free_port()
    nobody = pwd.getpwnam("nobody")
    mail = base / "dmail"
    for user, seed in seeds.items():
        link_tree(seed, mail / user / "Maildir")
    subprocess.run(["chown", "-R", f"{nobody.pw_uid}:{nobody.pw_gid}", str(mail)], check=True)
    (base / "passwd").write_text("".join(f"{user}:{{PLAIN}}{PASSWORD}\n" for user in seeds))
    (base / "drun").mkdir()
    conf = base / "dovecot.conf"
    conf.write_text(f"""
base_dir = {base}/drun
state_dir = {base}/dstate
log_path = {base}/dovecot.log
listen = 127.0.0.1
protocols = {protocol}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = {nobody.pw_uid}
mail_location = maildir:{mail}/%u/Maildir
default_login_user = dovenull
default_internal_user = dovecot
passdb {{
  driver = passwd-file
  args = {base}/passwd
}}
userdb {{
  driver = static
  args = uid={nobody.pw_uid} gid={nobody.pw_gid} home={mail}/%u
}}
""" + services.replace("{port}", str(port)))
    proc = subprocess.Popen([exe, "-F", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(100).startswith(greeting):
                    return proc, port, ""
        except OSError:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                return None, 0, f"dovecot exited: {err[:200]}"
        time.sleep(0.1)  # waiting for a foreign daemon's port, with a deadline
    stop_dovecot(proc)
    return None, 0, "dovecot did not start"


#: dovecot.conf for IMAP with many long-lived connections: long-lived login processes, no
#: per-user connection cap below the benchmark's.
DOVECOT_IMAP_SERVICES = """service imap-login {
  inet_listener imap {
    port = {port}
  }
  inet_listener imaps {
    port = 0
  }
  service_count = 0
  process_min_avail = 2
  client_limit = 20000
}
service imap {
  process_limit = 20000
}
protocol imap {
  mail_max_userip_connections = 20000
}
default_process_limit = 20000
default_client_limit = 40000
"""


def stop_dovecot(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(10)
    if proc.stderr is not None:
        proc.stderr.close()


def dovecot_pids(proc: subprocess.Popen[bytes]) -> list[int]:
    """Dovecot's master and every process below it (login, imap/pop3, auth, ...)."""
    return proc_tree(proc.pid) if proc.poll() is None else []


# --- SMTP delivery from the client side ----------------------------------------------------


async def smtp_reply(r: asyncio.StreamReader) -> bytes:
    """The last line of an SMTP reply (multi-line replies read to the end)."""
    while True:
        line = await r.readline()
        if not line:
            raise ConnectionError("SMTP connection closed")
        if line[3:4] != b"-":
            return line


async def smtp_deliver(port: int, users: list[str], data: bytes, sessions: int = 10,
                       sent: dict[str, float] | None = None) -> dict[str, float]:
    """One message to each of ``users`` over ``sessions`` SMTP sessions (plain, from bench@remote.test);
    the perf_counter time of each ``250``, and in ``sent`` that of the end of its DATA."""
    acked: dict[str, float] = {}
    todo = list(users)

    async def session() -> None:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        await smtp_reply(r)
        w.write(b"EHLO bench.test\r\n")
        await smtp_reply(r)
        while todo:
            user = todo.pop()
            w.write(f"MAIL FROM:<bench@remote.test>\r\nRCPT TO:<{user}>\r\nDATA\r\n".encode())
            for _ in range(3):
                reply = await smtp_reply(r)
                if reply[:1] not in (b"2", b"3"):
                    raise RuntimeError(f"SMTP to {user}: {reply!r}")
            w.write(data + b".\r\n")
            if sent is not None:
                sent[user] = time.perf_counter()
            reply = await smtp_reply(r)
            if not reply.startswith(b"250"):
                raise RuntimeError(f"SMTP DATA to {user}: {reply!r}")
            acked[user] = time.perf_counter()
        w.write(b"QUIT\r\n")
        await smtp_reply(r)
        w.close()

    await asyncio.gather(*(session() for _ in range(min(sessions, len(users)))))
    return acked


# --- results -------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (0-100, nearest rank) of ``values``; NaN when there are none."""
    xs = sorted(values)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else float("nan")


def compare(ours: dict[str, float], theirs: dict[str, float], units: dict[str, tuple[str, bool]],
            baseline: str) -> list[dict[str, Any]]:
    """Result rows: ``units[name]`` is (unit, higher is better); ratio > 1 means mailsrv is better."""
    results = []
    for name, value in ours.items():
        unit, higher_better = units[name]
        base_v = theirs.get(name)
        ratio = None
        if base_v:
            ratio = (value / base_v) if higher_better else (base_v / value if value else None)
        results.append({"name": name, "unit": unit, "value": round(value, 3),
                        "baseline": {"name": baseline, "value": round(base_v, 3)} if base_v is not None else None,
                        "ratio": round(ratio, 3) if ratio else None})
    return results
