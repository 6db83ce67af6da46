"""The delivery journal: a write-ahead log that makes a group-commit delivery durable with one
``fdatasync`` of an overwrite, its maildir links made durable later in bulk (checkpoints), and the
replay that rebuilds the links a crash did not keep (docs/store-api.md, "Durability").

Invariants (every function below keeps them):

* A delivery is acknowledged only after an fdatasync of its record that began after the append
  (fsio.FsSyncer, key ``JOURNAL``). Its links may be made after that (``append(deferred=True)``:
  the store's round links after its sync); :meth:`Journal.linked` says when they are.
* A file is written only where it was written before (zero-filled at creation): an fdatasync then
  writes data blocks, no metadata (the size never changes).
* Every record carries its file's generation; a file is restarted (generation + 1, header made
  durable) only after a ``syncfs`` that began after its last append made every link it records
  durable (a checkpoint), and only once every deferred record of it is :meth:`Journal.linked` (a
  checkpoint waits for them; a record whose links failed breaks the journal: its files stay for
  replay). Records of an older generation, and everything after the first record
  that does not check, are never replayed (a torn last write was never acknowledged).
* A file is owned by the process holding its ``flock`` (a CLOEXEC descriptor, released at that
  process's death): replay takes only files whose lock is free.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sqlite3
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

from mailsrv import log
from mailsrv.store import maildir as md
from mailsrv.util import fsio

logger = log.get("store")

#: the journal directory under ``server.data_dir``
DIR_NAME = "journal"
#: a journal file's name ends so (``<unique name>.<0|1>.mj``)
SUFFIX = ".mj"
#: a file being made has its final name and this after it (replay never reads it; it removes one
#: left by a process that died while making it, once its lock is free and it is STALE seconds old)
TEMP = "-new"
STALE = 60.0
#: file header: magic, generation (one 4 KiB block: its rewrite is one block's overwrite)
FILE_MAGIC = b"MSJRNL01"
_FILE_HEAD = struct.Struct("<8sQ")
HEADER = 4096
#: record header: magic, crc32 of everything after it, generation, sequence in the file, length
REC_MAGIC = 0x4A52534D
_REC_HEAD = struct.Struct("<IIQQI")
#: record payload: internal date (mtime), number of targets; then per target four strings
#: (account root, folder, file name in new/, key), each u16-length prefixed; then the message
_PAYLOAD_HEAD = struct.Struct("<dI")
_LEN = struct.Struct("<H")
#: a journal file's size by default (``[store] journal_size_mib``), and the part of it filled before
#: a checkpoint is started at once (instead of after ``journal_interval``)
SIZE = 8 << 20
URGENT = 0.5
#: messages larger than this stay on the syncfs path (``[store] journal_max_message``): the journal
#: writes their bytes a second time
MAX_MESSAGE = 64 << 10
#: seconds a checkpoint waits at most for the links of the deferred records of the file it retires
#: (made by their round's thread right after its sync: microseconds); past it the journal is broken
#: (its files stay for replay) rather than restarted over records whose links may not exist
LINKS_WAIT = 60.0

#: a delivery target as a record holds it: (account root, folder, name in new/, key)
Target = tuple[str, str, str, str]


def meta(targets: list[Target], mtime: float) -> bytearray:
    """The part of a record's payload before the message."""
    out = bytearray(_PAYLOAD_HEAD.pack(mtime, len(targets)))
    for t in targets:
        for s in t:
            b = os.fsencode(s)
            out += _LEN.pack(len(b))
            out += b
    return out


def encode(targets: list[Target], message: bytes | memoryview, mtime: float) -> bytearray:
    """A record's payload (no header): :func:`meta` and the message."""
    out = meta(targets, mtime)
    out += message
    return out


def decode(payload: bytes | memoryview) -> tuple[list[Target], memoryview, float]:
    """(targets, message, mtime) of a payload; raises ValueError (struct.error) when malformed."""
    view = memoryview(payload)
    mtime, n = _PAYLOAD_HEAD.unpack_from(view, 0)
    pos = _PAYLOAD_HEAD.size
    targets: list[Target] = []
    for _ in range(n):
        parts: list[str] = []
        for _ in range(4):
            (ln,) = _LEN.unpack_from(view, pos)
            pos += _LEN.size
            if pos + ln > len(view):
                raise ValueError("target past the record")
            parts.append(os.fsdecode(bytes(view[pos:pos + ln])))
            pos += ln
        targets.append((parts[0], parts[1], parts[2], parts[3]))
    return targets, view[pos:], mtime


def record(gen: int, seq: int, payload: bytes | bytearray) -> bytes:
    """A whole record: header and payload."""
    return b"".join(_record(gen, seq, [payload]))


def _record(gen: int, seq: int, parts: list[bytes | bytearray]) -> list[bytes | bytearray]:
    """A record as buffers (for pwritev: the message is not copied): header, then the payload's parts."""
    tail = struct.pack("<QQI", gen, seq, sum(len(p) for p in parts))
    crc = zlib.crc32(tail)
    for p in parts:
        crc = zlib.crc32(p, crc)
    return [struct.pack("<II", REC_MAGIC, crc) + tail, *parts]


def records(data: bytes | memoryview) -> Iterator[tuple[int, memoryview]]:
    """(sequence, payload) of the valid records of a journal file's content, in order: those of the
    header's generation numbered 0, 1, 2... from the header on; the first that does not check (torn,
    stale, zeros) ends them."""
    view = memoryview(data)
    if len(view) < HEADER:
        return
    magic, gen = _FILE_HEAD.unpack_from(view, 0)
    if magic != FILE_MAGIC:
        return
    pos, seq = HEADER, 0
    while pos + _REC_HEAD.size <= len(view):
        rmagic, crc, rgen, rseq, ln = _REC_HEAD.unpack_from(view, pos)
        end = pos + _REC_HEAD.size + ln
        if rmagic != REC_MAGIC or rgen != gen or rseq != seq or end > len(view):
            return
        if zlib.crc32(view[pos + 8:end]) != crc:
            return
        yield seq, view[pos + _REC_HEAD.size:end]
        pos, seq = end, seq + 1


class _File:
    """One of a journal's two files: its descriptor (flock held), generation, whether it holds
    writes not yet fdatasync'd, and how many of its records' links are not made yet (deferred)."""

    __slots__ = ("path", "fd", "gen", "dirty", "unlinked")

    def __init__(self, path: Path, fd: int, gen: int) -> None:
        self.path = path
        self.fd = fd
        self.gen = gen
        self.dirty = False
        self.unlinked = 0


class Journal:
    """This process's delivery journal: two preallocated files, appends to one of them (the active)
    until a checkpoint switches to the other. Thread-safe; every method blocks (I/O pool).

    ``append`` in a delivery round's job (after its links, or before them: ``deferred``, then
    :meth:`linked` once they are made), ``sync`` in the round's sync (through
    fsio.FsSyncer's gate: one fdatasync for every round waiting), ``checkpoint`` in the background
    (the store's checkpointer), ``close`` at the end. After an error the journal is ``broken``:
    it takes no more records (deliveries fall back to syncfs) and its files stay for the replay
    at the next start.
    """

    def __init__(self, directory: Path, size: int = SIZE) -> None:
        self.directory = Path(directory)
        self.size = max(size, 4 * HEADER)
        self._lock = threading.Lock()
        self._linked = threading.Condition(self._lock)  # a deferred record's links made (checkpoint)
        self._sync_lock = threading.Lock()  # one sync() at a time (held across its fdatasync)
        self._files: list[_File] = []
        self._active = 0
        self._pos = HEADER
        self._seq = 0
        #: directories on the file systems of the links the active file records (a checkpoint syncs them)
        self._fs_paths: set[str] = set()
        self.broken: OSError | None = None
        self._closed = False  # close() began: no more records
        #: records appended, checkpoints made, fdatasyncs (tests, the bench)
        self.appended = 0
        self.checkpoints = 0
        self.syncs = 0

    # --- files ----------------------------------------------------------------

    def create(self) -> None:
        """Make this process's two files: each under a name replay ignores (``<name>.mj`` + TEMP),
        flock'ed, zero-filled to ``size`` (written once, so that later overwrites need no metadata),
        header of generation 1, fsync'd, and only then renamed to its ``.mj`` name (directory
        fsync'd): a replay never sees a file of a live process before its lock is held (it would
        find no header, remove it, and this process would append to a file no replay can find).
        Raises OSError (nothing is left behind)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        base = fsio.unique_name()
        zeros = bytes(1 << 20)
        try:
            for i in (0, 1):
                path = self.directory / f"{base}.{i}{SUFFIX}"
                tmp = path.with_name(path.name + TEMP)
                fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                self._files.append(_File(tmp, fd, 1))
                # blocking: a replay looking at a stale TEMP file holds the lock a few us at most
                fcntl.flock(fd, fcntl.LOCK_EX)
                for off in range(0, self.size, len(zeros)):
                    os.pwrite(fd, zeros[:self.size - off], off)
                os.pwrite(fd, _FILE_HEAD.pack(FILE_MAGIC, 1), 0)
                os.fsync(fd)
                os.rename(tmp, path)
                self._files[-1].path = path
            fsio.fsync_dir(self.directory)
        except BaseException:  # (_remove unlinks a file under its name of the moment)
            self._remove()
            raise

    def _remove(self) -> None:
        for f in self._files:
            with contextlib.suppress(OSError):
                os.unlink(f.path)
            with contextlib.suppress(OSError):
                os.close(f.fd)
        self._files.clear()

    @property
    def ready(self) -> bool:
        """Takes records: made, not broken."""
        return bool(self._files) and self.broken is None

    @property
    def pending(self) -> bool:
        """The active file holds records not yet checkpointed."""
        return self._seq > 0

    @property
    def urgent(self) -> bool:
        """The active file is past URGENT of its size: checkpoint now."""
        return self._pos > self.size * URGENT

    # --- writing --------------------------------------------------------------

    def append(self, payload: bytes | bytearray, fs_path: str, message: bytes = b"",
               deferred: bool = False) -> _File | bool:
        """Write one record, its payload ``payload`` then ``message`` (not synced: :meth:`sync` does).
        ``fs_path``: a directory on the file system of the links it records (the next checkpoint syncs
        it). False when the journal takes no record now (full until the next checkpoint, broken,
        closed): the caller syncs its links otherwise. Raises OSError (the journal is then broken).
        ``deferred``: the record's links are not made yet: the caller must call :meth:`linked` with
        the true value returned (its file), once, whatever happens, and the file is not restarted
        before (a checkpoint waits)."""
        parts = [payload, message] if message else [payload]
        size = _REC_HEAD.size + len(payload) + len(message)
        with self._lock:
            if not self.ready or self._closed:
                return False
            f = self._files[self._active]
            if self._pos + size > self.size:
                return False
            try:
                n = os.pwritev(f.fd, _record(f.gen, self._seq, parts), self._pos)
                if n != size:  # (a regular file: short only on error, e.g. ENOSPC for a hole)
                    raise OSError(errno.EIO, f"short journal write: {n} of {size} bytes")
            except OSError as exc:
                self.broken = exc
                raise
            f.dirty = True
            if deferred:
                f.unlinked += 1
            self._pos += size
            self._seq += 1
            self._fs_paths.add(fs_path)
            self.appended += 1
            return f if deferred else True

    def linked(self, token: object, error: BaseException | None = None) -> None:
        """The links of a deferred record (``token``: :meth:`append`'s value) are made, or ``error``
        says they are not (the journal is then broken: no checkpoint restarts its file, which stays
        for the replay at the next start). Never blocks on I/O (a round's thread, after its sync)."""
        assert isinstance(token, _File)
        with self._lock:
            token.unlinked -= 1
            if error is not None and self.broken is None:
                self.broken = OSError(getattr(error, "errno", None) or errno.EIO,
                                      f"links of an acknowledged record not made: {error}")
            self._linked.notify_all()

    def sync(self) -> None:
        """fdatasync every file written since its last one (every record appended before the call
        is then durable). Raises OSError (the journal is then broken: the records of those writes
        may or may not be on disk, and this descriptor would not report the error again).

        Calls run one at a time (``_sync_lock``; fsio's sync gate serializes them already): a call
        that finds nothing dirty because a running call took its file returns only once that
        call's fdatasync, which covers its records, is over (or raises its error)."""
        with self._sync_lock:
            with self._lock:
                todo = [f for f in self._files if f.dirty]
                for f in todo:
                    f.dirty = False
                if self.broken is not None:
                    raise OSError(self.broken.errno or errno.EIO, f"journal unusable: {self.broken}")
            for f in todo:
                try:
                    os.fdatasync(f.fd)
                except OSError as exc:
                    self.broken = exc
                    raise
            self.syncs += len(todo)

    def checkpoint(self) -> bool:
        """Make the active file's records done: switch appends to the other file, wait until every
        deferred record of the old one is :meth:`linked` (LINKS_WAIT at most), syncfs the file
        systems of their links (a syncfs that began after every one of them), then restart the old
        file (generation + 1, durable). False when there was nothing to do. Raises OSError (the
        journal is then broken; its records stay for replay), also when a record's links failed.
        Blocking: a pool thread, never a delivery round's (their ``linked`` calls end the wait)."""
        with self._lock:
            if not self.ready or not self._seq:
                return False
            old = self._files[self._active]
            self._active ^= 1
            self._pos, self._seq = HEADER, 0
            paths, self._fs_paths = list(self._fs_paths), set()
            if not self._linked.wait_for(lambda: not old.unlinked or self.broken is not None, LINKS_WAIT):
                self.broken = OSError(errno.ETIMEDOUT, f"{old.unlinked} journal records still unlinked")
            if self.broken is not None:  # a record's links failed: the file stays for replay
                logger.error("journal.checkpoint_refused", file=str(old.path), error=str(self.broken))
                raise OSError(self.broken.errno or errno.EIO, f"journal unusable: {self.broken}")
        try:
            errors, _ = fsio._syncfs_paths(paths)
            for err in errors:
                if err is not None:
                    raise err
            self._restart(old)
        except OSError as exc:
            self.broken = exc
            raise
        self.checkpoints += 1
        return True

    def _restart(self, f: _File) -> None:
        """Start ``f`` over: its header with the next generation, durable (its old records never replay)."""
        gen = f.gen + 1
        os.pwrite(f.fd, _FILE_HEAD.pack(FILE_MAGIC, gen), 0)
        os.fdatasync(f.fd)
        f.gen = gen

    def close(self) -> None:
        """A last checkpoint, then the files are removed (broken: they stay, closed, for replay).
        Raises OSError (the files then stay)."""
        if not self._files:
            return
        with self._lock:
            self._closed = True  # a round still running (close timed out) syncs its links otherwise
        try:
            if self.broken is None:
                self.checkpoint()
        finally:
            with self._lock:
                files, self._files = self._files, []
            if self.broken is None:
                for f in files:
                    os.unlink(f.path)
                fsio.fsync_dir(self.directory)
            for f in files:
                os.close(f.fd)


# --- replay -------------------------------------------------------------------


class _Index:
    """Read access to one account's mailbox index for replay (None when it has none yet)."""

    def __init__(self, root: str) -> None:
        from mailsrv.store.engine import INDEX_NAME

        self.conn: sqlite3.Connection | None = None
        path = os.path.join(root, INDEX_NAME)
        if os.path.exists(path):
            self.conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
        self._mailboxes: dict[str, int | None] = {}

    def mailbox(self, root: str, folder: str) -> int | None:
        rel = os.path.relpath(folder, root)
        rel = "" if rel == "." else rel
        if rel not in self._mailboxes:
            row = None
            if self.conn is not None:
                row = self.conn.execute("SELECT id FROM mailboxes WHERE dir=?", (rel,)).fetchone()
            self._mailboxes[rel] = row[0] if row else None
        return self._mailboxes[rel]

    def indexed(self, mid: int, key: str) -> str | None:
        """The file name the index gives ``key`` in that mailbox, or None."""
        assert self.conn is not None
        row = self.conn.execute("SELECT fname FROM messages WHERE mailbox=? AND key=?", (mid, key)).fetchone()
        return str(row[0]) if row else None

    def gone(self, mid: int, key: str) -> bool:
        """Was ``key`` removed from that mailbox (expunged, moved out) after it was indexed?"""
        assert self.conn is not None
        try:
            return self.conn.execute("SELECT 1 FROM gone WHERE mailbox=? AND key=?", (mid, key)).fetchone() is not None
        except sqlite3.OperationalError as exc:  # an index of a mailsrv before the table: it made no record
            if "no such table" in str(exc):
                return False
            raise

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


class _Replay:
    """One replay's state: the indexes and ``cur/`` listings it opened, what it restored."""

    def __init__(self) -> None:
        self.indexes: dict[str, _Index] = {}
        #: folder -> {key: name in cur/}
        self.cur: dict[str, dict[str, str]] = {}
        self.restored = 0
        #: folders of every target looked at: the replay's syncfs makes their files durable before the
        #: journal goes (a file found in new/ after a process's death may be in the page cache only)
        self.fs_paths: set[str] = set()

    def index(self, root: str) -> _Index:
        idx = self.indexes.get(root)
        if idx is None:
            idx = self.indexes[root] = _Index(root)
        return idx

    def in_cur(self, folder: str, key: str, fresh: bool = False) -> str | None:
        """The name of ``key``'s file in ``folder/cur`` (listed once per replay; ``fresh``: listed
        again), or None."""
        names = self.cur.get(folder)
        if names is None or fresh:
            try:
                names = {md.split_filename(n)[0]: n for n in os.listdir(f"{folder}/cur")}
            except FileNotFoundError:
                names = {}
            self.cur[folder] = names
        return names.get(key)

    def target(self, t: Target, message: memoryview, mtime: float) -> None:
        """Restore one target's file unless it is there with the record's bytes, was taken, or was
        removed since. A file found with other bytes (a power cut kept its name and size, or its
        name, but not its data blocks: links are made durable by the checkpoint's syncfs, not by
        the 250) is written again."""
        root, folder, name, key = t
        if os.path.lexists(f"{folder}/new/{name}"):
            self._keep(folder, "new", name, message, mtime)
            return
        if not os.path.isdir(f"{folder}/new"):  # the mailbox was deleted (or renamed) since
            return
        idx = self.index(root)
        try:
            mid = idx.mailbox(root, folder) if idx.conn is not None else None
            fname = idx.indexed(mid, key) if mid is not None else None
            gone = mid is not None and fname is None and idx.gone(mid, key)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "no such table" not in str(exc):
                raise  # locked, I/O error: the journal stays for the next replay
            # corrupt (the account's next open rebuilds it from the maildir), or not made yet: as if
            # there were none (a copy expunged since may come back; one lost would not)
            logger.error("journal.index_unusable", root=root, error=str(exc))
            idx.close()
            idx.conn = None
            mid = fname = None
            gone = False
        if fname is not None:  # taken into cur/ by a reader: its file must be there
            self._keep(folder, "cur", self.in_cur(folder, key) or fname, message, mtime)
            return
        if gone:  # taken, then expunged or moved out: not resurrected
            return
        if (have := self.in_cur(folder, key) or self.in_cur(folder, key, fresh=True)) is not None:
            # taken into cur/, its index commit lost: the next sync indexes it (fresh: a reader of a
            # live worker may have taken it since the listing)
            self._keep(folder, "cur", have, message, mtime)
            return
        self._write(folder, "new", name, message, mtime)

    def _keep(self, folder: str, sub: str, name: str, message: memoryview, mtime: float) -> None:
        """Blocking: ``folder/sub/name`` written again unless it holds ``message`` (missing, short,
        zeros...). Reads at most the message's size (journal_max_message) plus one byte."""
        path = f"{folder}/{sub}/{name}"
        self.fs_paths.add(folder)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:  # moved meanwhile by a reader of a live worker (new/ -> cur/, flags)
            if sub == "new":
                return
            other = self.in_cur(folder, md.split_filename(name)[0], fresh=True)
            if other is not None and other != name:
                self._keep(folder, sub, other, message, mtime)
                return
            fd = -1
        if fd >= 0:
            try:
                with open(fd, "rb", closefd=True) as fh:
                    if fh.read(len(message) + 1) == message:
                        return
            except OSError as exc:  # unreadable (EIO of a lost block): written again
                logger.warning("journal.unreadable", file=path, error=str(exc))
        self._write(folder, sub, name, message, mtime)

    def _write(self, folder: str, sub: str, name: str, message: memoryview, mtime: float) -> None:
        """Blocking: the file back into ``folder/sub/name`` through ``tmp/`` (made durable by the
        replay's syncfs)."""
        tmp = f"{folder}/tmp/{name}.replay"
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, 0o600)
        except FileNotFoundError:  # tmp/ lost (new/ is there): made again (the replay's syncfs keeps it)
            os.makedirs(f"{folder}/tmp", 0o700, exist_ok=True)
            fd = os.open(tmp, flags, 0o600)
        try:
            view = message
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.utime(tmp, (mtime, mtime))
        os.rename(tmp, f"{folder}/{sub}/{name}")
        self.restored += 1
        self.fs_paths.add(folder)
        logger.warning("journal.restored", file=f"{folder}/{sub}/{name}")

    def close(self) -> None:
        for idx in self.indexes.values():
            idx.close()


def _drop_stale(path: Path) -> None:
    """Blocking: remove a file being made (TEMP) whose maker died: its lock is free and it is
    older than STALE (a maker holds the lock a few us after it creates the file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        st = os.fstat(fd)
        if st.st_nlink and time.time() - st.st_mtime > STALE:
            os.unlink(path)
            logger.info("journal.stale_removed", file=str(path))
    except (BlockingIOError, FileNotFoundError):  # its maker lives, or another replay removed it
        pass
    finally:
        os.close(fd)


def replay(directory: Path | str) -> int:
    """Blocking: replay every journal file in ``directory`` whose owner is gone (its flock is free),
    then remove it; the files restored (every one durable on return). Files of a live owner are left;
    files being made (TEMP) are never read (one left by a dead maker is removed once STALE).
    Idempotent: a record replayed twice restores its files once. A target that fails (OSError) does
    not stop the others: they are restored and made durable, then its error is raised and the files
    stay. Raises OSError (what was not replayed stays for the next call)."""
    directory = Path(directory)
    try:
        listing = os.listdir(directory)
    except FileNotFoundError:
        return 0
    for n in listing:
        if n.endswith(SUFFIX + TEMP):
            _drop_stale(directory / n)
    names = sorted(n for n in listing if n.endswith(SUFFIX))
    taken: list[tuple[Path, int]] = []
    state = _Replay()
    failed: OSError | None = None
    try:
        for n in names:
            path = directory / n
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:  # replayed by another process meanwhile
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # its owner lives
                os.close(fd)
                continue
            taken.append((path, fd))
            if os.fstat(fd).st_nlink == 0:  # removed by another replay between our open and lock
                continue
            with open(path, "rb") as fh:
                data = fh.read()
            for _, payload in records(data):
                try:
                    targets, message, mtime = decode(payload)
                except (ValueError, struct.error):
                    logger.error("journal.bad_record", file=str(path))
                    break
                for t in targets:
                    try:
                        state.target(t, message, mtime)
                    except OSError as exc:  # the other targets go on; the journal stays for this one
                        failed = failed or exc
                        logger.error("journal.target_failed", folder=t[1], name=t[2], error=str(exc))
        if state.fs_paths:
            errors, _ = fsio._syncfs_paths(list(state.fs_paths))
            for err in errors:
                if err is not None and not isinstance(err, FileNotFoundError):  # (a mailbox deleted since)
                    raise err
        if failed is not None:  # what was restored is durable; the files stay for the next replay
            raise failed
        for path, _ in taken:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        if taken:
            fsio.fsync_dir(directory)
    finally:
        state.close()
        for _, fd in taken:
            os.close(fd)
    if taken:
        logger.info("journal.replayed", files=len(taken), restored=state.restored)
    return state.restored


def journal_dir(data_dir: Path | str) -> Path:
    """Where the journals of a data directory are."""
    return Path(data_dir) / DIR_NAME


__all__ = ["Journal", "replay", "journal_dir", "meta", "encode", "decode", "record", "records", "MAX_MESSAGE", "SIZE"]
