"""Index rows <-> values, and the records a write transaction hands back (shared by engine modules)."""

from __future__ import annotations

import itertools
import os
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from mailsrv.store import headers
from mailsrv.store.types import MessageInfo

if TYPE_CHECKING:
    from mailsrv.mime import MessageStructure

_MSG_COLS = "uid, key, flags, modseq, internal_date, saved_date, size, email_id, thread_id"


_FLAGSETS: dict[str, frozenset[str]] = {}


def _flagset(text: str) -> frozenset[str]:
    """Flags text -> frozenset, shared between messages (a mailbox has few distinct flag sets)."""
    fs = _FLAGSETS.get(text)
    if fs is None:
        fs = frozenset(text.split())
        if len(_FLAGSETS) < 4096:
            _FLAGSETS[text] = fs
    return fs


#: MessageInfo's slot setters, in field order: :func:`new_info` sets them directly, as the frozen
#: dataclass's ``__init__`` does through ``object.__setattr__`` (a name look-up per field: 1.6 -> 1.0 us)
_SETTERS = tuple(MessageInfo.__dict__[f.name].__set__ for f in fields(MessageInfo))
_new = object.__new__
(_set_uid, _set_key, _set_flags, _set_modseq, _set_internal, _set_saved, _set_size, _set_email,
 _set_thread) = _SETTERS


def new_info(uid: int, key: str, flags: frozenset[str], modseq: int, internal_date: float, saved_date: float,
             size: int, email_id: str, thread_id: str) -> MessageInfo:
    """``MessageInfo(...)`` of these fields, made faster (one per indexed message and per row read)."""
    info = _new(MessageInfo)
    _set_uid(info, uid)
    _set_key(info, key)
    _set_flags(info, flags)
    _set_modseq(info, modseq)
    _set_internal(info, internal_date)
    _set_saved(info, saved_date)
    _set_size(info, size)
    _set_email(info, email_id)
    _set_thread(info, thread_id)
    return info


def _info(row: Sequence[Any]) -> MessageInfo:
    return new_info(row[0], row[1], _flagset(row[2]), row[3], row[4], row[5], row[6], row[7], row[8])


def _flags_text(flags: frozenset[str] | set[str]) -> str:
    return " ".join(sorted(flags)) if flags else ""  # (no flags: how a delivery's file is named)


#: ids are this process's random 64 bits and a counter (32 bits): unique across processes and restarts
#: without a getrandom(2) per id (two per delivered message: its email and thread ids)
_ID_LIMIT = 1 << 32
_id_lock = threading.Lock()
_id_prefix = secrets.token_hex(8)
_id_counter = itertools.count()


def _new_id_prefix() -> None:
    global _id_prefix, _id_counter
    _id_prefix = secrets.token_hex(8)
    _id_counter = itertools.count()


os.register_at_fork(after_in_child=_new_id_prefix)


def new_id(prefix: str) -> str:
    """``prefix`` + 24 hex digits, unique (not secret: ids grant nothing, every access is checked)."""
    n = next(_id_counter)
    if n >= _ID_LIMIT:
        with _id_lock:
            if next(_id_counter) >= _ID_LIMIT:
                _new_id_prefix()
        return new_id(prefix)
    return f"{prefix}{_id_prefix}{n:08x}"


@dataclass
class Pending:
    """What this process knows about a file it just put into ``new/``."""

    email_id: str | None = None
    structure: bytes | None = None
    thread: headers.ThreadHeaders | None = None
    #: the whole file's bytes when the delivery held them (small messages): handed to observers
    #: (search indexing after delivery) so that nobody reads the file back
    raw: bytes | None = None
    #: linked into ``new/`` but not yet durable (its delivery's fsync or syncfs is to come): this
    #: process's syncs leave the file alone, so that a failed sync can take it back unseen
    unsynced: bool = False
    #: the parse ``structure`` was made from (its observers take it instead of parsing again)
    parsed: MessageStructure | None = None
    #: what gives ``raw``'s bytes back to the process's budget when this Pending is collected (store.py)
    held: object = None
    #: the parse ``structure``, ``thread`` and ``parsed`` come from when they are None: a group delivery
    #: answers before its parse, made by whoever indexes one of its copies first (shared by its targets)
    late: LateParse | None = None


ParseOut = tuple[bytes | None, headers.ThreadHeaders, "MessageStructure | None"]


class LateParse:
    """One delivery's parse for the index (``engine.parse_for_index``), made once for all its copies
    by the first sync that indexes one of them (any thread; the others wait for it and take its result)."""

    __slots__ = ("_fn", "_lock", "_out")

    def __init__(self, fn: Callable[[bytes], ParseOut]) -> None:
        self._fn = fn
        self._lock = threading.Lock()
        self._out: ParseOut | None = None

    def get(self, read: Callable[[], bytes]) -> ParseOut:
        """The parse of the message's bytes (its first ``max_parse_size``), which ``read`` gives; blocking."""
        out = self._out
        if out is None:
            with self._lock:
                out = self._out
                if out is None:
                    out = self._out = self._fn(read())
        return out


@dataclass
class Added:
    mailbox_guid: str
    info: MessageInfo
    structure: bytes | None
    raw: bytes | None = None  # Pending.raw: the file's bytes, when the delivery held them
    parsed: MessageStructure | None = None  # Pending.parsed: ``structure`` not yet turned into a blob


@dataclass
class SyncResult:
    """What a write transaction did, for observers and notification."""

    added: list[Added]
    expunged: dict[str, list[int]]
    flags: dict[str, list[MessageInfo]]
    changed: bool = False


def _empty() -> SyncResult:
    return SyncResult([], {}, {})
