"""The durable outbound queue on disk: each message once, plus its envelope with per-recipient state.

Layout under ``data_dir/queue``::

    msg/<id>        the message (hard link of the SMTP spool file; never rewritten)
    env/<id>.json   envelope and per-recipient state; its presence commits the entry
    done/<id>.json  the final per-recipient outcome of a completed entry (the runner writes it before
                    removing the entry; kept ``[queue] outcome_keep`` seconds, for JMAP deliveryStatus)
    tmp/            temp files for atomic envelope writes
    lock            fcntl lock serialising envelope rewrites (runner and CLI)
    runner.sock     the runner's datagram socket: "wake" / "flush" hints

Invariants:
- An entry exists when ``env/<id>.json`` exists; ``msg/<id>`` is written and
  fsync'd before it. A ``msg`` file without an envelope is an unacknowledged
  leftover and is removed by :meth:`QueueDir.clean_orphans`.
- Every envelope write is temp file → fsync → rename → fsync the directory,
  under ``lock``. A recipient is marked ``sent`` only after the remote ``250``,
  so a crash re-sends at most what was in flight (SMTP's at-least-once window).
- All functions here are blocking; async callers run them in a thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PENDING, SENT, FAILED = "pending", "sent", "failed"
#: an outcome record's status of a recipient that failed because the queue lifetime ran out
EXPIRED = "expired"


@dataclass
class QRcpt:
    addr: str
    notify: list[str] = field(default_factory=list)  # RFC 3461 NOTIFY; [] = default (FAILURE, DELAY)
    orcpt: str | None = None
    status: str = PENDING  # pending | sent | failed
    diag: str = ""  # last reply or error ("451 4.3.0 ...")
    remote: str = ""  # remote MTA that answered
    dsn_sent: bool = False  # a DSN for this recipient's final status went out

    def wants(self, what: str) -> bool:
        """RFC 3461 §4.1: does the sender want a DSN of kind SUCCESS/FAILURE/DELAY?"""
        if not self.notify:
            return what in ("FAILURE", "DELAY")
        return what in self.notify


@dataclass
class Envelope:
    id: str
    sender: str
    rcpts: list[QRcpt]
    created: float = field(default_factory=time.time)
    envid: str | None = None
    ret: str | None = None
    smtputf8: bool = False
    body: str = "7BIT"
    attempts: int = 0
    next_attempt: float = 0.0
    held: bool = False
    delay_notified: bool = False
    is_bounce: bool = False  # a DSN we generated (never bounces itself)

    def pending(self) -> list[QRcpt]:
        return [r for r in self.rcpts if r.status == PENDING]

    def flushable(self, now: float) -> bool:
        """A flush attempts it now: it was tried before, or it is due; a delayed send (JMAP sendAt, never
        attempted, due later) keeps its time."""
        return bool(self.attempts) or self.next_attempt <= now

    def bound_for(self, domain: str) -> bool:
        """A pending recipient of it is at ``domain`` (lower case; the part after the last ``@``)."""
        return any(r.addr.rpartition("@")[2].lower() == domain for r in self.pending())

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Envelope:
        raw: dict[str, Any] = json.loads(data)
        raw["rcpts"] = [QRcpt(**r) for r in raw["rcpts"]]
        return cls(**raw)


def new_id() -> str:
    """Sortable by creation time, unique across processes."""
    return f"{time.time_ns():016x}{secrets.token_hex(4)}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class QueueDir:
    """Blocking operations on the queue directory (any process)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.msg = root / "msg"
        self.env = root / "env"
        self.tmp = root / "tmp"
        self.done = root / "done"
        for d in (self.msg, self.env, self.tmp, self.done):
            d.mkdir(parents=True, exist_ok=True)
        self.lock_path = root / "lock"
        self.sock_path = root / "runner.sock"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def message_path(self, qid: str) -> Path:
        return self.msg / qid

    # -- writing ---------------------------------------------------------------

    def add(self, env: Envelope, source: Path | bytes) -> None:
        """Commit a new entry: the message (hard link of the spool file, fsync'd here, or bytes), then the envelope."""
        dst = self.msg / env.id
        if isinstance(source, Path):
            try:
                os.link(source, dst)
                fd = os.open(dst, os.O_RDONLY)  # the spool file was not fsync'd by its writer
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError:  # another file system: copy
                with open(source, "rb") as src, open(dst, "wb") as out:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
        else:
            with open(dst, "wb") as out:
                out.write(source)
                out.flush()
                os.fsync(out.fileno())
        _fsync_dir(self.msg)
        with self.locked():
            self._write_env(env)

    def _write_env(self, env: Envelope) -> None:
        """Caller holds :meth:`locked`."""
        tmp = self.tmp / f"{env.id}.{os.getpid()}.json"
        with open(tmp, "wb") as out:
            out.write(env.to_json())
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.env / f"{env.id}.json")
        _fsync_dir(self.env)

    def save(self, env: Envelope) -> bool:
        """Rewrite an existing envelope, keeping ``held`` as it is on disk (the CLI owns it).

        Returns False when the entry was deleted meanwhile (nothing written).
        """
        with self.locked():
            try:
                current = self.load(env.id)
            except FileNotFoundError:
                return False
            env.held = current.held
            self._write_env(env)
            return True

    def update(self, qid: str, **changes: Any) -> Envelope:
        """Set fields of an envelope under the lock (CLI: hold, release, flush). FileNotFoundError if gone."""
        with self.locked():
            env = self.load(qid)
            for k, v in changes.items():
                setattr(env, k, v)
            self._write_env(env)
            return env

    def remove(self, qid: str, only_if: Callable[[Envelope], bool] | None = None) -> bool:
        """Delete an entry: the envelope first (uncommits it), then the message. With ``only_if``,
        only when it holds for the envelope as it is on disk (checked under the lock)."""
        with self.locked():
            try:
                if only_if is not None and not only_if(self.load(qid)):
                    return False
                os.unlink(self.env / f"{qid}.json")
            except FileNotFoundError:
                return False
            _fsync_dir(self.env)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.msg / qid)
        return True

    def record_outcome(self, env: Envelope, expired: frozenset[str] = frozenset()) -> None:
        """Write ``done/<id>.json`` (durable): per recipient its final status (sent, failed, or
        ``expired`` for the addresses in ``expired``), the last reply and the remote host. The queue
        owner calls this before removing a completed entry."""
        rcpts = [{"addr": r.addr, "status": EXPIRED if r.addr in expired and r.status == FAILED else r.status,
                  "reply": r.diag, "remote": r.remote} for r in env.rcpts]
        data = json.dumps({"id": env.id, "finished": time.time(), "rcpts": rcpts},
                          ensure_ascii=False, separators=(",", ":")).encode()
        tmp = self.tmp / f"{env.id}.{os.getpid()}.done"
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.done / f"{env.id}.json")
        _fsync_dir(self.done)

    def prune_outcomes(self, keep: float, now: float | None = None) -> int:
        """Remove outcome records older than ``keep`` seconds; returns how many."""
        cutoff = (time.time() if now is None else now) - keep
        removed = 0
        for p in self.done.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if p.stat().st_mtime < cutoff:
                    p.unlink()
                    removed += 1
        return removed

    def outcome(self, qid: str) -> dict[str, tuple[str, str]] | None:
        """Where each recipient of entry ``qid`` stands: addr -> (status, last reply), status one of
        pending / sent / failed / expired. From the live envelope while the entry is queued, from its
        outcome record once done; None when neither exists (never queued, cancelled, or pruned).
        Any process may call it (no lock: both files are only ever replaced whole)."""
        if not qid.isalnum():
            return None
        # The runner writes done/ before it removes env/, and does not rewrite env/ in between: look
        # at done/ first (an env/ still there may be the last attempt but one), then env/, then done/
        # again (written and env/ removed between our two looks).
        done = self.done / f"{qid}.json"
        for path in (done, self.env / f"{qid}.json", done):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            with contextlib.suppress(ValueError, KeyError, TypeError):
                if path is done:
                    return {r["addr"]: (r["status"], r["reply"]) for r in json.loads(data)["rcpts"]}
                return {r.addr: (r.status, r.diag) for r in Envelope.from_json(data).rcpts}
        return None

    def rewrite_orcpts(self, fn: Callable[[str, str, str | None], str | None], before: float) -> int:
        """For each pending recipient of the entries created before ``before``, ``fn(sender, address,
        orcpt)`` gives a new ORCPT, or None to keep it; the envelopes that changed are rewritten (under
        the lock, durably). Returns the recipients changed. (docs/archive.md: markers from before the MAC.)"""
        changed = 0
        with self.locked():
            for qid in self.ids():
                try:
                    env = self.load(qid)
                except (FileNotFoundError, ValueError):
                    continue
                if env.created >= before:
                    continue
                n = 0
                for r in env.pending():
                    new = fn(env.sender, r.addr, r.orcpt)
                    if new is not None and new != r.orcpt:
                        r.orcpt = new
                        n += 1
                if n:
                    self._write_env(env)
                    changed += n
        return changed

    # -- reading ---------------------------------------------------------------

    def load(self, qid: str) -> Envelope:
        return Envelope.from_json((self.env / f"{qid}.json").read_bytes())

    def ids(self) -> list[str]:
        return sorted(p.name[:-5] for p in self.env.iterdir() if p.name.endswith(".json"))

    def all(self) -> list[Envelope]:
        out = []
        for qid in self.ids():
            with contextlib.suppress(FileNotFoundError, ValueError):
                out.append(self.load(qid))
        return out

    def clean_orphans(self, older_than: float = 3600.0) -> int:
        """Remove message files without an envelope (a crash between the two writes) and stale temps."""
        cutoff = time.time() - older_than
        known = set(self.ids())
        removed = 0
        for d, is_orphan in ((self.msg, lambda n: n not in known), (self.tmp, lambda n: True)):
            for p in d.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if is_orphan(p.name) and p.stat().st_mtime < cutoff:
                        p.unlink()
                        removed += 1
        return removed

    # -- waking the runner -----------------------------------------------------

    def poke(self, what: bytes = b"wake") -> bool:
        """Best-effort hint to the runner (it also rescans periodically). False if not running."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            s.setblocking(False)
            s.sendto(what, str(self.sock_path))
            return True
        except OSError:
            return False
        finally:
            s.close()


def queue_dir(data_dir: Path) -> QueueDir:
    return QueueDir(data_dir / "queue")
