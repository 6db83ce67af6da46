"""The UID map file, in Dovecot's ``dovecot-uidlist`` format (version 3, also reads 1).

Pure parser and formatter. Version 3::

    3 V<uidvalidity> N<nextuid> G<guid>
    <uid> [<ext> ...] :<filename base>

where ext fields are a letter and a value (``S<size>``, ``W<vsize>``, ...).
mailsrv adds three of its own, in lower case so that they never meet one of
Dovecot's (which keeps extension fields it does not know): ``e<email id>``,
``t<thread id>`` and ``d<saved date>`` (seconds since the epoch), so that an
index rebuilt from the maildir keeps the JMAP ids and SAVEDATE of every message.
Version 1 is ``1 <uidvalidity> <nextuid>`` then ``<uid> <filename>``.
mailsrv appends lines as it assigns UIDs; a later line for the same base
wins, and the next UID is never below the largest UID listed plus one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

#: (email id, thread id, saved date) of one message; each None when the line does not say
Meta = tuple[str | None, str | None, float | None]


class UidlistError(ValueError):
    """The header cannot be read: the UID map is unusable."""


@dataclass
class Uidlist:
    uidvalidity: int
    nextuid: int
    guid: str = ""
    #: filename base -> uid
    uids: dict[str, int] = field(default_factory=dict)
    #: base -> size from an S field, when present
    sizes: dict[str, int] = field(default_factory=dict)
    #: base -> (email id, thread id, saved date) from mailsrv's e/t/d fields, when present
    meta: dict[str, Meta] = field(default_factory=dict)
    #: lines that could not be parsed (skipped)
    bad_lines: int = 0

    @property
    def effective_nextuid(self) -> int:
        top = max(self.uids.values(), default=0)
        return max(self.nextuid, top + 1, 1)


def parse(data: bytes) -> Uidlist:
    """Parse a uidlist. A broken header raises UidlistError; broken entry lines are counted and skipped.

    A last line without its newline (torn append) is ignored.
    """
    lines = data.split(b"\n")
    if not data.endswith(b"\n"):
        lines = lines[:-1] if len(lines) > 1 else lines
    else:
        lines = lines[:-1]
    if not lines:
        raise UidlistError("empty uidlist")
    head = lines[0].split()
    if not head:
        raise UidlistError("empty header")
    if head[0] == b"1":
        if len(head) < 3 or not head[1].isdigit() or not head[2].isdigit():
            raise UidlistError("bad version 1 header")
        result = Uidlist(int(head[1]), int(head[2]))
        for line in lines[1:]:
            uid_s, _, name = line.partition(b" ")
            if not uid_s.isdigit() or not name or int(uid_s) == 0:
                result.bad_lines += 1
                continue
            base = name.decode("utf-8", "surrogateescape").partition(":2,")[0]
            result.uids[base] = int(uid_s)
        return result
    if head[0] != b"3":
        raise UidlistError(f"unsupported uidlist version {head[0]!r}")
    uidvalidity = nextuid = None
    guid = ""
    for item in head[1:]:
        tag, val = item[:1], item[1:]
        if tag == b"V" and val.isdigit():
            uidvalidity = int(val)
        elif tag == b"N" and val.isdigit():
            nextuid = int(val)
        elif tag == b"G":
            guid = val.decode("ascii", "replace")
    if uidvalidity is None or nextuid is None or uidvalidity == 0:
        raise UidlistError("version 3 header without V or N")
    result = Uidlist(uidvalidity, nextuid, guid)
    for line in lines[1:]:
        before, sep, base_b = line.partition(b" :")
        if not sep:
            if line.startswith(b":") or not line.strip():
                result.bad_lines += 1
                continue
            # "<uid> :base" always has " :"; tolerate "<uid> base" (v1 style)
            before, _, base_b = line.partition(b" ")
        fields = before.split()
        if not fields or not fields[0].isdigit() or int(fields[0]) == 0 or not base_b:
            result.bad_lines += 1
            continue
        base = base_b.decode("utf-8", "surrogateescape").partition(":2,")[0]
        uid = int(fields[0])
        result.uids[base] = uid
        eid = tid = None
        saved: float | None = None
        for ext in fields[1:]:
            tag, val = ext[:1], ext[1:]
            if tag == b"S" and val.isdigit():
                result.sizes[base] = int(val)
            elif tag == b"e" and val.isalnum() and val.isascii():
                eid = val.decode("ascii")
            elif tag == b"t" and val.isalnum() and val.isascii():
                tid = val.decode("ascii")
            elif tag == b"d":
                saved = _date(val)
        if eid is not None or tid is not None or saved is not None:
            result.meta[base] = (eid, tid, saved)
        else:
            result.meta.pop(base, None)  # a later line without them: they are unknown
    return result


def _date(val: bytes) -> float | None:
    """A ``d`` field: non-negative finite seconds (Python's float repr), else None (ignored)."""
    if not val or len(val) > 32 or val.strip(b"0123456789.e+-") or not val[:1].isdigit():
        return None
    try:
        out = float(val)
    except ValueError:
        return None
    return out if math.isfinite(out) else None


def format_header(uidvalidity: int, nextuid: int, guid: str) -> bytes:
    return f"3 V{uidvalidity} N{nextuid} G{guid}\n".encode("ascii")


#: the last saved date :func:`format_entry` wrote and its text: the lines of one index batch share one
#: float object (engine._Rows.saved), whose repr (~3.5 k instructions) is then made once
_last_saved: tuple[float | None, str] = (None, "")


def format_entry(uid: int, base: str, size: int | None = None, meta: Meta | None = None) -> bytes:
    """One line; ``meta`` ids must be ASCII letters and digits (others are left out)."""
    global _last_saved
    ext = f" S{size}" if size is not None else ""
    if meta is not None:
        eid, tid, saved = meta
        if eid and eid.isalnum() and eid.isascii():
            ext += f" e{eid}"
        if tid and tid.isalnum() and tid.isascii():
            ext += f" t{tid}"
        if saved is not None and saved >= 0 and math.isfinite(saved):
            last = _last_saved
            if last[0] is not saved:  # (the same object: the same text; an equal float may differ, -0.0)
                last = _last_saved = (saved, f" d{saved!r}")  # repr: exactly the same float back
            ext += last[1]
    return f"{uid}{ext} :{base}\n".encode("utf-8", "surrogateescape")
