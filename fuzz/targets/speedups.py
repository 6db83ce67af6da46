"""Differential targets: each ``_speedups`` compiled module against its pure-Python twin, the
specification (STYLE.md §5). Same input, same result or the same exception type.

Under ``MAILSRV_NO_SPEEDUPS=1`` (or without the compiled modules) a target compares the twin with
itself: it still checks that the twin never raises outside its contract.
"""

from __future__ import annotations

import importlib
import struct
from collections.abc import Callable
from types import ModuleType
from typing import Any

from fuzz.harness import Mismatch, Target, corpus_messages, split
from mailsrv._speedups import speedups_disabled

# The twin and, when compiled modules are in use, the compiled one (the guard tests catch a
# compiled module that should have loaded and did not).
_TWINS = {
    "mime": "mailsrv._speedups.mime_py",
    "linestuff": "mailsrv._speedups.linestuff_py",
    "tokenize": "mailsrv._speedups.tokenize_py",
    "search": "mailsrv._speedups.search_py",
    "quota": "mailsrv._speedups.quota_py",
    "flaglines": "mailsrv.imap.flaglines_py",
}


def _load_pairs() -> dict[str, tuple[ModuleType, ModuleType]]:
    """Imported when this module is (so inside atheris' instrumentation: the twins report coverage)."""
    out = {}
    for name, twin_path in _TWINS.items():
        twin = importlib.import_module(twin_path)
        if speedups_disabled():
            out[name] = (twin, twin)
        else:
            out[name] = (twin, importlib.import_module(f"mailsrv._speedups.{name}_c"))
    return out


_PAIRS = _load_pairs()


def _outcome(fn: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(*args)
    except Exception as exc:  # the compared outcome: the type, not the message
        return "raised", type(exc).__name__


def same(name: str, fname: str, *args: Any, allowed: tuple[type[BaseException], ...] = ()) -> Any:
    """Call ``fname`` of both implementations of ``name``; raise Mismatch when they differ, or
    re-raise an exception of the twin that is not one of ``allowed``."""
    twin, comp = _PAIRS[name]
    ref = _outcome(getattr(twin, fname), *args)
    got = _outcome(getattr(comp, fname), *args)
    if ref != got:
        raise Mismatch(f"{name}.{fname}{args!r:.200}: compiled {got!r:.300} != twin {ref!r:.300}")
    if ref[0] == "raised":
        try:
            getattr(twin, fname)(*args)
        except allowed:
            return None
    return ref[1]


def _mime(data: bytes) -> None:
    sel = data[0] if data else 0
    raw = data[1:]
    limits = ((100, 5000, 65536), (3, 20, 40), (1, 2, 8))[sel % 3]
    same("mime", "scan", raw, *limits)
    same("mime", "parse_content_type", raw[:2000])
    same("mime", "parse_params", raw[:2000], sel % 8)


def _linestuff(data: bytes) -> None:
    same("linestuff", "stuff", data[1:], bool(data[:1] and data[0] & 1))


def _tokenize(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    for fname in ("normalize", "normalize_general", "terms", "runs", "query_terms"):
        same("tokenize", fname, text)
    for ch in text[:16]:
        same("tokenize", "is_cjk", ord(ch))


def _search(data: bytes) -> None:
    sel = data[:4].ljust(4, b"\0")
    raw = data[4:]
    start, end = sel[0] - 16, len(raw) - sel[1] + 16
    same("search", "header_texts", raw, start, end, sel[2] % 40)
    words = raw.decode("utf-8", "replace").split()
    if words:
        vocab = words[1:]
        same("search", "terms_containing", words[0], vocab)
        same("search", "filter_containing", words[0], vocab, list(range(0, len(vocab), 1 + sel[3] % 3)))
    # confirm over a text cache with records at offsets the input chooses (a corrupt cache file
    # must not match, and must not read outside the buffer)
    nfields = 1 + sel[3] % 4
    locs = {}
    for uid, piece in enumerate(split(raw[:64], 4)):
        off = piece[0] if piece else 0
        n = piece[1] if len(piece) > 1 else 0
        locs[uid] = (off - 8, n) if len(piece) > 2 and piece[2] & 1 else (off, n)
    fields = tuple(range(0, nfields, 1 + sel[2] % 2))
    needle = raw[:sel[1] % 4]
    same("search", "confirm", raw, list(locs) + [99], locs, fields, nfields, needle)


def _quota(data: bytes) -> None:
    words = struct.unpack_from("<8q", data[:64].ljust(64, b"\0"))
    shift = data[64] % 64 if len(data) > 64 else 0
    vals = [w >> shift for w in words]
    same("quota", "check", *vals[:6], allowed=(OverflowError,))
    same("quota", "apply", vals[0], vals[1], vals[2:6], 1 if vals[6] & 1 else -1, allowed=(OverflowError,))
    same("quota", "check_roots", [(vals[0], vals[1]), (vals[2], vals[3])], [(vals[4], vals[5]), (-1, -1)],
         vals[6], vals[7], allowed=(OverflowError,))
    same("quota", "storage_units", vals[7], allowed=(OverflowError,))


class _Info:
    __slots__ = ("uid", "flags")

    def __init__(self, uid: int, flags: frozenset[str]) -> None:
        self.uid = uid
        self.flags = flags


def _flaglines(data: bytes) -> None:
    names = ["\\Seen", "\\Deleted", "\\Answered", "$Junk", "ä", "\\Recent"]
    msgs = []
    uid = 0
    for i, b in enumerate(data[:200]):
        uid += 1 + (b >> 6) * (i + 1) ** 3
        msgs.append(_Info(uid, frozenset(n for k, n in enumerate(names) if b >> k & 1)))
    seqs = list(range(1, len(msgs) + 1))
    recent = frozenset(m.uid for m in msgs[::3])
    for with_uid in (False, True):
        same("flaglines", "fetch_flags_lines", seqs, msgs, with_uid, {}, recent)
    for flag in names[:3]:
        pos = same("flaglines", "flag_positions", msgs, flag, bool(len(data) & 1))
        same("flaglines", "search_numbers", msgs, pos, True)
        same("flaglines", "search_numbers", msgs, pos, False)


def _seeds_messages() -> list[bytes]:
    return [b"\x00" + m for m in corpus_messages(8000)[:80]] or [b"\x00a: b\r\n\r\nc"]


TARGETS = [
    Target("diff_mime", _mime, _seeds_messages, max_len=16384),
    Target("diff_linestuff", _linestuff, lambda: [b"\x01.a\r\n.b\r\n..\r\n", b"\x00x\r\n.\r\n"], max_len=4096),
    Target("diff_tokenize", _tokenize,
           lambda: [b"Hello W\xc3\xb6rld caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e foo-bar_baz 123 \"quoted\""],
           max_len=4096),
    Target("diff_search", _search, lambda: [b"\x01\x02\x03\x04" + m[:2000] for m in corpus_messages(2000)[:40]]
           or [b"\x00\x00\x05\x00Subject: hi\r\nTo: x\r\n\r\n"], max_len=8192),
    Target("diff_quota", _quota, lambda: [bytes(65), bytes(range(65)), b"\xff" * 65], max_len=128),
    Target("diff_flaglines", _flaglines, lambda: [bytes(range(256))], max_len=256),
]
