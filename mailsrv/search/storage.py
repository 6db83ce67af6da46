"""On-disk files of one mailbox's search index: snapshot, journal, text cache, lock.

Files in ``directory`` for mailbox id ``M``:

* ``M.snap``  snapshot: postings, columns, text locations; generation ``G``.
  Written temp -> fsync -> rename -> fsync directory; checked by a CRC.
* ``M.log``   journal of records appended since snapshot ``G`` (its header
  names ``G``); each record ``<u32 length><u32 crc32><json>``. A torn or
  corrupt tail is cut off by the next writer. A journal whose generation is
  not the snapshot's is stale (already folded into the snapshot) and ignored.
* ``M.<n>.text``  append-only normalised text of every indexed message (used
  to confirm candidates); records are located by (offset, length) in the
  snapshot or journal, so a torn tail is simply unreferenced. The snapshot
  names its text file; when expunged records make up more than half of it,
  the next snapshot copies the live records into a new one.
* ``M.lock``  ``flock`` held exclusively by the one process appending or
  writing a snapshot; readers take it shared while they read the journal.

Everything is a cache of the maildir: any file may be deleted or found
corrupt, and the index is then rebuilt from the messages.

All functions here block (file I/O): call them from a worker thread.
"""

from __future__ import annotations

import array
import fcntl
import glob
import itertools
import json
import mmap
import os
import struct
import sys
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pyroaring import BitMap

from mailsrv.search.extract import EXTRACT_VERSION, FIELDS
from mailsrv.search.index import HNAME, IndexCore, TermIndex

__all__ = ["CorruptIndex", "Files", "TextStore", "journal_generation", "load_snapshot", "snapshot_meta",
           "write_all", "write_snapshot"]

SNAP_MAGIC = b"MSRCHS3\n"
LOG_MAGIC = b"MSRCHL1\n"
_U32 = struct.Struct("<I")
_REC = struct.Struct("<II")  # length, crc32
_LOG_HEAD = struct.Struct("<8sQ")  # magic, generation
#: one journal record never exceeds this (a larger length is corruption)
MAX_RECORD = 1 << 24


class CorruptIndex(Exception):
    """A snapshot that cannot be read: the caller rebuilds."""


class Files:
    """Paths of one mailbox's index files."""

    def __init__(self, directory: Path, mailbox_id: str) -> None:
        if not mailbox_id or "/" in mailbox_id or mailbox_id.startswith("."):
            raise ValueError(f"bad mailbox id {mailbox_id!r}")
        self.directory = directory
        self.snap = directory / f"{mailbox_id}.snap"
        self.log = directory / f"{mailbox_id}.log"
        self.mailbox_id = mailbox_id
        self.lock = directory / f"{mailbox_id}.lock"

    def ensure_dir(self) -> None:
        if not self.directory.is_dir():
            self.directory.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.directory.parent)

    @contextmanager
    def locked(self, exclusive: bool) -> Iterator[None]:
        fd = os.open(self.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # releases the lock

    def text_for(self, generation: int) -> Path:
        return self.directory / f"{self.mailbox_id}.{generation}.text"

    def text_files(self) -> list[Path]:
        return sorted(self.directory.glob(f"{glob.escape(self.mailbox_id)}.*.text"))

    def remove_texts(self, keep: Path | None) -> None:
        """Remove the text files other than ``keep`` (other processes' mappings stay valid)."""
        for p in self.text_files():
            if p != keep:
                try:
                    p.unlink()
                except FileNotFoundError:
                    pass

    def remove_all(self) -> None:
        self.remove_texts(None)
        for p in (self.snap, self.log, self.lock):
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    def remove_all_locked(self, wait: bool) -> bool:
        """:meth:`remove_all` holding the exclusive lock (a deleted mailbox: a round after delivery
        in another process checks under it that the mailbox still exists before it makes files).
        ``wait`` False: False, and nothing removed, when another holds the lock now."""
        try:
            fd = os.open(self.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:  # no directory: nothing to remove
            return True
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            self.remove_all()
            return True
        finally:
            os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- text cache -----------------------------------------------------------------

_TEXT_HEAD = struct.Struct("<" + "I" * len(FIELDS))


class TextStore:
    """Append-only file of normalised text records (one per indexed message)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._map: mmap.mmap | None = None

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def buffer(self) -> mmap.mmap | bytes:
        """A read-only mapping of the whole file as it is now (remapped when it grew)."""
        size = os.fstat(self.fd).st_size
        if size == 0:
            return b""
        if self._map is None or len(self._map) < size:
            if self._map is not None:
                self._map.close()
            self._map = mmap.mmap(self.fd, size, access=mmap.ACCESS_READ)
        return self._map

    @staticmethod
    def encode(text: dict[str, str]) -> bytes:
        parts = [text.get(f, "").encode("utf-8") for f in FIELDS]
        return _TEXT_HEAD.pack(*map(len, parts)) + b"".join(parts)

    def append(self, blob: bytes) -> int:
        """Append a record; returns its offset. Caller holds the exclusive lock."""
        off = os.fstat(self.fd).st_size
        os.write(self.fd, blob)
        return off

    def append_many(self, blobs: list[bytes]) -> int:
        """Append records in one write; returns the first one's offset. Caller holds the exclusive lock."""
        off = os.fstat(self.fd).st_size
        write_all(self.fd, b"".join(blobs))
        return off

    def copy_live(self, locs: dict[int, tuple[int, int]], dest: Path) -> dict[int, tuple[int, int]]:
        """Write the records of ``locs`` (in UID order) durably to ``dest``; their new locations."""
        buf = self.buffer()
        new: dict[int, tuple[int, int]] = {}
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            pos = 0
            chunk: list[bytes] = []
            for uid in sorted(locs):
                off, n = locs[uid]
                chunk.append(bytes(buf[off : off + n]))
                new[uid] = (pos, n)
                pos += n
                if len(chunk) >= 1024:
                    write_all(fd, b"".join(chunk))
                    chunk = []
            write_all(fd, b"".join(chunk))
            os.fsync(fd)
        finally:
            os.close(fd)
        return new

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def read(self, offset: int, length: int) -> dict[str, str]:
        data = os.pread(self.fd, length, offset)
        if len(data) != length or length < _TEXT_HEAD.size:
            raise CorruptIndex(f"{self.path}: text record at {offset} truncated")
        lens = _TEXT_HEAD.unpack_from(data)
        if sum(lens) + _TEXT_HEAD.size != length:
            raise CorruptIndex(f"{self.path}: text record at {offset} malformed")
        out: dict[str, str] = {}
        pos = _TEXT_HEAD.size
        for f, n in zip(FIELDS, lens, strict=True):
            out[f] = data[pos : pos + n].decode("utf-8", "replace")
            pos += n
        return out


# --- journal ---------------------------------------------------------------------


#: the journal's JSON: ``json.dumps(obj, separators=(",", ":"), ensure_ascii=False)``, its encoder made
#: once, not per record (json.dumps builds a JSONEncoder and its C encoder at each call: 2.3 of a
#: delivered message's 3.4 us here). Records hold no cycles: no circular check (markers None).
_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_C_JSON = (_c_make_encoder(None, _JSON.default, json.encoder.encode_basestring, None, ":", ",", False, False, True)
           if _c_make_encoder is not None else None)


def encode_record(obj: Any) -> bytes:
    text = "".join(_C_JSON(obj, 0)) if _C_JSON is not None else _JSON.encode(obj)
    payload = text.encode("utf-8")
    return _REC.pack(len(payload), zlib.crc32(payload)) + payload


_STR = getattr(json.encoder, "c_encode_basestring", None) or json.encoder.encode_basestring


def encode_added(uid: int, off: int, length: int, columns: tuple) -> bytes:
    """``encode_record({"a": uid, "o": off, "l": length, "c": columns})``, byte for byte, formatted
    directly for the usual column types (a delivery's record: the C encoder's dict and list walk was
    ~15 k instructions of a message's search round); anything else goes to :func:`encode_record`."""
    date, fa, fd, ta, td, ca, subj, att, day = columns
    if (type(date) is float and date - date == 0.0 or date is None) and (type(day) is int or day is None) \
            and type(att) is bool and type(uid) is int and type(off) is int and type(length) is int:
        # (date - date == 0.0: finite; json writes NaN and Infinity, an f-string nan and inf)
        try:
            text = (f'{{"a":{uid},"o":{off},"l":{length},"c":[{"null" if date is None else date},{_STR(fa)},'
                    f'{_STR(fd)},{_STR(ta)},{_STR(td)},{_STR(ca)},{_STR(subj)},{"true" if att else "false"},'
                    f'{"null" if day is None else day}]}}')
        except TypeError:  # a text column that is no str
            pass
        else:
            payload = text.encode("utf-8")
            return _REC.pack(len(payload), zlib.crc32(payload)) + payload
    return encode_record({"a": uid, "o": off, "l": length, "c": columns})


def log_header(generation: int) -> bytes:
    return _LOG_HEAD.pack(LOG_MAGIC, generation)


def read_log(fd: int, generation: int, pos: int) -> tuple[list[Any], int, bool]:
    """Records from ``pos`` to the first torn/corrupt record or EOF.

    Returns (records, new position, stale): ``stale`` when the journal belongs
    to another generation (then no records are returned).
    """
    head = os.pread(fd, _LOG_HEAD.size, 0)
    if len(head) < _LOG_HEAD.size:
        return [], _LOG_HEAD.size, True
    magic, gen = _LOG_HEAD.unpack(head)
    if magic != LOG_MAGIC or gen != generation:
        return [], _LOG_HEAD.size, True
    pos = max(pos, _LOG_HEAD.size)
    size = os.fstat(fd).st_size
    data = os.pread(fd, size - pos, pos) if size > pos else b""
    out: list[Any] = []
    i = 0
    while i + _REC.size <= len(data):
        n, crc = _REC.unpack_from(data, i)
        if n > MAX_RECORD or i + _REC.size + n > len(data):
            break
        payload = data[i + _REC.size : i + _REC.size + n]
        if zlib.crc32(payload) != crc:
            break
        try:
            out.append(json.loads(payload))
        except ValueError:
            break
        i += _REC.size + n
    return out, pos + i, False


# --- snapshot --------------------------------------------------------------------


def _put_blob(parts: list[bytes], b: bytes) -> None:
    parts.append(_U32.pack(len(b)))
    parts.append(b)


def write_snapshot(
    path: Path, core: IndexCore, locs: dict[int, tuple[int, int]], generation: int, text: str
) -> int:
    """Write ``core`` durably as generation ``generation`` with text file ``text``; returns its size."""
    parts: list[bytes] = [SNAP_MAGIC]
    names = [*FIELDS, HNAME]
    meta = {"gen": generation, "fields": names, "extract": EXTRACT_VERSION, "text": text}
    _put_blob(parts, json.dumps(meta).encode())
    for f in names:
        ti = core.fields[f]
        items = [(t, BitMap([v]) if isinstance(v, int) else v) for t, v in ti.post.items()]
        items = [(t, bm) for t, bm in items if bm]
        _put_blob(parts, "\x00".join(t for t, _ in items).encode("utf-8"))
        parts.append(_U32.pack(len(items)))
        blobs = [bm.serialize() for _, bm in items]
        lengths = array.array("I", [len(b) for b in blobs])
        if sys.byteorder != "little":
            lengths.byteswap()
        parts.append(lengths.tobytes())
        _put_blob(parts, b"".join(blobs))
    for bm in (core.indexed, core.attach, *(core.overflow[f] for f in FIELDS)):
        _put_blob(parts, bm.serialize())
    rows = {str(u): [*core.cols[u], *locs[u]] for u in core.indexed}
    _put_blob(parts, json.dumps(rows, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    body = b"".join(parts)
    blob = body + _U32.pack(zlib.crc32(body))
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        write_all(fd, blob)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return len(blob)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def u32(self) -> int:
        if self.pos + 4 > len(self.data):
            raise CorruptIndex("snapshot truncated")
        (v,) = _U32.unpack_from(self.data, self.pos)
        self.pos += 4
        return int(v)

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise CorruptIndex("snapshot truncated")
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b

    def blob(self) -> bytes:
        n = self.u32()
        if self.pos + n > len(self.data):
            raise CorruptIndex("snapshot truncated")
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b


def snapshot_meta(path: Path) -> tuple[int, str]:
    """(generation, text file name) from the head of a snapshot, without reading the rest.

    Not checked against the CRC: a writer that trusts it only appends records that a full
    load ignores (as stale) if the snapshot turns out corrupt. Raises FileNotFoundError or
    CorruptIndex.
    """
    with open(path, "rb") as fh:
        head = fh.read(len(SNAP_MAGIC) + 4)
        if len(head) < len(SNAP_MAGIC) + 4 or not head.startswith(SNAP_MAGIC):
            raise CorruptIndex(f"{path}: not a search snapshot")
        (n,) = _U32.unpack_from(head, len(SNAP_MAGIC))
        if n > MAX_RECORD:
            raise CorruptIndex(f"{path}: meta too large")
        raw = fh.read(n)
    try:
        meta = json.loads(raw)
        gen, text = int(meta["gen"]), meta["text"]
        ok = meta.get("fields") == [*FIELDS, HNAME] and meta.get("extract") == EXTRACT_VERSION
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptIndex(f"{path}: {exc}") from None
    if not ok:
        raise CorruptIndex(f"{path}: written by another version")
    if not isinstance(text, str) or "/" in text or not text.endswith(".text"):
        raise CorruptIndex(f"{path}: bad text file name")
    return gen, text


def journal_generation(fd: int) -> int | None:
    """The generation a journal's header names (None: no valid header)."""
    head = os.pread(fd, _LOG_HEAD.size, 0)
    if len(head) < _LOG_HEAD.size:
        return None
    magic, gen = _LOG_HEAD.unpack(head)
    return int(gen) if magic == LOG_MAGIC else None


def load_snapshot(path: Path) -> tuple[IndexCore, dict[int, tuple[int, int]], int, str]:
    """(core, text locations, generation, text file name). Raises FileNotFoundError or CorruptIndex."""
    data = path.read_bytes()
    if len(data) < len(SNAP_MAGIC) + 4 or not data.startswith(SNAP_MAGIC):
        raise CorruptIndex(f"{path}: not a search snapshot")
    body, (crc,) = data[:-4], _U32.unpack(data[-4:])
    if zlib.crc32(body) != crc:
        raise CorruptIndex(f"{path}: checksum mismatch")
    r = _Reader(body)
    r.pos = len(SNAP_MAGIC)
    try:
        meta = json.loads(r.blob())
        if meta.get("fields") != [*FIELDS, HNAME] or meta.get("extract") != EXTRACT_VERSION:
            raise CorruptIndex(f"{path}: written by another version")
        core = IndexCore()
        for f in meta["fields"]:
            raw_terms = r.blob().decode("utf-8")
            n = r.u32()
            term_list = raw_terms.split("\x00") if n else []
            if len(term_list) != n:
                raise CorruptIndex(f"{path}: term count mismatch")
            lengths = array.array("I")
            lengths.frombytes(r.take(4 * n))
            if sys.byteorder != "little":
                lengths.byteswap()
            packed = memoryview(r.blob())
            if sum(lengths) != len(packed):
                raise CorruptIndex(f"{path}: posting sizes mismatch")
            offsets = itertools.accumulate(lengths, initial=0)
            deser = BitMap.deserialize
            ti = TermIndex()
            post: dict[str, BitMap | int] = {}
            for t, o, k in zip(term_list, offsets, lengths, strict=False):
                bm = deser(packed[o : o + k])  # type: ignore[arg-type]  # buffer protocol
                post[t] = bm.min() if len(bm) == 1 else bm
            ti.post = post
            ti.vocab = term_list
            ti.grams = None  # built at the first substring query on this field (or by warm())
            core.fields[f] = ti
        core.indexed = BitMap.deserialize(r.blob())
        core.attach = BitMap.deserialize(r.blob())
        for f in FIELDS:
            core.overflow[f] = BitMap.deserialize(r.blob())
        rows = json.loads(r.blob())
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptIndex(f"{path}: {exc}") from None
    locs: dict[int, tuple[int, int]] = {}

    for k, row in rows.items():
        uid = int(k)
        cols = tuple(row[:9])
        core.cols[uid] = cols
        locs[uid] = (int(row[9]), int(row[10]))
        if cols[8] is not None:
            d = int(cols[8])
            day = core.sent_days.get(d)
            if day is None:
                core.sent_days[d] = day = BitMap()
            day.add(uid)
            core.dated.add(uid)
    if set(core.cols) != set(core.indexed):
        raise CorruptIndex(f"{path}: columns and UIDs disagree")
    text = meta.get("text")
    if not isinstance(text, str) or "/" in text or not text.endswith(".text"):
        raise CorruptIndex(f"{path}: bad text file name")
    return core, locs, int(meta["gen"]), text
